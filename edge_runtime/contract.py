"""What converters, the runtime and eval agree on, defined once: the tile spec.

Plain Python (argparse only, no numpy, no torch), so that any part of the kit, and the
device path in particular, can read it. It lives in edge_runtime because that is the
part every other part already depends on; it imports nothing from the rest of the kit.

Tiles are LR (height, width) tuples everywhere in code; "HxW" strings are their text form
on command lines, in file names and in CoreML metadata; manifests store [h, w] lists.
"""
from __future__ import annotations

import argparse
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
