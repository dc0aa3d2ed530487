"""Decode the camera's H.264 and re-encode it for one controller, on a worker thread.

One thread per transcoding session owns a PyAV decoder and a libx264 encoder (codec contexts
are not thread-safe and decode/encode must stay off the event loop). The thread decodes every
packet it is given (the decoder needs the whole GOP) but encodes only frames that are current:
while newer packets are already waiting, decoded frames are skipped. That makes a fresh
session (whose backlog starts at the prebuffer's keyframe) send the *newest* picture as its
first IDR, and lets a slow machine fall back to a lower frame rate instead of lagging behind.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter

from bridge.live.policy import EncoderSettings
from bridge.media.packet import VideoPacket

log = logging.getLogger(__name__)

_TICKS = 90_000  # encoder time base: the RTP clock rate keeps rounding out of the picture


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    data: bytes  # Annex B access unit; keyframes carry SPS+PPS (x264 repeats headers)
    pts: float  # the source packet's pts, so RTP time stays on the camera's clock
    epoch: int
    keyframe: bool


@dataclass(slots=True)
class TranscodeStats:
    packets_in: int = 0
    frames_decoded: int = 0
    frames_encoded: int = 0
    frames_skipped: int = 0  # decoded but not encoded: behind live, or above the target fps
    decode_errors: int = 0


class Transcoder:
    """A worker thread turning VideoPackets into EncodedFrames.

    submit()/update()/request_keyframe()/stop() may be called from any thread; on_output is
    called on the worker thread (the session hops back to its event loop).
    """

    def __init__(
        self,
        settings: EncoderSettings,
        on_output: Callable[[EncodedFrame], None],
        *,
        source_fps: float | None = None,
        queue_size: int = 600,
        max_stall: float = 0.5,
        name: str = "live-transcode",
    ) -> None:
        self._settings = settings
        self._pending_settings: EncoderSettings | None = settings
        self._on_output = on_output
        self._source_fps = source_fps
        self._max_stall = max_stall
        self._queue: queue.Queue[tuple[VideoPacket, bool]] = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._force_idr = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.stats = TranscodeStats()

    # -- control (any thread) ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, packet: VideoPacket, newest: bool) -> bool:
        """Queue a packet; newest=False when the caller already holds newer ones.

        Returns False (packet not taken) when the worker is too far behind; the caller should
        then flush_input() and resume at the next keyframe.
        """
        try:
            self._queue.put_nowait((packet, newest))
        except queue.Full:
            return False
        return True

    def flush_input(self) -> int:
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return dropped
            dropped += 1

    def update(self, settings: EncoderSettings) -> None:
        """Use new settings from the next encoded frame on (a new encoder: it starts with IDR)."""
        with self._lock:
            self._pending_settings = settings

    def request_keyframe(self) -> None:
        self._force_idr.set()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            _Worker(self).run()
        except Exception:
            log.exception("transcoder failed")


class _Worker:
    """State that only the worker thread touches; dropped (codecs freed) when it returns."""

    def __init__(self, owner: Transcoder) -> None:
        self.o = owner
        self.decoder = av.CodecContext.create("h264", "r")
        self.encoder: av.video.codeccontext.VideoCodecContext | None = None
        self.scaler = VideoReformatter()  # keeps its SwsContext between frames
        self.settings = owner._settings
        self.packet_info: dict[int, tuple[float, int]] = {}
        self.next_packet_id = 0
        self.enc_pts = -1
        self.last_src: tuple[float, int] | None = None
        self.next_due: float | None = None
        self.last_encode_wall = time.monotonic()

    def run(self) -> None:
        o = self.o
        while not o._stop.is_set():
            try:
                packet, newest = o._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            o.stats.packets_in += 1
            for frame, pts, epoch in self.decode(packet):
                if o._stop.is_set():
                    return
                current = newest and o._queue.qsize() <= 1  # one waiting packet is jitter
                stalled = time.monotonic() - self.last_encode_wall >= o._max_stall
                if (current or stalled) and self.due(pts, epoch):
                    self.encode(frame, pts, epoch)
                else:
                    o.stats.frames_skipped += 1

    def decode(self, packet: VideoPacket) -> list[tuple[av.VideoFrame, float, int]]:
        # The decoder may reorder (B-frames), so each packet's pts/epoch travels as an id.
        av_packet = av.Packet(packet.data)
        av_packet.pts = self.next_packet_id
        self.packet_info[self.next_packet_id] = (packet.pts, packet.epoch)
        self.next_packet_id += 1
        if len(self.packet_info) > 64:
            for key in list(self.packet_info)[:-32]:
                del self.packet_info[key]
        try:
            frames = self.decoder.decode(av_packet)
        except av.error.FFmpegError as exc:
            self.o.stats.decode_errors += 1
            log.debug("decode error: %s", exc)
            return []
        out = []
        for frame in frames:
            info = self.packet_info.pop(frame.pts, None) if frame.pts is not None else None
            pts, epoch = info if info is not None else (packet.pts, packet.epoch)
            self.o.stats.frames_decoded += 1
            out.append((frame, pts, epoch))
        return out

    def due(self, pts: float, epoch: int) -> bool:
        """Frame-rate reduction: keep frames at most every 1/fps (within half a source frame)."""
        last = self.last_src
        if self.next_due is None or last is None or epoch != last[1] or pts < last[0]:
            return True  # first frame, or the timeline restarted
        src_fps = self.o._source_fps or self.settings.fps
        slack = 0.5 / max(src_fps, self.settings.fps)
        return pts + slack >= self.next_due

    def encode(self, frame: av.VideoFrame, pts: float, epoch: int) -> None:
        o = self.o
        with o._lock:
            pending, o._pending_settings = o._pending_settings, None
        if pending is not None or self.encoder is None:
            self.settings = pending or self.settings
            self.encoder = _open_encoder(self.settings)
            self.next_due = None
            o._force_idr.clear()  # a fresh encoder starts with an IDR anyway
        s = self.settings
        interval = 1.0 / s.fps
        self.next_due = pts + interval if self.next_due is None else self.next_due + interval
        if self.next_due < pts:  # far behind schedule (skipped frames): resync
            self.next_due = pts + interval

        # Encoder pts must rise strictly; derive them from source pts steps, rebasing on jumps.
        step = round(_TICKS / s.fps)
        if self.last_src is not None and self.last_src[1] == epoch:
            delta = round((pts - self.last_src[0]) * _TICKS)
            if 0 < delta < 5 * _TICKS:
                step = delta
        self.enc_pts += max(1, step)
        self.last_src = (pts, epoch)

        scaled = self.scaler.reformat(
            frame, s.width, s.height, "yuv420p", interpolation=Interpolation.BILINEAR
        )
        scaled.pts = self.enc_pts
        scaled.time_base = Fraction(1, _TICKS)
        if o._force_idr.is_set():
            o._force_idr.clear()
            scaled.pict_type = PictureType.I
        try:
            packets = self.encoder.encode(scaled)
        except av.error.FFmpegError:
            log.exception("encode failed")
            return
        self.last_encode_wall = time.monotonic()
        for packet in packets:
            o.stats.frames_encoded += 1
            o._on_output(EncodedFrame(bytes(packet), pts, epoch, bool(packet.is_keyframe)))


def _open_encoder(s: EncoderSettings) -> av.video.codeccontext.VideoCodecContext:
    enc = av.CodecContext.create("libx264", "w")
    enc.width = s.width
    enc.height = s.height
    enc.pix_fmt = "yuv420p"
    enc.time_base = Fraction(1, _TICKS)
    enc.framerate = Fraction(s.fps)
    enc.gop_size = s.gop_frames
    enc.max_b_frames = 0
    enc.bit_rate = s.bitrate_kbps * 1000
    enc.options = {
        "preset": s.preset,
        "tune": "zerolatency",  # no lookahead, no B-frames, one packet out per frame in
        "profile": s.profile,
        "level": s.level,
        "forced-idr": "1",  # pict_type=I becomes an IDR, decodable on its own
        # VBV of one second: holds the controller's cap without starving keyframes.
        "maxrate": f"{s.bitrate_kbps}k",
        "bufsize": f"{s.bitrate_kbps}k",
    }
    enc.open()
    return enc
