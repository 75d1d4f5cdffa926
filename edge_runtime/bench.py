"""Speed of every backend on one frame, in one run on one machine.

    python edge_runtime/bench.py --variant 32s --scale 4 --artifacts artifacts/ [--frame 1280x720] [--runs 3]

Times PyTorch eager FP32 (the reference: whole frame and tiled), then every artifact
in --artifacts (ONNX, TFLite fp32/fp16/int8/int16x8) through the runtime's tiler,
and prints ms per frame, output megapixels per second and the ratio to PyTorch
eager. --rounds N times the whole table N times, alternately in the listed and the
reversed order, so that rows compared with each other (PTQ and QAT int8, say) are
not told apart by when in the run they were timed. Shape-flexible backends are also timed one-shot (whole frame), which gives
the tiling overhead. Writes --json FILE and --md FILE when asked.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python edge_runtime/bench.py
    import importlib

    __package__ = "drsan_kit.edge_runtime"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

from ..core.variants import SCALES, VARIANTS
from .artifact import open_artifact
from .backends import BackendError, cpu_threads, open_backend
from .contract import (DEFAULT_MARGIN, DEFAULT_TILE, MANIFEST_NAME, PRECISIONS, QAT, WHOLE_FRAME, ManifestError,
                       Window, argtype, artifact_kinds, backend_spec, choose_window, format_tile, parse_count,
                       parse_margin, parse_threads, parse_tile, read_manifest)
from .upscaler import Upscaler, time_frames
from ..core import provenance
from ..core.atomic import atomic_path, unwritable


def frame_dims(text: str) -> tuple[int, int]:
    """"WxH" -> (w, h), both positive; ValueError naming the problem otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"frame size must look like WxH (e.g. 1280x720), not {text!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"frame sizes must be positive, not {text!r}")
    return w, h


def frame_size(text: str) -> str:
    """--frame WxH, checked; the report keeps it as text."""
    return "{}x{}".format(*frame_dims(text))


def test_frame(size: str, photo_name: str = "astronaut") -> np.ndarray:
    """A real photograph resized to WxH, float32 in [0, 1] (real content: quantized kernels' speed
    and the DRA coefficients depend on it)."""
    from skimage import data

    from ..core.imresize import imresize

    w, h = frame_dims(size)
    photo = getattr(data, photo_name)()
    return imresize(photo.astype(np.float32) / 255.0, output_shape=(h, w)).clip(0, 1).astype(np.float32)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Benchmark DRSAN backends (PyTorch, ONNX Runtime, TFLite) on one frame.")
    ap.add_argument("--variant", default="32s", choices=list(VARIANTS), help="model variant (default 32s)")
    ap.add_argument("--scale", type=int, default=4, choices=SCALES, help="upscaling factor (default 4)")
    ap.add_argument("--weights", default=None, help="checkpoint for the PyTorch reference (default: shipped)")
    ap.add_argument("--artifacts", type=Path, default=None, help="folder of artifacts with manifest.json")
    ap.add_argument("--frame", type=argtype(frame_size), default="1280x720", help="input frame size WxH (default 1280x720)")
    ap.add_argument("--tile", type=argtype(parse_tile), default=DEFAULT_TILE,
                    help=f"window HxW for shape-flexible backends (default {format_tile(DEFAULT_TILE)})")
    ap.add_argument("--margin", type=argtype(parse_margin), default=DEFAULT_MARGIN,
                    help=f"tile context margin (default {DEFAULT_MARGIN})")
    ap.add_argument("--runs", type=argtype(parse_count), default=3, help="timed runs after one warm-up (default 3)")
    ap.add_argument("--rounds", type=argtype(parse_count), default=1,
                    help="time the whole table this many times, in the listed order and then reversed, "
                         "alternately, and pool each row's runs: rows timed early or late in a run (a machine "
                         "warming up, a neighbour's load) then share the same conditions; an even number balances "
                         "them (default 1)")
    ap.add_argument("--threads", type=argtype(parse_threads), default=0,
                    help="threads for every backend, 0 for every core this process may use (default 0)")
    ap.add_argument("--slow", type=argtype(parse_seconds), default=60.0, metavar="SECONDS",
                    help="a backend whose single window takes longer than this is timed on one window and the "
                         "frame time extrapolated (marked 'estimated') instead of running whole frames (default 60)")
    ap.add_argument("--skip", default="", help="comma-separated precisions/backends to skip, e.g. int16x8,torch-full")
    ap.add_argument("--whole-frame", default="",
                    help="comma-separated TFLite precisions to time also on the whole frame at once (the "
                         "interpreter resized), e.g. int8,fp32: tiled vs one-shot for the same model")
    ap.add_argument("--json", type=Path, default=None, help="write results as JSON")
    ap.add_argument("--md", type=Path, default=None, help="write results as a Markdown table")
    return ap.parse_args(argv)


