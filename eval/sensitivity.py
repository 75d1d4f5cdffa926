"""Where does int8 lose accuracy? A per-layer sensitivity report for the full-integer TFLite model.

    python eval/sensitivity.py --variant 32s --scale 4 [--tile 64x64] [--float-top 0,1,3,5] [--out DIR]

1. Builds the int8 TFLite model exactly as converters/to_tflite.py does (same export,
   same calibration crops), at a small analysis tile.
2. Runs TensorFlow Lite's QuantizationDebugger: every quantized op's output is compared
   with the float op given the same input, so each layer's own error is measured (not
   the error it inherits). The score is RMSE in units of the layer's quantization step
   (about 0.29 for pure rounding noise; more means clipping or a poor range) and the mean
   error (a bias, which costs PSNR directly).
3. Keeps the N worst layers in float (selective quantization) for each N in --float-top
   and measures what that buys: PSNR of the output against the FP32 PyTorch model on
   held-out crops, dPSNR against HR on --sets, model size and time per window. (These
   models come from the debugger's quantizer and have int8 input/output tensors, like
   the converter's int8_io mode.)

Writes sensitivity.json, sensitivity.md, sensitivity.png (per-layer chart) and the
layer CSV to --out. Needs the tflite extra (TensorFlow, onnx2tf).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python eval/sensitivity.py
    import importlib

    __package__ = "drsan_kit.eval"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ..converters import common
from ..converters.export import PRELU_FORMS
from ..converters.tflite import build_saved_model, make_converter, quiet
from ..core.datasets import benchmark_root
from ..core import provenance
from ..edge_runtime.contract import argtype, parse_count, parse_threads
from . import cli
from .benchmark import DATA_HELP


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Per-layer int8 sensitivity of DRSAN (TFLite QuantizationDebugger), "
                                             "and what keeping the worst layers in float buys.")
    common.add_model_args(ap)
    ap.set_defaults(tile=(64, 64), out=Path("reports/sensitivity"))
    ap.add_argument("--calib", default=None, help="calibration images folder (default: scikit-image photos, "
                                                  "as the converter)")
    ap.add_argument("--calib-count", type=argtype(parse_count), default=32, help="calibration crops (default 32)")
    ap.add_argument("--calib-outlier", type=float, default=2.0,
                    help="leave out outlier calibration crops, as the converter (default 2; 0 keeps every crop)")
    ap.add_argument("--debug-count", type=argtype(parse_count), default=8, help="crops the debugger compares layers on (default 8)")
    ap.add_argument("--float-top", default="0,1,3,5",
                    help="numbers of worst layers to keep in float, one model each (default 0,1,3,5)")
    ap.add_argument("--data", default=None, help=DATA_HELP)
    ap.add_argument("--sets", default="Set5", help="sets for dPSNR against HR, comma-separated ('' for none)")
    ap.add_argument("--prelu", choices=PRELU_FORMS, default="sub",
                    help="how integer models spell PReLU (default sub, as the converter; see converters/export.py)")
    ap.add_argument("--threads", type=argtype(parse_threads), default=0,
                    help="interpreter threads, 0 for every core this process may use (default 0)")
    return ap.parse_args(argv)


def layer_table(debugger) -> list[dict]:
    """One row per quantized tensor, in execution order, with its error in quantization steps."""
    import io

    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    buf.seek(0)
    rows = []
    for r in csv.DictReader(buf):
        scale = float(r["scale"])
        rows.append({"index": len(rows), "op": r["op_name"], "tensor": r["tensor_name"], "scale": scale,
                     "rmse_steps": float(np.sqrt(float(r["mean_squared_error"]))) / scale,
                     "mean_error_steps": float(r["mean_error"]) / scale,
                     "max_abs_steps": float(r["max_abs_error"]) / scale})
    return rows


def run_debugger(saved, calib, debug, denylist=()):
    import tensorflow as tf

    opts = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(denylist), fully_quantize=True)
    with quiet():
        return tf.lite.experimental.QuantizationDebugger(
            converter=make_converter(saved, "int8", calib), debug_dataset=lambda: ([x[None]] for x in debug),
            debug_options=opts)


def evaluate(blob: bytes, path: Path, crops, reference, pairs, args) -> dict:
    """Fidelity to FP32 PyTorch on crops, dPSNR vs HR on the benchmark pairs, size, ms per window."""
    from ..core.metrics import psnr_y
    from ..edge_runtime.backends.tflite import TFLiteBackend
    from ..edge_runtime.upscaler import Upscaler

    path.write_bytes(blob)
    backend = TFLiteBackend(path, threads=args.threads, scale=args.scale)
    outs = np.stack([backend(c) for c in crops])
    times = []
    for c in list(crops) * 3:
        t0 = time.perf_counter()
        backend(c)
        times.append((time.perf_counter() - t0) * 1000)
    up = Upscaler(backend)
    d = [psnr_y(up.frame(p.lr, out_dtype=np.uint8), p.hr, args.scale, gray=p.gray) - ref_psnr
         for p, ref_psnr in pairs]
    return {"fidelity_psnr": common.compare(outs, reference)["mean_psnr_vs_reference_db"],
            "dpsnr": round(float(np.mean(d)), 4) if d else None,
            "size_mb": round(len(blob) / 1e6, 3), "ms_per_window": round(float(np.median(times)), 2)}


def reference_pairs(args, data, model):
    """(pair, FP32 whole-frame PSNR) for each image of --sets under data."""
    if not args.sets:
        return [], []
    from ..core.datasets import find_sets, load_pairs
    from ..core.metrics import psnr_y
    from ..edge_runtime.backends.torch import TorchBackend
    from ..edge_runtime.upscaler import Upscaler

    sets = [s for s in find_sets(data) if s.name in args.sets.split(",")]
    whole = Upscaler(TorchBackend(model=model))
    pairs = [p for s in sets for p in load_pairs(s, args.scale)]
    return [(p, psnr_y(whole.frame(p.lr, out_dtype=np.uint8), p.hr, args.scale, gray=p.gray)) for p in pairs], \
        [s.name for s in sets]


def main(argv=None) -> int:
    args = parse_args(argv)
    tops = sorted({int(v) for v in args.float_top.split(",") if v.strip()})
    data = benchmark_root(args.data) if args.sets else None
    model, _, weights = common.load_reference(args)
    images, desc = common.sample_images(args.calib)
    candidates = common.random_crops(images, args.tile, args.calib_count, seed=common.CALIB_SEED)
    calib, _ = common.drop_outlier_crops(model, candidates, args.calib_outlier)
    debug = common.random_crops(images, args.tile, args.debug_count, seed=5)
    check_images, _ = common.sample_images()
    crops = common.random_crops(check_images, args.tile, args.check_images, seed=common.CHECK_SEED)
    reference = common.reference_outputs(model, crops)
    pairs, set_names = reference_pairs(args, data, model)
    out = common.prepare_out(args.out)
    print(f"int8 sensitivity of DRSAN-{args.variant} x{args.scale} ({weights}), tile {args.tile[0]}x{args.tile[1]}")
    with tempfile.TemporaryDirectory(prefix="drsan-sens-") as tmp:
        tmp = Path(tmp)
        saved = build_saved_model(model, args.tile, tmp / "graph", True, crops[:2], args.verbose, args.prelu)
        debugger = run_debugger(saved, calib, debug)
        t0 = time.time()
        with quiet(not args.verbose):
            debugger.run()
        layers = layer_table(debugger)
        print(f"  debugger: {len(layers)} quantized tensors compared in {time.time() - t0:.0f} s")
        ranked = sorted(layers, key=lambda r: -r["rmse_steps"])
        variants = []
        for k in tops:
            deny = [r["tensor"] for r in ranked[:k]]
            dbg = debugger if k == 0 else run_debugger(saved, calib, debug, deny)
            with quiet(not args.verbose):
                blob = dbg.get_nondebug_quantized_model()
            res = evaluate(blob, tmp / f"top{k}.tflite", crops, reference, pairs, args)
            res.update({"float_layers": k, "denylisted": deny})
            variants.append(res)
            print(f"  {k} worst layer(s) in float: fidelity {res['fidelity_psnr']} dB, dPSNR {res['dpsnr']}, "
                  f"{res['ms_per_window']} ms/window")
    report = {"provenance": provenance.header(), "variant": args.variant, "scale": args.scale,
              "weights": provenance.relative(weights), "tile": list(args.tile),
              "prelu": args.prelu,
              "calibration": f"{desc} ({args.calib_count} crops)", "debug_crops": args.debug_count,
              "sets": set_names, "layers": layers, "selective": variants}
    write(out, report)
    print(markdown(report))
    return 0


def write(out: Path, report: dict):
    (out / "sensitivity.json").write_text(json.dumps(report, indent=2))
    (out / "sensitivity.md").write_text(markdown(report))
    with open(out / "layers.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(report["layers"][0]))
        w.writeheader()
        w.writerows(report["layers"])
    chart(report, out / "sensitivity.png")


def chart(report: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    x = [r["index"] for r in layers]
    fig, (a, b) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    a.bar(x, [r["rmse_steps"] for r in layers], color="tab:blue")
    a.axhline(12 ** -0.5, color="gray", lw=0.8, ls="--", label="pure rounding noise (0.29)")
    a.set_ylabel("RMSE / quant step")
    a.legend(loc="upper right")
    b.bar(x, [r["mean_error_steps"] for r in layers], color="tab:red")
    b.set_ylabel("mean error / quant step")
    b.set_xlabel("quantized tensor, in execution order")
    for r in sorted(layers, key=lambda r: -r["rmse_steps"])[:5]:
        a.annotate(r["op"].lower(), (r["index"], r["rmse_steps"]), fontsize=7, rotation=60)
    fig.suptitle(f"DRSAN-{report['variant']} x{report['scale']} int8: per-layer error (QuantizationDebugger)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    ranked = sorted(report["layers"], key=lambda r: -r["rmse_steps"])
    lines = [f"# int8 sensitivity: DRSAN-{report['variant']} x{report['scale']}", ""]
    if "provenance" in report:
        lines.append(provenance.markdown(report["provenance"]))
    lines += [f"Weights `{report['weights']}`; PReLU spelled `{report['prelu']}` (converters/export.py); analysis tile {report['tile'][0]}x{report['tile'][1]}; "
              f"calibration {report['calibration']}; layer errors from TFLite's QuantizationDebugger on "
              f"{report['debug_crops']} crops (each op given the same input in float and int8). "
              "Error in units of the tensor's quantization step; pure rounding gives RMSE 0.29.", "",
              "## Worst layers", "", "| # | op | tensor | RMSE (steps) | mean error (steps) | max abs (steps) |",
              "|---|---|---|---|---|---|"]
    for r in ranked[:12]:
        lines.append(f"| {r['index']} | {r['op']} | `{r['tensor'][-48:]}` | {r['rmse_steps']:.2f} | "
                     f"{r['mean_error_steps']:+.2f} | {r['max_abs_steps']:.1f} |")
    by_op: dict[str, list[float]] = {}
    for r in report["layers"]:
        by_op.setdefault(r["op"], []).append(r["rmse_steps"])
    lines += ["", "## By op type", "", "| op | tensors | mean RMSE (steps) | worst |", "|---|---|---|---|"]
    for op, v in sorted(by_op.items(), key=lambda kv: -max(kv[1])):
        lines.append(f"| {op} | {len(v)} | {np.mean(v):.2f} | {max(v):.2f} |")
    sets = ",".join(report["sets"]) or "-"
    lines += ["", "## Keeping the worst layers in float", "",
              f"| layers in float | fidelity to FP32 (dB) | dPSNR vs HR ({sets}) | size MB | ms per window |",
              "|---|---|---|---|---|"]
    for v in report["selective"]:
        d = "-" if v["dpsnr"] is None else f"{v['dpsnr']:+.3f}"
        lines.append(f"| {v['float_layers']} | {v['fidelity_psnr']:.2f} | {d} | {v['size_mb']:.3f} | "
                     f"{v['ms_per_window']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
