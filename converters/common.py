"""What every converter shares: flags, the reference model, sample images, the
"check the artifact against the reference" step, and the manifest writer.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import io
import os
import platform
import sys
import warnings
from pathlib import Path

import numpy as np

from ..core.variants import SCALES, VARIANTS

REPO = Path(__file__).resolve().parent.parent
from ..edge_runtime import contract
from ..edge_runtime.contract import (DEFAULT_TILE, ArtifactEntry, ManifestError, ModelInfo, argtype, artifact_size,
                                     check_manifest_target, format_tile, parse_artifact_tile, parse_count, sha256,
                                     update_manifest)
from ..edge_runtime.tiler import pad_to

DEFAULT_OUT = Path("artifacts")


class ConversionError(RuntimeError):
    """One-line reason a conversion or its check failed."""


def fail(msg: str, code: int = 2):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Silence third-party chatter (TensorFlow's and onnx2tf's logs, coremltools' start-up warnings; C++ logs go to
    fd 2) unless --verbose. Nothing of the kit's own may print inside: it would vanish too."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2), os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        os.dup2(null.fileno(), 1)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            os.dup2(saved[0], 2)
            os.dup2(saved[1], 1)
            os.close(saved[0])
            os.close(saved[1])


def quiet_startup(verbose: bool):
    """Before any third-party import: TensorFlow's C++ start-up logs (CUDA probing, factory registration) off
    unless --verbose. Set in the environment, so it must run before TensorFlow is first imported."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        warnings.filterwarnings("ignore", module="coremltools")


def add_model_args(ap: argparse.ArgumentParser):
    ap.add_argument("--variant", default="32s", choices=list(VARIANTS), help="model variant (default 32s)")
    ap.add_argument("--scale", type=int, default=4, choices=SCALES, help="upscaling factor (default 4)")
    ap.add_argument("--weights", default=None,
                    help="checkpoint to convert (default: the shipped weights/drsan_<variant>_x<scale>.pt)")
    ap.add_argument("--tile", type=argtype(parse_artifact_tile), default=DEFAULT_TILE,
                    help=f"fixed LR input shape HxW of the artifact (default {format_tile(DEFAULT_TILE)})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default ./artifacts)")
    ap.add_argument("--check-images", type=argtype(parse_count), default=4,
                    help="image crops used by the artifact check (default 4)")
    ap.add_argument("--verbose", action="store_true",
                    help="show the third-party tools' own output (TensorFlow, onnx2tf, coremltools), hidden by default")


def output_folder(args, blob: dict, weights: Path) -> Path:
    """--out, made and writable, once the inputs are known to be good: a converter that stops at a bad
    checkpoint or a folder holding another model's artifacts leaves nothing behind, not even the folder."""
    try:
        check_manifest_target(args.out, ModelInfo.from_dict(model_section(args, blob, weights)))
    except ManifestError as exc:
        raise ConversionError(str(exc)) from None
    return prepare_out(args.out)


def prepare_out(out: Path) -> Path:
    """Make `out` and check that files can be written in it; ConversionError naming the problem otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConversionError(f"cannot write to output folder {out} ({exc.strerror or exc})") from None
    return out


def load_reference(args):
    """(the FP32 checkpoint model, the checkpoint blob, its path); errors become ConversionError."""
    from ..core.checkpoint import CheckpointError, load_checkpoint, resolve_weights

    try:
        path = resolve_weights(args.weights, args.variant, args.scale)
        model, blob = load_checkpoint(path, args.variant, args.scale)
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from None
    return model, blob, path


@functools.lru_cache(maxsize=4)   # the check crops, calibration and onnx2tf's sample all draw on these
def sample_images(folder=None) -> tuple[list[np.ndarray], str]:
    """Real photographs as uint8 RGB: a user's folder, or the ones scikit-image ships (offline)."""
    if folder:
        from ..core.images import ImageError, list_images, load_rgb_uint8

        files = list_images(folder)
        if not files:
            raise ConversionError(f"no images (png, jpg, bmp, tif, webp) under {folder}")
        images = []
        for f in files:
            try:
                images.append(load_rgb_uint8(f))
            except ImageError as exc:
                print(f"skipped: {exc}", file=sys.stderr)
        if not images:
            raise ConversionError(f"no readable image under {folder}")
        return images, f"{len(images)} images from {folder}"
    import skimage.data as data

    # Natural photographs only, like what users upscale; synthetic and microscope images
    # (colorwheel, hubble_deep_field, retina, immunohistochemistry) were dropped from the default.
    color = ["astronaut", "chelsea", "coffee", "rocket"]
    gray = ["camera", "brick", "grass", "gravel"]
    images = [np.ascontiguousarray(getattr(data, n)()[..., :3]) for n in color]
    images.append(np.ascontiguousarray(data.stereo_motorcycle()[0]))
    images += [np.repeat(getattr(data, n)()[..., None], 3, axis=2) for n in gray]
    return images, "scikit-image sample photographs: " + ", ".join(color + ["stereo_motorcycle (left)"]) + \
        ", and as gray RGB: " + ", ".join(gray)


