"""A backend plus the tiler: what turns one image or frame into its super-resolved version.

Used by run.py, the drift harness and the benchmark script, so they all run what
users run. numpy only (the backend decides what else is imported).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from ..core.images import LoadedImage
from ..core.imresize import imresize
from .contract import DEFAULT_MARGIN, PAD_MODE, WHOLE_FRAME, Window, abilities, choose_window
from .tiler import Tiler


COEFF_MODES = ("tile", "frame", "downscaled")


class Upscaler:
    def __init__(self, backend, tile: tuple[int, int] | None = None, margin: int = DEFAULT_MARGIN, coeffs: str = "tile",
                 pad_to_tile: bool | None = None, window: Window | None = None, pad_mode: str = PAD_MODE):
        """window: how frames are cut (from open_artifact); without one it follows contract.choose_window:
        a fixed-shape model runs its own tile, a shape-flexible one `tile` (None: whole frame).

        coeffs: where each window's DRA coefficients r come from: "tile" (its own pixels, what a plain
        exported model does), "frame" (the whole frame, exact; one extra pass) or "downscaled" (the frame
        at half size, cheap). The last two need a backend whose registry entry says it takes them (torch).

        pad_to_tile: override the window's padding rule; the drift harness sets it to run the reference
        exactly like an artifact. pad_mode: how (contract.PAD_MODES); eval/tiling.py compares them.
        """
        if coeffs not in COEFF_MODES:
            raise ValueError(f"coeffs must be one of {COEFF_MODES}")
        spec = abilities(backend)
        if coeffs != "tile" and not (spec and spec.coefficients):
            raise ValueError(f"{backend.name} cannot take DRA coefficients from outside")
        self.backend, self.coeffs = backend, coeffs
        if window is None:
            window = choose_window(backend.input_hw, bool(spec and spec.resizable),
                                   WHOLE_FRAME if tile is None else tile)
        self.tile = window.tile
        pad = window.pad if pad_to_tile is None else pad_to_tile
        self.tiler = Tiler(backend.scale, self.tile, margin=margin, pad_small=pad, pad_mode=pad_mode)
        self.scale = backend.scale

    def frame(self, rgb: np.ndarray, out_dtype=np.float32, on_tile=None) -> np.ndarray:
        """(H, W, 3) float32 [0, 1] or uint8 -> (H*s, W*s, 3) in out_dtype."""
        if rgb.dtype == np.uint8:
            rgb = rgb.astype(np.float32) / 255.0
        fn = self.backend
        if self.coeffs != "tile":
            src = rgb if self.coeffs == "frame" else _half(rgb)
            r = self.backend.coefficients(src)
            fn = lambda tile: self.backend(tile, coeffs=r)   # noqa: E731
        return self.tiler.run(rgb, fn, out_dtype=out_dtype, on_tile=on_tile)

    def image(self, img: LoadedImage, on_tile=None) -> LoadedImage:
        """Super-resolve RGB with the model; alpha (if any) with bicubic; keep gray and bit depth."""
        out_dtype = np.uint8 if img.bit_depth == 8 else np.float32
        rgb = self.frame(img.rgb, out_dtype=out_dtype, on_tile=on_tile)
        alpha = None
        if img.alpha is not None:
            alpha = np.clip(imresize(img.alpha.astype(np.float64), self.scale), 0, 1).astype(np.float32)
        return LoadedImage(rgb, alpha, img.gray, img.bit_depth, img.icc)

    def windows(self, height: int, width: int) -> int:
        return self.tiler.count(height, width)


def _half(rgb: np.ndarray) -> np.ndarray:
    """The frame at half size (MATLAB bicubic), at least 8 pixels a side."""
    h, w = max(8, rgb.shape[0] // 2), max(8, rgb.shape[1] // 2)
    return np.clip(imresize(rgb.astype(np.float64), output_shape=(h, w)), 0, 1).astype(np.float32)


def time_frames(up: Upscaler, frame: np.ndarray, runs: int) -> dict:
    """Median/min ms of up.frame(frame) over `runs` runs after one warm-up, and output MP/s."""
    up.frame(frame)   # warm-up: allocations, delegate set-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = up.frame(frame)
        times.append((time.perf_counter() - t0) * 1000)
    med = statistics.median(times)
    return {"input": f"{frame.shape[1]}x{frame.shape[0]}", "output": f"{out.shape[1]}x{out.shape[0]}",
            "tile": list(up.tile) if up.tile else None, "windows": up.windows(*frame.shape[:2]), "runs": runs,
            "median_ms": round(med, 2), "min_ms": round(min(times), 2), "times_ms": [round(t, 2) for t in times],
            "output_mp_per_s": round(out.shape[0] * out.shape[1] / 1e6 / (med / 1000), 3)}
