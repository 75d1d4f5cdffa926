"""Video in and out through PyAV (FFmpeg), numpy frames only.

Frames are (H, W, 3) uint8 RGB, turned upright: phone videos are stored sideways
with a rotation in their metadata, and the reader applies it, as players do. The
writer encodes H.264 (webm: VP9) at the source frame rate and at exactly the size
it is given: in 4:2:0 (yuv420p, what every player plays) when both sides are even,
else in H.264 4:4:4 (yuv444p), because 4:2:0 H.264 cannot store an odd side (VP9
can). It copies the source's first audio track unchanged, and writes into a
temporary file that is renamed into place only when the whole video was written.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".ts", ".mts", ".m2ts", ".3gp")


class VideoError(ValueError):
    pass


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that make a decoded frame upright (its display matrix; PyAV >= 13)."""
    return round(getattr(frame, "rotation", 0) / 90) % 4


def probe(path) -> dict:
    """fps, frame count (None if the container does not say), upright width and height, audio or not."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            first = next(container.decode(video=0), None)
            turns = _quarter_turns(first) if first is not None else 0
            w, h = (stream.height, stream.width) if turns % 2 else (stream.width, stream.height)
            return {"fps": Fraction(rate), "frames": stream.frames or None, "width": w, "height": h,
                    "audio": bool(container.streams.audio)}
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: cannot read video ({exc.__class__.__name__}: {exc})") from None


def read_frames(path) -> Iterator[np.ndarray]:
    """Decoded RGB frames; a stream that breaks off mid-way raises VideoError naming the frame."""
    import av

    n = 0
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                rgb = frame.to_ndarray(format="rgb24")
                turns = _quarter_turns(frame)
                yield np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
                n += 1
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: video ends early or is corrupt after {n} frames ({exc})") from None
    if n == 0:
        raise VideoError(f"{path}: no decodable video frames")


class VideoWriter:
    """Context manager; on any exception the partial file is removed.

    audio_from: a video whose first audio track is copied (not re-encoded) into the output."""

    def __init__(self, path, fps: Fraction, codec: str = "libx264", crf: int = 18, audio_from=None):
        self.path, self.fps, self.codec, self.crf = Path(path), fps, codec, crf
        self.tmp = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self.container = self.stream = None
        self.audio_from, self.source, self.audio = audio_from, None, None
        self.note = None   # set when the encoding differs from the usual one, and why

    def __enter__(self):
        import av

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.tmp), mode="w")
            if self.audio_from is not None:
                self.source = av.open(str(self.audio_from))
        except (OSError, ValueError, av.FFmpegError) as exc:   # a folder that is a file, an unknown container
            self.__exit__(type(exc), exc, None)
            raise VideoError(f"{self.path}: cannot write a video here ({exc})") from None
        return self

    def _copy_audio(self):
        """The source's audio packets, shifted so that audio and video start together as in the source."""
        src_audio = self.source.streams.audio[0]
        video = self.source.streams.video[0]
        start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
        shift = round(start / src_audio.time_base)
        for packet in self.source.demux(src_audio):
            if packet.pts is None or packet.pts - shift < 0:
                continue   # flush packets, and audio from before the first video frame
            packet.pts -= shift
            packet.dts = packet.dts - shift if packet.dts is not None else None
            packet.stream = self.audio
            self.container.mux(packet)

    def write(self, rgb: np.ndarray):
        import av

        h, w = rgb.shape[:2]
        if self.stream is None:
            codec = "libvpx-vp9" if self.path.suffix.lower() == ".webm" else self.codec
            pix_fmt = "yuv420p"
            if codec == "libx264" and (w % 2 or h % 2):
                pix_fmt = "yuv444p"
                self.note = (f"{w}x{h} has an odd side, which 4:2:0 H.264 cannot store: encoded as H.264 4:4:4 "
                             "(yuv444p) to keep every pixel; some browsers and hardware players play only 4:2:0")
            self.stream = self.container.add_stream(codec, rate=self.fps)
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, pix_fmt
            if codec == "libx264":
                self.stream.options = {"crf": str(self.crf)}
            if self.source is not None and self.source.streams.audio:
                # video first, as players expect; every stream must exist before the first packet
                self.audio = self.container.add_stream_from_template(self.source.streams.audio[0])
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def __exit__(self, exc_type, exc, tb):
        import av

        ok = exc_type is None and self.stream is not None
        try:
            if ok:
                for packet in self.stream.encode():
                    self.container.mux(packet)
                if self.audio is not None:
                    self._copy_audio()
        except av.FFmpegError as err:
            ok = False
            raise VideoError(f"{self.audio_from or self.path}: cannot finish the video ({err})") from None
        finally:
            for c in (self.container, self.source):
                try:
                    if c is not None:
                        c.close()
                except av.FFmpegError:
                    ok = False
            if ok:
                os.replace(self.tmp, self.path)
            elif self.tmp.exists():
                self.tmp.unlink()
        return False
