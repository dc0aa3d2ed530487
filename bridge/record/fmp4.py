"""Fragmented MP4 from Annex B H.264 access units, written to a Python sink as it goes.

FFmpeg's mov muxer (through PyAV's custom I/O) does the box work: an `ftyp` + empty `moov`
(its `avcC` built from the first keyframe's SPS/PPS) and then one `moof` + `mdat` per GOP, with
the samples converted from Annex B to length-prefixed NAL units. The sink has only `write`, so
FFmpeg sees a non-seekable output and never goes back to patch a header: every byte is final
when it is written, and nothing is written to disk unless the sink does so.

This module does the timestamp work FFmpeg cannot do from our packets, which carry a pts only:
timestamps rebased to 0 on a 90 kHz clock, decode timestamps derived per GOP (cameras with
B-frames send pts out of order), strictly increasing dts even when a camera repeats a pts, and
explicit durations so the last frame of each fragment and of the clip has its real length.

A clip of a camera with sound gets a second track, AAC (`ClipAudio`, made by
bridge.record.clip_audio): each fragment holds the audio frames that start before its video
ends, muxed with decode times of their own (track 2's `tfdt`s, in audio samples); the video's
decode times start one AAC frame later (`video_delay`, added like a part's offset), so the sound
has that frame of pre-roll before the first picture. The muxer is told to write each track's
first decode time as it is (`frag_discont`, no `avoid_negative_ts`, no edit list): by default
it would move the audio's first frame onto the first picture, while the audio of a part may
start a little after it, and must stay there.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
import av.container
import av.stream

from bridge.media.aac import AacPacket
from bridge.media.h264 import NAL_PPS, NAL_SPS, join_annexb, nal_type, split_annexb
from bridge.media.mp4boxes import FragmentRebaser
from bridge.media.packet import VideoPacket

TIMESCALE = 90000
TIME_BASE = Fraction(1, TIMESCALE)
# skip_trailer: no `mfra` index at the end; the caller may append a padding `free` box after
# finish(), and an `mfra` that is not the last box would only confuse readers that look for it.
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+skip_trailer"
DEFAULT_FRAME_SECONDS = 1 / 30
VIDEO_TRACK, AUDIO_TRACK = 1, 2  # track_IDs: FFmpeg numbers the streams in the order added


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class ClipAudio(Protocol):
    """A clip's sound (bridge.record.clip_audio.PartAudio), muxed beside its video."""

    rate: int  # the track's timescale
    offset: int  # samples added to its `tfdt`s: the part's place on the event's timeline
    video_delay: int  # ticks added to the video's `tfdt`s too: the sound starts a frame earlier

    def add_stream(self, container: av.container.OutputContainer) -> av.stream.Stream: ...

    def frames_until(self, video_end: int, lead: int, last: bool) -> list[AacPacket]:
        """AAC frames (positions in samples from the clip's start) that start before the
        video's end (`video_end`, 90 kHz ticks), not returned before; `lead`: the first
        picture's reorder delay (ticks); `last`: the clip's last fragment."""
        ...


class _CountingOutput:
    """What FFmpeg writes to: `write` only (no seek/tell), so the muxer treats it as a pipe."""

    def __init__(self, sink: Writable) -> None:
        self.sink = sink
        self.count = 0

    def write(self, data: bytes) -> int:
        self.sink.write(data)
        self.count += len(data)
        return len(data)


class _Discard:
    def write(self, data: bytes) -> None:
        pass


@dataclass(slots=True)
class _Sample:
    data: bytes
    pts: int  # ticks, rebased
    keyframe: bool


