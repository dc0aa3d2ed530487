"""One clip's bytes: the sink contract, its metadata, and the worker thread that muxes.

The loop only enqueues packets; the clip's own thread runs the fMP4 muxer, every sink write
(where encryption and the spool live), the padding and the poster JPEG, and the clip's sound
(waiting for it, decoding and encoding it: bridge.record.clip_audio), so none of that CPU work or
I/O can stall the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import av.video.frame

from bridge.media.packet import StreamInfo, VideoPacket
from bridge.media.snapshot import frame_to_jpeg
from bridge.record.clip_audio import EventAudio, PartAudio
from bridge.record.fmp4 import TIMESCALE, Fmp4Writer

log = logging.getLogger(__name__)


class ClipSink(Protocol):
    """Where one clip's bytes go (the bridge plugs encryption + spool in here).

    Made by the recorder's `sink_factory()` in the clip's worker thread, once the clip's first
    keyframe is there (a clip without video makes no sink). `write` is called from that thread,
    in order; `abort` from that thread too (after a failed write or mux) or from the loop after
    a failed `finish`. `finish(meta)` is awaited on the loop once the last byte (padding
    included) has been written.
    """

    def write(self, data: bytes, /) -> object: ...

    def finish(self, meta: ClipMeta) -> Awaitable[object]: ...

    def abort(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ClipMeta:
    camera: str
    event_id: str  # shared by the consecutive parts of one event (32 hex)
    part: int  # 0, 1, … within that event
    start: float  # wall clock (Unix seconds) of the first frame
    end: float  # start + duration
    duration: float  # seconds of video
    subjects: tuple[str, ...]
    best_score: float
    poster: bytes | None  # JPEG of the best detection (None: no usable frame)
    width: int
    height: int
    frames: int
    media_bytes: int  # the fMP4 alone
    size: int  # plaintext bytes given to the sink, padding included
    # why it ended: "part" (the event goes on in the next part), "post_roll", "max_length",
    # "source_ended" or "stopped"
    reason: str
    final: bool = True  # the last part of its event (False: "part", more follow)


@dataclass(slots=True)
class _Closing:
    poster_frame: Any
    poster_width: int
    until: float | None  # source pts where the event's next part starts (None: the last part)


@dataclass(slots=True)
class Written:
    sink: ClipSink
    first_pts: float
    duration: float
    frames: int
    media_bytes: int
    size: int
    poster: bytes | None


class ClipWorker:
    """One clip's mux + sink writes in its own thread; the loop only enqueues."""

    def __init__(
        self,
        name: str,
        info: StreamInfo,
        sink_factory: Callable[[], ClipSink],
        pad: Callable[[int], bytes] | None,
        loop: asyncio.AbstractEventLoop,
        *,
        timeline: tuple[float | None, int] = (None, 0),
        audio: EventAudio | None = None,
    ) -> None:
        """`timeline`: (source pts of the event's first frame, or None for its first part;
        this part's number), so that the parts of an event share one timeline. `audio`: the
        event's sound, when the camera has some (its track is in the clip once started)."""
        self._timeline = timeline
        self._audio = audio
        self._info = info
        self._sink_factory = sink_factory
        self._pad = pad
        self._loop = loop
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.done: asyncio.Future[Written | None] = loop.create_future()
        self.failed = False
        threading.Thread(target=self._run, name=f"record:{name}", daemon=True).start()

    def put(self, packet: VideoPacket) -> None:
        if not self.failed:  # a dead clip would only pile packets up
            self._queue.put(packet)

    def close(self, poster_frame: Any, poster_width: int, until: float | None = None) -> None:
        """End the clip; `until`: the pts where the next part of its event starts."""
        self._queue.put(_Closing(poster_frame, poster_width, until))

    def _run(self) -> None:
        sink: ClipSink | None = None
        muxer: Fmp4Writer | None = None
        audio: PartAudio | None = None
        origin = 0.0
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, VideoPacket):
                    if muxer is None:
                        if not item.keyframe:
                            continue
                        sink = self._sink_factory()
                        info = self._info
                        first, part = self._timeline
                        origin = item.pts if first is None else first
                        ticks = max(0, round((item.pts - origin) * TIMESCALE))
                        if self._audio is not None and self._audio.active:
                            audio = PartAudio(self._audio, ticks, part)
                        muxer = Fmp4Writer(
                            sink, info.width, info.height, fps=info.fps or None,
                            timeline=(ticks, part), audio=audio,
                        )
                    muxer.write(item)
                    continue
                if muxer is None or sink is None or muxer.first_pts is None:
                    self._resolve(None)  # no keyframe came: no sink was made, nothing written
                    return
                assert isinstance(item, _Closing)
                if audio is not None and item.until is not None:
                    audio.end_at(round((item.until - origin) * TIMESCALE))
                muxer.finish()
                media = muxer.bytes_written
                padding = self._pad(media) if self._pad else b""
                if padding:
                    sink.write(padding)
                poster = _poster(item.poster_frame, item.poster_width)
                written = Written(
                    sink,
                    muxer.first_pts,
                    muxer.duration,
                    muxer.frames,
                    media,
                    media + len(padding),
                    poster,
                )
                self._resolve(written)
                return
        except BaseException as exc:
            self.failed = True
            if muxer is not None:
                muxer.abort()  # else FFmpeg's trailer would reach the sink when it is collected
            if sink is not None:
                try:
                    sink.abort()
                except Exception:
                    log.exception("clip sink abort failed")
            self._resolve(exc)

    def _resolve(self, result: Written | BaseException | None) -> None:
        def deliver() -> None:
            if self.done.done():
                return
            if isinstance(result, BaseException):
                self.done.set_exception(result)
            else:
                self.done.set_result(result)

        try:
            self._loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # loop already closed (shutdown): nobody is waiting
            pass


def _poster(frame: Any, width: int) -> bytes | None:
    if not isinstance(frame, av.video.frame.VideoFrame) or frame.width <= 0:
        return None
    w = min(width, frame.width) // 2 * 2
    h = max(2, round(w * frame.height / frame.width) // 2 * 2)
    try:
        return frame_to_jpeg(frame, w, h)
    except Exception:  # a clip without its poster beats no clip
        log.exception("poster rendering failed")
        return None
