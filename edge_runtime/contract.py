"""What converters, the runtime and eval agree on, defined once: the tile spec and the
precisions (with their quantization modes and check tolerances).

Plain Python (argparse only, no numpy, no torch), so that any part of the kit, and the
device path in particular, can read it. It lives in edge_runtime because that is the
part every other part already depends on; it imports nothing from the rest of the kit.

Tiles are LR (height, width) tuples everywhere in code; "HxW" strings are their text form
on command lines, in file names and in CoreML metadata; manifests store [h, w] lists.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, TypeVar

DEFAULT_TILE = (192, 336)   # LR (h, w): a 1280x720 frame is 4x4 windows with 8-px margins
DEFAULT_MARGIN = 8          # LR context pixels kept around each window's core, then cropped away
MIN_ARTIFACT_TILE = 8       # the smallest fixed input shape a converter will build
WHOLE_FRAME = 0             # what --tile 0 (or "full") parses to: each frame runs in one piece

Tile = tuple[int, int]
T = TypeVar("T")


def format_tile(tile: Tile) -> str:
    return f"{tile[0]}x{tile[1]}"


def parse_tile(text: str, minimum: int = 1) -> Tile:
    """"HxW" (or "N" for NxN) -> (h, w); ValueError naming the problem otherwise."""
    t = text.strip().lower()
    try:
        h, w = (int(v) for v in t.split("x")) if "x" in t else (int(t),) * 2
    except ValueError:
        raise ValueError(f"tile must look like HxW (e.g. {format_tile(DEFAULT_TILE)}) or a single size, "
                         f"not {text!r}") from None
    if h < minimum or w < minimum:
        raise ValueError(f"tile {text} is too small; use at least {minimum}x{minimum} LR pixels"
                         if minimum > 1 else f"tile sizes must be positive, not {text!r}")
    return h, w


def parse_artifact_tile(text: str) -> Tile:
    """A converter's fixed input shape: a tile of at least MIN_ARTIFACT_TILE pixels a side."""
    return parse_tile(text, MIN_ARTIFACT_TILE)


def parse_tiles(text: str, parse: Callable[[str], Tile] = parse_tile) -> list[Tile]:
    """Comma-separated tiles, e.g. "48,96,192x336"; "" gives an empty list."""
    return [parse(t) for t in text.split(",") if t.strip()]


def parse_window(text: str) -> Tile | int:
    """A runtime window: a tile, or WHOLE_FRAME for "0" / "full"."""
    if text.strip().lower() in ("0", "full"):
        return WHOLE_FRAME
    try:
        return parse_tile(text)
    except ValueError as exc:
        raise ValueError(f"{exc}, or 0 for the whole frame") from None


def window_tile(value: Tile | int | None) -> Tile | None:
    """The Tiler's view of a parsed window: None (whole frame) for WHOLE_FRAME or nothing given."""
    return None if value in (None, WHOLE_FRAME) else tuple(value)


def argtype(parse: Callable[[str], T]) -> Callable[[str], T]:
    """`parse` for argparse's type=: its ValueError becomes argparse's one-line usage error."""
    def wrapped(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    wrapped.__name__ = parse.__name__
    return wrapped


@dataclass(frozen=True)
class Tolerance:
    """What a converter's check demands of an artifact against the FP32 PyTorch model on the same crops:
    worst-crop PSNR (dB, RGB in [0, 1]) at least min_psnr and max abs error at most max_abs."""
    min_psnr: float
    max_abs: float

    def as_dict(self) -> dict:
        return {"min_psnr": self.min_psnr, "max_abs": self.max_abs}


TOLERANCES = {
    "fp32": Tolerance(60.0, 2e-3),
    "fp16": Tolerance(42.0, 0.05),
    "int16x8": Tolerance(38.0, 0.1),
    "int8": Tolerance(28.0, 0.5),
}

# How an integer model got its activation ranges: "ptq" calibrates on sample crops after training,
# "qat" takes the ranges a quantization-aware checkpoint learned (core/train.py --qat).
PTQ, QAT = "ptq", "qat"


@dataclass(frozen=True)
class Precision:
    """One precision as the converters build it, the manifest names it and the check judges it."""
    name: str                 # in file names and in the manifest's "precision"
    formats: tuple[str, ...]  # the artifact formats built in it
    integer: bool             # integer activations, so ranges come from calibration or QAT
    activations: str          # "float", "int8" or "int16"
    io: str                   # dtype of the model's input and output tensors
    weights: str              # dtype the weights are stored in
    prelu: str                # "native" PReLU op, or "decomposed" into ops with integer kernels (export.py)
    calibration: str          # "none", "drop-outliers" (int8's 256 levels) or "every-crop" (int16 keeps all)
    quantization: tuple[str, ...]   # where integer ranges may come from (PTQ, QAT); () for float models
    check: str                # key into TOLERANCES

    @property
    def tolerance(self) -> Tolerance:
        return TOLERANCES[self.check]


def _float(name, formats, weights, check):
    return Precision(name, formats, False, "float", "float32", weights, "native", "none", (), check)


def _integer(name, activations, io, calibration, quantization, check):
    return Precision(name, ("tflite",), True, activations, io, "int8", "decomposed", calibration, quantization, check)


PRECISIONS = {p.name: p for p in (
    _float("fp32", ("onnx", "tflite", "coreml"), "float32", "fp32"),
    _float("fp16", ("tflite", "coreml"), "float16", "fp16"),
    _float("fp32_w8", ("coreml",), "int8", "fp32"),   # CoreML compute precision + int8-compressed weights
    _float("fp16_w8", ("coreml",), "int8", "fp16"),
    _integer("int8", "int8", "float32", "drop-outliers", (PTQ, QAT), "int8"),
    _integer("int8_io", "int8", "int8", "drop-outliers", (PTQ, QAT), "int8"),
    _integer("int16x8", "int16", "float32", "every-crop", (PTQ,), "int16x8"),
)}
TFLITE_MODES = tuple(name for name, p in PRECISIONS.items() if "tflite" in p.formats)


def precision(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}; known: {', '.join(PRECISIONS)}") from None
