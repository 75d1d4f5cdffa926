"""Super-resolve images, folders and videos with a DRSAN artifact, tile by tile.

    python edge_runtime/run.py --tflite model.tflite img.png
    python edge_runtime/run.py --onnx model.onnx photos/ --out photos_x4/
    python edge_runtime/run.py --torch --variant 32s --scale 4 clip.mp4 --out clip_x4.mp4
    python edge_runtime/run.py --tflite model.tflite frame.png --benchmark 10

The TFLite and ONNX paths need only numpy, Pillow, PyAV and the interpreter: no
torch, no TensorFlow.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python edge_runtime/run.py
    import importlib

    __package__ = "drsan_kit.edge_runtime"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.images import (IMAGE_EXTENSIONS, WRITABLE_EXTENSIONS, ImageError, format_sizes, frame_count, frame_sizes,
                           holds_frames, keeps_frame_sizes, load_frames, load_image, missing_reader, save_animation,
                           save_image, unwritable)
from ..core.variants import SCALES
from .artifact import open_artifact
from .backends import BackendError, open_backend
from .contract import (DEFAULT_MARGIN, DEFAULT_TILE, MAX_THREADS, argtype, artifact_kinds, backend_spec, choose_window,
                       format_tile, parse_margin, parse_threads, parse_window, window_tile)
from .upscaler import Upscaler, time_frames
from .video import VIDEO_EXTENSIONS, VideoError, VideoWriter, probe, read_frames


class InputError(ValueError):
    """A problem with one input; in a folder it is skipped with this reason."""


@dataclass(frozen=True)
class Job:
    up: Upscaler
    bars: bool            # progress bars on stderr
    explicit_tile: bool   # --tile HxW given: a window larger than the frame is the user's mistake, not ours


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Super-resolve images, folders of images and videos with a DRSAN model, tile by tile.",
        epilog="Outputs go to --out (default ./results) as <name>_x<scale>.<ext>; inputs are never overwritten.")
    src = ap.add_argument_group("model (pick one)").add_mutually_exclusive_group(required=True)
    for kind in artifact_kinds():   # one flag per registered artifact format
        src.add_argument(f"--{kind}", metavar="FILE", help=backend_spec(kind).help)
    src.add_argument("--torch", action="store_true", help=backend_spec("torch").help)
    ap.add_argument("inputs", nargs="*", help="image files, folders (searched recursively) or video files")
    ap.add_argument("--variant", default="32s", help="--torch: model variant (default 32s)")
    ap.add_argument("--scale", type=int, default=None, choices=SCALES,
                    help="upscaling factor; read from the model or its manifest when omitted (--torch: default 4)")
    ap.add_argument("--weights", default=None, help="--torch: checkpoint (default: the shipped one)")
    ap.add_argument("--tile", type=argtype(parse_window), default=None,
                    help="LR window HxW, or 0 for the whole frame at once: for shape-flexible models (ONNX dynamic, "
                         f"torch; default {format_tile(DEFAULT_TILE)}) and TFLite models (resizable; default: the "
                         "model's own tile). "
                         "By default a frame smaller than the window runs whole. Fixed-shape ONNX and CoreML "
                         "models always use their own input shape")
    ap.add_argument("--margin", type=argtype(parse_margin), default=DEFAULT_MARGIN,
                    help=f"context pixels around each window, cropped away (default {DEFAULT_MARGIN})")
    ap.add_argument("--threads", type=argtype(parse_threads), default=0,
                    help=f"CPU threads for the model, 1 to {MAX_THREADS}, or 0 for every core this process may use "
                         "(default 0)")
    ap.add_argument("--out", type=Path, default=Path("results"),
                    help="output folder, or output file for a single input (default ./results)")
    ap.add_argument("--ext", default=None,
                    help="output format (default: same as input): an image one (png, jpg, tif, bmp, ...) applies "
                         "to image inputs, a video one (mp4, mkv, webm, ...) to video inputs; inputs of the other "
                         "kind keep their own format, and an --ext that fits none of the inputs is an error. For "
                         "very large outputs jpg, bmp or tif save many times faster than png (see docs/runtime.md)")
    ap.add_argument("--benchmark", type=int, default=0, metavar="N",
                    help="time the first input's first frame N times after a warm-up and print JSON; writes nothing")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if not args.inputs:
        ap.error("give at least one input image, folder or video")
    if args.benchmark < 0:
        ap.error(f"--benchmark takes a number of runs (1 or more, or 0 for none), not {args.benchmark}")
    if args.ext is not None:
        # checked here, before the model loads: a format the kit cannot write would otherwise fail per input,
        # after every input had been through the model
        ext = "." + args.ext.lower().lstrip(".")
        if ext not in WRITABLE_EXTENSIONS + VIDEO_EXTENSIONS:
            why = unwritable(ext)
            ap.error(f"--ext {args.ext!r}: {why}; images: {' '.join(WRITABLE_EXTENSIONS)}; "
                     f"videos: {' '.join(VIDEO_EXTENSIONS)}")
        args.ext = ext
    return args


def ext_misfit(ext: str | None, items: list[tuple[Path, Path]]) -> str | None:
    """Why --ext fits none of the inputs (an image format for videos only, or the reverse), else None.

    --ext applies to the inputs of its own kind, so that one folder of photos and clips can take, say,
    --ext jpg; it is an error only where it would change nothing, since then it was surely meant otherwise."""
    if ext is None:
        return None
    kinds = {"image" if f.suffix.lower() in IMAGE_EXTENSIONS else "video"
             for f, _ in items if f.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS}
    kind = "video" if ext in VIDEO_EXTENSIONS else "image"
    if not kinds or kind in kinds:
        return None   # no input of a known kind: each one fails with its own reason later
    allowed = WRITABLE_EXTENSIONS if kind == "video" else VIDEO_EXTENSIONS
    return (f"--ext {ext.lstrip('.')} is {'a video' if kind == 'video' else 'an image'} format, but every input is "
            f"{'an image' if kind == 'video' else 'a video'}; use one of {' '.join(allowed)}")


def open_model(args):
    """(backend, window, manifest (model, entry) or None) for the model the flags name."""
    if args.torch:
        backend = open_backend("torch", args.weights, variant=args.variant, scale=args.scale or 4,
                               threads=args.threads)
        return backend, choose_window(None, False, args.tile), None
    kind, path = next((k, getattr(args, k.replace("-", "_"))) for k in artifact_kinds()
                      if getattr(args, k.replace("-", "_"), None))
    art = open_artifact(path, kind, scale=args.scale, window=args.tile, threads=args.threads)
    return art.backend, art.window, (art.model, art.entry) if art.entry else None


def collect(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, path relative to its root folder) for every input; folders expand to their images and videos."""
    items = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            # formats this install lacks a reader for (HEIC without the extra) are kept, so that each
            # one is reported with what to install instead of being skipped without a word
            files = sorted(f for f in p.rglob("*") if f.is_file()
                           and (f.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS or missing_reader(f.suffix)))
            items += [(f, f.relative_to(p)) for f in files]
        else:
            items.append((p, Path(p.name)))
    return items


