import numpy as np
import pytest
from PIL import Image

from drsan_kit.core.images import (IMAGE_EXTENSIONS, ImageError, LoadedImage, frame_count, load_frames, load_image,
                                   save_animation, save_image)


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


def test_bilevel_and_float_images_keep_their_brightness(tmp_path):
    g = _photo()[..., 0]
    Image.fromarray(g > 127).save(tmp_path / "bw.png")   # mode "1"
    Image.fromarray((g / 255.0).astype(np.float32), "F").save(tmp_path / "unit.tif")
    Image.fromarray(g.astype(np.float32), "F").save(tmp_path / "levels.tif")
    bw = load_image(tmp_path / "bw.png")
    assert bw.gray and np.array_equal(bw.rgb[..., 0], (g > 127).astype(np.float32))
    for name in ("unit.tif", "levels.tif"):
        img = load_image(tmp_path / name)
        assert img.gray and np.allclose(img.rgb[..., 0] * 255, g, atol=0.01), name


def test_cut_animation_and_oversized_header_are_image_errors(tmp_path):
    import struct
    import zlib

    path, _ = _animation(tmp_path, "gif")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(ImageError, match="anim.gif"):
        frame_count(path)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    huge = tmp_path / "huge.png"   # a valid header that claims 30000 x 30000 pixels
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 90001)) + chunk(b"IEND", b""))
    for read in (load_image, frame_count, load_frames):
        with pytest.raises(ImageError, match="huge.png"):
            read(huge)
    # 100 MP: above Pillow's warning size, below its refusal; the kit tiles it like any image, silently
    large = tmp_path / "large.png"
    large.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0))
                      + chunk(b"IEND", b""))
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert frame_count(large) == 1
    assert not caught


def test_failed_write_leaves_nothing(tmp_path):
    bad = LoadedImage(np.zeros((4, 4, 5), np.float32))   # five channels: Pillow refuses
    with pytest.raises(Exception):
        save_image(tmp_path / "x.png", bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", ["gif", "ppm", "tga", "jp2", "avif", "heic"])
def test_more_formats_round_trip(tmp_path, ext):
    if f".{ext}" not in IMAGE_EXTENSIONS:
        pytest.skip(f".{ext}: this Pillow cannot read it (avif needs Pillow >= 11.3, heic the heic extra)")
    yy, xx = np.mgrid[0:32, 0:40]   # smooth, so that lossy codecs can be held to a few levels
    arr = np.dstack([yy * 7, xx * 6, (yy + xx) * 3]).astype(np.uint8)
    save_image(tmp_path / f"a.{ext}", arr)
    img = load_image(tmp_path / f"a.{ext}")
    assert img.rgb.shape == (32, 40, 3)
    err = np.abs(img.rgb * 255 - arr).mean()
    assert err < (0.5 if ext in ("ppm", "tga", "jp2") else 4)   # lossless ones exactly; GIF's palette, lossy codecs closely


def _animation(tmp_path, ext, n=3):
    frames = [Image.fromarray(np.roll(_photo(16, 20), 5 * i, axis=1)) for i in range(n)]
    path = tmp_path / f"anim.{ext}"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[40, 50, 60][:n], loop=2)
    return path, [np.asarray(f) for f in frames]


@pytest.mark.parametrize("ext", ["gif", "webp", "png", "tif"])
def test_animations_keep_every_frame_and_their_timing(tmp_path, ext):
    path, truth = _animation(tmp_path, ext)
    assert frame_count(path) == 3
    frames, loop = load_frames(path)
    frames = list(frames)
    assert len(frames) == 3
    # every frame is its own picture, not the first one three times
    firsts = [np.round(f.rgb * 255).astype(int) for f, _ in frames]
    assert all(np.abs(firsts[i] - truth[i]).mean() < np.abs(firsts[i] - truth[(i + 1) % 3]).mean() for i in range(3))
    save_animation(tmp_path / f"out.{ext}", frames, loop)
    again, loop_again = load_frames(tmp_path / f"out.{ext}")
    again = list(again)
    assert len(again) == 3
    if ext != "tif":   # TIFF pages have no timing
        assert [ms for _, ms in again] == [40, 50, 60] and loop_again == loop == 2


def test_animation_into_a_one_frame_format_is_an_error(tmp_path):
    path, _ = _animation(tmp_path, "gif")
    frames, loop = load_frames(path)
    with pytest.raises(ImageError, match="cannot hold several frames"):
        save_animation(tmp_path / "out.jpg", frames, loop)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["anim.gif"]


@pytest.mark.parametrize("ext", ["bmp", "tga", "jpg", "gif", "ppm"])
def test_formats_without_16_bits_or_alpha_get_the_nearest_image(tmp_path, ext):
    g16 = LoadedImage(np.repeat(np.linspace(0, 1, 20 * 24, dtype=np.float32).reshape(20, 24, 1), 3, 2),
                      gray=True, bit_depth=16)
    la = LoadedImage(g16.rgb, alpha=np.full((20, 24), 0.5, np.float32), gray=True)
    for name, img in (("g16", g16), ("la", la)):
        save_image(tmp_path / f"{name}.{ext}", img)
        back = load_image(tmp_path / f"{name}.{ext}")
        assert back.rgb.shape == (20, 24, 3)
        assert np.abs(back.rgb - g16.rgb).mean() < 0.02


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "tif"])
def test_colour_profile_is_kept(tmp_path, ext):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()   # any valid profile, not sRGB's
    Image.fromarray(_photo()).save(tmp_path / f"p.{ext}", icc_profile=icc)
    img = load_image(tmp_path / f"p.{ext}")
    assert img.icc == icc
    save_image(tmp_path / f"out.{ext}", img)
    assert Image.open(tmp_path / f"out.{ext}").info.get("icc_profile") == icc
    # a CMYK file's profile describes CMYK: it must not ride along on the RGB it becomes
    Image.fromarray(_photo()).convert("CMYK").save(tmp_path / "c.jpg", icc_profile=icc)
    assert load_image(tmp_path / "c.jpg").icc is None


