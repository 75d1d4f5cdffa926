"""Video in and out through PyAV (FFmpeg), numpy frames only.

Frames are (H, W, 3) uint8 RGB. The writer encodes H.264 (yuv420p, so odd sizes
lose their last row/column) at the source frame rate, into a temporary file
that is renamed into place only when the whole video was written.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")


class VideoError(ValueError):
    pass


def probe(path) -> dict:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            return {"fps": Fraction(rate), "frames": stream.frames or None, "width": stream.width,
                    "height": stream.height}
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: cannot read video ({exc.__class__.__name__}: {exc})") from None


def read_frames(path) -> Iterator[np.ndarray]:
    """Decoded RGB frames; a stream that breaks off mid-way raises VideoError naming the frame."""
    import av

    n = 0
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
                n += 1
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: video ends early or is corrupt after {n} frames ({exc})") from None
    if n == 0:
        raise VideoError(f"{path}: no decodable video frames")


class VideoWriter:
    """Context manager; on any exception the partial file is removed."""

    def __init__(self, path, fps: Fraction, codec: str = "libx264", crf: int = 18):
        self.path, self.fps, self.codec, self.crf = Path(path), fps, codec, crf
        self.tmp = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self.container = self.stream = None

    def __enter__(self):
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.tmp), mode="w")
        return self

    def write(self, rgb: np.ndarray):
        import av

        h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
        if self.stream is None:
            codec = self.codec
            if self.path.suffix.lower() == ".webm":
                codec = "libvpx-vp9"
            self.stream = self.container.add_stream(codec, rate=self.fps)
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
            if codec == "libx264":
                self.stream.options = {"crf": str(self.crf)}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None and self.stream is not None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
        if exc_type is None and self.stream is not None:
            os.replace(self.tmp, self.path)
        elif self.tmp.exists():
            self.tmp.unlink()
        return False
