"""A fixed held-out split of a training folder, for every choice made during training.

Checkpoints, learning rates, stopping points and quantization ranges are chosen on
images the model never trains on, and never on the benchmark sets (those are for the
final report only). The split is a pure function of the files' paths relative to the
folder: each path's SHA-256 ranks it, the lowest `count` are held out. Adding or
removing other images leaves the held-out set unchanged unless a new image ranks lower.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .datasets import Pair
from .images import list_images, load_image, to_uint8
from .imresize import imresize


def _rank(root: Path, path: Path) -> str:
    return hashlib.sha256(path.relative_to(root).as_posix().encode()).hexdigest()


def split_holdout(folder, count: int) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files) of an image folder; `count` files are held out."""
    root = Path(folder)
    files = list_images(root)
    if count < 0 or (count and count >= len(files)):
        raise ValueError(f"cannot hold out {count} of the {len(files)} images under {root}")
    held = set(sorted(files, key=lambda p: _rank(root, p))[:count])
    return [p for p in files if p not in held], sorted(held)


def describe(folder, held: list[Path]) -> dict:
    """What a checkpoint's metadata records about its validation split."""
    root = Path(folder)
    names = [p.relative_to(root).as_posix() for p in held]
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    return {"set": f"holdout:{len(held)}", "rule": "lowest SHA-256 of the relative path", "files": names,
            "files_sha256": digest}


def holdout_pairs(held: list[Path], scale: int, max_side: int = 0) -> list[Pair]:
    """Validation pairs: HR mod-cropped to the scale, LR by the kit's MATLAB bicubic.

    max_side > 0 centre-crops each HR image to at most that many pixels a side, which
    bounds validation time on a CPU without changing which images are used.
    """
    pairs = []
    for path in held:
        img = load_image(path)
        hr = to_uint8(img.rgb)
        if max_side:
            h, w = min(hr.shape[0], max_side), min(hr.shape[1], max_side)
            y, x = (hr.shape[0] - h) // 2, (hr.shape[1] - w) // 2
            hr = hr[y : y + h, x : x + w]
        hr = np.ascontiguousarray(hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale])
        pairs.append(Pair(path.stem, imresize(hr, 1 / scale), hr, img.gray))
    return pairs
