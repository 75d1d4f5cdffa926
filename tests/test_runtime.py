"""edge_runtime/run.py as users run it: images, folders, video, bad input, the light device path."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import CONVERT_TILE, REPO, encode_tone, run_tool


@pytest.fixture
def photos(tmp_path):
    from skimage import data

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(data.astronaut()[100:140, 200:250]).save(src / "a.png")
    Image.fromarray(data.coffee()[:30, :20]).save(src / "sub" / "b.jpg", quality=95)
    return src


def _onnx(onnx_artifacts, dynamic=False):
    return onnx_artifacts / ("drsan_32s_x4_dynamic.onnx" if dynamic else f"drsan_32s_x4_{CONVERT_TILE}.onnx")


def test_folder_recursive_keeps_relative_paths(onnx_artifacts, photos, tmp_path):
    out = tmp_path / "out"
    proc = run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), photos, "--out", out)
    assert Image.open(out / "a_x4.png").size == (200, 160)
    assert Image.open(out / "sub" / "b_x4.jpg").size == (80, 120)
    assert "from manifest.json" in proc.stderr and "output MP/s" in proc.stderr


def test_onnx_tiled_matches_torch_reference_in_the_interior(onnx_artifacts, photos, tmp_path):
    run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), photos / "a.png", "--out", tmp_path / "o.png")
    run_tool("edge_runtime/run.py", "--torch", "--variant", "32s", "--scale", "4", "--tile", CONVERT_TILE,
             photos / "a.png", "--out", tmp_path / "t.png")
    a = np.asarray(Image.open(tmp_path / "o.png"), dtype=int)
    b = np.asarray(Image.open(tmp_path / "t.png"), dtype=int)
    assert np.abs(a - b).max() <= 1


def test_never_overwrites_input(onnx_artifacts, photos):
    proc = run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), photos / "a.png",
                    "--out", photos / "a.png", check=False)
    assert proc.returncode != 0 and "overwrite an input" in proc.stderr


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n garbage"), "cannot read image"),
    (lambda p: p.write_bytes(b""), "empty"),
])
def test_bad_image_is_a_one_line_error_and_writes_nothing(onnx_artifacts, tmp_path, make, message):
    bad = tmp_path / "bad.png"
    make(bad)
    out = tmp_path / "out"
    proc = run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), bad, "--out", out, check=False)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.rglob("*"))


def test_bad_file_in_folder_is_skipped_with_reason(onnx_artifacts, photos, tmp_path):
    (photos / "broken.png").write_bytes(b"not a png")
    (photos / "notes.txt").write_text("ignored: not an image extension")
    proc = run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), photos, "--out", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "skipped" in proc.stderr and "broken.png" in proc.stderr
    assert (tmp_path / "o" / "a_x4.png").exists()


def test_unsupported_format_and_missing_model(onnx_artifacts, tmp_path):
    doc = tmp_path / "x.gif2"
    doc.write_bytes(b"abc")
    proc = run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), doc, "--out", tmp_path, check=False)
    assert proc.returncode == 1 and "unsupported format" in proc.stderr
    proc = run_tool("edge_runtime/run.py", "--onnx", tmp_path / "none.onnx", doc, check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"0" * 100)
    proc = run_tool("edge_runtime/run.py", "--tflite", junk, doc, check=False)
    assert proc.returncode == 2 and "not a TFLite model" in proc.stderr and "Traceback" not in proc.stderr


def test_tile_larger_than_image_on_flexible_model_is_an_error(onnx_artifacts, photos, tmp_path):
    proc = run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts, dynamic=True), "--tile", "512x512",
                    photos / "a.png", "--out", tmp_path, check=False)
    assert proc.returncode == 1 and "larger than the 50x40 image" in proc.stderr


def test_tiny_and_odd_frames_work(onnx_artifacts, tmp_path):
    for h, w in [(1, 1), (3, 61), (37, 5)]:
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(tmp_path / f"t{h}x{w}.png")
        run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), tmp_path / f"t{h}x{w}.png",
                 "--out", tmp_path / "o")
        assert Image.open(tmp_path / "o" / f"t{h}x{w}_x4.png").size == (4 * w, 4 * h)


def _write_video(path, frames=6, size=(40, 48), fps=12, marked=False, audio=None):
    """Random frames, or (marked) flat ones with a white block in the top-left corner; optionally a
    0.5 s 440 Hz tone in the given audio codec. webm gets VP9, anything else H.264."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libvpx-vp9" if path.suffix == ".webm" else "libx264", rate=fps)
        s.width, s.height, s.pix_fmt = size[1], size[0], "yuv420p"
        a = c.add_stream(audio, rate=48000, layout="mono") if audio else None
        rng = np.random.default_rng(0)
        block = np.full((*size, 3), 60, np.uint8)
        block[: size[0] // 4, : size[1] // 4] = 255
        for _ in range(frames):
            img = block if marked else rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            encode_tone(c, a, (0.3 * np.sin(2 * np.pi * 440 * np.arange(24000) / 48000)).astype(np.float32)[None])


def test_video_round_trip_keeps_frames_and_rate(onnx_artifacts, tmp_path):
    import av

    src = tmp_path / "clip.mp4"
    _write_video(src)
    run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), src, "--out", tmp_path / "out")
    with av.open(str(tmp_path / "out" / "clip_x4.mp4")) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(video=0))
        assert (s.width, s.height, n, float(s.average_rate)) == (192, 160, 6, 12.0)


