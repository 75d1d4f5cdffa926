"""Training patches cut on the training device from a set decoded once and kept there.

The whole training set (HR and its MATLAB-bicubic LR, both uint8) lives on the device
as two flat pixel tables; a batch is one gather per table, so a GPU never waits for
CPU workers, decoding or host-to-device copies of images. Each patch gets its own
random crop and one of the 8 dihedral transforms (flips and 90-degree rotations),
expressed as a start and two signed steps of the gather, identical for the LR patch
and its HR patch.

Batch i is a pure function of (seed, i): its random numbers and the index arithmetic
are numpy integers on the CPU (a few numbers per patch), so a run resumed on a CPU cuts
exactly the patches the GPU would have cut, and vice versa.

LR is made once at load with the kit's MATLAB-compatible bicubic (core/imresize.py),
in worker processes when the machine has cores to spare.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch
from tqdm import tqdm

from .images import ImageError, load_rgb_uint8
from .imresize import imresize

# BLAS libraries read these once at start; one thread per loader process avoids n x n threads
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def lr_hr_pair(path, scale: int, patch: int):
    """(LR, HR) uint8 arrays of one image, HR cropped to a multiple of the scale;
    "small" if it holds no patch x patch LR crop; an ImageError's text if unreadable."""
    try:
        hr = load_rgb_uint8(path)
    except ImageError as exc:
        return str(exc)
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    if h < patch or w < patch:
        return "small"
    hr = np.ascontiguousarray(hr[: h * scale, : w * scale])
    return imresize(hr, 1 / scale), hr


def _pair_job(job):
    return lr_hr_pair(*job)


@contextmanager
def _single_threaded_children():
    saved = {k: os.environ.get(k) for k in _ONE_THREAD}
    os.environ.update({k: "1" for k in _ONE_THREAD})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def default_workers() -> int:
    """Loader processes: one per core from 4 cores up (up to 16); below that, loading stays in-process."""
    cores = os.cpu_count() or 1
    return min(cores, 16) if cores >= 4 else 0


def load_pairs(files, scale: int, patch: int, log=print, workers: int | None = None) -> list:
    """Decode every file and make its bicubic LR; skips (and counts) unreadable and too-small images."""
    workers = default_workers() if workers is None else workers
    jobs = [(path, scale, patch) for path in files]
    bar = dict(desc="loading training images", total=len(jobs), leave=False, disable=None)
    if workers > 1 and len(jobs) > 1:
        # spawn: the trainer may hold CUDA and torch threads, which a forked child must not inherit
        ctx = multiprocessing.get_context("spawn")
        with _single_threaded_children(), ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
            results = list(tqdm(pool.map(_pair_job, jobs, chunksize=4), **bar))
    else:
        results = [lr_hr_pair(*job) for job in tqdm(jobs, **bar)]
    pairs, small, unreadable = [], 0, 0
    for result in results:
        if isinstance(result, tuple):
            pairs.append(result)
        elif result == "small":
            small += 1
        else:
            unreadable += 1
            log(f"skipped: {result}")
    log(f"training images: {len(pairs)} used, {small} too small for a {patch}px LR patch at x{scale}, "
        f"{unreadable} unreadable")
    return pairs


def image_weights(sizes, sampling: str) -> np.ndarray:
    """Probability of drawing each image: by LR area (every LR pixel counts the same) or uniform."""
    area = np.array([h * w for h, w in sizes], dtype=np.float64)
    return area / area.sum() if sampling == "area" else np.full(len(area), 1 / len(area))


def _strides(table, img, y, x, size: int, t):
    """(3, B) int64: flat start, step per output row and step per output column of each patch.

    Bits of t: 1 flips rows, 2 flips columns, 4 transposes the flipped patch; the 8
    values are the 8 symmetries of the square. Output pixel (i, j) of patch b is pixel
    start[b] + i * row[b] + j * col[b] of the table: every transform is a start and two
    signed steps, so LR and HR patches (HR coordinates s times the LR ones) stay aligned.
    """
    w = table.widths[img]
    row = np.where(t & 1, -w, w)
    col = np.where(t & 2, -1, 1)
    start = table.offsets[img] + (y + np.where(t & 1, size - 1, 0)) * w + x + np.where(t & 2, size - 1, 0)
    swap = (t & 4).astype(bool)
    return np.stack([start, np.where(swap, col, row), np.where(swap, row, col)])


