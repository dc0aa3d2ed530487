"""The video of an HKSV recording: copy or transcode, and its cut into IDR-aligned fragments.

The hub wants every fragment to start with an IDR frame and to last about the selected fragment
length (4 s), with an I-frame at least every selected interval. A camera's own H.264 is copied
when it already fits: same size as selected and keyframes at most that far apart (measured on
the prebuffer, which holds a few of them). Otherwise it is decoded, scaled and re-encoded with
an IDR forced every min(I-frame interval, fragment length). The choice is made once per
recording: the `moov` fixes the stream's parameters, so it cannot change half-way.

Fragments are whole GOPs, several short ones grouped up to the fragment length. A fragment is
complete when adding the next GOP would take it past that length; the next GOP is predicted to
last as long as the one just seen (exact for a camera's fixed GOP and for our encoder), so a
fragment goes out at the keyframe that ends it rather than one GOP later.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

import av
import av.error
import av.video.codeccontext
from av.video.frame import PictureType, VideoFrame
from av.video.reformatter import Interpolation, VideoReformatter

from accessories.backend import RecordingRequest
from bridge.media.packet import StreamInfo, VideoPacket

Mode = Literal["copy", "transcode"]
TICKS = 90000


def frame_tolerance(fps: float) -> float:
    """One frame (and a little jitter): how much longer than a limit a GOP may be."""
    return 1.0 / (fps if fps > 0 else 30.0) + 0.01


def choose_mode(
    info: StreamInfo, keyframes: Sequence[float], newest: float, request: RecordingRequest
) -> tuple[Mode, str]:
    """Copy or transcode, and why. `keyframes`: pts of the buffered keyframes, oldest first;
    `newest`: pts of the newest buffered packet."""
    if info.codec != "h264":
        return "transcode", f"the camera sends {info.codec}"
    if (info.width, info.height) != (request.width, request.height):
        return "transcode", (
            f"the camera's {info.width}x{info.height} is not the selected "
            f"{request.width}x{request.height}"
        )
    limit = min(request.fragment_ms, request.iframe_interval_ms) / 1000
    tolerance = frame_tolerance(info.fps)
    gaps = [b - a for a, b in itertools.pairwise(keyframes)]
    if keyframes:
        gaps.append(newest - keyframes[-1])  # the GOP in progress is at least this long
    gop = max(gaps, default=0.0)
    if gop > limit + tolerance:
        return "transcode", f"the camera's keyframes are {gop:.1f} s apart, over {limit:g} s"
    if len(keyframes) < 2:
        return "transcode", "the camera's keyframe interval is not known yet"
    return "copy", f"H.264 {info.width}x{info.height}, keyframes every {gop:.1f} s or less"


CATCH_UP_GOP = 1.0  # s: the IDR interval while a transcode catches up through the prebuffer


class Fragmenter:
    """Groups access units into fragments of whole GOPs, at most `limit` s each (+ tolerance).

    `push` and `flush` return `(packets, end_pts)` pairs: a fragment and the pts of the frame
    that follows it (None after the last one).
    """

    def __init__(self, limit: float, tolerance: float, *, eager_until: float | None = None) -> None:
        """`eager_until`: GOPs that end by this pts go out one per fragment at once (a
        transcode's catch-up through the prebuffer, in short GOPs: the hub's first data comes
        after one short GOP's work instead of a whole fragment's)."""
        self.limit = limit + tolerance
        self._eager_until = None if eager_until is None else eager_until + tolerance
        self._fragment: list[VideoPacket] = []  # complete GOPs
        self._gop: list[VideoPacket] = []  # the GOP in progress
        self.skipped = 0  # packets before the first keyframe
        self.long_fragments = 0  # a GOP alone was longer than the limit

    @property
    def buffered(self) -> int:
        return len(self._fragment) + len(self._gop)

    def push(self, packet: VideoPacket) -> list[tuple[list[VideoPacket], float | None]]:
        out: list[tuple[list[VideoPacket], float | None]] = []
        if packet.keyframe and self._gop:
            out = self._gop_done(packet.pts)
        elif not self._gop and not packet.keyframe:
            self.skipped += 1
            return out
        self._gop.append(packet)
        return out

    def flush(self, frame: float) -> list[tuple[list[VideoPacket], float | None]]:
        """Everything held, as the last fragment(s); `frame`: one frame's duration."""
        out: list[tuple[list[VideoPacket], float | None]] = []
        gop, self._gop = self._gop, []
        if gop:
            end = gop[-1].pts + frame
            if self._fragment and end - self._fragment[0].pts > self.limit:
                out.append(self._emit(gop[0].pts))
            self._fragment += gop
        if self._fragment:
            out.append(self._emit(None))
        return out

    def _gop_done(self, end: float) -> list[tuple[list[VideoPacket], float | None]]:
        gop, self._gop = self._gop, []
        out: list[tuple[list[VideoPacket], float | None]] = []
        length = end - gop[0].pts
        if self._fragment and end - self._fragment[0].pts > self.limit:
            out.append(self._emit(gop[0].pts))  # the prediction was wrong: a longer GOP
        self._fragment += gop
        if self._eager_until is not None and end <= self._eager_until:
            out.append(self._emit(end))
            return out
        if end - self._fragment[0].pts + length > self.limit:
            if end - self._fragment[0].pts > self.limit:
                self.long_fragments += 1
            out.append(self._emit(end))  # the next GOP would not fit: complete now
        return out

    def _emit(self, end: float | None) -> tuple[list[VideoPacket], float | None]:
        fragment, self._fragment = self._fragment, []
        return fragment, end