class Fmp4Writer:
    """Remuxes one clip (no re-encoding). Not thread-safe: use it from one thread.

    Packets before the first keyframe are skipped (`skipped`). Output for a GOP reaches the
    sink when the next keyframe arrives (one `moof`+`mdat` per GOP) or on `finish()`.
    """

    def __init__(
        self,
        sink: Writable,
        width: int,
        height: int,
        *,
        fps: float | None = None,
        buffer_size: int = 64 * 1024,
        timeline: tuple[int, int] = (0, 0),
        audio: ClipAudio | None = None,
    ) -> None:
        """`timeline`: (ticks, part) when this clip is part `part` of an event and starts
        `ticks` after the event's first frame (bridge.media.mp4boxes). `audio`: its sound."""
        offset, part = timeline
        options = {"movflags": MOVFLAGS}
        rebase: int | dict[int, int] = offset
        if audio is not None:
            options = {
                "movflags": MOVFLAGS + "+frag_discont",
                "avoid_negative_ts": "disabled",
                "use_editlist": "0",
            }
            rebase = {VIDEO_TRACK: offset + audio.video_delay, AUDIO_TRACK: audio.offset}
        if offset or part or audio is not None:
            sink = FragmentRebaser(sink, rebase, part)
        self._out = _CountingOutput(sink)
        self._container: av.container.OutputContainer = av.open(
            self._out, "w", format="mp4", options=options, buffer_size=buffer_size
        )
        rate = Fraction(fps).limit_denominator(1001) if fps else None
        self._stream = self._container.add_mux_stream(
            "h264", rate=rate, width=width, height=height, time_base=TIME_BASE
        )
        self._audio = audio
        self._audio_stream = audio.add_stream(self._container) if audio is not None else None
        self.audio_frames = 0
        self._frame_ticks = round(TIMESCALE / fps) if fps else None
        self._origin: float | None = None  # source pts of the first keyframe
        self._gop: list[_Sample] = []
        self._offset = 0  # added to every pts so the first GOP's dts start at 0 (B-frames)
        self._last_dts: int | None = None
        self._end_ticks = 0  # dts + duration of the last muxed sample
        self._finished = False
        self.frames = 0
        self.skipped = 0

    # -- public ----------------------------------------------------------------------------

    @property
    def bytes_written(self) -> int:
        """MP4 bytes handed to the sink so far (all of the clip once `finish()` returned)."""
        return self._out.count

    @property
    def first_pts(self) -> float | None:
        """Source pts (seconds) of the clip's first frame."""
        return self._origin

    @property
    def duration(self) -> float:
        """Seconds of video muxed so far (the clip's length once `finish()` returned)."""
        return self._end_ticks / TIMESCALE

    @property
    def buffered(self) -> int:
        """Frames held back until their GOP is complete."""
        return len(self._gop)

    def write(self, packet: VideoPacket) -> None:
        if self._finished:
            raise RuntimeError("write after finish")
        if self._origin is None:
            if not packet.keyframe:
                self.skipped += 1
                return
            self._origin = packet.pts
            packet = one_of_each_parameter_set(packet)
        ticks = round((packet.pts - self._origin) * TIMESCALE)
        sample = _Sample(packet.data, ticks, packet.keyframe)
        if packet.keyframe and self._gop:
            self._flush_gop(next_pts=sample.pts)
        self._gop.append(sample)

    def finish(self) -> None:
        """Mux the last GOP and end the stream; every byte of the MP4 has then been written."""
        if self._finished:
            return
        self._finished = True
        if self._gop:
            self._flush_gop(next_pts=None)
        self._container.close()

    def abort(self) -> None:
        """Drop the output without writing the rest (the sink gets nothing more)."""
        self._finished = True
        self._gop.clear()
        self._out.sink = _Discard()  # closing flushes FFmpeg's buffer: let it go nowhere
        try:
            self._container.close()
        except Exception:  # nothing useful to do: the clip is being discarded anyway
            pass

    # -- timestamps ------------------------------------------------------------------------

    def _flush_gop(self, next_pts: int | None) -> None:
        gop, self._gop = self._gop, []
        pts = [s.pts + self._offset for s in gop]
        ordered = sorted(pts)
        # dts must not exceed pts: shift the sorted presentation times back by the reorder
        # depth (0 without B-frames, so dts == pts).
        shift = max(0, *(o - p for o, p in zip(ordered, pts, strict=True)))
        if self._last_dts is None and shift:
            self._offset = shift  # keep the first dts at 0 rather than negative
            pts = [p + shift for p in pts]
            ordered = [o + shift for o in ordered]
        dts: list[int] = []
        last = self._last_dts
        for i, candidate in enumerate(ordered):
            d = candidate - shift
            if last is not None and d <= last:
                d = last + 1  # repeated or backward timestamps: keep dts strictly increasing
            pts[i] = max(pts[i], d)
            dts.append(d)
            last = d
        nominal = self._nominal_ticks(dts)
        for i, sample in enumerate(gop):
            if i + 1 < len(gop):
                duration = dts[i + 1] - dts[i]
            elif next_pts is not None:
                duration = next_pts + self._offset - shift - dts[i]
            else:
                duration = 0
            if duration <= 0:
                duration = nominal
            self._mux(sample, pts[i], dts[i], duration)
        self._last_dts = dts[-1]
        if self._audio is not None:
            self._mux_audio(last=next_pts is None)

    def _mux_audio(self, last: bool) -> None:
        assert self._audio is not None
        time_base = Fraction(1, self._audio.rate)
        for frame in self._audio.frames_until(self._end_ticks, self._offset, last):
            packet = av.Packet(frame.data)
            packet.stream = self._audio_stream
            packet.time_base = time_base
            packet.pts = packet.dts = frame.position
            packet.duration = frame.duration
            packet.is_keyframe = True
            self._container.mux(packet)
            self.audio_frames += 1

    def _nominal_ticks(self, dts: list[int]) -> int:
        if self._frame_ticks:
            return self._frame_ticks
        steps = sorted(b - a for a, b in itertools.pairwise(dts) if b > a)
        if steps:
            return steps[len(steps) // 2]
        return round(DEFAULT_FRAME_SECONDS * TIMESCALE)

    def _mux(self, sample: _Sample, pts: int, dts: int, duration: int) -> None:
        packet = av.Packet(sample.data)
        packet.stream = self._stream
        packet.time_base = TIME_BASE
        packet.pts = pts
        packet.dts = dts
        packet.duration = duration
        packet.is_keyframe = sample.keyframe
        self._container.mux(packet)
        self.frames += 1
        self._end_ticks = max(self._end_ticks, dts + duration)


def one_of_each_parameter_set(packet: VideoPacket) -> VideoPacket:
    """The first keyframe with one SPS and one PPS, in a canonical Annex B form.

    FFmpeg builds the `avcC` of the `moov` from the first packet's parameter sets, every copy
    included; our keyframes carry the source's own copies plus the ones the bridge puts in front.
    With exactly one of each, every part of an event gets the same `moov`, which joining parts
    into one MP4 requires (bridge.media.mp4boxes.EventJoiner), and every HKSV fragment's muxer
    writes the same `moov` (record/hksv_mux.py)."""
    kept: list[bytes] = []
    seen: set[int] = set()
    for nal in split_annexb(packet.data):
        kind = nal_type(nal)
        if kind in (NAL_SPS, NAL_PPS):
            if kind in seen:
                continue
            seen.add(kind)
        kept.append(nal)
    return VideoPacket(join_annexb(kept), packet.pts, packet.keyframe, packet.epoch)