def test_truncated_video_leaves_no_output(onnx_artifacts, tmp_path):
    src = tmp_path / "cut.mp4"
    _write_video(src, frames=30)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    proc = run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), src, "--out", out, check=False)
    assert proc.returncode == 1 and "cut.mp4" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.rglob("*"))


def test_empty_folder_and_wrong_video_outputs_are_one_line_errors(onnx_artifacts, tmp_path):
    model = _onnx(onnx_artifacts)
    (tmp_path / "empty").mkdir()
    proc = run_tool("edge_runtime/run.py", "--onnx", model, tmp_path / "empty", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "no images or videos in" in proc.stderr
    src = tmp_path / "clip.mp4"
    _write_video(src, frames=2)
    for out, message in [(tmp_path / "clip_x4.png", "must be a video file"),
                         (tmp_path / "clip_x4.xyz", "must be a video file"),
                         (src / "clip_x4.mp4", "cannot write a video here")]:
        proc = run_tool("edge_runtime/run.py", "--onnx", model, src, "--out", out, check=False)
        assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == ["clip.mp4", "empty"]


def test_bad_benchmark_input_and_flags_are_one_line_errors(onnx_artifacts, tmp_path):
    model = _onnx(onnx_artifacts)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    proc = run_tool("edge_runtime/run.py", "--onnx", model, bad, "--benchmark", "2", check=False)
    assert proc.returncode == 1 and "cannot read image" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_tool("edge_runtime/run.py", "--onnx", model, bad, "--benchmark", "-1", check=False)
    assert proc.returncode == 2 and "--benchmark takes a number of runs" in proc.stderr
    proc = run_tool("edge_runtime/run.py", "--onnx", model, bad, "--margin", "-1", check=False)
    assert proc.returncode == 2 and "margin must be 0 or more" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_tool("edge_runtime/run.py", "--onnx", model, bad, "--scale", "0", check=False)
    assert proc.returncode == 2 and "invalid choice: 0" in proc.stderr


def test_bench_refuses_bad_flags_before_timing(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for args, message in [(["--frame", "abc"], "frame size must look like WxH"),
                          (["--frame", "16x16", "--artifacts", tmp_path / "none"], "no manifest.json in"),
                          (["--frame", "16x16", "--weights", bad], "not a readable checkpoint")]:
        proc = run_tool("edge_runtime/bench.py", *args, "--runs", "1", "--threads", "1", check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_benchmark_prints_json(onnx_artifacts, photos):
    proc = run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), photos / "a.png", "--benchmark", "2")
    rep = json.loads(proc.stdout)
    assert rep["runs"] == 2 and rep["output"] == "200x160" and rep["median_ms"] > 0 and rep["output_mp_per_s"] > 0


BLOCKER = """
import sys, runpy
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'tensorflow'):
            raise ImportError(name + ' is blocked for this test')
sys.meta_path.insert(0, Block())
sys.argv = ['run.py'] + sys.argv[1:]
try:
    runpy.run_path(sys.argv[0] if False else {script!r}, run_name='__main__')
finally:
    assert not any(m.split('.')[0] in ('torch', 'tensorflow') for m in sys.modules), 'heavy module imported'
"""


def test_tflite_path_runs_without_torch_or_tensorflow(tflite_artifacts, photos, tmp_path):
    model = tflite_artifacts / f"drsan_32s_x4_{CONVERT_TILE}_int8.tflite"
    code = BLOCKER.format(script=str(REPO / "edge_runtime" / "run.py"))
    proc = subprocess.run([sys.executable, "-c", code, "--tflite", str(model), str(photos / "a.png"),
                           "--out", str(tmp_path / "o.png")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "o.png").size == (200, 160)
    assert "int8" in proc.stderr and "ai-edge-litert" in proc.stderr


def test_tflite_small_frame_runs_unpadded_and_equals_whole_frame(tflite_artifacts, shipped_x4):
    # A frame smaller than the tile: the interpreter is resized, so neither the DRA coefficients nor the
    # borders see padding, and fp32 TFLite reproduces the whole-frame PyTorch output.
    from drsan_kit.core.metrics import psnr
    from drsan_kit.edge_runtime.backends import open_backend
    from drsan_kit.edge_runtime.upscaler import Upscaler

    frame = np.random.default_rng(3).random((17, 21, 3)).astype(np.float32)
    ref = Upscaler(open_backend("torch", shipped_x4, variant="32s", scale=4)).frame(frame, out_dtype=np.uint8)
    tfl = open_backend("tflite", tflite_artifacts / f"drsan_32s_x4_{CONVERT_TILE}_fp32.tflite", scale=4)
    unpadded = Upscaler(tfl).frame(frame, out_dtype=np.uint8)
    padded = Upscaler(tfl, pad_to_tile=True).frame(frame, out_dtype=np.uint8)
    assert tfl.resizable and unpadded.shape == ref.shape
    assert np.abs(unpadded.astype(int) - ref).max() <= 1
    assert psnr(unpadded, ref) > psnr(padded, ref) + 10
    # and the next full-size window still runs at the model's own shape
    big = np.random.default_rng(4).random((40, 50, 3)).astype(np.float32)
    assert Upscaler(tfl).frame(big).shape == (160, 200, 3)


def test_tflite_runs_an_image_smaller_than_its_tile(tflite_artifacts, photos, tmp_path):
    model = tflite_artifacts / f"drsan_32s_x4_{CONVERT_TILE}_int8.tflite"
    run_tool("edge_runtime/run.py", "--tflite", model, photos / "sub" / "b.jpg", "--out", tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").size == (80, 120)


def test_tflite_tile_flag_resizes_the_model(tflite_artifacts, photos, tmp_path):
    # --tile 0 runs a TFLite model on the whole frame: exactly the PyTorch whole-frame output for fp32.
    model = tflite_artifacts / f"drsan_32s_x4_{CONVERT_TILE}_fp32.tflite"
    proc = run_tool("edge_runtime/run.py", "--tflite", model, photos / "a.png", "--tile", "0",
                    "--out", tmp_path / "whole.png")
    assert "whole frame" in proc.stderr
    run_tool("edge_runtime/run.py", "--torch", "--tile", "0", photos / "a.png", "--out", tmp_path / "ref.png")
    whole = np.asarray(Image.open(tmp_path / "whole.png"), dtype=int)
    ref = np.asarray(Image.open(tmp_path / "ref.png"), dtype=int)
    assert whole.shape == ref.shape == (160, 200, 3)
    assert np.abs(whole - ref).max() <= 1


def test_animated_gif_comes_back_animated(onnx_artifacts, tmp_path):
    frames = [Image.fromarray(np.full((12, 16, 3), 40 * i + 20, np.uint8)) for i in range(4)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=70, loop=0)
    run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), tmp_path / "a.gif", "--out", tmp_path / "o")
    with Image.open(tmp_path / "o" / "a_x4.gif") as out:
        assert (out.n_frames, out.size, out.info["duration"]) == (4, (64, 48), 70)
        out.seek(3)
        assert abs(np.asarray(out.convert("RGB")).mean() - 140) < 3   # the last frame, not the first again
    proc = run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts), tmp_path / "a.gif", "--ext", "jpg",
                    "--out", tmp_path / "j", check=False)
    assert proc.returncode == 1 and "has 4 frames, which .jpg cannot hold" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "j").exists()


