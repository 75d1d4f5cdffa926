"""The evaluation protocol, proven on data nobody here made (MATLAB's LR images, published bicubic numbers)."""
import numpy as np
import pytest

from drsan_kit.core.datasets import load_pairs
from drsan_kit.core.images import load_rgb_uint8, list_images
from drsan_kit.core.imresize import imresize
from drsan_kit.core.metrics import psnr_y, rgb_to_y, ssim_y
from drsan_kit.core.variants import BICUBIC_PUBLISHED

SETS = ("Set5", "Set14", "B100")


@pytest.mark.parametrize("scale", (2, 3, 4))
def test_imresize_reproduces_matlab_lr(bench_dir, scale):
    worst_equal, worst_diff = 1.0, 0
    for name in SETS:
        for hr_path in list_images(bench_dir / name / "HR"):
            lr = load_rgb_uint8(bench_dir / name / "LR_bicubic" / f"X{scale}" / hr_path.name)
            hr = load_rgb_uint8(hr_path)
            h, w = lr.shape[:2]
            mine = imresize(hr[: h * scale, : w * scale], 1 / scale)
            diff = np.abs(mine.astype(int) - lr)
            worst_equal = min(worst_equal, float((diff == 0).mean()))
            worst_diff = max(worst_diff, int(diff.max()))
    assert worst_equal >= 0.995 and worst_diff <= 1, (worst_equal, worst_diff)


@pytest.mark.parametrize("scale", (2, 3, 4))
def test_bicubic_floor_matches_published_numbers(bench_dir, scale):
    for name in SETS:
        pairs = load_pairs(bench_dir / name, scale)
        sr = [imresize(p.lr, scale) for p in pairs]
        p = np.mean([psnr_y(s, q.hr, scale, "matlab", q.gray) for s, q in zip(sr, pairs)])
        s = np.mean([ssim_y(s, q.hr, scale, "matlab", q.gray) for s, q in zip(sr, pairs)])
        ref_p, ref_s = BICUBIC_PUBLISHED[scale][name]
        assert abs(p - ref_p) <= 0.02, (name, scale, p, ref_p)
        assert abs(s - ref_s) <= 0.001, (name, scale, s, ref_s)


def test_imresize_shapes_and_identity():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    assert imresize(img, 1 / 2).shape == (9, 12, 3)
    assert imresize(img, 3).shape == (51, 69, 3)
    assert imresize(img, output_shape=(17, 23)).tolist() == img.tolist()
    flat = np.full((8, 8, 3), 77, np.uint8)
    assert (imresize(flat, 1 / 4) == 77).all()


def test_y_conventions_differ_only_where_documented():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    ya, ym = rgb_to_y(rgb, "authors"), rgb_to_y(rgb, "matlab")
    assert np.all(np.abs(ya - ym) <= 0.5) and np.array_equal(ym, np.round(ym))
    gray = np.repeat(rgb[..., :1], 3, axis=2)
    assert np.array_equal(rgb_to_y(gray, "matlab", gray=True), gray[..., 0].astype(float))
    assert np.allclose(rgb_to_y(gray, "authors", gray=True), 16 + 219 * gray[..., 0].astype(float) / 255.0)


def test_psnr_shaves_border_and_is_infinite_for_identical():
    hr = np.full((20, 20, 3), 128, np.uint8)
    sr = hr.copy()
    sr[:2] = 0   # damage confined to the shaved border
    assert psnr_y(sr, hr, shave=2) == float("inf")
    assert psnr_y(sr, hr, shave=1) < 30
