"""The one image loader and writer of the kit (numpy + Pillow, no torch).

Reads what users have: PNG, JPEG, BMP, TIFF, WebP, GIF, PPM/PGM, TGA, JPEG 2000,
AVIF (Pillow >= 11.3) and HEIC/HEIF (with the `heic` extra, pillow-heif);
grayscale, RGBA, palette and CMYK images; EXIF rotation; animated GIF/WebP/PNG and
multi-page TIFF frame by frame. 16 bits survive: grayscale through Pillow, colour
PNG and TIFF (with or without alpha, multi-page TIFF too) through OpenCV and tifffile,
the `sixteen-bit` extra; without it Pillow reads 16-bit colour at 8 bits per channel, and an image
written from it has 8. Models always see RGB float32 in [0, 1];
what the file was (gray, alpha, bit depth) travels beside it so the writer can
give back the same kind of image. Writers go through a temporary file and a
rename, so a failure never leaves a half-written file.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from .atomic import atomic_path

try:   # iPhone photos are HEIC; Pillow reads them only through this plugin (the `heic` extra)
    from pillow_heif import register_heif_opener
    register_heif_opener()
except ImportError:
    pass

# raster formats people keep photos and frames in; the list is cut to what this Pillow build can read
_WANTED = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
           ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".avif", ".heic", ".heif")
Image.init()
IMAGE_EXTENSIONS = tuple(e for e in _WANTED if e in Image.registered_extensions())
# what save_image and save_animation write: the formats the kit also reads, where this Pillow build has a
# writer. Pillow writes others too (PDF, EPS, XBM, ICO, ...), but they are documents, icons or bilevel
# formats that the kit neither reads back nor has been checked against (PDF's writer fails on save_image's
# progress-reporting file, XBM takes only 1-bit images), so they are refused by name instead
WRITABLE_EXTENSIONS = tuple(e for e in IMAGE_EXTENSIONS if Image.registered_extensions()[e] in Image.SAVE)
_NEEDS = {".heic": "pip install 'drsan-edge-kit[heic]' (pillow-heif)",
          ".heif": "pip install 'drsan-edge-kit[heic]' (pillow-heif)",
          ".avif": "pip install 'pillow>=11.3'"}


def missing_reader(ext: str) -> str | None:
    """What to install to read a wanted format this environment cannot, else None."""
    ext = ext.lower()
    return _NEEDS.get(ext) if ext in _WANTED and ext not in IMAGE_EXTENSIONS else None


class ImageError(ValueError):
    """A file that cannot be used as an image; the message names the file."""


# what Pillow raises on a damaged or hostile file: a cut GIF gives IndexError, a multi-page TIFF cut in a
# page's header TypeError ("Missing dimensions") from a KeyError, a header claiming billions of pixels
# DecompressionBombError (none of them an OSError)
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError,
                TypeError, Image.DecompressionBombError)


@dataclass
class LoadedImage:
    rgb: np.ndarray                  # (H, W, 3) float32 in [0, 1]
    alpha: np.ndarray | None = None  # (H, W) float32 in [0, 1], or None
    gray: bool = False               # the file was single-channel
    bit_depth: int = 8               # 8 or 16
    icc: bytes | None = None         # the file's colour profile (e.g. Display P3 from a phone), written back
    note: str | None = None          # what reading lost, for the user (16-bit colour read at 8 bits)

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


def _open(path) -> Image.Image:
    """Image.open without Pillow's two-line decompression-bomb warning for images of 89 to 179 MP,
    which the kit runs tile by tile like any other; above that Pillow refuses them (a one-line error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty")
    return path


def _sixteen_bit_colour(im: Image.Image) -> bool:
    """Whether Pillow is about to decode 16-bit colour samples (which it keeps at 8 bits)."""
    if not im.tile:
        return False
    args = im.tile[0].args
    rawmode = args if isinstance(args, str) else args[0] if args else ""
    return isinstance(rawmode, str) and rawmode.startswith(("RGB;16", "RGBA;16"))


# what EXIF orientation asks for, as numpy views of an (H, W, C) array (Pillow's exif_transpose does
# the same to 8-bit images)
_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}