def _rotate_mp4(path, quarter_turns_cw=1):
    """Set the track's display matrix (tkhd), as phones do for portrait video stored sideways."""
    import struct

    data = bytearray(path.read_bytes())
    i = data.index(b"tkhd")
    # box type, version/flags, times + track id + reserved + duration, reserved, layer..volume
    off = i + 4 + 4 + (32 if data[i + 4] == 1 else 20) + 8 + 8
    one, minus = 0x00010000, 0xFFFF0000
    a, b, c, d = {1: (0, one, minus, 0), 2: (minus, 0, 0, minus), 3: (0, minus, one, 0)}[quarter_turns_cw]
    struct.pack_into(">9I", data, off, a, b, 0, c, d, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))


def test_phone_video_rotation_is_applied(onnx_artifacts, tmp_path):
    import av

    src = tmp_path / "portrait.mp4"
    _write_video(src, frames=3, marked=True)
    _rotate_mp4(src)   # shown turned 90 degrees clockwise: the block goes to the top-right
    run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts, dynamic=True), "--tile", "0", src,
             "--out", tmp_path / "o")
    with av.open(str(tmp_path / "o" / "portrait_x4.mp4")) as c:
        frame = next(c.decode(video=0))
        rgb = frame.to_ndarray(format="rgb24").astype(float)
    assert rgb.shape[:2] == (192, 160) and frame.rotation == 0   # upright pixels, no rotation left to apply
    assert rgb[:30, -30:].mean() > 200 and rgb[:30, :30].mean() < 120


