"""Shape checks every backend shares: is this file a model of this kit?"""
from __future__ import annotations

import numbers

from . import BackendError


def _dim(d):
    """A static size as int, or None for a symbolic/unknown one ("height", -1, None)."""
    return int(d) if isinstance(d, numbers.Integral) and d > 0 else None


def check_io_shapes(path, in_shape, out_shape, layout: str, scale: int | None = None):
    """Validate a 4-D RGB image-to-image model; return (input (h, w) or None if dynamic, scale)."""
    if len(in_shape) != 4 or len(out_shape) != 4:
        raise BackendError(f"{path}: not a super-resolution model of this kit "
                           f"(expected 4-D image input and output, got {list(in_shape)} -> {list(out_shape)})")
    c_axis, hw = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    if _dim(in_shape[c_axis]) != 3 or _dim(out_shape[c_axis]) != 3:
        raise BackendError(f"{path}: expected 3 RGB channels in and out, got {in_shape[c_axis]} -> {out_shape[c_axis]}")
    ih, iw = (_dim(in_shape[a]) for a in hw)
    oh, ow = (_dim(out_shape[a]) for a in hw)
    if ih and iw and oh and ow:
        if oh % ih or ow % iw or oh // ih != ow // iw:
            raise BackendError(f"{path}: output {oh}x{ow} is not an integer upscale of input {ih}x{iw}")
        found = oh // ih
        if scale is not None and scale != found:
            raise BackendError(f"{path}: model upscales x{found}, but x{scale} was expected")
        if found not in (2, 3, 4):
            raise BackendError(f"{path}: model upscales x{found}; DRSAN models are x2, x3 or x4")
        return (ih, iw), found
    if scale is None:
        raise BackendError(f"{path}: model has a dynamic shape and no manifest beside it; pass --scale")
    return None, scale
