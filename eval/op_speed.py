"""Time single TFLite ops in fp32 and int8, with and without XNNPACK.

    python eval/op_speed.py --threads 1 --out reports/op_speed

Why it exists: an int8 model is only fast if XNNPACK runs every op. An op that
XNNPACK does not take in int8 (a standalone RELU, PRELU) runs as TFLite's own
single-threaded kernel between delegate partitions, and one such op per PReLU is
enough to make an int8 DRSAN slower than fp32. This tool shows which spelling of
an op XNNPACK takes: the "int8 / XNNPACK" column close to "int8 / no delegate"
means XNNPACK refused it. Shapes default to one DRSAN feature map (a 192x336
window, 32 channels). Needs the tflite extra (TensorFlow converts the probes).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python eval/op_speed.py
    import importlib

    __package__ = "drsan_kit.eval"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_path
from ..edge_runtime.backends import cpu_threads
from ..edge_runtime.contract import argtype, parse_count, parse_threads


def _probes(tf, c: int, rng):
    """Name -> function of two feature maps (a, b); each is one op or one candidate spelling."""
    def dw(x, w):
        return tf.nn.depthwise_conv2d(x, tf.constant(w.reshape(1, 1, c, 1)), [1, 1, 1, 1], "SAME")

    slope = rng.uniform(-0.2, 0.5, c).astype(np.float32)
    ones = np.ones(c, np.float32)
    k3 = tf.constant(0.05 * rng.normal(size=(3, 3, c, c)).astype(np.float32))
    return {
        "conv3x3": lambda a, b: tf.nn.conv2d(a, k3, 1, "SAME"),
        "depthwise1x1": lambda a, b: dw(a, slope),
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "mul_by_scalar": lambda a, b: a * tf.reduce_mean(b, axis=[1, 2, 3], keepdims=True),
        "sigmoid": lambda a, b: tf.sigmoid(a),
        "relu": lambda a, b: tf.nn.relu(a),
        "relu_as_depthwise": lambda a, b: tf.nn.relu(dw(a, ones)),
        "minimum": lambda a, b: tf.minimum(a, 1.0),
        "prelu": lambda a, b: tf.nn.relu(a) + tf.constant(slope) * tf.minimum(a, 0.0),
        "prelu_kit_int8": lambda a, b: (lambda p: p + dw(a - p, slope))(tf.nn.relu(dw(a, ones))),
    }


def _convert(tf, fn, shape, quant: bool, rng) -> bytes:
    spec = tf.TensorSpec(shape, tf.float32)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([tf.function(fn).get_concrete_function(spec, spec)])
    if quant:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rng.normal(size=shape).astype(np.float32) for _ in range(2)]
                                               for _ in range(4))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return conv.convert()


def _time_ms(blob: bytes, threads: int, xnnpack: bool, repeats: int, rng) -> tuple[float, list[str]]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {} if xnnpack else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    it = Interpreter(model_content=blob, num_threads=threads, **kw)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], rng.normal(size=d["shape"]).astype(d["dtype"]))
    it.invoke()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        it.invoke()
        times.append(time.perf_counter() - t)
    ops = [o["op_name"] for o in it._get_ops_details() if o["op_name"] not in ("QUANTIZE", "DEQUANTIZE", "DELEGATE")]
    return 1000 * float(np.median(times)), ops


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Time single TFLite ops (fp32 and int8, with and without XNNPACK) "
                                             "to see which ones XNNPACK runs in int8.")
    ap.add_argument("--shape", default="192x336x32", help="feature map HxWxC (default 192x336x32)")
    ap.add_argument("--ops", default=None, help="comma-separated subset of the probes (default: all)")
    ap.add_argument("--threads", type=argtype(parse_threads), default=1,
                    help="interpreter threads, 0 for every core this process may use (default 1)")
    ap.add_argument("--repeats", type=argtype(parse_count), default=15,
                    help="timed runs per op; the median is reported (default 15)")
    ap.add_argument("--out", default="reports/op_speed", help="report folder: op_speed.md and op_speed.json")
    args = ap.parse_args(argv)
    args.threads = cpu_threads(args.threads)   # the report names the number that ran, not 0
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        h, w, c = (int(v) for v in args.shape.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: --shape must look like 192x336x32, not {args.shape!r}") from None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")   # the converter's per-model log lines
    try:
        import tensorflow as tf
    except ImportError:
        raise SystemExit("error: eval/op_speed.py needs TensorFlow: pip install -e '.[tflite]'") from None
    rng = np.random.default_rng(0)
    probes = _probes(tf, c, rng)
    names = args.ops.split(",") if args.ops else list(probes)
    unknown = [n for n in names if n not in probes]
    if unknown:
        raise SystemExit(f"error: unknown op probe(s) {', '.join(unknown)}; choose from {', '.join(probes)}")
    rows = []
    for name in names:
        fp32 = _convert(tf, probes[name], (1, h, w, c), False, rng)
        int8 = _convert(tf, probes[name], (1, h, w, c), True, rng)
        f_ms, f_ops = _time_ms(fp32, args.threads, True, args.repeats, rng)
        q_ms, q_ops = _time_ms(int8, args.threads, True, args.repeats, rng)
        b_ms, _ = _time_ms(int8, args.threads, False, args.repeats, rng)
        rows.append({"probe": name, "fp32_xnnpack_ms": round(f_ms, 2), "int8_xnnpack_ms": round(q_ms, 2),
                     "int8_no_delegate_ms": round(b_ms, 2), "fp32_ops": f_ops, "int8_ops": q_ops})
        print(f"{name:18s} fp32 {f_ms:7.2f} ms   int8 {q_ms:7.2f} ms   int8 without XNNPACK {b_ms:7.2f} ms", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = (f"TFLite op timings on a 1x{h}x{w}x{c} feature map, {args.threads} thread(s), median of {args.repeats}. "
            f"Command: `python eval/op_speed.py --shape {args.shape} --threads {args.threads}`.\n\n"
            "| probe | TFLite ops (int8) | fp32, XNNPACK (ms) | int8, XNNPACK (ms) | int8, no delegate (ms) |\n"
            "|---|---|---|---|---|\n")
    lines = [f"| {r['probe']} | {' '.join(r['int8_ops'])} | {r['fp32_xnnpack_ms']:.2f} | {r['int8_xnnpack_ms']:.2f} "
             f"| {r['int8_no_delegate_ms']:.2f} |" for r in rows]
    with atomic_path(out / "op_speed.md") as tmp:
        tmp.write_text(head + "\n".join(lines) + "\n")
    with atomic_path(out / "op_speed.json") as tmp:
        tmp.write_text(json.dumps({"shape": [h, w, c], "threads": args.threads, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out / 'op_speed.md'}")


if __name__ == "__main__":
    main()