# Fixed seeds, so that every converter checks on the same crops and eval/sensitivity.py
# calibrates exactly as to_tflite.py does.
CHECK_SEED = 1
CALIB_SEED = 2


def random_crops(images: list[np.ndarray], tile: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    """n crops of tile size (edge-padded where an image is smaller): (n, h, w, 3) float32 in [0, 1].

    Edge padding, not the runtime's mirroring: these crops calibrate and check the int8 builds, and
    the published int8 artifacts and drift reports were made from exactly these crops."""
    rng = np.random.default_rng(seed)
    th, tw = tile
    out = np.empty((n, th, tw, 3), np.float32)
    for k in range(n):
        img = images[k % len(images)]
        y = int(rng.integers(0, max(1, img.shape[0] - th + 1)))
        x = int(rng.integers(0, max(1, img.shape[1] - tw + 1)))
        crop = img[y : y + th, x : x + tw].astype(np.float32) / 255.0
        out[k] = pad_to(crop, th, tw, "edge")
    return out


def activation_peaks(model, inputs: np.ndarray) -> np.ndarray:
    """(N, layers): each input's largest |activation| at every conv and PReLU output of the FP32 model."""
    import torch

    peaks, hooks = [], []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.PReLU)):
            hooks.append(m.register_forward_hook(lambda mod, i, o: peaks[-1].append(o.detach().abs().max().item())))
    try:
        with torch.no_grad():
            for x in inputs:
                peaks.append([])
                model(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))[None]))
    finally:
        for h in hooks:
            h.remove()
    return np.array(peaks)


def drop_outlier_crops(model, crops: np.ndarray, outlier: float) -> tuple[np.ndarray, int]:
    """Calibration crops for int8, less those whose activations are outliers.

    TFLite calibrates each tensor to the min/max over all inputs, so one crop that drives some
    layers to 4x their usual peak (a coffee-cup highlight did, for the trained x4 model) makes
    the int8 step 4x coarser for every image: -1.2 dB on Set5 instead of -0.2. A crop is left out
    when any layer's peak exceeds `outlier` times that layer's median peak over the crops
    (0 keeps every crop); never more than half are left out. Returns (crops, number left out).
    """
    if not outlier:
        return crops, 0
    peaks = activation_peaks(model, crops)
    score = (peaks / np.maximum(np.median(peaks, axis=0), 1e-6)).max(axis=1)
    keep = score <= max(outlier, np.median(score))   # never more than half left out
    return crops[keep], int((~keep).sum())


def reference_outputs(model, inputs: np.ndarray) -> np.ndarray:
    """FP32 PyTorch outputs (N, H*s, W*s, 3) for NHWC inputs, clamped like the exported graph."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy())
        return np.concatenate([model(x[i : i + 1]).clamp(0, 1).permute(0, 2, 3, 1).numpy() for i in range(len(x))])


def check_crops(tile, n: int) -> tuple[np.ndarray, str]:
    """The crops every converter checks its artifacts on (fixed seed): (crops, where they come from)."""
    images, desc = sample_images()
    return random_crops(images, tile, n, seed=CHECK_SEED), desc


def compare(outputs: np.ndarray, reference: np.ndarray) -> dict:
    """Fidelity of an artifact's outputs to the reference: worst-case PSNR (dB, RGB [0, 1]) and max abs error."""
    from ..core.metrics import psnr

    per = [psnr(o, r, data_range=1.0) for o, r in zip(outputs, reference)]
    return {"psnr_vs_reference_db": round(float(min(per)), 3), "mean_psnr_vs_reference_db": round(float(np.mean(per)), 3),
            "max_abs_error": round(float(np.max(np.abs(outputs - reference))), 6), "images": len(per)}


