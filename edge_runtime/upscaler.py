"""A backend plus the tiler: what turns one image or frame into its super-resolved version.

Used by run.py, the drift harness and the benchmark script, so they all run what
users run. numpy only (the backend decides what else is imported).
"""
from __future__ import annotations

import numpy as np

from drsan_kit.core.images import LoadedImage
from drsan_kit.core.imresize import imresize
from drsan_kit.edge_runtime.tiler import Tiler


class Upscaler:
    def __init__(self, backend, tile: tuple[int, int] | None = None, margin: int = 8):
        """tile: the window for shape-flexible backends (None: whole frame); fixed-shape models use their own."""
        self.backend = backend
        fixed = backend.input_hw is not None
        self.tile = backend.input_hw if fixed else tile
        self.tiler = Tiler(backend.scale, self.tile, margin=margin, fixed_shape=fixed)
        self.scale = backend.scale

    def frame(self, rgb: np.ndarray, out_dtype=np.float32, on_tile=None) -> np.ndarray:
        """(H, W, 3) float32 [0, 1] or uint8 -> (H*s, W*s, 3) in out_dtype."""
        if rgb.dtype == np.uint8:
            rgb = rgb.astype(np.float32) / 255.0
        return self.tiler.run(rgb, self.backend, out_dtype=out_dtype, on_tile=on_tile)

    def image(self, img: LoadedImage, on_tile=None) -> LoadedImage:
        """Super-resolve RGB with the model; alpha (if any) with bicubic; keep gray and bit depth."""
        out_dtype = np.uint8 if img.bit_depth == 8 else np.float32
        rgb = self.frame(img.rgb, out_dtype=out_dtype, on_tile=on_tile)
        alpha = None
        if img.alpha is not None:
            alpha = np.clip(imresize(img.alpha.astype(np.float64), self.scale), 0, 1).astype(np.float32)
        return LoadedImage(rgb, alpha, img.gray, img.bit_depth)

    def windows(self, height: int, width: int) -> int:
        return self.tiler.count(height, width)