class RecordingTranscoder:
    """Decode the camera's H.264, scale to the selected size, encode with an IDR every
    `interval` seconds. Codec contexts are not thread-safe: one thread only."""

    def __init__(
        self,
        request: RecordingRequest,
        source_fps: float,
        *,
        preset: str = "veryfast",
        start_at: float | None = None,
        catch_up_until: float | None = None,
    ) -> None:
        self.width = max(2, request.width // 2 * 2)  # 4:2:0 needs even sizes
        self.height = max(2, request.height // 2 * 2)
        self._source_fps = source_fps
        self.fps = float(min(request.fps, source_fps) if source_fps > 0 else request.fps)
        self.interval = min(request.iframe_interval_ms, request.fragment_ms) / 1000
        self._decoder = av.CodecContext.create("h264", "r")
        self._encoder = _open_encoder(self.width, self.height, self.fps, request, preset)
        self._scaler = VideoReformatter()  # keeps its SwsContext between frames
        self._by_id: dict[int, tuple[float, int]] = {}  # decoder packet id -> (pts, epoch)
        self._next_id = 0
        self._origin: float | None = None
        self._source_of: dict[int, float] = {}  # encoder ticks -> source pts
        self._last_ticks = -1
        self._last_idr: float | None = None
        self._next_due: float | None = None
        # Frames before this source pts are decoded (they are references) but not encoded: the
        # output starts with an IDR at the prebuffer's start, not at the camera's keyframe.
        self._start_at = start_at
        # Frames before this source pts (the prebuffer, encoded as fast as possible at the
        # open) get an IDR every CATCH_UP_GOP s, so fragments reach the hub early (Fragmenter).
        self._catch_up_until = catch_up_until
        self.frames_decoded = self.frames_encoded = self.frames_skipped = 0
        self.decode_errors = 0

    def push(self, packet: VideoPacket) -> list[VideoPacket]:
        av_packet = av.Packet(packet.data)
        av_packet.pts = self._next_id  # the decoder may reorder: pts and epoch travel as an id
        self._by_id[self._next_id] = (packet.pts, packet.epoch)
        self._next_id += 1
        if len(self._by_id) > 64:
            for key in list(self._by_id)[:-32]:
                del self._by_id[key]
        try:
            frames = self._decoder.decode(av_packet)
        except av.error.FFmpegError:
            self.decode_errors += 1
            return []
        return self._encode_all(frames, packet)

    def flush(self) -> list[VideoPacket]:
        """Decode and encode what the codecs still hold (the end of the recording)."""
        out: list[VideoPacket] = []
        try:
            frames = self._decoder.decode(None)
        except av.error.FFmpegError:
            frames = []
        out += self._encode_all(frames, None)
        out += self._packets(self._encoder.encode(None), 0)
        return out

    def _encode_all(
        self, frames: list[VideoFrame], packet: VideoPacket | None
    ) -> list[VideoPacket]:
        out: list[VideoPacket] = []
        for frame in frames:
            self.frames_decoded += 1
            info = self._by_id.pop(frame.pts, None) if frame.pts is not None else None
            if info is None and packet is not None:
                info = (packet.pts, packet.epoch)
            if info is None:
                continue
            pts, epoch = info
            if self._start_at is not None and pts < self._start_at - 0.5 / max(self.fps, 1.0):
                self.frames_skipped += 1
                continue
            if not self._due(pts):
                self.frames_skipped += 1
                continue
            out += self._encode(frame, pts, epoch)
        return out

    def _due(self, pts: float) -> bool:
        """Frame-rate cap: a faster camera is brought down to the selected rate."""
        if self._source_fps <= self.fps * 1.05:
            return True
        if self._next_due is not None and pts + 0.5 / self._source_fps < self._next_due:
            return False
        step = 1.0 / self.fps
        self._next_due = pts + step if self._next_due is None else self._next_due + step
        if self._next_due < pts:
            self._next_due = pts + step
        return True

    def _encode(self, frame: VideoFrame, pts: float, epoch: int) -> list[VideoPacket]:
        if self._origin is None:
            self._origin = pts
        ticks = max(self._last_ticks + 1, round((pts - self._origin) * TICKS))
        self._last_ticks = ticks
        self._source_of[ticks] = pts
        scaled = self._scaler.reformat(
            frame, self.width, self.height, "yuv420p", interpolation=Interpolation.BILINEAR
        )
        scaled.pts = ticks
        scaled.time_base = Fraction(1, TICKS)
        half_frame = 0.5 / self.fps
        interval = self.interval
        if self._catch_up_until is not None and pts < self._catch_up_until - half_frame:
            interval = min(interval, CATCH_UP_GOP)
        if self._last_idr is None or pts - self._last_idr >= interval - half_frame:
            scaled.pict_type = PictureType.I  # with forced-idr: an IDR
        else:
            scaled.pict_type = PictureType.NONE  # not the camera's own type: x264 decides
        return self._packets(self._encoder.encode(scaled), epoch)

    def _packets(self, packets: list[av.Packet], epoch: int) -> list[VideoPacket]:
        out: list[VideoPacket] = []
        for packet in packets:
            ticks = packet.pts if packet.pts is not None else self._last_ticks
            pts = self._source_of.pop(ticks, None)
            if pts is None:
                pts = (self._origin or 0.0) + ticks / TICKS
            keyframe = bool(packet.is_keyframe)
            if keyframe:
                self._last_idr = pts
            self.frames_encoded += 1
            out.append(VideoPacket(bytes(packet), pts, keyframe, epoch))
        if len(self._source_of) > 64:
            for key in list(self._source_of)[:-32]:
                del self._source_of[key]
        return out


def _open_encoder(
    width: int, height: int, fps: float, request: RecordingRequest, preset: str
) -> av.video.codeccontext.VideoCodecContext:
    enc = av.CodecContext.create("libx264", "w")
    assert isinstance(enc, av.video.codeccontext.VideoCodecContext)
    enc.width = width
    enc.height = height
    enc.pix_fmt = "yuv420p"
    enc.time_base = Fraction(1, TICKS)
    enc.framerate = Fraction(fps).limit_denominator(1001)
    interval = min(request.iframe_interval_ms, request.fragment_ms) / 1000
    enc.gop_size = max(2, round(2 * interval * fps))  # a backstop: IDRs are forced by time
    enc.max_b_frames = 0
    enc.bit_rate = request.bitrate_kbps * 1000
    enc.thread_count = 1  # one core per recording at most
    kbps = request.bitrate_kbps
    enc.options = {
        "preset": preset,
        "tune": "zerolatency",  # one packet out per frame in: a fragment ends at once
        "profile": request.profile if request.profile in ("baseline", "main", "high") else "main",
        "level": request.level,
        "forced-idr": "1",  # pict_type=I becomes an IDR: a fragment can start there
        "maxrate": f"{kbps}k",
        "bufsize": f"{kbps}k",
        # SPS/PPS in front of every IDR (each fragment's muxer takes them from its first
        # packet); no scene-cut keyframes, so fragments are cut where we force them.
        "x264-params": "repeat-headers=1:scenecut=0",
    }
    enc.open()
    return enc