def _colour16(h=20, w=24, channels=3):
    """A 16-bit colour image whose low bytes matter: neighbouring values differ by less than 1/255."""
    rng = np.random.default_rng(0)
    return (rng.integers(0, 65536, size=(h, w, channels)) | 1).astype(np.uint16)


@pytest.mark.parametrize("ext,channels", [("png", 3), ("png", 4), ("tif", 3), ("tif", 4)])
def test_sixteen_bit_colour_keeps_its_low_bytes(tmp_path, ext, channels):
    cv2 = pytest.importorskip("cv2", reason="the sixteen-bit extra (OpenCV) reads 16-bit colour")
    tifffile = pytest.importorskip("tifffile", reason="the sixteen-bit extra (tifffile) writes 16-bit TIFF")
    raw = _colour16(channels=channels)
    if ext == "png":
        cv2.imwrite(str(tmp_path / "in.png"), raw[..., [2, 1, 0, 3][:channels]])
    else:
        tifffile.imwrite(tmp_path / "in.tif", raw, photometric="rgb", compression="zlib",
                         extrasamples=["unassalpha"] if channels == 4 else None)
    img = load_image(tmp_path / f"in.{ext}")
    assert img.bit_depth == 16 and not img.gray and (img.alpha is not None) == (channels == 4)
    assert np.array_equal(np.round(img.rgb * 65535).astype(np.uint16), raw[..., :3])
    for out in ("png", "tif"):
        save_image(tmp_path / f"out.{out}", img)
        back = load_image(tmp_path / f"out.{out}")
        assert back.bit_depth == 16 and np.array_equal(back.rgb, img.rgb)
        if channels == 4:
            assert np.array_equal(back.alpha, img.alpha)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_sixteen_bit_colour_is_turned_upright_as_pillow_turns_8_bit(tmp_path, orientation):
    cv2 = pytest.importorskip("cv2", reason="the sixteen-bit extra (OpenCV) reads 16-bit colour")
    raw = _colour16(6, 10)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray((raw >> 8).astype(np.uint8)).save(tmp_path / "ref.png", exif=exif)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(raw[..., ::-1]))
    # the same EXIF chunk in the 16-bit file: Pillow's eXIf chunk sits before IDAT in both
    ref = (tmp_path / "ref.png").read_bytes()
    start = ref.index(b"eXIf") - 4
    end = start + 12 + int.from_bytes(ref[start:start + 4], "big")
    png = png.tobytes()
    (tmp_path / "in.png").write_bytes(png[:33] + ref[start:end] + png[33:])
    upright = load_image(tmp_path / "in.png")
    expected = load_image(tmp_path / "ref.png")
    assert upright.bit_depth == 16 and upright.rgb.shape == expected.rgb.shape
    assert np.array_equal(to_uint8_floor(upright.rgb), np.round(expected.rgb * 255).astype(np.uint8))


def to_uint8_floor(rgb16):
    return (np.round(rgb16 * 65535).astype(np.uint16) >> 8).astype(np.uint8)


def test_sixteen_bit_colour_profile_is_kept(tmp_path):
    pytest.importorskip("cv2", reason="the sixteen-bit extra (OpenCV) writes 16-bit colour PNG")
    pytest.importorskip("tifffile", reason="the sixteen-bit extra (tifffile) writes 16-bit TIFF")
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    img = LoadedImage(_colour16().astype(np.float32) / 65535.0, bit_depth=16, icc=icc)
    for ext in ("png", "tif"):
        save_image(tmp_path / f"o.{ext}", img)
        back = load_image(tmp_path / f"o.{ext}")
        assert back.icc == icc and back.bit_depth == 16 and np.array_equal(back.rgb, img.rgb)
        assert Image.open(tmp_path / f"o.{ext}").info.get("icc_profile") == icc


def test_damaged_sixteen_bit_colour_png_is_a_one_line_error(tmp_path, capfd):
    cv2 = pytest.importorskip("cv2", reason="the sixteen-bit extra (OpenCV) reads 16-bit colour")
    ok, png = cv2.imencode(".png", _colour16(64, 64))
    (tmp_path / "cut.png").write_bytes(png.tobytes()[: len(png) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    assert capfd.readouterr().err == ""


def test_without_the_extra_sixteen_bit_colour_is_read_at_8_bits_and_says_so(tmp_path, monkeypatch):
    cv2 = pytest.importorskip("cv2", reason="OpenCV writes the 16-bit test file")
    from drsan_kit.core import images

    raw = _colour16()
    cv2.imwrite(str(tmp_path / "in.png"), raw[..., ::-1])
    monkeypatch.setattr(images, "_opencv", lambda: None)
    img = load_image(tmp_path / "in.png")
    assert img.bit_depth == 8 and "sixteen-bit" in img.note
    assert np.array_equal(np.round(img.rgb * 255).astype(np.uint8), (raw >> 8).astype(np.uint8))
    plain = tmp_path / "plain.png"
    Image.fromarray(_photo()).save(plain)
    assert load_image(plain).note is None