def _opencv():
    try:
        import cv2
    except ImportError:   # the `sixteen-bit` extra is not installed (or OpenCV cannot load here)
        return None
    cv2.setLogLevel(0)   # silent: a damaged file gets the kit's one-line error, not OpenCV's warnings
    return cv2


def _load_sixteen_bit_colour(cv2, path: Path, im: Image.Image) -> LoadedImage | None:
    """A 16-bit colour PNG/TIFF at 16 bits through OpenCV (the `cv2` module), upright; None where
    OpenCV reads it otherwise (Pillow then decodes it at 8 bits)."""
    arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4) \
            or arr.shape[:2] != (im.height, im.width):
        return None
    arr = _ORIENT.get(im.getexif().get(0x0112), lambda a: a)(arr)
    rgb = _to_float(np.ascontiguousarray(arr[..., 2::-1]), 16)
    alpha = _to_float(np.ascontiguousarray(arr[..., 3]), 16) if arr.shape[2] == 4 else None
    return LoadedImage(rgb, alpha, False, 16, im.info.get("icc_profile") or None)


def _tifffile():
    try:
        import tifffile
    except ImportError:   # the `sixteen-bit` extra is not installed
        return None
    return tifffile


_EIGHT_BIT_NOTE = "16-bit colour read at 8 bits per channel"
_EXTRA_HINT = " (pip install 'drsan-edge-kit[sixteen-bit]' keeps 16)"