def output_path(args, src: Path, rel: Path, scale: int, single: bool) -> Path:
    own_kind = VIDEO_EXTENSIONS if src.suffix.lower() in VIDEO_EXTENSIONS else IMAGE_EXTENSIONS
    ext = args.ext if args.ext in own_kind else src.suffix.lower()   # --ext changes only inputs of its kind
    if single and args.out.suffix and not args.out.is_dir():
        return args.out
    return args.out / rel.parent / f"{rel.stem}_x{scale}{ext}"


def plan_outputs(args, items: list[tuple[Path, Path]], scale: int, single: bool) -> list[tuple[Path, Path]]:
    """(input, output) for every input, the same file given twice once; InputError when two inputs would
    write one output: the second would replace the first without a word, so nothing may run."""
    plan, claimed = [], {}
    for src, rel in items:
        dst = output_path(args, src, rel, scale, single)
        if src.suffix.lower() not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
            plan.append((src, dst))   # skipped with its reason later; it writes nothing
            continue
        first = claimed.setdefault(_path_key(dst), src)
        if first is src:
            plan.append((src, dst))
        elif _path_key(first) != _path_key(src):
            raise InputError(f"{first} and {src} would both be written to {dst}; "
                             "rename one, or run them with different --out folders")
    return plan


def _path_key(path: Path) -> str:
    """What makes two paths the same file, whether or not it exists yet."""
    key = os.path.normcase(path.resolve())
    return key.casefold() if sys.platform == "darwin" else key   # macOS volumes ignore case by default