def plan(args, threads: int) -> list[tuple[str, Upscaler, str]]:
    """(label, Upscaler, note) for every timing asked for, every model verified and opened and every window
    set up first: a damaged model or a bad --margin stops the tool before, not half-way through, the timing.
    BackendError or ValueError (ManifestError, a margin or tile the tiler refuses) say what is wrong."""
    skip = set(filter(None, args.skip.split(",")))
    runnable = [k for k in artifact_kinds() if backend_spec(k).runs_here()]
    manifest = read_manifest(args.artifacts) if args.artifacts else None
    if args.artifacts and manifest is None:
        raise ManifestError(f"no {MANIFEST_NAME} in {args.artifacts}")
    torch_backend = open_backend("torch", args.weights, variant=args.variant, scale=args.scale, threads=threads)
    whole = Window(None, pad=False)
    jobs = [("torch-full", torch_backend, whole, "PyTorch eager FP32, whole frame"),
            ("torch", torch_backend, choose_window(None, False, args.tile), "PyTorch eager FP32, tiled")]
    for e in (manifest.artifacts if manifest else []):
        if e.format not in runnable or e.precision in skip:
            continue
        art = open_artifact(args.artifacts / e.file, e.format, scale=args.scale, threads=threads,
                            flexible_default=args.tile)
        name = f"{e.format}-{e.precision}" + ("-qat" if e.quantization == QAT else "") + \
            (f"-{e.stagger_tag}" if e.stagger_tag else "") + \
            ("-dynamic" if e.dynamic_shape else "")
        if e.dynamic_shape:
            jobs.append((name + "-full", art.backend, whole, "one-shot, whole frame"))
        jobs.append((name, art.backend, art.window, e.file))
        if e.format == "tflite" and e.precision in args.whole_frame.split(","):
            one_shot = open_artifact(art.path, e.format, scale=args.scale, window=WHOLE_FRAME, threads=threads)
            jobs.append((name + "-full", one_shot.backend, one_shot.window,
                         "one-shot, whole frame (interpreter resized)"))
    _check_names(args, skip, {label for label, *_ in jobs}, manifest)
    return [(label, Upscaler(backend, margin=args.margin, window=window), note)
            for label, backend, window, note in jobs if label not in skip]


def _check_names(args, skip: set, labels: set, manifest):
    """ValueError for a --skip or --whole-frame name that matches nothing: a typo would time (or leave out)
    something other than what was asked, without a word."""
    if unknown := sorted(skip - set(PRECISIONS) - labels):
        raise ValueError(f"--skip {', '.join(unknown)}: neither a precision nor a row of this table "
                         f"(rows: {', '.join(sorted(labels))})")
    tflite = {e.precision for e in (manifest.artifacts if manifest else []) if e.format == "tflite"}
    if missing := sorted(set(filter(None, args.whole_frame.split(","))) - tflite):
        raise ValueError(f"--whole-frame {', '.join(missing)}: no TFLite model of that precision in "
                         f"{args.artifacts or 'the table (no --artifacts)'}")


def bench(label: str, up: Upscaler, frame: np.ndarray, args, note: str) -> dict:
    """One timing row; a backend slower than --slow per window is timed on one window and extrapolated."""
    print(f"timing {label} ...", file=sys.stderr, flush=True)
    if up.tile is not None:
        one = time_frames(up, frame[: up.tile[0], : up.tile[1]], 1)
        if one["median_ms"] / 1000 > args.slow:
            windows = up.windows(*frame.shape[:2])
            ms = one["median_ms"] * windows
            s = up.backend.scale
            return {"input": f"{frame.shape[1]}x{frame.shape[0]}", "tile": list(up.tile), "windows": windows,
                    "runs": 1, "median_ms": ms, "min_ms": ms, "estimated": True,
                    "output_mp_per_s": frame.shape[0] * frame.shape[1] * s * s / 1e6 / (ms / 1000),
                    "backend": label, "note": note + f" (estimated: one window took {one['median_ms'] / 1000:.0f} s, "
                                                     f"times {windows} windows)"}
    return time_frames(up, frame, args.runs) | {"backend": label, "note": note}


