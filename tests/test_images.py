import numpy as np
import pytest
from PIL import Image

from drsan_kit.core.images import ImageError, LoadedImage, load_image, save_image


def _photo(h=20, w=24):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", ["png", "jpg", "bmp", "tif", "webp"])
def test_rgb_formats_load_as_float_rgb(tmp_path, ext):
    arr = _photo()
    path = tmp_path / f"a.{ext}"
    Image.fromarray(arr).save(path, **({"quality": 100} if ext in ("jpg", "webp") else {}))
    img = load_image(path)
    assert img.rgb.shape == (20, 24, 3) and img.rgb.dtype == np.float32 and not img.gray
    if ext in ("png", "bmp", "tif"):
        assert np.array_equal(np.round(img.rgb * 255).astype(np.uint8), arr)


def test_grayscale_is_replicated_and_remembered(tmp_path):
    g = _photo()[..., 0]
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.gray and img.rgb.shape == (20, 24, 3)
    assert np.allclose(img.rgb[..., 0], img.rgb[..., 2])
    save_image(tmp_path / "out.png", img)
    assert Image.open(tmp_path / "out.png").mode == "L"


def test_sixteen_bit_png_keeps_precision(tmp_path):
    g = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 131).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    assert img.bit_depth == 16 and img.gray
    assert np.allclose(img.rgb[..., 0] * 65535, g, atol=0.5)
    save_image(tmp_path / "o16.png", img)
    back = np.asarray(Image.open(tmp_path / "o16.png"))
    assert back.dtype in (np.uint16, np.int32) and np.array_equal(back.astype(np.int64), g.astype(np.int64))


def test_rgba_and_palette(tmp_path):
    rgba = np.dstack([_photo(), np.full((20, 24), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.alpha is not None and np.allclose(img.alpha, 128 / 255)
    Image.fromarray(_photo()).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "p.png")
    pal = load_image(tmp_path / "p.png")
    assert pal.rgb.shape == (20, 24, 3) and pal.alpha is None


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"hello, not an image", "cannot read image")])
def test_bad_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=match) as info:
        load_image(path)
    assert "bad.png" in str(info.value)


def test_truncated_png_is_an_error(tmp_path):
    Image.fromarray(_photo(64, 64)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="t.png"):
        load_image(tmp_path / "t.png")


def test_failed_write_leaves_nothing(tmp_path):
    bad = LoadedImage(np.zeros((4, 4, 5), np.float32))   # five channels: Pillow refuses
    with pytest.raises(Exception):
        save_image(tmp_path / "x.png", bad)
    assert list(tmp_path.iterdir()) == []
