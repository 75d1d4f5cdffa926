"""edge_runtime/run.py on awkward inputs: out-of-range flags, files without video, audio a container
cannot store, outputs that collide, videos cut short or damaged, TIFF pages of different sizes.

run.py's main() runs in-process with a stand-in model (nearest-neighbour x2), so each test takes well
under a second and needs no converted artifact: what is tested is the runtime around the model.
"""
import numpy as np
import pytest
from PIL import Image, ImageSequence

from conftest import encode_tone
from drsan_kit.edge_runtime import run
from drsan_kit.edge_runtime.contract import choose_window


class Nearest:
    """Stands in for a shape-flexible model: every pixel becomes a scale x scale block."""
    name, kind, input_hw, scale = "nearest (stand-in)", "stand-in", None, 2

    def __call__(self, tile):
        return np.repeat(np.repeat(tile, self.scale, axis=0), self.scale, axis=1)


@pytest.fixture
def runtime(monkeypatch, capsys):
    """run.py's main with the stand-in model: runtime(*args) -> (exit status, stderr)."""
    monkeypatch.setattr(run, "open_model", lambda args: (Nearest(), choose_window(None, False, args.tile), None))

    def main(*args):
        try:
            code = run.main(["--onnx", "stand-in.onnx", "--quiet", *map(str, args)])
        except SystemExit as exc:   # argparse refusing a flag
            code = exc.code
        return code, capsys.readouterr().err
    return main


def one_error_line(stderr: str) -> str:
    """The single `error: ...` line of a refusal (and no traceback)."""
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def files_under(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def write_video(path, frames=12, fps=10, size=(48, 64), audio=None):
    """Random (incompressible) frames, H.264 (webm: VP9); audio: an audio codec for a 0.3 s tone, or
    "only" for a file with the tone and no video at all."""
    import av

    with av.open(str(path), "w") as c:
        video = None
        if audio != "only":
            video = c.add_stream("libvpx-vp9" if path.suffix == ".webm" else "libx264", rate=fps)
            video.width, video.height, video.pix_fmt = size[1], size[0], "yuv420p"
        sound = c.add_stream("aac" if audio == "only" else audio, rate=48000, layout="mono") if audio else None
        rng = np.random.default_rng(0)
        for _ in range(frames if video else 0):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            for p in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in video.encode() if video else ():
            c.mux(p)
        if sound is not None:
            encode_tone(c, sound, (0.3 * np.sin(np.arange(14400) / 10)).astype(np.float32)[None])
    return path


def test_threads_must_be_0_to_256(runtime, tmp_path):
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    for bad, message in [("-1", "threads must be 0 (every core) to 256, not -1"),
                         ("100000", "threads must be 0 (every core) to 256, not 100000"),
                         ("two", "threads must be a whole number, not 'two'")]:
        code, err = runtime(tmp_path / "a.png", "--threads", bad, "--out", tmp_path / "o")
        assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "o").exists()
    assert run.parse_args(["--torch", "x.png", "--threads", "256"]).threads == 256
    assert run.parse_args(["--torch", "x.png"]).threads == 0


def test_file_without_video_is_a_one_line_error_in_benchmark_and_run(runtime, tmp_path):
    audio_only = write_video(tmp_path / "talk.mp4", audio="only")
    # an mp4 keeps its index (moov) at the end: cut short, it opens with no audio or video stream at all
    whole = write_video(tmp_path / "whole.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: whole.index(b"moov") + 100])
    for src, message in [(audio_only, "no video stream (the file holds only audio)"),
                         (cut, "no audio or video stream found: the file is cut short or damaged")]:
        code, err = runtime(src, "--benchmark", "1")
        assert code == 1 and f"{src}: {message}" in one_error_line(err)
        code, err = runtime(src, "--out", tmp_path / "o")
        assert code == 1 and message in one_error_line(err)
    assert files_under(tmp_path / "o") == []


def test_audio_a_container_cannot_store_is_reencoded(runtime, tmp_path):
    import av

    src = write_video(tmp_path / "talk.mp4", frames=3, size=(16, 16), audio="aac")
    code, err = runtime(src, "--out", tmp_path / "talk.webm")
    assert code == 0 and ".webm cannot hold the source's aac audio: re-encoded as opus" in err
    with av.open(str(tmp_path / "talk.webm")) as c:
        assert [(s.type, s.codec_context.name) for s in c.streams] == [("video", "vp9"), ("audio", "opus")]
        seconds = sum(f.samples / f.sample_rate for f in c.decode(audio=0))
    assert abs(seconds - 0.3) < 0.05   # all of the sound, at its own speed


def test_outputs_that_would_collide_are_refused_before_anything_runs(runtime, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 6), (9, 9, 9)).save(tmp_path / folder / "keep.png")
    Image.new("RGB", (8, 6)).save(tmp_path / "b" / "keep.jpg")
    a, b = tmp_path / "a" / "keep.png", tmp_path / "b" / "keep.png"
    out = tmp_path / "out"
    code, err = runtime(a, b, "--out", out)
    assert code == 2 and f"{a} and {b} would both be written to {out / 'keep_x2.png'}" in one_error_line(err)
    # a folder whose keep.jpg and keep.png both become keep_x2.png
    code, err = runtime(tmp_path / "b", "--ext", "png", "--out", out)
    assert code == 2 and "keep_x2.png" in one_error_line(err)
    assert files_under(out) == []
    # without --ext they stay apart; the same file given twice (in its folder and by name) runs once
    code, err = runtime(tmp_path / "b", b, "--out", out)
    assert code == 0 and files_under(out) == ["keep_x2.jpg", "keep_x2.png"] and err.count("wrote") == 2, err