def main(argv=None):
    args = parse_args(argv)
    threads = cpu_threads(args.threads)
    problems = [f"--{flag} {path}: {why}" for flag, path in (("json", args.json), ("md", args.md))
                if path and (why := unwritable(path))]
    if args.json and args.md and args.json.resolve() == args.md.resolve():
        problems.append(f"--json and --md are the same file ({args.json}); one would replace the other")
    if problems:
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    try:
        jobs = plan(args, threads)
    except (BackendError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not jobs:
        print(f"error: --skip {args.skip} leaves nothing to time", file=sys.stderr)
        return 2
    frame = test_frame(args.frame)
    order, timed = [label for label, *_ in jobs], {}
    for round_ in range(args.rounds):
        if round_:
            # the models were let go after their rows: open them again, every other round in reverse order
            jobs = plan(args, threads)[::-1 if round_ % 2 else 1]
        while jobs:
            # each model let go once timed: a resized whole-frame interpreter holds gigabytes (x4 at 720p), and
            # keeping them all ran a 24 GB machine out of memory
            label, up, note = jobs.pop(0)
            timed.setdefault(label, []).append(bench(label, up, frame, args, note))
    rows = [pooled(timed[label]) for label in order]
    ref = next((r for r in rows if r["backend"] == "torch-full"), rows[0])
    for r in rows:
        r["speed_vs_torch"] = r["output_mp_per_s"] / ref["output_mp_per_s"]
    report = {"provenance": provenance.header(), "variant": args.variant, "scale": args.scale,
              "frame": args.frame, "threads": threads,
              "machine": f"{cpu_name()}, {provenance.usable_cores()} cores, {platform.system()}", "runs": args.runs,
              "rounds": args.rounds,
              "margin": args.margin, "baseline": ref["backend"], "results": rows}
    table = markdown(report)
    print(table)
    for path, text in ((args.json, json.dumps(report, indent=2)), (args.md, table)):
        if path:
            try:
                with atomic_path(path) as tmp:
                    tmp.write_text(text)
            except OSError as exc:
                print(f"error: cannot write {path} ({exc.strerror or exc})", file=sys.stderr)
                return 2
    return 0


def pooled(rounds: list[dict]) -> dict:
    """One row from the same row timed in several rounds: the median and minimum over all their runs (an
    estimated row: the median of its estimates), output MP/s at that median."""
    row = dict(rounds[0])
    if len(rounds) == 1:
        return row
    times = [t for r in rounds for t in r.get("times_ms", [r["median_ms"]])]
    med = statistics.median(times) if all("times_ms" in r for r in rounds) else \
        statistics.median(r["median_ms"] for r in rounds)
    row.update(median_ms=round(med, 2), min_ms=round(min(times), 2), runs=len(times), rounds=len(rounds),
               output_mp_per_s=round(row["output_mp_per_s"] * row["median_ms"] / med, 3))
    if "times_ms" in row:
        row["times_ms"] = times
    return row


def parse_seconds(text: str) -> float:
    """--slow: a finite number of seconds above 0."""
    try:
        s = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, not {text!r}") from None
    if not 0 < s < float("inf"):
        raise ValueError(f"must be more than 0 seconds, not {text}")
    return s


def _runs_text(report: dict) -> str:
    rounds = report.get("rounds", 1)
    if rounds == 1:
        return f"{report['runs']} runs"
    return (f"{report['runs'] * rounds} runs ({report['runs']} in each of {rounds} rounds, the rows timed in "
            f"the listed order and then reversed, alternately)")


def markdown(report: dict) -> str:
    s = report["scale"]
    baseline = report.get("baseline", "torch-full")   # the first row when PyTorch eager was skipped
    base, short = (("PyTorch eager FP32 on the whole frame", "PyTorch eager") if baseline == "torch-full"
                   else (f"{baseline} (PyTorch eager on the whole frame was skipped)", baseline))
    lines = ([provenance.markdown(report["provenance"])] if "provenance" in report else []) + [
             f"DRSAN-{report['variant']} x{s}, {report['frame']} input frame, {report['threads']} threads, "
             f"median of {_runs_text(report)}; {report['machine']}. Speed ratio in output MP/s against "
             f"{base}.", "",
             f"| backend | tile (windows) | ms / frame | output MP/s | vs {short} |",
             "|---|---|---|---|---|"]
    for r in report["results"]:
        tile = f"{r['tile'][0]}x{r['tile'][1]} ({r['windows']})" if r["tile"] else "whole frame"
        name = r["backend"] + (" (estimated)" if r.get("estimated") else "")
        lines.append(f"| {name} | {tile} | {r['median_ms']:.0f} | {r['output_mp_per_s']:.2f} | {r['speed_vs_torch']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