class _PixelTable:
    """Images of different sizes as one (total pixels, 3) uint8 tensor; offsets and widths stay on the CPU."""

    def __init__(self, images, device):
        sizes = np.array([img.shape[0] * img.shape[1] for img in images], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.widths = np.array([img.shape[1] for img in images], dtype=np.int64)
        self.pixels = torch.empty((int(sizes.sum()), 3), dtype=torch.uint8, device=device)
        for img, start, n in zip(images, self.offsets.tolist(), sizes.tolist()):
            self.pixels[start : start + n] = torch.from_numpy(img.reshape(-1, 3))

    def crops(self, strides: torch.Tensor, size: int):
        """(B, 3, size, size) uint8 patches from _strides' numbers (on the device); channels_last memory."""
        start, row, col = (v.view(-1, 1, 1) for v in strides)
        i = torch.arange(size, device=strides.device)
        index = start + i.view(1, size, 1) * row + i.view(1, 1, size) * col
        patches = self.pixels.index_select(0, index.view(-1)).view(-1, size, size, 3)
        # (B, size, size, 3) seen as (B, 3, size, size) is exactly the channels_last layout
        return patches.permute(0, 3, 1, 2)


class DeviceSampler:
    """Random (LR, HR) patch batches cut on `device` from (lr, hr) uint8 array pairs.

    The pairs are copied to the device once; the arrays can be dropped afterwards.
    """

    def __init__(self, pairs, scale: int, patch: int, seed: int, device, sampling: str = "area"):
        if not pairs:
            raise ValueError("no training images to sample from")
        self.scale, self.patch, self.seed = scale, patch, seed
        self.device = torch.device(device)
        self.lr_sizes = np.array([lr.shape[:2] for lr, _ in pairs], dtype=np.int64)
        if (self.lr_sizes < patch).any():
            raise ValueError(f"an image is smaller than a {patch}x{patch} LR patch")
        for lr, hr in pairs:
            if hr.shape != (lr.shape[0] * scale, lr.shape[1] * scale, 3):
                raise ValueError(f"HR {hr.shape} is not x{scale} of LR {lr.shape}")
        self.weights = image_weights(self.lr_sizes, sampling)
        self.lr = _PixelTable([lr for lr, _ in pairs], self.device)
        self.hr = _PixelTable([hr for _, hr in pairs], self.device)

    def draws(self, size: int, iteration: int) -> np.ndarray:
        """(4, size) int64: image, LR row, LR column and dihedral transform of each patch of this batch."""
        rng = np.random.default_rng((self.seed, iteration))
        img = rng.choice(len(self.weights), size=size, p=self.weights)
        y = rng.integers(0, self.lr_sizes[img, 0] - self.patch + 1)
        x = rng.integers(0, self.lr_sizes[img, 1] - self.patch + 1)
        return np.stack([img, y, x, rng.integers(0, 8, size=size)]).astype(np.int64)

    def batch(self, size: int, iteration: int = 0):
        """(LR, HR) uint8 tensors (B, 3, p, p) and (B, 3, s*p, s*p) on the device, channels_last memory."""
        img, y, x, t = self.draws(size, iteration)
        s, p = self.scale, self.patch
        # all the index arithmetic is exact integers on the CPU: any device cuts the same patches
        numbers = torch.from_numpy(np.concatenate([_strides(self.lr, img, y, x, p, t),
                                                   _strides(self.hr, img, y * s, x * s, p * s, t)]))
        if self.device.type == "cuda":
            # a pinned copy lets the upload queue behind the previous step instead of waiting for it
            numbers = numbers.pin_memory()
        numbers = numbers.to(self.device, non_blocking=True)
        return self.lr.crops(numbers[:3], p), self.hr.crops(numbers[3:], p * s)

    def batches(self, size: int, start: int):
        """Batches for iterations start, start+1, ... (what the trainer iterates over)."""
        while True:
            yield self.batch(size, start)
            start += 1