@pytest.mark.parametrize("ext,codec", [(".mp4", "aac"), (".webm", "libopus")])
def test_video_keeps_its_audio(onnx_artifacts, tmp_path, ext, codec):
    import av

    src = (tmp_path / "talk").with_suffix(ext)
    _write_video(src, frames=3, marked=True, audio=codec)
    run_tool("edge_runtime/run.py", "--onnx", _onnx(onnx_artifacts, dynamic=True), "--tile", "0", src,
             "--out", tmp_path / "o")
    with av.open(str(tmp_path / "o" / f"talk_x4{ext}")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert c.streams.audio[0].codec_context.name == codec.removeprefix("lib")   # copied, not re-encoded
        samples = sum(f.samples for f in c.decode(audio=0))
    assert abs(samples - 24000) < 2400   # the whole half second of sound


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-dynamic", "tflite"])
def test_every_backend_runs_a_small_image_with_its_defaults(request, backend, tmp_path):
    # 40x30: smaller than the default 192x336 window of torch and dynamic ONNX, larger than the fixed 24x32 tile
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    model = {"torch": lambda: ["--torch"],
             "onnx": lambda: ["--onnx", _onnx(request.getfixturevalue("onnx_artifacts"))],
             "onnx-dynamic": lambda: ["--onnx", _onnx(request.getfixturevalue("onnx_artifacts"), dynamic=True)],
             "tflite": lambda: ["--tflite", request.getfixturevalue("tflite_artifacts")
                                / f"drsan_32s_x4_{CONVERT_TILE}_int8.tflite"]}[backend]()
    run_tool("edge_runtime/run.py", *model, tmp_path / "s.png", "--out", tmp_path / "o.png")
    assert Image.open(tmp_path / "o.png").size == (160, 120)
    if backend == "onnx-dynamic":   # the frame ran whole: the same as asking for the whole frame
        run_tool("edge_runtime/run.py", *model, "--tile", "0", tmp_path / "s.png", "--out", tmp_path / "w.png")
        assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), np.asarray(Image.open(tmp_path / "w.png")))


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_video_writer_keeps_odd_sizes(tmp_path, ext):
    import av
    from fractions import Fraction

    from drsan_kit.edge_runtime.video import VideoWriter

    path = (tmp_path / "odd").with_suffix(ext)
    with VideoWriter(path, Fraction(10)) as writer:
        for i in range(3):
            writer.write(np.full((49, 65, 3), 60 * i, np.uint8))
    assert (writer.note is not None) == (ext == ".mp4")   # VP9 stores odd sizes in 4:2:0, H.264 needs 4:4:4
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (49, 65, 3)


