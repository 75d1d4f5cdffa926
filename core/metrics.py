"""The one metrics module: the SR evaluation protocol with its choices as arguments.

Protocol (docs/model.md): clip and round the output to 8 bit, take Y of BT.601, shave
`shave` (= scale) pixels per border, PSNR on [0, 255]; SSIM by the SR convention
(Gaussian 11x11 window, sigma 1.5, on Y in [0, 255]) from scikit-image.

Two Y conventions:
- "authors": Y in floating point; a grayscale image is replicated to RGB first.
- "matlab": rgb2ycbcr on uint8, so Y is rounded to 8 bit; a grayscale image is
  evaluated on its single channel as it is.
numpy only, except SSIM which imports scikit-image when called.
"""
from __future__ import annotations

import numpy as np

CONVENTIONS = ("authors", "matlab")


def _as_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    return np.clip(np.round(np.asarray(img, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def rgb_to_y(img: np.ndarray, convention: str = "authors", gray: bool = False) -> np.ndarray:
    """Y channel in [0, 255] (float64) of an (H, W, 3) image (uint8, or float in [0, 1]).

    `gray` says the source image was single-channel (its three channels are equal);
    only the "matlab" convention treats it differently.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown Y convention {convention!r}; choose {CONVENTIONS}")
    u8 = _as_uint8(img)
    if convention == "matlab" and gray:
        return u8[..., 0].astype(np.float64)
    rgb = u8.astype(np.float64) / 255.0
    y = 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]
    return np.round(y) if convention == "matlab" else y


def shave_border(img: np.ndarray, shave: int) -> np.ndarray:
    return img[shave:-shave, shave:-shave] if shave > 0 else img


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def psnr_y(sr: np.ndarray, hr: np.ndarray, shave: int, convention: str = "authors", gray: bool = False) -> float:
    """PSNR on Y between an SR output and its HR image, by the paper's protocol."""
    return psnr(shave_border(rgb_to_y(sr, convention, gray), shave),
                shave_border(rgb_to_y(hr, convention, gray), shave))


def ssim_y(sr: np.ndarray, hr: np.ndarray, shave: int, convention: str = "authors", gray: bool = False) -> float:
    from skimage.metrics import structural_similarity

    a = shave_border(rgb_to_y(sr, convention, gray), shave)
    b = shave_border(rgb_to_y(hr, convention, gray), shave)
    return float(structural_similarity(a, b, data_range=255.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def is_gray(img: np.ndarray) -> bool:
    """True when all three channels are equal (a grayscale image stored or replicated as RGB)."""
    return bool(img.ndim == 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]))
