"""Video in and out through PyAV (FFmpeg), numpy frames only.

Frames are (H, W, 3) uint8 RGB, turned upright: phone videos are stored sideways
with a rotation in their metadata, and the reader applies it, as players do. The
writer encodes H.264 (webm: VP9) at the source frame rate and at exactly the size
it is given: in 4:2:0 (yuv420p, what every player plays) when both sides are even,
else in H.264 4:4:4 (yuv444p), because 4:2:0 H.264 cannot store an odd side (VP9
can). It copies the source's first audio track unchanged (encoded again only
where the container cannot store its codec: AAC into webm becomes Opus), and writes
into a temporary file that is renamed into place only when the whole video was written.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.atomic import temp_beside

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v", ".ts", ".mts", ".m2ts", ".3gp")
# the audio codec a container gets when it cannot store the source's (any other: AAC)
_AUDIO_CODECS = {".webm": "libopus"}
_MOV_FAMILY = (".mp4", ".mov", ".m4v", ".3gp")
# by channel count: layouts that both the AAC and the Opus encoder accept
_STANDARD_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


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
            stream = _video_stream(container, path)
            rate = _rate(stream)
            first = next(container.decode(stream), None)
            turns = _quarter_turns(first) if first is not None else 0
            w, h = (stream.height, stream.width) if turns % 2 else (stream.width, stream.height)
            return {"fps": rate, "frames": stream.frames or None, "width": w, "height": h,
                    "audio": bool(container.streams.audio)}
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: cannot read video ({exc.__class__.__name__}: {exc})") from None


def _video_stream(container, path):
    """The first video stream; VideoError telling a file without one from a damaged container."""
    if container.streams.video:
        return container.streams.video[0]
    if container.streams.audio:
        raise VideoError(f"{path}: no video stream (the file holds only audio)")
    # an mp4 or mov keeps its index at the end: cut short, it opens with no audio or video stream at all
    raise VideoError(f"{path}: no audio or video stream found: the file is cut short or damaged")


def read_frames(path, times: bool = False) -> Iterator:
    """Decoded RGB frames; a stream that breaks off mid-way, or ends clearly before the length its file
    declares, raises VideoError after the last good frame.

    times: yield (rgb, seconds, shown_for) instead, each frame's presentation time and how long it is
    shown (its stored duration, else 1 / fps; both None for a frame without a timestamp), so that a writer can keep a variable frame rate."""
    import av

    n, first, end = 0, None, None
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                turns = _quarter_turns(frame)
                shown = None
                if frame.time is not None:
                    first = frame.time if first is None else first
                    shown = _frame_seconds(frame, stream)
                    end = frame.time + shown
                rgb = np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
                yield (rgb, frame.time, shown) if times else rgb
                n += 1
            if end is not None:
                _check_length(path, container, stream, n, first, end)
    except av.FFmpegError as exc:
        if n == 0:
            raise VideoError(f"{path}: cannot read video ({exc.__class__.__name__}: {exc})") from None
        raise VideoError(f"{path}: video ends early or is corrupt after {n} frames ({exc})") from None
    if n == 0:
        raise VideoError(f"{path}: no decodable video frames (cut short or damaged?)")


def _frame_seconds(frame, stream) -> float:
    """How long a decoded frame is shown: its own duration when the container stores one, else 1 / fps."""
    if frame.duration and frame.time_base:
        return float(frame.duration * frame.time_base)
    return _interval(stream)


def _rate(stream) -> Fraction:
    """Frames per second: the stream's average, else FFmpeg's guess, else 25."""
    return Fraction(stream.average_rate or stream.guessed_rate or Fraction(25))


def _interval(stream) -> float:
    return float(1 / _rate(stream))


def _check_length(path, container, stream, n: int, first: float, end: float):
    """VideoError when the frames decoded stop clearly before the end the video track declares.

    A file cut short (a copy or download that stopped) or damaged mid-way usually decodes without any
    FFmpeg error: the demuxer just stops at the damage. Only the track's own length is trusted: the
    container's duration also covers audio, which may run longer, and a frame count in the header
    counts frames that an edit list hides (a stream-copied cut keeps a whole GOP before its start).
    A complete file ends within a frame of its declared length; the tolerance, more than two frame
    intervals AND more than a tenth of the length, leaves room for a last frame whose display time the
    container does not store (variable frame rate) and still catches a file that lost part of its end."""
    declared = _declared_end(container, stream, first)
    if declared is None:
        return
    missing = declared - end
    length = declared - first
    if missing > max(2 * _interval(stream), 0.1 * length):
        raise VideoError(f"{path}: video ends early: {n} frames ({end - first:.2f} s) decoded, but the file "
                         f"declares {length:.2f} s (cut short or damaged)")


def _declared_end(container, stream, first: float) -> float | None:
    """Where the container says the video track ends (seconds), or None when it does not say (MPEG-TS
    never does: a transport stream cut short plays up to its end)."""
    # AVI has no edit lists, so the frame count in its header is the track's length; FFmpeg's own duration
    # for an AVI whose index was cut off is counted from the frames that are left
    if container.format.name == "avi" and stream.frames:
        return first + stream.frames * _interval(stream)
    if stream.duration:
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else first
        return start + float(stream.duration * stream.time_base)
    # Matroska/WebM keep a track's length in a tag ("00:00:01.200000000"; FFmpeg and mkvmerge write it).
    # Taken as the end time, not added to the start: for a track that starts late that errs towards
    # accepting the file, never towards refusing a complete one
    tag = next((v for k, v in stream.metadata.items() if k.upper().startswith("DURATION")), None)
    return _clock_seconds(tag) if tag else None


def _clock_seconds(text: str) -> float | None:
    """"HH:MM:SS.fraction" as seconds; None for anything else."""
    try:
        h, m, s = text.strip().split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError:
        return None


class VideoWriter:
    """Context manager; on any exception, or when the file cannot be finished, the partial file is
    removed, and a failure to finish raises VideoError: nothing is left at `path` unless all of it was
    written.

    audio_from: a video whose first audio track is copied into the output (re-encoded only where the
    output container cannot store its codec; `note` then says so)."""

    # a time base fine enough for any source's frame times (the MPEG clock); used only when write() is
    # given frame times
    _TIMED_BASE = Fraction(1, 90000)

    def __init__(self, path, fps: Fraction, codec: str = "libx264", crf: int = 18, audio_from=None):
        self.path, self.fps, self.codec, self.crf = Path(path), fps, codec, crf
        self.tmp = None   # made unique in __enter__: two runs writing one output must not share it
        self.container = self.stream = None
        self.audio_from, self.source, self.audio = audio_from, None, None
        self.reencoded = False   # the audio is encoded again instead of copied (see _add_audio)
        self.note = None   # set when the encoding differs from the usual one, and why
        self._first_time = self._last_pts = None
        self._shown = {}   # pts -> duration of frames given a time: the encoder drops frame durations

    def __enter__(self):
        import av

        try:
            self.tmp = temp_beside(self.path, keep_suffix=True)   # the suffix tells FFmpeg the container
            self.container = av.open(str(self.tmp), mode="w")
            if self.audio_from is not None:
                self.source = av.open(str(self.audio_from))
        except (OSError, ValueError, av.FFmpegError) as exc:   # a folder that is a file, an unknown container
            self.__exit__(type(exc), exc, None)
            raise VideoError(f"{self.path}: cannot write a video here ({exc})") from None
        return self

    def _audio_shift(self, src_audio) -> int:
        """Source audio ticks before the first video frame: cut, so that audio and video start together."""
        video = self.source.streams.video[0]
        start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
        return round(start / src_audio.time_base)

    def _copy_audio(self):
        """The source's audio packets, unchanged but for their shifted timestamps.

        Packets before the track's own start time are the encoder's priming (AAC, Opus and AC-3 start
        with one, at a negative time): the decoder needs them to get the first samples right, so they
        stay wherever the audio they prime is kept. Audio that plays before the first video frame (a
        video that starts later than its sound) is cut."""
        src_audio = self.source.streams.audio[0]
        shift = self._audio_shift(src_audio)
        start = src_audio.start_time
        for packet in self.source.demux(src_audio):
            if packet.pts is None:
                continue   # the demuxer's flush packet
            if start is None:
                start = packet.pts
            priming = packet.pts < start
            if packet.pts - shift < 0 and not (priming and start >= shift):
                continue
            packet.pts -= shift
            packet.dts = packet.dts - shift if packet.dts is not None else None
            packet.stream = self.audio
            self.container.mux(packet)

    def _encode_audio(self):
        """The source's audio decoded and encoded again, for a container that cannot store its codec."""
        src_audio = self.source.streams.audio[0]
        shift = self._audio_shift(src_audio)
        for frame in self.source.decode(src_audio):
            if frame.pts is None or frame.pts - shift < 0:
                continue   # the decoder already dropped the priming: this is sound before the video
            frame.pts -= shift
            for packet in self.audio.encode(frame):
                self.container.mux(packet)
        for packet in self.audio.encode(None):
            self.container.mux(packet)

    def _can_copy(self, src_audio) -> bool:
        """Whether the output container stores the source's audio packets as they are.

        add_stream_from_template refuses only codecs the muxer has no tag for; some it accepts fail later,
        when the header or trailer is written (Opus or FLAC in .mov, PCM with an unnamed channel layout
        in .mp4), which would lose the whole video at the end. So a few of the source's packets are first
        muxed into a throwaway container of the same format in memory: if that closes cleanly, so will the
        real one."""
        import io

        import av

        fmt = self.container.format.name
        try:
            with av.open(str(self.audio_from)) as source, av.open(io.BytesIO(), "w", format=fmt) as trial:
                audio = source.streams.audio[0]
                stream = trial.add_stream_from_template(audio)
                for k, packet in enumerate(source.demux(audio)):
                    if k >= 64:
                        break
                    if packet.dts is not None:
                        packet.stream = stream
                        trial.mux(packet)
        except (ValueError, av.FFmpegError):
            return False
        return True

    def _add_audio(self, src_audio):
        """The output's audio stream: the source track as it is when the container can store its codec,
        else encoded again in the container's usual one (webm holds only Opus and Vorbis, so an mp4's AAC
        becomes Opus), with a note, since dropping or refusing the sound is not what anyone asks for."""
        import av

        if self._can_copy(src_audio):   # it added the same stream to a container of this format
            return self.container.add_stream_from_template(src_audio)
        codec = _AUDIO_CODECS.get(self.path.suffix.lower(), "aac")
        name = src_audio.codec_context.name
        try:
            rates = av.Codec(codec, "w").audio_rates
            rate = src_audio.rate if not rates or src_audio.rate in rates else max(rates)
            # a layout known only by its channel count ("2 channels", as PCM in Matroska or AVI has) is
            # refused by the AAC encoder, and Opus takes only some named ones: the encoder gets the
            # standard layout for the count, and its resampler maps the samples over
            layout = _STANDARD_LAYOUTS.get(src_audio.layout.nb_channels, src_audio.layout)
            stream = self.container.add_stream(codec, rate=rate, layout=layout)
        except (ValueError, av.FFmpegError) as exc:
            raise VideoError(f"{self.path}: {self.path.suffix} cannot hold the source's {name} audio, and "
                             f"re-encoding it as {codec} failed ({exc}); use .mkv, which holds any audio") from None
        self.reencoded = True
        self._add_note(f"{self.path.suffix} cannot hold the source's {name} audio: re-encoded as "
                       f"{codec.removeprefix('lib')}")
        return stream

    def _add_note(self, text: str):
        self.note = text if self.note is None else f"{self.note}; {text}"

    def write(self, rgb: np.ndarray, time: float | None = None, shown: float | None = None):
        """One frame. time, shown: the source frame's presentation time and how long it is shown, in
        seconds (read_frames(path, times=True) gives both); with them a variable frame rate, or a frame
        held for seconds, keeps its timing, which a constant rate from `fps` would squeeze."""
        import av

        h, w = rgb.shape[:2]
        if self.stream is None:
            codec = "libvpx-vp9" if self.path.suffix.lower() == ".webm" else self.codec
            pix_fmt = "yuv420p"
            if codec == "libx264" and (w % 2 or h % 2):
                pix_fmt = "yuv444p"
                self._add_note(f"{w}x{h} has an odd side, which 4:2:0 H.264 cannot store: encoded as H.264 4:4:4 "
                               "(yuv444p) to keep every pixel; some browsers and hardware players play only 4:2:0")
            self.stream = self.container.add_stream(codec, rate=self.fps)
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, pix_fmt
            if time is not None:
                self.stream.codec_context.time_base = self._TIMED_BASE
                self._first_time = time
            if codec == "libx264":
                options = {"crf": str(self.crf)}
                if time is not None and self.path.suffix.lower() in _MOV_FAMILY:
                    # an mp4 track ends at its last packet's decode time plus duration; with B-frames the
                    # last packet decodes long before a frame held at the end is shown, and the video
                    # would end early (Matroska and WebM end at the last presentation time)
                    options["bf"] = "0"
                self.stream.options = options
            if self.source is not None and self.source.streams.audio:
                # video first, as players expect; every stream must exist before the first packet
                self.audio = self._add_audio(self.source.streams.audio[0])
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if self._first_time is not None:
            base = self._TIMED_BASE
            step = round(1 / (self.fps * base)) if self.fps else 1
            if time is None:   # a frame without a timestamp follows the one before at the nominal rate
                pts = self._last_pts + step
            else:   # pts must rise: a repeated or backward time moves one tick past the frame before
                pts = round((time - self._first_time) / base)
                pts = pts if self._last_pts is None else max(pts, self._last_pts + 1)
            frame.pts, frame.time_base = pts, base
            self._shown[pts] = max(1, round(shown / base)) if shown else step
            self._last_pts = pts
        try:   # the first packet writes the header, where the muxer may refuse what it was given
            for packet in self.stream.encode(frame):
                self._mux_video(packet)
        except av.FFmpegError as exc:
            raise VideoError(f"{self.path}: cannot write the video ({exc})") from None

    def _mux_video(self, packet):
        # the last frame's duration is the end of the video: a frame held for seconds (a slideshow, a
        # paused screen recording) would otherwise end one nominal frame interval after it starts
        shown = self._shown.pop(packet.pts, None) if packet.time_base == self._TIMED_BASE else None
        if shown is not None:
            packet.duration = shown
        self.container.mux(packet)

    def __exit__(self, exc_type, exc, tb):
        import av

        failure = None
        try:
            if exc_type is None and self.stream is not None:
                for packet in self.stream.encode():
                    self._mux_video(packet)
                if self.audio is not None:
                    self._encode_audio() if self.reencoded else self._copy_audio()
        except av.FFmpegError as err:
            failure = err
        # closing writes the trailer (an mp4's index), the last place the muxer can refuse the file
        for c in (self.container, self.source):
            try:
                if c is not None:
                    c.close()
            except (OSError, av.FFmpegError) as err:
                failure = failure or err
        done = exc_type is None and self.stream is not None and failure is None
        try:
            if done:
                os.replace(self.tmp, self.path)
            elif self.tmp is not None:
                self.tmp.unlink(missing_ok=True)
        except OSError as err:   # the destination became a folder, or the disk went read-only
            failure = failure or err
            done = False
            self.tmp.unlink(missing_ok=True)
        if exc_type is None and not done:
            why = failure if failure is not None else "no frames were written"
            raise VideoError(f"{self.audio_from or self.path}: cannot finish the video ({why})") from None
        return False
