"""The one image loader and writer of the kit (numpy + Pillow, no torch).

Reads what users have: 8/16-bit PNG, JPEG, BMP, TIFF, WebP; grayscale, RGBA,
palette and CMYK images; EXIF rotation. Models always see RGB float32 in [0, 1];
what the file was (gray, alpha, bit depth) travels beside it so the writer can
give back the same kind of image. Writers go through a temporary file and a
rename, so a failure never leaves a half-written file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from drsan_kit.core.atomic import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
    """A file that cannot be used as an image; the message names the file."""


@dataclass
class LoadedImage:
    rgb: np.ndarray                  # (H, W, 3) float32 in [0, 1]
    alpha: np.ndarray | None = None  # (H, W) float32 in [0, 1], or None
    gray: bool = False               # the file was single-channel
    bit_depth: int = 8               # 8 or 16

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def _to_float(arr: np.ndarray, bit_depth: int) -> np.ndarray:
    return arr.astype(np.float32) / (65535.0 if bit_depth == 16 else 255.0)


def _sixteen_bit(im: Image.Image) -> np.ndarray | None:
    """A 16-bit single-channel image as uint16, or None if the image is not 16-bit."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im)
        if im.mode == "I" and arr.max(initial=0) <= 255:
            return None
        return np.clip(arr, 0, 65535).astype(np.uint16)
    return None


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Decode an image file fully; raise ImageError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _decode(im)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None


def _decode(im: Image.Image) -> LoadedImage:
    if im.width == 0 or im.height == 0:
        raise ImageError("image has zero size")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode == "PA":
        im = im.convert("RGBA")
    sixteen = _sixteen_bit(im)
    if sixteen is not None:
        gray = _to_float(sixteen, 16)
        return LoadedImage(np.repeat(gray[..., None], 3, axis=2), None, True, 16)
    arr = np.asarray(im)
    if arr.dtype == np.uint16 or (arr.ndim == 3 and arr.dtype.itemsize == 2):
        arr = _to_float(arr, 16)
        depth = 16
    else:
        depth = 8
    if im.mode in ("1", "L", "I", "F"):
        if im.mode in ("I", "F"):
            arr = np.clip(np.asarray(im, dtype=np.float32), 0, 255)
        g = _to_float(np.asarray(arr), 8) if depth == 8 else arr
        return LoadedImage(np.repeat(g[..., None], 3, axis=2), None, True, depth)
    if im.mode == "LA":
        a = _to_float(np.asarray(im), 8)
        return LoadedImage(np.repeat(a[..., :1], 3, axis=2), a[..., 1], True, 8)
    if im.mode == "RGBA":
        a = _to_float(np.asarray(im), 8)
        return LoadedImage(np.ascontiguousarray(a[..., :3]), a[..., 3], False, 8)
    if im.mode != "RGB":
        im = im.convert("RGB")   # CMYK, YCbCr, LAB, ...
    rgb = np.asarray(im)
    if rgb.dtype == np.uint8:
        return LoadedImage(_to_float(rgb, 8), None, False, 8)
    return LoadedImage(_to_float(rgb, 16), None, False, 16)


def load_rgb_uint8(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB, the form benchmarks and training data use."""
    return to_uint8(load_image(path).rgb)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float to uint8 with clipping and rounding (the SR protocol's quantization); uint8 passes through."""
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return x
    return np.clip(np.round(np.asarray(x, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files under folder, recursively, in a stable order."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _pil_image(img: LoadedImage) -> Image.Image:
    if img.bit_depth == 16 and img.gray and img.alpha is None:
        g = np.clip(np.round(img.rgb.mean(axis=2) * 65535.0), 0, 65535).astype(np.uint16)
        return Image.fromarray(g)  # mode I;16
    rgb = to_uint8(img.rgb)
    if img.gray:
        base = Image.fromarray(np.round(rgb.astype(np.float32).mean(axis=2)).astype(np.uint8), "L")
        if img.alpha is None:
            return base
        return Image.merge("LA", (base, Image.fromarray(to_uint8(img.alpha), "L")))
    if img.alpha is None:
        return Image.fromarray(rgb, "RGB")
    return Image.fromarray(np.dstack([rgb, to_uint8(img.alpha)]), "RGBA")


def save_image(path: str | os.PathLike, img: LoadedImage | np.ndarray, quality: int = 95) -> Path:
    """Write atomically (temporary file + rename). A bare array is taken as RGB [0, 1] float or uint8."""
    if isinstance(img, np.ndarray):
        rgb = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img
        img = LoadedImage(rgb)
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image extension {path.suffix!r}")
    pil = _pil_image(img)
    if fmt in ("JPEG", "BMP") and pil.mode in ("RGBA", "LA"):
        pil = pil.convert("RGB" if pil.mode == "RGBA" else "L")  # these formats have no alpha
    if fmt in ("JPEG", "WEBP") and pil.mode == "I;16":
        pil = Image.fromarray((np.asarray(pil) // 257).astype(np.uint8), "L")
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt, **kwargs)
    return path