def test_video_writer_where_no_file_can_be_is_a_video_error(tmp_path):
    from fractions import Fraction

    from drsan_kit.edge_runtime.video import VideoError, VideoWriter

    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file" / "v.mp4", tmp_path / "v.xyz"):
        with pytest.raises(VideoError, match="cannot write a video here"):
            with VideoWriter(path, Fraction(10)):
                pass
    assert sorted(f.name for f in tmp_path.iterdir()) == ["file"]


def test_odd_video_at_x3_keeps_its_exact_size(tmp_path):
    import av
    from fractions import Fraction

    from drsan_kit.edge_runtime.video import VideoWriter

    src = tmp_path / "odd.mp4"
    with VideoWriter(src, Fraction(12)) as writer:
        for i in range(3):
            writer.write(np.random.default_rng(i).integers(0, 256, (49, 65, 3), dtype=np.uint8))
    proc = run_tool("edge_runtime/run.py", "--torch", "--scale", "3", src, "--out", tmp_path / "o")
    assert "odd side" in proc.stderr and "yuv444p" in proc.stderr
    with av.open(str(tmp_path / "o" / "odd_x3.mp4")) as c:
        s = c.streams.video[0]
        assert (s.width, s.height, sum(1 for _ in c.decode(video=0))) == (195, 147, 3)


def test_save_progress_counts_every_byte_and_changes_nothing(tmp_path):
    from drsan_kit.core.images import LoadedImage, save_image

    img = LoadedImage(np.random.default_rng(1).random((64, 96, 3)).astype(np.float32))
    for ext in ("png", "jpg", "tif", "bmp"):
        written = []
        save_image(tmp_path / f"a.{ext}", img)
        save_image(tmp_path / f"b.{ext}", img, on_write=written.append)
        data = (tmp_path / f"b.{ext}").read_bytes()
        assert data == (tmp_path / f"a.{ext}").read_bytes() and sum(written) == len(data)
        assert ext != "png" or len(written) > 1   # PNG arrives in chunks, so a bar can move


def test_drift_reference_is_strict_fp32_on_cuda_and_says_so(monkeypatch, shipped_x4):
    from types import SimpleNamespace

    import torch

    from drsan_kit.eval.drift import Reference

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert Reference.strict_fp32("cpu") == "FP32"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32   # no GPU, nothing to change
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a test GPU")
    assert Reference.strict_fp32("cuda") == "strict FP32, TF32 off (a test GPU)"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    ref = Reference(SimpleNamespace(weights=shipped_x4, variant="32s", scale=4), None)
    assert ref.device == f"{ref.backend.name}, FP32"   # what drift.json and drift.md record


def test_tflite_uses_every_available_core_by_default(tflite_artifacts, monkeypatch):
    """Left to its own default, the Python interpreter runs XNNPACK on one thread."""
    import os

    from drsan_kit.edge_runtime.backends import open_backend, tflite

    Interpreter, _ = tflite._interpreter_class()
    asked = []

    def recording(*args, num_threads=None, **kwargs):
        asked.append(num_threads)
        return Interpreter(*args, num_threads=num_threads, **kwargs)

    monkeypatch.setattr(tflite, "_interpreter_class", lambda: (recording, "recorded"))
    model = tflite_artifacts / f"drsan_32s_x4_{CONVERT_TILE}_fp32.tflite"
    open_backend("tflite", model, scale=4)
    open_backend("tflite", model, scale=4, threads=1)
    assert asked == [len(os.sched_getaffinity(0)), 1]