def process_image(job: Job, src: Path, dst: Path) -> tuple[int, list[float], float]:
    up = job.up
    try:
        n = frame_count(src)
        if n > 1:
            return process_animation(job, src, dst, n)
        img = load_image(src)
    except ImageError as exc:
        raise InputError(str(exc)) from None
    if img.note:
        print(f"note: {src}: {img.note}", file=sys.stderr)
    check_tile(job, img.rgb.shape[0], img.rgb.shape[1], src)
    with tqdm(total=up.windows(*img.rgb.shape[:2]), desc=src.name, unit="tile", leave=False,
              disable=not job.bars) as bar:
        t0 = time.perf_counter()
        out = up.image(img, on_tile=bar.update)
        ms = (time.perf_counter() - t0) * 1000
    # a 100-megapixel PNG takes minutes to compress: show the bytes going out
    with tqdm(desc=f"saving {dst.name}", unit="B", unit_scale=True, leave=False, disable=not job.bars) as bar:
        save_image(dst, out, on_write=bar.update)
    return 1, [ms], out.rgb.shape[0] * out.rgb.shape[1] / 1e6


def process_animation(job: Job, src: Path, dst: Path, n: int) -> tuple[int, list[float], float]:
    """An animated GIF/WebP/PNG or multi-page TIFF of n frames: every frame, same timing and loop, one file out."""
    if not holds_frames(dst):
        raise InputError(f"{src}: has {n} frames, which {dst.suffix} cannot hold; use --ext gif, webp, png or tif")
    sizes = frame_sizes(src)
    if len(set(sizes)) > 1 and not keeps_frame_sizes(dst):
        raise InputError(f"{src}: its pages differ in size ({format_sizes(sizes)}), which one {dst.suffix} "
                         "animation cannot hold; use --ext tif, which keeps each page's size")
    frames, loop = load_frames(src)
    times, mp, notes = [], 0.0, set()

    def upscaled():
        nonlocal mp
        with tqdm(total=n, desc=src.name, unit="frame", leave=False, disable=not job.bars) as bar:
            for img, ms in frames:
                if img.note and img.note not in notes:   # once per file, not once per page
                    notes.add(img.note)
                    print(f"note: {src}: {img.note}", file=sys.stderr)
                if not times:
                    check_tile(job, img.rgb.shape[0], img.rgb.shape[1], src)
                t0 = time.perf_counter()
                out = job.up.image(img)
                times.append((time.perf_counter() - t0) * 1000)
                mp += out.rgb.shape[0] * out.rgb.shape[1] / 1e6
                bar.update(1)
                yield out, ms
    save_animation(dst, upscaled(), loop)
    return len(times), times, mp


def process_video(job: Job, src: Path, dst: Path) -> tuple[int, list[float], float]:
    try:
        info = probe(src)
    except VideoError as exc:
        raise InputError(str(exc)) from None
    check_tile(job, info["height"], info["width"], src)
    times, mp = [], 0.0
    try:
        with VideoWriter(dst, info["fps"], audio_from=src if info["audio"] else None) as writer, \
                tqdm(total=info["frames"], desc=src.name, unit="frame", leave=False, disable=not job.bars) as bar:
            for rgb, at, shown in read_frames(src, times=True):   # each frame keeps its time (variable rates)
                t0 = time.perf_counter()
                out = job.up.frame(rgb, out_dtype=np.uint8)
                times.append((time.perf_counter() - t0) * 1000)
                writer.write(out, time=at, shown=shown)
                mp += out.shape[0] * out.shape[1] / 1e6
                bar.update(1)
    except VideoError as exc:
        raise InputError(f"{exc}; no output written") from None
    if writer.note:
        print(f"note: {dst}: {writer.note}", file=sys.stderr)
    return len(times), times, mp


def check_tile(job: Job, h: int, w: int, src: Path):
    """An explicit --tile larger than the frame on a shape-flexible model is a user error, not a silent pad.

    A default window is not: a shape-flexible model (torch, dynamic ONNX, TFLite) runs a smaller frame
    whole, a fixed-shape model pads it to its own tile."""
    up = job.up
    own_tile = up.backend.input_hw is not None
    if job.explicit_tile and up.tile and not own_tile and (up.tile[0] > h or up.tile[1] > w):
        raise InputError(f"{src}: tile {up.tile[0]}x{up.tile[1]} is larger than the {w}x{h} image; "
                         f"use a smaller --tile or --tile 0")


def benchmark(up: Upscaler, src: Path, runs: int, backend, model_desc: str):
    if src.suffix.lower() in VIDEO_EXTENSIONS:
        frame = next(iter(read_frames(src)))
    elif src.suffix.lower() in IMAGE_EXTENSIONS:
        frame = load_image(src).rgb
    else:
        raise InputError(f"{src}: unsupported format {src.suffix or '(no extension)'}")
    report = {"model": model_desc, "backend": backend.name, **time_frames(up, frame, runs)}
    print(json.dumps(report, indent=2))


