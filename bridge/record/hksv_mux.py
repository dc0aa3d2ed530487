"""HKSV's fragmented MP4: an init segment, then one `moof` + `mdat` per fragment, video and AAC.

The hub takes the recording as HDS chunks: the init segment (`ftyp` + `moov` with empty sample
tables and `mvex`, an `avc1` and an `mp4a` track) once, then fragments, each one `moof` (a
`traf` per track, default-base-is-moof) and its `mdat`, holding both tracks' samples for one
time span and starting with an IDR frame.

FFmpeg's mov muxer (PyAV, custom I/O) writes the boxes, as in bridge/record/fmp4.py, but a
fragment must come out the moment we know it is complete. A long-lived muxer cuts a fragment
only when the next one's first packet gets through its interleaver, which waits for a packet of
every track: there is no flush call in PyAV. So each fragment gets a short-lived muxer of its
own (about half a millisecond), closed at once, which writes everything it holds: `ftyp`,
`moov`, `moof`, `mdat`. The first one's `ftyp` + `moov` is the init segment; every later `moov`
is the same (same stream parameters; parameter sets canonical) and dropped. `frag_discont` with
timestamps not shifted to 0 makes each muxer write the real decode times in its `tfdt`s, and the
`mfhd` sequence number is moved on here (bridge.media.mp4boxes).

Timestamps, as in fmp4.py: rebased to 0 on a 90 kHz clock, decode times derived per GOP (B-frames
send pts out of order), strictly increasing, explicit durations so each fragment ends exactly
where the next begins. The AAC track is cut at the same instant: a fragment holds the audio
frames that start before its video ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import av.container

from bridge.media.aac import AacPacket, AacTrack
from bridge.media.mp4boxes import Mp4Error, TopLevelBoxes, rebase_moof
from bridge.media.packet import VideoPacket
from bridge.record.fmp4 import one_of_each_parameter_set

TIMESCALE = 90000
TIME_BASE = Fraction(1, TIMESCALE)
MOVFLAGS = "empty_moov+default_base_moof+frag_custom+frag_discont+skip_trailer"
DEFAULT_FRAME_SECONDS = 1 / 30


@dataclass(frozen=True, slots=True)
class Fragment:
    data: bytes  # moof + mdat
    duration: float  # seconds of video
    start: float  # source pts (seconds) of its first frame
    video_samples: int
    audio_samples: int


@dataclass(slots=True)
class _Sample:
    data: bytes
    pts: int
    dts: int
    duration: int
    keyframe: bool


class _Buffer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


class FragmentWriter:
    """Turns whole GOPs into fMP4 fragments. Not thread-safe: one thread (the worker)."""

    def __init__(self, width: int, height: int, fps: float, audio: AacTrack) -> None:
        self.width, self.height = width, height
        self._rate = Fraction(fps).limit_denominator(1001) if fps > 0 else None
        self._frame_ticks = round(TIMESCALE / fps) if fps > 0 else None
        self.audio = audio
        self.init: bytes | None = None  # ftyp + moov, once the first fragment is written
        self.moov_changes = 0  # later muxers whose moov differed from the init segment's
        self.sequence = 0
        self._origin: float | None = None  # source pts of the first frame: the timeline's 0
        self._lead: int | None = None  # pts - dts of the first frame (B-frames' reorder delay)
        self._last_dts: int | None = None

    @property
    def origin(self) -> float | None:
        return self._origin

    def write(self, packets: Sequence[VideoPacket], end_pts: float | None) -> Fragment:
        """One fragment from `packets` (whole GOPs, starting with a keyframe). `end_pts`: the
        pts of the next fragment's first frame (None for the last fragment)."""
        if not packets or not packets[0].keyframe:
            raise ValueError("a fragment must start with a keyframe")
        if self._origin is None:
            self._origin = packets[0].pts
        first = one_of_each_parameter_set(packets[0])
        samples: list[_Sample] = []
        gops = _split_gops([first, *packets[1:]])
        for i, gop in enumerate(gops):
            nxt = gops[i + 1][0].pts if i + 1 < len(gops) else end_pts
            samples += self._timestamps(gop, nxt)
        if self._lead is None:
            self._lead = samples[0].pts - samples[0].dts
            self.audio.input_offset = round(self._lead * self.audio.sample_rate / TIMESCALE)
        video_end = samples[-1].dts + samples[-1].duration
        # Where the video ends in the output's time (audio samples, rounded up): the muxer
        # writes decode times shifted by the first frame's lead, so its first `tfdt` is 0 and
        # the first frame shows at `lead`, where the audio's timeline 0 is put too.
        audio_end = -(-(video_end + self._lead) * self.audio.sample_rate // TIMESCALE)
        audio = self.audio.encode_until(audio_end)
        data = self._mux(samples, audio)
        duration = (video_end - samples[0].dts) / TIMESCALE
        return Fragment(data, duration, packets[0].pts, len(samples), len(audio))

    # -- timestamps ------------------------------------------------------------------------

    def _ticks(self, pts: float) -> int:
        assert self._origin is not None
        return round((pts - self._origin) * TIMESCALE)

    def _timestamps(self, gop: list[VideoPacket], next_pts: float | None) -> list[_Sample]:
        pts = [self._ticks(p.pts) for p in gop]
        ordered = sorted(pts)
        # dts must not exceed pts: shift the sorted presentation times back by the reorder
        # depth (0 without B-frames, so dts == pts; with them the first dts is negative, and
        # the muxer moves the track's decode times by the first frame's pts - dts).
        shift = max(0, *(o - p for o, p in zip(ordered, pts, strict=True)))
        dts: list[int] = []
        last = self._last_dts
        for i, candidate in enumerate(ordered):
            d = candidate - shift
            if last is not None and d <= last:
                d = last + 1  # repeated or backward timestamps: dts strictly increasing
            pts[i] = max(pts[i], d)
            dts.append(d)
            last = d
        nominal = self._nominal_ticks(dts)
        out: list[_Sample] = []
        for i, packet in enumerate(gop):
            if i + 1 < len(gop):
                duration = dts[i + 1] - dts[i]
            elif next_pts is not None:
                duration = self._ticks(next_pts) - shift - dts[i]
            else:
                duration = nominal
            if duration <= 0:
                duration = nominal
            out.append(_Sample(packet.data, pts[i], dts[i], duration, packet.keyframe))
        self._last_dts = dts[-1]
        return out

    def _nominal_ticks(self, dts: list[int]) -> int:
        if self._frame_ticks:
            return self._frame_ticks
        steps = sorted(b - a for a, b in itertools.pairwise(dts) if b > a)
        if steps:
            return steps[len(steps) // 2]
        return round(DEFAULT_FRAME_SECONDS * TIMESCALE)

    # -- boxes -----------------------------------------------------------------------------

    def _mux(self, video: list[_Sample], audio: list[AacPacket]) -> bytes:
        out = _Buffer()
        container = av.open(
            out,
            "w",
            format="mp4",
            options={"movflags": MOVFLAGS, "avoid_negative_ts": "disabled"},
        )
        try:
            vstream = container.add_mux_stream(
                "h264", rate=self._rate, width=self.width, height=self.height,
                time_base=TIME_BASE,
            )
            astream = self.audio.add_stream(container)
            rate = self.audio.sample_rate
            # Decode order across both tracks (video first on a tie: its first packet carries
            # the parameter sets the muxer builds the `avcC` from).
            order = sorted(
                [(s.dts * rate, 0, i) for i, s in enumerate(video)]
                + [(a.position * TIMESCALE, 1, i) for i, a in enumerate(audio)]
            )
            for _, kind, i in order:
                if kind == 0:
                    s = video[i]
                    packet = av.Packet(s.data)
                    packet.stream = vstream
                    packet.time_base = TIME_BASE
                    packet.pts, packet.dts, packet.duration = s.pts, s.dts, s.duration
                    packet.is_keyframe = s.keyframe
                else:
                    a = audio[i]
                    packet = av.Packet(a.data)
                    packet.stream = astream
                    packet.time_base = Fraction(1, rate)
                    packet.pts = packet.dts = a.position
                    packet.duration = a.duration
                    packet.is_keyframe = True
                container.mux(packet)
        finally:
            container.close()
        return self._split(bytes(out.data))

    def _split(self, data: bytes) -> bytes:
        """Keeps this muxer's fragment (its moof renumbered); the first keeps ftyp+moov too."""
        boxes = TopLevelBoxes(collect=frozenset({b"ftyp", b"moov", b"moof", b"mdat"}))
        parts = boxes.feed(data)
        boxes.close()
        header = b"".join(piece for kind, piece, _ in parts if kind in (b"ftyp", b"moov"))
        body = [(kind, piece) for kind, piece, _ in parts if kind not in (b"ftyp", b"moov")]
        if [kind for kind, _ in body] != [b"moof", b"mdat"]:
            raise Mp4Error(f"unexpected fragment layout {[k for k, _ in body]!r}")
        if self.init is None:
            self.init = header
        elif header != self.init:
            self.moov_changes += 1
        moof = rebase_moof(body[0][1], 0, self.sequence)  # FFmpeg numbers it 1
        self.sequence += 1
        return moof + body[1][1]


def _split_gops(packets: list[VideoPacket]) -> list[list[VideoPacket]]:
    gops: list[list[VideoPacket]] = []
    for packet in packets:
        if packet.keyframe or not gops:
            gops.append([])
        gops[-1].append(packet)
    return gops