def _load_sixteen_bit_page(path: Path, index: int) -> LoadedImage | None:
    """Page `index` of a TIFF holding 16-bit colour, at 16 bits through tifffile; None where tifffile is
    missing or reads the page otherwise (Pillow then decodes it at 8 bits)."""
    tifffile = _tifffile()
    if tifffile is None:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            arr = tif.pages[index].asarray()
    except Exception:   # noqa: BLE001 - a damaged page fails in tifffile in many ways; Pillow decoded it already
        return None
    if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    alpha = _to_float(np.ascontiguousarray(arr[..., 3]), 16) if arr.shape[2] == 4 else None
    return LoadedImage(_to_float(np.ascontiguousarray(arr[..., :3]), 16), alpha, False, 16)


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Decode an image file fully; raise ImageError naming the file on any problem."""
    path = _existing(path)
    try:
        with _open(path) as im:
            deep = _sixteen_bit_colour(im)   # asked before load(), which clears what it reads
            # Pillow decodes in full first: a damaged file fails here with one line, where OpenCV's
            # decoders would print their own messages
            im.load()
            cv2 = _opencv() if deep else None
            if cv2 is not None:
                img = _load_sixteen_bit_colour(cv2, path, im)
                if img is not None:
                    return img
            im = ImageOps.exif_transpose(im)
            img = _decode(im)
            if deep:
                img.note = _EIGHT_BIT_NOTE + (_EXTRA_HINT if cv2 is None else "")
            # a profile describes the file's own colour space; after a CMYK/Lab -> RGB conversion it would lie
            if im.mode in ("RGB", "RGBA", "L", "LA", "P", "PA", "I;16", "I;16B", "I;16L", "I"):
                img.icc = im.info.get("icc_profile") or None
            return img
    except ImageError:
        raise
    except _READ_ERRORS as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None


def _decode(im: Image.Image) -> LoadedImage:
    if im.width == 0 or im.height == 0:
        raise ImageError("image has zero size")
    if im.mode == "1":   # bilevel: numpy sees bools, which would scale to black
        im = im.convert("L")
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
            arr = np.asarray(im, dtype=np.float32)
            # floating-point images (e.g. TIFF from scientific or HDR tools) usually hold [0, 1]
            scale_up = im.mode == "F" and np.nanmax(arr, initial=0.0) <= 1.0
            arr = np.clip(np.nan_to_num(arr) * (255.0 if scale_up else 1.0), 0, 255)
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


def to_uint16(x: np.ndarray) -> np.ndarray:
    """[0, 1] float to uint16 with clipping and rounding (what 16-bit files store)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float32) * 65535.0), 0, 65535).astype(np.uint16)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float to uint8 with clipping and rounding (the SR protocol's quantization); uint8 passes through."""
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return x
    return np.clip(np.round(np.asarray(x, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def frame_count(path: str | os.PathLike) -> int:
    """Frames in an image file: above 1 for animated GIF/WebP/PNG and multi-page TIFF."""
    try:
        with _open(_existing(path)) as im:
            return int(getattr(im, "n_frames", 1))
    except _READ_ERRORS as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None


def load_frames(path: str | os.PathLike) -> tuple[Iterator[tuple[LoadedImage, int]], int]:
    """(frames, loop) of an animated image: frames yields (frame, duration in ms), composited as shown.
    A multi-page TIFF's 16-bit colour pages keep their 16 bits through tifffile (the `sixteen-bit`
    extra); without it they are read at 8 bits and carry a note saying so."""
    path = _existing(path)
    try:
        im = _open(path)
    except _READ_ERRORS as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None
    loop = int(im.info.get("loop", 0))

    def frames():
        with im:
            try:
                for index, frame in enumerate(ImageSequence.Iterator(im)):
                    deep = im.format == "TIFF" and _sixteen_bit_colour(frame)   # asked before the page loads
                    picture = frame.copy()   # loads the frame; WebP sets its duration only then
                    img = _load_sixteen_bit_page(path, index) if deep else None
                    if img is None:
                        img = _decode(picture)
                        if deep:
                            img.note = _EIGHT_BIT_NOTE + (_EXTRA_HINT if _tifffile() is None else "")
                    yield img, int(frame.info.get("duration", 100) or 100)
            except _READ_ERRORS as exc:
                raise ImageError(f"{path}: cannot read frame {im.tell()} ({exc})") from None
    return frames(), loop


# animations whose frames Pillow composites onto one canvas: every frame has the canvas's size
_CANVAS_FORMATS = {"GIF", "PNG", "WEBP", "AVIF"}
# multi-frame formats whose every page has its own size and mode
_PAGED_FORMATS = {"TIFF"}


def frame_sizes(path: str | os.PathLike) -> list[tuple[int, int]]:
    """(width, height) of every frame of an image file, from its headers (no pixels are decoded)."""
    try:
        with _open(_existing(path)) as im:
            n = int(getattr(im, "n_frames", 1))
            if im.format in _CANVAS_FORMATS:
                return [im.size] * n   # seeking a GIF decodes every frame on the way
            sizes = []
            for i in range(n):
                im.seek(i)
                sizes.append(im.size)
            return sizes
    except _READ_ERRORS as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None


def keeps_frame_sizes(path: str | os.PathLike) -> bool:
    """Whether the format of this file name stores frames of different sizes (multi-page TIFF does; an
    animation has one canvas)."""
    return Image.registered_extensions().get(Path(path).suffix.lower()) in _PAGED_FORMATS


def format_sizes(sizes: Iterable[tuple[int, int]]) -> str:
    """Distinct (width, height) sizes in order of appearance, for messages: "32x24, 50x10"."""
    return ", ".join(f"{w}x{h}" for w, h in dict.fromkeys(sizes))


def holds_frames(path: str | os.PathLike) -> bool:
    """Whether the image format of this file name can store several frames (GIF, WebP, PNG, TIFF, ...)."""
    return Image.registered_extensions().get(Path(path).suffix.lower()) in Image.SAVE_ALL


def save_animation(path: str | os.PathLike, frames: Iterable[tuple[LoadedImage, int]], loop: int = 0) -> Path:
    """Write (frame, duration ms) pairs as one animated/multi-page file, atomically; needs a format that
    holds several frames (GIF, WebP, PNG, TIFF)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    _check_writable(path)
    if not holds_frames(path):
        raise ImageError(f"{path}: {fmt or path.suffix!r} cannot hold several frames; use .gif, .webp, .png or .tif")
    pils, durations, deep = [], [], fmt == "TIFF" and _tifffile() is not None
    for img, ms in frames:   # kept as 8-bit Pillow images, not float arrays: 4x less memory per frame
        # 16-bit colour pages as uint16 arrays, for tifffile: Pillow writes colour at 8 bits only
        pils.append(_sixteen_bit_colour_array(img) if deep and img.bit_depth == 16 and not img.gray
                    else _fit_mode(_pil_image(img), fmt))
        durations.append(ms)
        if pils[-1].size != pils[0].size and fmt not in _PAGED_FORMATS:
            # Pillow would crop or pad the frame to the first one's size without a word
            raise ImageError(f"{path}: frames differ in size ({format_sizes(p.size for p in pils)}), which "
                             f"one {fmt} animation cannot hold; write them as TIFF, which keeps each page's size")
    if any(isinstance(p, np.ndarray) for p in pils):
        return _save_tiff_pages(path, pils)
    modes = {im.mode for im in pils}
    if len(modes) > 1 and fmt not in _PAGED_FORMATS:   # e.g. a GIF whose later frames gained transparency
        mode = "RGBA" if any(m in ("RGBA", "LA") for m in modes) else "RGB"
        # Pillow's convert() clips a 16-bit page to 0-255 (nearly all white) instead of scaling it, and the
        # shared RGB(A) mode holds 8 bits anyway: scale such pages down first
        pils = [_eight_bit(im).convert(mode) for im in pils]
    kwargs = {"duration": durations, "loop": loop} if fmt in ("GIF", "PNG", "WEBP", "AVIF") else {}
    try:
        with atomic_path(path) as tmp:
            pils[0].save(tmp, format=fmt, save_all=True, append_images=pils[1:], **kwargs)
    except (OSError, KeyError, ValueError) as exc:
        raise ImageError(f"{path}: cannot write {len(pils)} {pils[0].mode} frames as {fmt} ({exc})") from None
    return path


def _sixteen_bit_colour_array(img: LoadedImage) -> np.ndarray:
    planes = [img.rgb] if img.alpha is None else [img.rgb, img.alpha[..., None]]
    return to_uint16(np.concatenate(planes, axis=2))


def _save_tiff_pages(path: Path, pages: list) -> Path:
    """A multi-page TIFF through tifffile, each page at its own size and depth (uint16 arrays for 16-bit
    colour, Pillow images for the rest), atomically."""
    tifffile = _tifffile()
    try:
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tif:
            for page in pages:
                arr = page if isinstance(page, np.ndarray) else np.asarray(page)
                colour = arr.ndim == 3 and arr.shape[2] in (3, 4)
                tif.write(arr, photometric="rgb" if colour else "minisblack", compression="zlib",
                          extrasamples=["unassalpha"] if arr.ndim == 3 and arr.shape[2] in (2, 4) else None)
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: cannot write {len(pages)} pages as TIFF ({exc})") from None
    return path


def unwritable(ext: str) -> str | None:
    """Why the kit does not write images with this extension (Pillow's format name for one that Pillow
    writes but the kit does not, e.g. PDF), or None if it does."""
    ext = ext.lower()
    if ext in WRITABLE_EXTENSIONS:
        return None
    pillow = Image.registered_extensions().get(ext)
    return f"Pillow writes {pillow}, but the kit writes only the image formats it also reads" if pillow \
        else "not a format the kit writes"


def _check_writable(path: Path):
    """ImageError unless the kit writes images of this file name's format (WRITABLE_EXTENSIONS)."""
    if why := unwritable(path.suffix):
        raise ImageError(f"{path}: {path.suffix or '(no extension)'}: {why}; use one of {' '.join(WRITABLE_EXTENSIONS)}")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files under folder, recursively, in a stable order."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _pil_image(img: LoadedImage) -> Image.Image:
    if img.bit_depth == 16 and img.gray and img.alpha is None:
        g = to_uint16(img.rgb.mean(axis=2))
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


_ICC_FORMATS = {"PNG", "JPEG", "WEBP", "TIFF", "AVIF", "HEIF"}
_NO_ALPHA = {"JPEG", "BMP", "DIB", "PPM"}
_SIXTEEN_BIT = {"PNG", "TIFF", "PPM", "JPEG2000"}


def _eight_bit(pil: Image.Image) -> Image.Image:
    """A 16-bit gray image (I;16) scaled to 8-bit gray (65535 -> 255, rounded); any other passes through."""
    if pil.mode != "I;16":
        return pil
    return Image.fromarray(((np.asarray(pil).astype(np.uint32) + 128) // 257).astype(np.uint8), "L")


def _fit_mode(pil: Image.Image, fmt: str) -> Image.Image:
    """Drop what the output format cannot store (16 bits, alpha) instead of failing on it."""
    if fmt not in _SIXTEEN_BIT:
        pil = _eight_bit(pil)
    if pil.mode in ("RGBA", "LA") and fmt in _NO_ALPHA:
        pil = pil.convert("RGB" if pil.mode == "RGBA" else "L")
    return pil


class _CountedWrites:
    """A file that reports the size of each write. It has no fileno(), so Pillow encodes in chunks through
    write() instead of all at once into the descriptor, and a progress bar can follow a long save."""

    def __init__(self, fh, on_write):
        self.fh, self.on_write = fh, on_write

    def write(self, data):
        n = self.fh.write(data)
        self.on_write(len(data))
        return n

    def __getattr__(self, name):
        if name == "fileno":
            raise AttributeError(name)
        return getattr(self.fh, name)


def _png_with_profile(png: bytes, icc: bytes) -> bytes:
    """PNG bytes with an iCCP chunk (the colour profile, zlib-compressed) right after IHDR."""
    data = b"ICC profile\0\0" + zlib.compress(icc)
    chunk = struct.pack(">I", len(data)) + b"iCCP" + data + struct.pack(">I", zlib.crc32(b"iCCP" + data))
    end_of_ihdr = 8 + 4 + 4 + 13 + 4   # signature, then IHDR's length, type, 13 data bytes and CRC
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def _sixteen_bit_colour_bytes(img: LoadedImage, fmt: str) -> bytes | None:
    """A 16-bit colour image encoded as PNG (OpenCV) or TIFF (tifffile), profile included; None where
    the image is not 16-bit colour or the `sixteen-bit` extra is missing (then written at 8 bits)."""
    if img.bit_depth != 16 or img.gray or fmt not in ("PNG", "TIFF"):
        return None
    planes = [img.rgb] if img.alpha is None else [img.rgb, img.alpha[..., None]]
    arr = to_uint16(np.concatenate(planes, axis=2))
    if fmt == "TIFF":
        tifffile = _tifffile()
        if tifffile is None:
            return None
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, photometric="rgb", compression="zlib", iccprofile=img.icc,
                         extrasamples=["unassalpha"] if img.alpha is not None else None)
        return buf.getvalue()
    cv2 = _opencv()
    if cv2 is None:
        return None
    ok, png = cv2.imencode(".png", np.ascontiguousarray(arr[..., [2, 1, 0, 3][: arr.shape[2]]]))
    if not ok:
        return None
    return _png_with_profile(png.tobytes(), img.icc) if img.icc else png.tobytes()


def save_image(path: str | os.PathLike, img: LoadedImage | np.ndarray, quality: int = 95, on_write=None) -> Path:
    """Write atomically (temporary file + rename). A bare array is taken as RGB [0, 1] float or uint8.

    on_write(n): called with the byte count of every chunk written (progress for very large images)."""
    if isinstance(img, np.ndarray):
        rgb = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img
        img = LoadedImage(rgb)
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    _check_writable(path)
    encoded = _sixteen_bit_colour_bytes(img, fmt)
    if encoded is not None:
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(encoded)
        except OSError as exc:
            raise ImageError(f"{path}: cannot write a 16-bit colour image as {fmt} ({exc})") from None
        if on_write is not None:
            on_write(len(encoded))
        return path
    pil = _fit_mode(_pil_image(img), fmt)
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP", "AVIF", "HEIF") else {}
    if img.icc and fmt in _ICC_FORMATS:   # gray stays gray and colour colour, so the profile still fits
        kwargs["icc_profile"] = img.icc
    try:
        with atomic_path(path) as tmp:
            if on_write is None:
                pil.save(tmp, format=fmt, **kwargs)
            else:
                with open(tmp, "wb") as fh:
                    pil.save(_CountedWrites(fh, on_write), format=fmt, **kwargs)
    except (OSError, KeyError, ValueError) as exc:
        raise ImageError(f"{path}: cannot write a {pil.mode} image as {fmt} ({exc})") from None
    return path
