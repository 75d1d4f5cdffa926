"""The one tiler: split a frame into model-sized windows, run them, stitch the result.

Used by every backend (TFLite, ONNX, CoreML, PyTorch), by the benchmark and by the
drift harness. numpy only.

Windows overlap by `margin` LR pixels of context on each inner side; only each
window's core is kept, so a model without global statistics gives exactly its
one-shot output wherever the margin covers its receptive field. Windows stay
inside the frame (the last one on each axis is shifted back to end at the
border), so frame borders see the same padding as a one-shot run. A frame
smaller than the tile runs at its own size on a shape-flexible model; for a
fixed-shape one (pad_small) it is padded up to the tile size with its own
mirror image (contract.PAD_MODE) and the output cropped back.

Memory: the input frame, one output buffer and one window at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .contract import DEFAULT_MARGIN, PAD_MODE, check_pad_mode

TileFn = Callable[[np.ndarray], np.ndarray]   # (h, w, 3) float32 -> (h*s, w*s, 3) float32


@dataclass(frozen=True)
class Span:
    start: int       # window start in the input
    keep_from: int   # first input index whose output this window provides
    keep_to: int     # one past the last


def axis_spans(length: int, tile: int, margin: int) -> list[Span]:
    """Windows of size `tile` along one axis whose kept cores cover [0, length) exactly once."""
    if tile <= 2 * margin:
        raise ValueError(f"tile {tile} must be larger than twice the margin {margin}")
    if length <= tile:
        return [Span(0, 0, length)]
    stride = tile - 2 * margin
    spans, start, keep_from = [], 0, 0
    while start + tile < length:
        keep_to = start + tile - margin
        spans.append(Span(start, keep_from, keep_to))
        keep_from, start = keep_to, start + stride
    spans.append(Span(length - tile, keep_from, length))
    return spans


def pad_to(img: np.ndarray, height: int, width: int, mode: str = PAD_MODE) -> np.ndarray:
    """Pad bottom/right up to (height, width); mode is one of contract.PAD_MODES (numpy's names).

    The default mirrors the image, repeatedly where the window is more than twice its size.
    Padding still changes what the model sees (its DRA coefficients pool over the whole window,
    and the padded border is not the zeros it was trained with at image borders); TFLite models
    avoid it by resizing the interpreter instead (backends/tflite.py).
    """
    pads = ((0, height - img.shape[0]), (0, width - img.shape[1]), (0, 0))
    return np.pad(img, pads, mode=check_pad_mode(mode), **({"constant_values": 0} if mode == "constant" else {}))


class Tiler:
    """Run `fn` over a frame in windows of `tile` = (h, w) LR pixels; tile None runs the frame whole."""

    def __init__(self, scale: int, tile: tuple[int, int] | None, margin: int = DEFAULT_MARGIN,
                 pad_small: bool = True, pad_mode: str = PAD_MODE):
        self.scale, self.tile, self.margin, self.pad_small = scale, tile, margin, pad_small
        self.pad_mode = check_pad_mode(pad_mode)   # checked now, not at the first small frame
        if margin < 0:
            raise ValueError(f"the context margin must be 0 or more pixels, not {margin}")
        if tile is not None:
            for t in tile:
                if t <= 2 * margin:
                    raise ValueError(f"tile {tile[0]}x{tile[1]} is too small for a context margin of {margin} px")

    def windows(self, height: int, width: int) -> Iterator[tuple[Span, Span]]:
        th, tw = self.tile if self.tile is not None else (height, width)
        for ys in axis_spans(height, th, self.margin):
            for xs in axis_spans(width, tw, self.margin):
                yield ys, xs

    def count(self, height: int, width: int) -> int:
        return sum(1 for _ in self.windows(height, width))

    def run(self, frame: np.ndarray, fn: TileFn, out_dtype=np.float32, on_tile: Callable[[], None] | None = None):
        """frame: (H, W, 3) float32 in [0, 1]. Returns (H*s, W*s, 3) in out_dtype (uint8 is rounded)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
            raise ValueError(f"expected an (H, W, 3) frame, got shape {frame.shape}")
        s = self.scale
        h, w = frame.shape[:2]
        if self.tile is None:
            return _cast(fn(frame), out_dtype)
        th, tw = self.tile
        out = np.empty((h * s, w * s, 3), dtype=out_dtype)
        for ys, xs in self.windows(h, w):
            win = frame[ys.start : ys.start + th, xs.start : xs.start + tw]
            wh, ww = win.shape[:2]
            if self.pad_small and (wh < th or ww < tw):
                win = pad_to(win, th, tw, self.pad_mode)
            res = fn(np.ascontiguousarray(win))
            oy, ox = ys.keep_from - ys.start, xs.keep_from - xs.start
            core = res[oy * s : (oy + ys.keep_to - ys.keep_from) * s, ox * s : (ox + xs.keep_to - xs.keep_from) * s]
            out[ys.keep_from * s : ys.keep_to * s, xs.keep_from * s : xs.keep_to * s] = _cast(core, out_dtype)
            if on_tile is not None:
                on_tile()
        return out


def _cast(x: np.ndarray, dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    if dtype == np.uint16:
        return np.clip(np.round(x * 65535.0), 0, 65535).astype(np.uint16)
    return x.astype(dtype, copy=False)