def check_artifact(run, crops: np.ndarray, reference: np.ndarray, precision: str, label: str,
                   method: str = "", estimate: bool = False) -> dict:
    """The one artifact check every converter runs: each crop through `run` (an open backend, or anything
    that maps an (h, w, 3) tile to its (h*s, w*s, 3) output), compared with the FP32 reference on the same
    crops and held to the precision's tolerance. Returns the manifest's check record; ConversionError when
    the artifact is outside the tolerance. method/estimate say how it ran when that was not the artifact's
    own runtime (the CoreML estimate off macOS)."""
    outputs = np.stack([run(c) for c in crops])
    check = compare(outputs, reference) | ({"method": method} if method else {}) | (
        {"estimate": True} if estimate else {})
    return enforce(check, precision, label + (" (estimate)" if estimate else ""))


def enforce(check: dict, precision: str, label: str) -> dict:
    """Hold a check to its precision's tolerance (contract.TOLERANCES); ConversionError when it is missed."""
    level = contract.precision(precision).check
    tol = contract.TOLERANCES[level].as_dict()
    ok = check["psnr_vs_reference_db"] >= tol["min_psnr"] and check["max_abs_error"] <= tol["max_abs"]
    check.update({"tolerance": tol, "passed": bool(ok)})
    print(f"  check {label}: PSNR vs FP32 PyTorch {check['psnr_vs_reference_db']:.2f} dB (worst of {check['images']}), "
          f"max abs error {check['max_abs_error']:.5f}  [{'ok' if ok else 'FAILED'}: needs >= {tol['min_psnr']} dB, "
          f"<= {tol['max_abs']}]")
    if not ok:
        why = []
        if check["psnr_vs_reference_db"] < tol["min_psnr"]:
            why.append(f"{check['psnr_vs_reference_db']:.2f} dB < {tol['min_psnr']} dB")
        if check["max_abs_error"] > tol["max_abs"]:
            why.append(f"max abs error {check['max_abs_error']:.4f} > {tol['max_abs']}")
        raise ConversionError(f"{label} is outside the {level} tolerance ({', '.join(why)})")
    return check


def tool_versions(*names: str) -> dict:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def shown_path(path) -> str:
    """A path as manifests and messages give it: relative to the repository when inside it, so that an
    artifact folder never records one machine's absolute paths."""
    full = Path(path).resolve()
    return str(full.relative_to(REPO)) if full.is_relative_to(REPO) else str(path)


def model_section(args, blob: dict, weights: Path) -> dict:
    return {"variant": args.variant, "scale": args.scale, "checkpoint": shown_path(weights),
            "checkpoint_sha256": sha256(weights), "checkpoint_meta": blob.get("meta", {}),
            "input": "RGB float in [0, 1] (mean 0, std 1); NCHW for ONNX, NHWC for TFLite",
            "output": "RGB in [0, 1], clamped in the graph", "upsampler": "depth-to-space DCR"}


def artifact_record(path: Path, fmt: str, precision: str, tile, dynamic: bool, check: dict,
                    **extra) -> ArtifactEntry:
    """The manifest entry of a checked artifact; `extra` holds its format-specific fields."""
    contract.precision(precision)   # a name outside the table is a converter bug, not a user's
    return ArtifactEntry(path.name, fmt, precision, None if dynamic else tuple(tile), dynamic, sha256(path),
                         artifact_size(path), check, extra)


def write_manifest(out: Path, args, blob, weights, records: list[ArtifactEntry]) -> Path:
    try:
        path = update_manifest(out, ModelInfo.from_dict(model_section(args, blob, weights)), records)
    except ManifestError as exc:   # the manifest changed under the conversion (output_folder checked it)
        raise ConversionError(str(exc)) from None
    print(f"manifest: {path}")
    return path


def run_cli(main_fn):
    """Turn ConversionError and Ctrl-C into one-line errors with a non-zero exit."""
    try:
        main_fn()
    except ConversionError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
