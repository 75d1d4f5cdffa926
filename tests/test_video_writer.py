"""VideoWriter (edge_runtime/video.py): a video is either written whole or not at all, with an error;
audio a container cannot store comes out re-encoded, not lost; copied audio decodes to exactly the
source's samples, its first ones included; a variable frame rate keeps its timing.

run.py's main() runs in-process with the stand-in model of test_run_robustness, on tiny videos.
"""
from fractions import Fraction

import numpy as np
import pytest

from conftest import encode_tone
from drsan_kit.edge_runtime import run
from drsan_kit.edge_runtime.contract import choose_window
from drsan_kit.edge_runtime.video import VideoError, VideoWriter, read_frames
from test_run_robustness import Nearest, files_under, one_error_line, write_video


@pytest.fixture
def runtime(monkeypatch, capsys):
    """run.py's main with the stand-in model: runtime(*args) -> (exit status, stderr)."""
    monkeypatch.setattr(run, "open_model", lambda args: (Nearest(), choose_window(None, False, args.tile), None))

    def main(*args):
        code = run.main(["--onnx", "stand-in.onnx", "--quiet", *map(str, args)])
        return code, capsys.readouterr().err
    return main


def stereo_source(path, codec):
    """A tiny video with a 0.3 s two-channel tone in `codec` (PCM in Matroska or AVI comes back with a
    layout known only by its channel count, "2 channels", which mp4 and AAC refuse)."""
    import av

    with av.open(str(path), "w") as c:
        video = c.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        sound = c.add_stream(codec, rate=48000, layout="stereo")
        for i in range(4):
            for p in video.encode(av.VideoFrame.from_ndarray(np.full((24, 32, 3), 50 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in video.encode():
            c.mux(p)
        tone = (0.3 * np.sin(np.arange(14400) / 10)).astype(np.float32)
        step = sound.codec_context.frame_size or 960
        for k in range(0, tone.size, step):
            frame = av.AudioFrame.from_ndarray(np.stack([tone[k:k + step]] * 2), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, k
            for p in sound.encode(frame):
                c.mux(p)
        for p in sound.encode():
            c.mux(p)
    return path


def samples(path) -> np.ndarray:
    """The first audio track decoded: its first channel."""
    import av

    with av.open(str(path)) as c:
        frames = [f.to_ndarray() if f.format.is_planar else f.to_ndarray().reshape(-1, f.layout.nb_channels).T
                  for f in c.decode(c.streams.audio[0])]
    return np.concatenate([f[0] for f in frames])


def codecs(path) -> list[str]:
    import av

    with av.open(str(path)) as c:
        return [s.codec_context.name for s in c.streams]


def test_a_video_that_cannot_be_finished_is_an_error_and_leaves_nothing(runtime, tmp_path, monkeypatch):
    """PCM with a channel layout known only by its count goes into an mp4 header without complaint, and
    the mp4 trailer then refuses it: without the trial mux, closing fails, and that must fail the input."""
    from drsan_kit.edge_runtime import video

    src = stereo_source(tmp_path / "pcm.mkv", "pcm_s16le")
    monkeypatch.setattr(video.VideoWriter, "_can_copy", lambda self, audio: True)
    code, err = runtime(src, "--out", tmp_path / "o" / "pcm.mp4")
    assert code != 0 and "cannot finish the video" in one_error_line(err), err
    assert "wrote" not in err and files_under(tmp_path / "o") == []


def test_a_writer_given_no_frames_is_an_error(tmp_path):
    with pytest.raises(VideoError, match="cannot finish the video"):
        with VideoWriter(tmp_path / "empty.mp4", Fraction(10)):
            pass
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("codec, src_ext, out_ext", [
    ("libopus", ".mkv", ".mov"), ("flac", ".mkv", ".mov"), ("pcm_s16le", ".mkv", ".mp4"),
    ("pcm_s16le", ".mkv", ".m4v"), ("pcm_s16le", ".avi", ".3gp"), ("aac", ".mp4", ".webm")])
def test_audio_the_container_cannot_store_is_re_encoded_with_a_note(runtime, tmp_path, codec, src_ext, out_ext):
    src = stereo_source(tmp_path / f"src{src_ext}", codec)
    dst = tmp_path / "o" / f"out{out_ext}"
    code, err = runtime(src, "--out", dst)
    assert code == 0 and "error" not in err and "Traceback" not in err, err
    assert "re-encoded as" in err
    assert codecs(dst)[1] == ("opus" if out_ext == ".webm" else "aac")
    assert abs(samples(dst).size - samples(src).size) <= 2048   # the sound is all there
    assert files_under(tmp_path / "o") == [dst.name]


@pytest.mark.parametrize("src_ext, out_ext", [(".mp4", ".mp4"), (".mkv", ".mkv"), (".mkv", ".mp4")])
def test_copied_audio_keeps_its_priming_packet(runtime, tmp_path, src_ext, out_ext):
    """AAC starts with a priming packet at a negative time; without it the first 1024 samples decode
    wrong (mp4) or the track starts 21 ms late (mkv)."""
    src = write_video(tmp_path / f"src{src_ext}", audio="aac")
    dst = tmp_path / "o" / f"out{out_ext}"
    code, err = runtime(src, "--out", dst)
    assert code == 0 and "re-encoded" not in err, err
    a, b = samples(src), samples(dst)
    assert a.size == b.size and np.array_equal(a, b)


def test_audio_before_a_late_video_start_is_still_cut(tmp_path):
    """A video whose frames start 1 s into the file: the sound of that first second is not copied."""
    import av

    src = tmp_path / "late.mkv"
    with av.open(str(src), "w") as c:
        video = c.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        video.codec_context.time_base = Fraction(1, 10)
        sound = c.add_stream("aac", rate=48000, layout="mono")
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 40 * i, np.uint8), format="rgb24")
            frame.pts = 10 + i
            for p in video.encode(frame):
                c.mux(p)
        for p in video.encode():
            c.mux(p)
        encode_tone(c, sound, (0.3 * np.sin(np.arange(48000 * 2) / 10)).astype(np.float32)[None])
    dst = tmp_path / "out.mkv"
    with VideoWriter(dst, Fraction(10), audio_from=src) as writer:
        for rgb in read_frames(src):
            writer.write(rgb)
    assert 0.9 * 48000 <= samples(dst).size <= 1.1 * 48000   # 2 s of sound less the first second


@pytest.mark.parametrize("ext", [".mkv", ".mp4", ".webm"])
def test_frame_times_given_to_the_writer_are_kept(tmp_path, ext):
    """30 fps for a third of a second, then a frame at 1 s held for 2 s: a constant rate would end the
    video after 11 frame intervals."""
    import av

    times = [i / 30 for i in range(10)] + [1.0]
    shown = [1 / 30] * 10 + [2.0]
    dst = tmp_path / f"vfr{ext}"
    with VideoWriter(dst, Fraction(30)) as writer:
        for i, (t, s) in enumerate(zip(times, shown)):
            writer.write(np.full((24, 32, 3), 20 * i, np.uint8), time=t, shown=s)
    back = list(read_frames(dst, times=True))
    assert [round(t, 2) for _, t, _ in back] == [round(t, 2) for t in times]
    assert back[-1][1] + back[-1][2] == pytest.approx(3.0, abs=0.05)
    with av.open(str(dst)) as c:
        assert c.duration / 1e6 == pytest.approx(3.0, abs=0.05)


def test_read_frames_times_follow_the_source(tmp_path):
    src = write_video(tmp_path / "src.mp4", frames=5, fps=10)
    back = list(read_frames(src, times=True))
    assert [round(t, 3) for _, t, _ in back] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert all(s == pytest.approx(0.1) for _, _, s in back)
    assert all(np.array_equal(a, b) for (a, _, _), b in zip(back, read_frames(src)))


def test_two_writers_of_one_output_do_not_share_a_temporary_file(tmp_path):
    dst = tmp_path / "same.mp4"
    frame = np.zeros((16, 16, 3), np.uint8)
    with VideoWriter(dst, Fraction(10)) as first, VideoWriter(dst, Fraction(10)) as second:
        assert first.tmp != second.tmp and first.tmp.suffix == ".mp4" and first.tmp.parent == tmp_path
        first.write(frame)
        second.write(frame + 255)
    assert dst.exists() and [p.name for p in tmp_path.iterdir()] == ["same.mp4"]
