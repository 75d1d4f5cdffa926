"""Tiling drift of DRSAN: how far tiled output is from whole-frame output, per tile size and per
source of the DRA coefficients r (each tile's own, the whole frame's, a half-size frame's).

    python eval/tiling.py --variant 32s --scale 4 [--tiles 48,96,192x336] [--sets Set5,Set14,B100] [--out DIR]
    python eval/tiling.py --variant 32s --scale 4 --holdout TRAIN_DIR --tiles 192x336 --modes tile \
        --frames 0 --pad symmetric,edge --out reports/padding_32s_x4

The second form compares the ways of padding a frame smaller than a fixed-shape model's
input (contract.PAD_MODES) on held-out training images (core/holdout.py), where the
runtime's choice is made; the benchmark sets are for reporting only.

Uses the PyTorch model (the reference) so that only tiling is measured. Reports, per set
and setting, dPSNR against HR (tiled - whole frame) and the fidelity PSNR of tiled vs
whole-frame output, plus the same on 1280x720 frames (photos resized), where only
fidelity exists. Writes tiling.json and tiling.md.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python eval/tiling.py
    import importlib

    __package__ = "drsan_kit.eval"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.datasets import Pair, benchmark_root, find_sets, load_pairs
from ..core.holdout import holdout_pairs, split_holdout
from ..core.metrics import psnr, psnr_y
from ..core.variants import SCALES, VARIANTS
from ..edge_runtime.backends import open_backend
from ..edge_runtime.contract import (DEFAULT_MARGIN, DEFAULT_TILE, PAD_MODE, PAD_MODES, argtype, check_pad_mode,
                                     format_tile, parse_margin, parse_tiles)
from ..edge_runtime.upscaler import COEFF_MODES, Upscaler
from ..edge_runtime.bench import test_frame
from ..core import provenance
from . import cli
from .benchmark import DATA_HELP


def pad_modes(text: str) -> list[str]:
    modes = [check_pad_mode(m) for m in text.split(",") if m]
    if not modes:
        raise ValueError(f"--pad takes modes from {','.join(PAD_MODES)}, not {text!r}")
    return modes


def samples_of(args) -> list[tuple[str, Pair]]:
    """(set name, pair) to measure: the benchmark --sets, or the held-out images of --holdout."""
    if args.holdout is None:
        sets = [s for s in find_sets(benchmark_root(args.data)) if s.name in args.sets.split(",")]
        return [(s.name, p) for s in sets for p in load_pairs(s, args.scale)]
    if not Path(args.holdout).is_dir():
        raise cli.EvalError(f"{args.holdout}: not a folder of training images")
    try:
        _, held = split_holdout(args.holdout, args.val_split)
    except ValueError as exc:
        raise cli.EvalError(str(exc)) from None
    return [(f"held-out {args.val_split}", p) for p in holdout_pairs(held, args.scale)]


def main(argv=None):
    ap = argparse.ArgumentParser(description="Measure tiling drift per tile size and DRA-coefficient source.")
    ap.add_argument("--variant", default="32s", choices=list(VARIANTS))
    ap.add_argument("--scale", type=int, default=4, choices=SCALES)
    ap.add_argument("--weights", default=None, help="checkpoint (default: shipped)")
    ap.add_argument("--data", default=None, help=DATA_HELP)
    ap.add_argument("--sets", default="Set5,Set14,B100")
    ap.add_argument("--tiles", type=argtype(parse_tiles), default=[(48, 48), (96, 96), DEFAULT_TILE],
                    help=f"comma-separated windows HxW or N (default 48,96,{format_tile(DEFAULT_TILE)})")
    ap.add_argument("--margin", type=argtype(parse_margin), default=DEFAULT_MARGIN,
                    help=f"tile context margin, as in the runtime (default {DEFAULT_MARGIN})")
    ap.add_argument("--modes", default=",".join(COEFF_MODES), help="coefficient sources to compare")
    ap.add_argument("--frames", type=int, choices=range(5), default=2, metavar="0-4",
                    help="1280x720 photo frames to add, 0 to 4 (fidelity only; default 2)")
    ap.add_argument("--pad", type=argtype(pad_modes), nargs="?", const=[PAD_MODE], default=None,
                    help="pad images smaller than the tile up to it, as fixed-shape ONNX/CoreML models do; "
                         f"optionally the modes to compare, comma-separated from {','.join(PAD_MODES)} "
                         f"(default {PAD_MODE}; without --pad they run at their own size, as the resizable "
                         "TFLite models do)")
    ap.add_argument("--holdout", default=None,
                    help="measure on the held-out images of this training folder instead of benchmark sets")
    ap.add_argument("--val-split", type=int, default=24, help="how many images --holdout holds out (default 24)")
    ap.add_argument("--out", type=Path, default=Path("reports/tiling"))
    args = ap.parse_args(argv)
    samples = samples_of(args)
    backend = open_backend("torch", args.weights, variant=args.variant, scale=args.scale)
    modes = args.modes.split(",")
    pads = args.pad or [None]
    settings = [(t, m, p) for t in args.tiles for m in modes for p in pads]
    whole = Upscaler(backend, tile=None)
    results = {}
    for name in ["astronaut", "coffee", "chelsea", "rocket"][: args.frames]:
        frame = (test_frame("1280x720", name) * 255).round().astype(np.uint8)
        samples.append(("720p", Pair(name, frame, None, False)))
    timing = {}
    for set_name, pair in tqdm(samples, desc="tiling", disable=None):
        ref = whole.frame(pair.lr, out_dtype=np.uint8)
        ref_p = psnr_y(ref, pair.hr, args.scale, gray=pair.gray) if pair.hr is not None else None
        for tile, mode, pad in settings:
            up = Upscaler(backend, tile=tile, margin=args.margin, coeffs=mode, pad_to_tile=pad is not None,
                          pad_mode=pad or PAD_MODE)
            t0 = time.perf_counter()
            out = up.frame(pair.lr, out_dtype=np.uint8)
            key = f"{tile[0]}x{tile[1]}|{mode}|{pad or '-'}"
            if set_name == "720p":
                timing.setdefault(key, []).append(time.perf_counter() - t0)
            r = results.setdefault(set_name, {}).setdefault(key, {"dpsnr": [], "fidelity": []})
            r["fidelity"].append(min(psnr(out, ref), 99.0))
            if ref_p is not None:
                r["dpsnr"].append(psnr_y(out, pair.hr, args.scale, gray=pair.gray) - ref_p)
    summary = {s: {k: {"dpsnr": float(np.mean(v["dpsnr"])) if v["dpsnr"] else None,
                       "worst_dpsnr": float(np.min(v["dpsnr"])) if v["dpsnr"] else None,
                       "fidelity_psnr": float(np.mean(v["fidelity"])), "images": len(v["fidelity"])}
                   for k, v in d.items()} for s, d in results.items()}
    report = {"provenance": provenance.header(), "variant": args.variant, "scale": args.scale,
              "weights": provenance.relative(backend.weights), "margin": args.margin, "padded": args.pad, "sets": summary,
              "holdout": None if args.holdout is None else {"folder": provenance.relative(Path(args.holdout)),
                                                            "val_split": args.val_split},
              "seconds_per_720p_frame": {k: float(np.median(v)) for k, v in timing.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tiling.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (args.out / "tiling.md").write_text(md)
    print(md)


def markdown(report: dict) -> str:
    pads = report.get("padded")
    pad = f"padded up to the tile ({', '.join(pads)})" if pads else "run at their own size"
    where = report.get("holdout")
    lines = [f"# Tiling drift: DRSAN-{report['variant']} x{report['scale']} (PyTorch, margin {report['margin']} px, "
             f"images smaller than the tile {pad})", ""]
    if "provenance" in report:
        lines.append(provenance.markdown(report["provenance"]))
    if where:
        lines += [f"Images: the {where['val_split']} held-out images of `{where['folder']}` (core/holdout.py), "
                  "whole, LR by the kit's bicubic.", ""]
    lines += ["dPSNR: tiled - whole frame, PSNR-Y vs HR (dB), mean and worst image. Fidelity: PSNR (RGB, 8-bit) of "
              "tiled vs whole-frame output. r source: tile = each window its own DRA coefficients; frame = the whole "
              "frame's (exact); downscaled = from the frame at half size. padding: how a window smaller than the "
              "tile is filled (numpy's mode names; - = not padded).", ""]
    sets = list(report["sets"])
    lines.append("| tile | r source | padding | " + " | ".join(f"{s} dPSNR (worst) / fidelity" for s in sets)
                 + " | s per 720p frame |")
    lines.append("|---" * (len(sets) + 4) + "|")
    for key in report["sets"][sets[0]]:
        tile, mode, padding = (key.split("|") + ["-"])[:3]
        cells = []
        for s in sets:
            e = report["sets"][s][key]
            d = "-" if e["dpsnr"] is None else f"{e['dpsnr']:+.3f}"
            if e.get("worst_dpsnr") is not None:
                d += f" ({e['worst_dpsnr']:+.3f})"
            cells.append(d + f" / {e['fidelity_psnr']:.1f}")
        t = report["seconds_per_720p_frame"].get(key)
        lines.append(f"| {tile} | {mode} | {padding} | " + " | ".join(cells) + f" | {'-' if t is None else f'{t:.2f}'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