def describe(args, backend, window, found) -> str:
    """What runs, for the first line of output: the model, its precision and tile, and any --tile."""
    if found:
        model_info, entry = found
        tile = format_tile(entry.tile) if entry.tile else "dynamic"
        desc = f"DRSAN-{model_info.variant} x{backend.scale} {entry.precision} (tile {tile}; from manifest.json)"
    else:
        desc = f"x{backend.scale}, input {backend.input_hw or 'dynamic'} (no manifest beside the model)"
    if args.tile is not None and not args.torch and window.tile != (found[1].tile if found else None):
        desc += f"; --tile {'whole frame' if window.tile is None else format_tile(window.tile)}"
    return desc


def run_one(job: Job, src: Path, dst: Path, inputs: set[Path]) -> tuple[int, list[float], float]:
    """Super-resolve one input into dst: (frames, ms per frame, output megapixels); InputError if it cannot."""
    if not src.is_file():
        raise InputError(f"{src}: no such file")
    ext = src.suffix.lower()
    if needs := missing_reader(ext):
        raise InputError(f"{src}: reading {ext} needs {needs}")
    if ext not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
        raise InputError(f"{src}: unsupported format {ext or '(no extension)'}; images: "
                         f"{' '.join(IMAGE_EXTENSIONS)}; videos: {' '.join(VIDEO_EXTENSIONS)}")
    if ext in VIDEO_EXTENSIONS and dst.suffix.lower() not in VIDEO_EXTENSIONS:
        raise InputError(f"{dst}: a video's output must be a video file ({' '.join(VIDEO_EXTENSIONS)})")
    if dst.resolve() in inputs:
        raise InputError(f"{dst}: output would overwrite an input; choose another --out")
    work = process_video if ext in VIDEO_EXTENSIONS else process_image
    return work(job, src, dst)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Pillow warns, with its own file and line, about metadata it skips (e.g. "Corrupt EXIF data"); a
    # file that cannot be read gets the kit's one error line instead, and one that can needs no warning
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    items = collect(args.inputs)   # before the model loads, so that a misfit --ext costs nothing
    if misfit := ext_misfit(args.ext, items):
        print(f"error: {misfit}", file=sys.stderr)
        return 2
    try:
        backend, window, found = open_model(args)
        up = Upscaler(backend, margin=args.margin, window=window)
    except (BackendError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    desc = describe(args, backend, window, found)
    if not items:
        print(f"error: no images or videos in {', '.join(args.inputs)}", file=sys.stderr)
        return 1
    if args.benchmark:
        if not items[0][0].is_file():
            print(f"error: {args.inputs[0]}: no such file to benchmark", file=sys.stderr)
            return 2
        try:
            benchmark(up, items[0][0], args.benchmark, backend, desc)
        except (InputError, ImageError, VideoError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    single = len(items) == 1 and not Path(args.inputs[0]).is_dir()
    try:
        plan = plan_outputs(args, items, backend.scale, single)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"running {backend.name}: {desc}", file=sys.stderr)
    inputs = {src.resolve() for src, _ in plan if src.exists()}
    job = Job(up, bars=not args.quiet and sys.stderr.isatty(), explicit_tile=window_tile(args.tile) is not None)
    done, failed, all_ms, total_mp = 0, 0, [], 0.0
    t_start = time.perf_counter()
    for src, dst in tqdm(plan, desc="files", unit="file", disable=not job.bars or len(plan) < 2):
        try:
            n, ms, mp = run_one(job, src, dst, inputs)
            done += n
            all_ms += ms
            total_mp += mp
            print(f"wrote {dst}", file=sys.stderr)
        except (InputError, ImageError, VideoError) as exc:
            failed += 1
            print(f"{'skipped' if len(plan) > 1 else 'error'}: {exc}", file=sys.stderr)
        except BackendError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if done:
        wall = time.perf_counter() - t_start
        print(f"{done} frame(s), median {statistics.median(all_ms):.1f} ms/frame, "
              f"{total_mp / (sum(all_ms) / 1000):.2f} output MP/s ({wall:.1f} s in all)"
              + (f", {failed} input(s) skipped" if failed else ""), file=sys.stderr)
    # docs/runtime.md: exit 1 when any input failed, even if the others were written, so that a script
    # sees it; files in a folder that are not images or videos never get here (collect leaves them out)
    return 0 if done and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
