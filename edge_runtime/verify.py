"""Check a model artifact before any interpreter touches it.

A model file cut short or corrupted (a partial download or copy) makes the TFLite
interpreter read past its buffer and die with a segmentation fault: no message, no
chance to clean up. So every artifact is verified first:

- with a manifest.json beside it that lists the file: its size and SHA-256 must match
  what the converter recorded (fast, and it catches any change at all);
- without one: a structural check in a child process, so that a crash takes down only
  the child. The child parses a TFLite flatbuffer with the schema's own reader
  (pure Python, bounds-checked), then loads the model with the real backend and runs
  one small window. An .mlpackage is also checked for its folder layout first.

    python -m drsan_kit.edge_runtime.verify tflite model.tflite [--scale 4]

runs the child's part by hand (exit 0: usable, 2: damaged, with the reason).
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python edge_runtime/verify.py
    import importlib

    __package__ = "drsan_kit.edge_runtime"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import json
import platform
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from .backends import BackendError, open_backend
from .contract import (MANIFEST_NAME, ArtifactEntry, abilities, artifact_entry, artifact_kinds, artifact_size,
                       sha256)

CHILD_TIMEOUT_S = 300
PROBE_HW = (16, 16)   # the window a shape-flexible model is tried on


class ArtifactError(BackendError):
    """A damaged or unusable artifact; the message names the file and the problem in one line."""


def verify_artifact(path, kind: str, scale: int | None = None) -> str:
    """Raise ArtifactError unless `path` is safe to hand to its interpreter; return how it was checked."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: model file not found")
    found = artifact_entry(path)
    if found and found[1].sha256:
        _check_against_manifest(path, found[1])
        return f"SHA-256 matches {MANIFEST_NAME}"
    if kind == "coreml":
        _check_mlpackage(path)
        if platform.system() != "Darwin":
            return "package layout checked"   # nothing can load it here; the backend says so
    elif not path.is_file() or path.stat().st_size == 0:
        raise ArtifactError(f"{path}: empty or not a file")
    _load_in_child(path, kind, scale)
    return "loaded and run once in a separate process"


def _check_against_manifest(path: Path, entry: ArtifactEntry):
    size = artifact_size(path)
    expected = entry.size_bytes
    if expected is not None and size != expected:
        raise ArtifactError(f"{path}: damaged model: {size:,} bytes, but {MANIFEST_NAME} records {expected:,} "
                            f"({'cut short' if size < expected else 'extra data'}; copy or convert it again)")
    if sha256(path) != entry.sha256:
        raise ArtifactError(f"{path}: damaged model: its SHA-256 differs from the one in {MANIFEST_NAME} "
                            "(changed since conversion; copy or convert it again)")


def _check_mlpackage(path: Path):
    """The folder layout Core ML expects: Manifest.json naming files that exist under Data/ and are not empty."""
    if not path.is_dir():
        raise ArtifactError(f"{path}: not an .mlpackage folder")
    try:
        manifest = json.loads((path / "Manifest.json").read_text())
        items = manifest["itemInfoEntries"]
        root = items[manifest["rootModelIdentifier"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: damaged .mlpackage: Manifest.json missing or unreadable "
                            f"({exc.__class__.__name__})") from None
    for item in [root, *items.values()]:
        f = path / "Data" / str(item.get("path", ""))
        if not f.is_file() or f.stat().st_size == 0:
            raise ArtifactError(f"{path}: damaged .mlpackage: {f.relative_to(path)} is missing or empty")


def _load_in_child(path: Path, kind: str, scale: int | None):
    cmd = [sys.executable, "-m", "drsan_kit.edge_runtime.verify", kind, str(path)]
    if scale:
        cmd += ["--scale", str(scale)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"{path}: the model did not load within {CHILD_TIMEOUT_S} s") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise ArtifactError(f"{path}: damaged {kind} model: the interpreter crashed loading it ({name}); "
                            "the file is probably cut short or corrupt")
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        reason = lines[-1].removeprefix("error: ") if lines else f"exit status {proc.returncode}"
        raise ArtifactError(reason if reason.startswith(str(path)) else f"{path}: {reason}")


def _parse_tflite(path: Path):
    """Read every table of the flatbuffer in Python: a file cut short fails here with an exception, not a crash."""
    try:
        from ai_edge_litert.schema_py_generated import ModelT
    except ImportError:
        return   # the interpreter load below still runs, in this child process
    data = bytearray(path.read_bytes())
    if data[4:8] != b"TFL3":
        raise ArtifactError(f"{path}: not a TFLite model (no TFL3 identifier)")
    try:
        ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:   # the generated reader raises struct.error, IndexError, ValueError, ...
        past_end = "requires a buffer of at least" in str(exc)
        raise ArtifactError(f"{path}: damaged TFLite model: " + (
            "it refers to data past its end (cut short?)" if past_end
            else f"the flatbuffer does not parse ({exc.__class__.__name__})")) from None


def probe(path, kind: str, scale: int | None = None):
    """Load the model with its backend and run one small window (what the child process does)."""
    path = Path(path)
    if kind == "tflite":
        _parse_tflite(path)
    backend = open_backend(kind, path, scale=scale)
    flexible = backend.input_hw is None or abilities(backend).resizable
    h, w = PROBE_HW if flexible else backend.input_hw
    out = backend(np.full((h, w, 3), 0.5, np.float32))
    if out.shape != (h * backend.scale, w * backend.scale, 3):
        raise ArtifactError(f"{path}: damaged model: a {h}x{w} window gave a {out.shape} output")
    if not np.isfinite(out).all():
        raise ArtifactError(f"{path}: damaged model: its output holds NaN or infinity")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Load a model artifact and run one small window; exit 2 with the "
                                             "reason if it is damaged or unusable.")
    ap.add_argument("kind", choices=artifact_kinds(), help="the artifact's format")
    ap.add_argument("path", help="the .tflite, .onnx or .mlpackage")
    ap.add_argument("--scale", type=int, default=None, help="upscaling factor, for models with a dynamic shape")
    args = ap.parse_args(argv)
    try:
        probe(args.path, args.kind, args.scale)
    except Exception as exc:   # any failure here means the model is unusable: report it in one line
        text = str(exc).strip().splitlines()
        print(f"error: {text[0][:300] if text else exc.__class__.__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