def test_video_cut_short_or_damaged_is_refused_and_writes_nothing(runtime, tmp_path):
    import av

    whole = write_video(tmp_path / "long.mkv")
    data = whole.read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) * 6 // 10])
    damaged = bytearray(data)
    middle = len(data) // 2
    damaged[middle:middle + 2000] = bytes(x ^ 0xFF for x in damaged[middle:middle + 2000])
    (tmp_path / "damaged.mkv").write_bytes(bytes(damaged))
    out = tmp_path / "out"
    # an AVI cut short loses its index (at the end), and FFmpeg then counts its length from what is left:
    # only the frame count in its header tells
    avi = write_video(tmp_path / "long.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(avi[: avi.rfind(b"00dc", 0, len(avi) * 6 // 10)])   # between two frames
    for name in ("cut.mkv", "damaged.mkv"):
        code, err = runtime(tmp_path / name, "--out", out)
        line = one_error_line(err)
        assert code == 1 and f"{name}: video ends early" in line and "declares 1.20 s" in line
    code, err = runtime(tmp_path / "cut.avi", "--out", out)
    line = one_error_line(err)
    assert code == 1 and "cut.avi: video ends early" in line and "declares 1.20 s" in line
    assert files_under(out) == []
    # complete files still run, including an mkv that declares no frame count (only a length)
    intact = [whole, write_video(tmp_path / "fresh.mp4", frames=5, audio="aac"), tmp_path / "long.avi"]
    for src in intact:
        code, err = runtime(src, "--out", out)
        assert code == 0, err
    with av.open(str(out / "long_x2.mkv")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 12


def _mixed_tiff(path):
    pages = [Image.new("RGB", (32, 24), (200, 40, 40)),
             Image.fromarray(np.full((10, 50), 40000, np.uint16)),
             Image.new("RGBA", (12, 40), (10, 20, 30, 128))]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    return path


def test_tiff_pages_of_different_sizes_keep_them_or_are_refused(runtime, tmp_path):
    src = _mixed_tiff(tmp_path / "mixed.tif")
    out = tmp_path / "out"
    for ext in ("gif", "webp", "png"):
        code, err = runtime(src, "--ext", ext, "--out", out)
        assert code == 1 and "pages differ in size (32x24, 50x10, 12x40)" in one_error_line(err)
    assert files_under(out) == []
    code, err = runtime(src, "--out", out)
    assert code == 0, err
    with Image.open(out / "mixed_x2.tif") as tif:
        pages = [(p.size, p.mode) for p in ImageSequence.Iterator(tif)]
    assert pages == [((64, 48), "RGB"), ((100, 20), "I;16"), ((24, 80), "RGBA")]


def test_animation_writer_never_crops_frames_to_the_first(tmp_path):
    from drsan_kit.core.images import ImageError, LoadedImage, save_animation

    frames = [(LoadedImage(np.zeros((h, w, 3), np.float32)), 100) for h, w in [(24, 32), (10, 50)]]
    with pytest.raises(ImageError, match=r"frames differ in size \(32x24, 50x10\)"):
        save_animation(tmp_path / "a.gif", frames)
    assert list(tmp_path.iterdir()) == []
    save_animation(tmp_path / "a.tif", frames)
    with Image.open(tmp_path / "a.tif") as tif:
        assert [p.size for p in ImageSequence.Iterator(tif)] == [(32, 24), (50, 10)]



def test_ext_is_checked_before_the_model_loads(runtime, monkeypatch, tmp_path):
    opened = []
    stand_in = run.open_model
    monkeypatch.setattr(run, "open_model", lambda args: opened.append(args) or stand_in(args))
    Image.new("RGB", (8, 6), (9, 9, 9)).save(tmp_path / "a.png")
    clip = write_video(tmp_path / "clip.mp4", frames=2, size=(16, 16))
    out = tmp_path / "out"
    for src, ext, message in [
            (tmp_path / "a.png", "pdf", "--ext 'pdf': Pillow writes PDF, but the kit writes only the image formats"),
            (tmp_path / "a.png", "xbm", "--ext 'xbm': Pillow writes XBM, but the kit writes only the image formats"),
            (tmp_path / "a.png", "xyz", "--ext 'xyz': not a format the kit writes"),
            (tmp_path / "a.png", "", "--ext '': not a format the kit writes"),
            (tmp_path / "a.png", "mp4", "--ext mp4 is a video format, but every input is an image"),
            (clip, "png", "--ext png is an image format, but every input is a video")]:
        code, err = runtime(src, "--ext", ext, "--out", out)
        assert code == 2 and message in one_error_line(err), err
    assert opened == [] and files_under(out) == []
    # the library writer refuses such a format with its own error too, progress callback or not
    from drsan_kit.core.images import ImageError, LoadedImage, save_image

    for on_write in (None, lambda n: None):
        with pytest.raises(ImageError, match=r"a.pdf: .pdf: Pillow writes PDF, but the kit writes only the image formats it also reads"):
            save_image(tmp_path / "a.pdf", LoadedImage(np.zeros((4, 4, 3), np.float32)), on_write=on_write)
    assert not (tmp_path / "a.pdf").exists()
    # upper case and a leading dot are the same format; a mixed folder: --ext changes only its own kind
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (tmp_path / "a.png").rename(mixed / "a.png")
    clip.rename(mixed / "clip.mp4")
    code, err = runtime(mixed, "--ext", ".MKV", "--out", out)
    assert code == 0 and files_under(out) == ["a_x2.png", "clip_x2.mkv"], err
    code, err = runtime(mixed, "--ext", "JPG", "--out", tmp_path / "out2")
    assert code == 0 and files_under(tmp_path / "out2") == ["a_x2.jpg", "clip_x2.mp4"], err


def test_any_failed_input_makes_the_exit_status_1_and_the_others_are_written(runtime, tmp_path):
    Image.new("RGB", (8, 6), (9, 9, 9)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    for other, message in [(tmp_path / "missing.png", "missing.png: no such file"),
                           (tmp_path / "bad.png", "bad.png: cannot read image")]:
        code, err = runtime(tmp_path / "a.png", other, "--out", out)
        assert code == 1 and f"skipped: {other}" in err and message in err and "Traceback" not in err, err
        assert files_under(out) == ["a_x2.png"]
    # in a folder: a damaged image fails the run; a file that is no image by its name (a README) is not an
    # input at all (docs/runtime.md: folders expand to their images and videos), so it is passed over silently
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 6)).save(folder / "b.png")
    (folder / "README.txt").write_text("photos from the trip\n")
    code, err = runtime(folder, "--out", tmp_path / "o1")
    assert code == 0 and files_under(tmp_path / "o1") == ["b_x2.png"] and "README" not in err, err
    (tmp_path / "bad.png").rename(folder / "bad.png")
    code, err = runtime(folder, "--out", tmp_path / "o2")
    assert code == 1 and "skipped:" in err and "1 input(s) skipped" in err, err
    assert files_under(tmp_path / "o2") == ["b_x2.png"]


def test_sixteen_bit_gray_page_is_scaled_not_clipped_in_an_8_bit_animation(runtime, tmp_path):
    pages = [Image.new("RGB", (8, 6), (200, 40, 40)),
             Image.fromarray(np.full((6, 8), 40000, np.uint16)),   # 40000 / 257: 156 at 8 bits, not 255
             Image.new("RGBA", (8, 6), (10, 20, 30, 128))]
    pages[0].save(tmp_path / "modes.tif", save_all=True, append_images=pages[1:])
    for ext in ("png", "gif"):
        code, err = runtime(tmp_path / "modes.tif", "--ext", ext, "--out", tmp_path / "out")
        assert code == 0, err
        with Image.open(tmp_path / "out" / f"modes_x2.{ext}") as anim:
            frames = [np.asarray(f.convert("RGB")).astype(int) for f in ImageSequence.Iterator(anim)]
        assert len(frames) == 3 and frames[1].shape == (12, 16, 3)
        assert np.abs(frames[1] - 156).max() <= 2, frames[1][0, 0]


def test_heic_in_a_folder_without_its_reader_is_reported_not_skipped(runtime, monkeypatch, tmp_path):
    from drsan_kit.core import images

    # this install as it is without the heic extra: Pillow registers no .heic/.heif reader
    without = tuple(e for e in images.IMAGE_EXTENSIONS if e not in (".heic", ".heif"))
    monkeypatch.setattr(images, "IMAGE_EXTENSIONS", without)
    monkeypatch.setattr(run, "IMAGE_EXTENSIONS", without)
    Image.new("RGB", (8, 6), (9, 9, 9)).save(tmp_path / "a.png")
    (tmp_path / "phone.HEIC").write_bytes(b"\0" * 64)
    code, err = runtime(tmp_path, "--out", tmp_path / "o")
    assert code == 1 and "phone.HEIC: reading .heic needs pip install 'drsan-edge-kit[heic]'" in err, err
    assert files_under(tmp_path / "o") == ["a_x2.png"]


def _deep_tiff(path):
    """A multi-page TIFF: two pages of 16-bit colour (one with alpha) of different sizes, one 8-bit gray."""
    import tifffile

    rng = np.random.default_rng(1)
    pages = [rng.integers(0, 65536, (6, 8, 3), dtype=np.uint16), rng.integers(0, 65536, (4, 5, 4), dtype=np.uint16),
             rng.integers(0, 256, (3, 7), dtype=np.uint8)]
    with tifffile.TiffWriter(path) as tif:
        for page in pages:
            colour = page.ndim == 3
            tif.write(page, photometric="rgb" if colour else "minisblack",
                      extrasamples=["unassalpha"] if colour and page.shape[2] == 4 else None)
    return path, pages


def test_multi_page_tiff_keeps_16_bit_colour(runtime, tmp_path):
    import tifffile

    src, pages = _deep_tiff(tmp_path / "stack.tif")
    code, err = runtime(src, "--out", tmp_path / "up.tif")
    assert code == 0 and "note:" not in err, err
    with tifffile.TiffFile(tmp_path / "up.tif") as tif:
        out = [p.asarray() for p in tif.pages]
    # the stand-in model repeats every pixel 2x2: every page's colour, 16 bits included, comes back
    # exactly (alpha is resized beside the model, not by it)
    assert [o.dtype for o in out] == [np.uint16, np.uint16, np.uint8]
    for page, got in zip(pages, out):
        want = np.repeat(np.repeat(page, 2, axis=0), 2, axis=1)
        assert got.shape == want.shape and np.array_equal(got[..., :3], want[..., :3])
    assert np.any(out[1][..., 3] % 257)   # the alpha plane too is 16-bit, not 8 bits scaled up


def test_multi_page_tiff_without_tifffile_says_it_keeps_8_bits(runtime, monkeypatch, tmp_path):
    from drsan_kit.core import images

    src, pages = _deep_tiff(tmp_path / "stack.tif")
    monkeypatch.setattr(images, "_tifffile", lambda: None)   # as without the sixteen-bit extra
    code, err = runtime(src, "--out", tmp_path / "up.tif")
    assert code == 0 and err.count("note:") == 1, err
    assert "16-bit colour read at 8 bits per channel (pip install 'drsan-edge-kit[sixteen-bit]' keeps 16)" in err
    with Image.open(tmp_path / "up.tif") as im:
        first = np.asarray(im.convert("RGB"))
    assert first.dtype == np.uint8 and first.shape == (12, 16, 3)
    assert np.abs(first.astype(int) - np.repeat(np.repeat(pages[0] // 257, 2, 0), 2, 1)).max() <= 1


def test_multi_page_tiff_cut_short_is_one_line_and_writes_nothing(runtime, tmp_path):
    src, _ = _deep_tiff(tmp_path / "stack.tif")
    data = src.read_bytes()
    out = tmp_path / "o"
    for keep in (len(data) * 2 // 3, len(data) - 10):   # a page's pixels, the last page's header
        cut = tmp_path / f"cut{keep}.tif"
        cut.write_bytes(data[:keep])
        code, err = runtime(cut, "--out", out)
        assert code == 1 and f"{cut}: cannot read" in one_error_line(err), err
    assert files_under(out) == []
    # as a user runs it: Pillow's own warning about the cut header ("Corrupt EXIF data") is not shown
    from conftest import run_tool

    first = tmp_path / f"cut{len(data) * 2 // 3}.tif"
    proc = run_tool("edge_runtime/run.py", "--torch", "--scale", "2", first, "--out", out, check=False)
    assert proc.returncode == 1 and proc.stderr.splitlines()[-1].startswith("error:"), proc.stderr
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
