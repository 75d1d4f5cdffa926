"""Benchmark sets in the usual SR layout (numpy only).

    <set>/HR/<name>.png                     ground truth (not mod-cropped)
    <set>/LR_bicubic/X<s>/<name>.png        MATLAB-made LR (optional)

When an LR folder is missing, LR is made from the mod-cropped HR with the kit's
MATLAB-compatible bicubic, so any folder of HR images works as a test set.

The sets are not part of the repository: tools take --data DIR or the
DRSAN_BENCHMARKS environment variable (benchmark_root).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import list_images, load_image, to_uint8
from .imresize import imresize


BENCHMARKS_ENV = "DRSAN_BENCHMARKS"
EXPECTED_LAYOUT = ("Set5, Set14 and B100 as SET/HR/*.png with optional SET/LR_bicubic/X<s>/*.png "
                   "(usually obtained from the SR benchmark package that the DRSAN authors and EDSR publish "
                   "with their test code)")


class BenchmarkDataError(ValueError):
    """The benchmark folder is not given, missing, or holds no set."""


@dataclass
class Pair:
    name: str
    lr: np.ndarray   # (h, w, 3) uint8
    hr: np.ndarray   # (h*s, w*s, 3) uint8, mod-cropped
    gray: bool       # the HR file was single-channel


def load_pairs(set_dir, scale: int) -> list[Pair]:
    set_dir = Path(set_dir)
    hr_dir = set_dir / "HR" if (set_dir / "HR").is_dir() else set_dir
    pairs = []
    for hr_path in list_images(hr_dir):
        img = load_image(hr_path)
        hr = to_uint8(img.rgb)
        lr_path = set_dir / "LR_bicubic" / f"X{scale}" / hr_path.name
        if lr_path.is_file():
            lr = to_uint8(load_image(lr_path).rgb)
        else:
            lr = imresize(hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale], 1 / scale)
        h, w = lr.shape[:2]
        if hr.shape[0] < h * scale or hr.shape[1] < w * scale:
            raise ValueError(f"{lr_path}: LR {w}x{h} is too large for HR {hr.shape[1]}x{hr.shape[0]} at x{scale}")
        pairs.append(Pair(hr_path.stem, lr, hr[: h * scale, : w * scale], img.gray))
    return pairs


def find_sets(data_dir) -> list[Path]:
    """Every benchmark set under data_dir (a folder with HR/ inside), or data_dir itself if it is one."""
    data_dir = Path(data_dir)
    if (data_dir / "HR").is_dir():
        return [data_dir]
    order = {"Set5": 0, "Set14": 1, "B100": 2, "BSD100": 2, "Urban100": 3, "Manga109": 4}
    sets = [p for p in data_dir.iterdir() if (p / "HR").is_dir()]
    return sorted(sets, key=lambda p: (order.get(p.name, 99), p.name))


def benchmark_root(data=None) -> Path:
    """The folder of benchmark sets: `data` if given, else $DRSAN_BENCHMARKS.

    There is deliberately no default: the sets live outside the repository, and a
    silent fallback would evaluate whatever happens to sit at that path.
    """
    chosen = data or os.environ.get(BENCHMARKS_ENV)
    if not chosen:
        raise BenchmarkDataError(f"no benchmark folder: pass --data DIR or set {BENCHMARKS_ENV}; "
                                 f"expected {EXPECTED_LAYOUT}")
    path = Path(chosen)
    if not path.is_dir():
        raise BenchmarkDataError(f"benchmark folder {path} not found; expected {EXPECTED_LAYOUT}")
    if not find_sets(path):
        raise BenchmarkDataError(f"no benchmark set (a folder with HR/ inside) under {path}; "
                                 f"expected {EXPECTED_LAYOUT}")
    return path
