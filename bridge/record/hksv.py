"""The media of one HomeKit Secure Video recording: init segment + IDR-aligned fMP4 fragments.

`HksvRecording` implements accessories.backend.RecordingStream for one hub recording of one
camera. The hub asks for the prebuffer (the seconds before the trigger) at once and then the
camera live, in fragments that each start with an IDR frame, with an AAC track; it cancels a
recording whose data is late, so the prebuffer's fragments are ready the moment the recording
opens and every later one goes out at the keyframe that completes it.

Who does what:
- the event loop only moves packets: a pump task forwards the camera's packets (subscription)
  to the worker, and chunks come back through a deque that `__anext__` reads;
- one worker thread per recording (hksv_worker.py) owns every codec context (decoder, x264,
  AAC, muxers), so CPU work never runs on the loop and no context is shared between threads;
  hksv_video.py decides copy or transcode and cuts the fragments, hksv_mux.py writes them;
- bounds instead of drops: fragments are never dropped; a consumer (the HDS session) that
  leaves more than `max_pending` fragments or `max_pending_bytes` untaken ends the recording
  with RecordingFailed("consumer too slow"), and a worker that falls `max_lag` seconds behind
  the camera (a transcode this machine cannot keep up with) ends it too. The source ending
  (camera gone) flushes what is there and then fails with the reason.

Usage (bridge/camera.py), all on the event loop:
- `rec = HksvRecording(source, request, name=...)`: cheap, nothing starts;
- `rec.start()` at the moment the hub opens the recording: the prebuffer is measured back from
  then, `mode` ("copy" | "transcode", "" before) is decided, the worker starts; raises
  CameraUnavailable when the camera is down. Without it, the first `__anext__` starts (and
  turns CameraUnavailable into RecordingFailed);
- `async for chunk in rec`: RecordingChunk("init", ftyp+moov, 1), then ("fragment", moof+mdat,
  2, 3, …, duration); ends by StopAsyncIteration after finish(), or RecordingFailed;
- `rec.finish()`: the fragment in progress is flushed (even if short), then iteration stops;
- `await rec.close()`, always, at the end: stops at once, closes the subscription, waits up to
  JOIN_SECONDS for the worker; idempotent; a waiting `__anext__` then ends;
- `rec.stats()` for /status.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from accessories.backend import (
    CameraUnavailable,
    RecordingChunk,
    RecordingFailed,
    RecordingRequest,
)
from bridge.media.aac import AudioInput
from bridge.media.fanout import PacketSubscription, SourceEnded
from bridge.media.packet import StreamInfo, VideoPacket
from bridge.record.hksv_video import choose_mode
from bridge.record.hksv_worker import STOP, End, MediaWorker

log = logging.getLogger(__name__)

JOIN_SECONDS = 2.0  # close() waits this long for the worker (one codec call) to return


class _Buffered(Protocol):
    def packets(self) -> list[VideoPacket]: ...


class RecordingSource(Protocol):
    """What a recording needs of a camera (bridge.sources.base.CameraSource)."""

    info: StreamInfo | None
    prebuffer: _Buffered

    def subscribe(
        self, *, from_prebuffer: bool = ..., maxsize: int = ...
    ) -> PacketSubscription: ...


class HksvRecording:
    """One recording's media; see the module docstring for the contract."""

    def __init__(
        self,
        source: RecordingSource,
        request: RecordingRequest,
        *,
        name: str = "",
        audio: AudioInput | None = None,
        max_pending: int = 8,
        max_pending_bytes: int = 32 * 1024 * 1024,
        max_lag: float = 20.0,
        preset: str = "veryfast",
    ) -> None:
        self.source = source
        self.request = request
        self.name = name
        self.mode = ""  # "copy" | "transcode", decided by start()
        self.mode_reason = ""
        self._audio = audio  # None: silence (also when request.audio_active is False)
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._max_lag = max(max_lag, request.prebuffer_ms / 1000 + 10)
        self._preset = preset
        self._started = self._finishing = self._closed = False
        self._chunks: collections.deque[RecordingChunk] = collections.deque()
        self._pending_bytes = 0
        self._end: End | None = None  # what iteration does once the chunks are taken
        self._wakeup = asyncio.Event()
        self._subscription: PacketSubscription | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._worker: MediaWorker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._info: StreamInfo | None = None
        # stats (the worker writes its own, the loop reads them)
        self._opened_at = 0.0  # wall clock of start()
        self._wall_offset = 0.0  # wall clock - source pts, at start()
        self._open_pts = 0.0  # pts of the newest packet at start()
        self._in_pts: float | None = None  # newest pts given to the worker
        self._dropped_at_start = 0
        self.delivered = 0  # chunks taken by the consumer
        self.bytes = 0  # bytes taken by the consumer
        self.error: str | None = None

    # -- contract ----------------------------------------------------------------------------

    def start(self) -> None:
        """Take the prebuffer and subscribe to the camera (on the loop; idempotent). Raises
        CameraUnavailable when the camera is down."""
        if self._started or self._closed:
            return
        info = self.source.info
        if info is None:
            raise CameraUnavailable(f"camera {self.name!r} is not streaming")
        # Both in the same loop turn: the subscription's backlog (from the newest keyframe)
        # is then exactly the tail of this snapshot, and live packets follow it.
        subscription = self.source.subscribe(from_prebuffer=True, maxsize=1000)
        buffered = self.source.prebuffer.packets()
        self._start_audio()  # the camera's sound, from the same prebuffer window
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._subscription = subscription
        self._dropped_at_start = subscription.dropped
        self._info = info
        keys = [i for i, p in enumerate(buffered) if p.keyframe]
        newest = buffered[-1].pts if buffered else 0.0
        self.mode, self.mode_reason = choose_mode(
            info, [buffered[i].pts for i in keys], newest, self.request
        )
        self._opened_at = time.time()
        self._wall_offset = self._opened_at - newest
        self._open_pts = newest
        log.info("camera %r: HKSV recording (%s: %s)", self.name, self.mode, self.mode_reason)
        target = newest - self.request.prebuffer_ms / 1000
        self._worker = MediaWorker(
            self.name, info, self.request, self.mode, send=self._send,
            stopped=lambda: self._closed or self._end is not None,
            audio=self._audio, preset=self._preset, start_at=target, catch_up_until=newest,
        )
        self._worker.start()
        # From the newest keyframe at least the prebuffer before the newest packet (or the
        # oldest one) up to the subscription's backlog, which starts at the newest keyframe.
        if keys:
            chosen = max((i for i in keys if buffered[i].pts <= target), default=keys[0])
            for packet in buffered[chosen : keys[-1]]:
                self._forward(packet)
        self._pump_task = asyncio.create_task(self._pump(), name=f"hksv-pump:{self.name}")

    def __aiter__(self) -> AsyncIterator[RecordingChunk]:
        return self

    async def __anext__(self) -> RecordingChunk:
        if not self._started and not self._closed:
            try:
                self.start()
            except CameraUnavailable as exc:
                raise RecordingFailed(str(exc)) from exc
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._pending_bytes -= len(chunk.data)
                self.delivered += 1
                self.bytes += len(chunk.data)
                return chunk
            if self._closed or self._end is not None:
                end, self._end = self._end, End(None)  # an error is raised once
                if end is not None and end.error is not None and not self._closed:
                    raise end.error
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    def finish(self) -> None:
        """End after the fragment in progress: it is flushed, then iteration stops."""
        if self._finishing or self._closed or self._end is not None:
            return
        self._finishing = True
        if not self._started:
            self._end = End(None)
            self._wakeup.set()
            return
        self._stop_input()
        self._put(End(None))

    async def close(self) -> None:
        """Stop at once and release everything (thread, codecs, subscription); idempotent."""
        if not self._closed:
            self._closed = True
            self._chunks.clear()
            self._pending_bytes = 0
            self._stop_input()
            self._put(STOP)
            self._wakeup.set()
        task = self._pump_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            await asyncio.gather(task, return_exceptions=True)
        worker = self._worker
        deadline = time.monotonic() + JOIN_SECONDS
        while worker is not None and worker.is_alive() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if worker is not None and worker.is_alive():
            log.warning("camera %r: HKSV worker still busy after close", self.name)

    def stats(self) -> dict[str, Any]:
        sub, worker = self._subscription, self._worker
        first = worker.first_pts if worker is not None else None
        done = worker.done_pts if worker is not None else None
        lag = 0.0
        if self._in_pts is not None and done is not None:
            lag = max(0.0, self._in_pts - done)
        return {
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "state": self._state(),
            "opened_at": self._opened_at or None,
            "fragments": worker.fragments if worker is not None else 0,
            "delivered": self.delivered,
            "bytes": self.bytes,
            "pending": len(self._chunks),
            "pending_bytes": self._pending_bytes,
            "media_seconds": round(worker.media_seconds, 3) if worker is not None else 0.0,
            # wall clock of the first fragment's first frame, and how long before the open
            "first_fragment_started_at": None if first is None else first + self._wall_offset,
            "prebuffer_seconds": None if first is None else round(self._open_pts - first, 3),
            "lag_seconds": round(lag, 3),
            "dropped": 0 if sub is None else sub.dropped - self._dropped_at_start,
            "cpu_seconds": round(worker.cpu_seconds, 3) if worker is not None else 0.0,
            "error": self.error,
            # The camera's sound (received, decoded, late): None when the track is silence.
            "audio": sound() if (sound := getattr(self._audio, "stats", None)) else None,
            **(worker.stats if worker is not None else {}),
        }

    def _state(self) -> str:
        if self._closed:
            return "closed"
        if self.error is not None:
            return "failed"
        if self._end is not None:
            return "ended"
        if self._finishing:
            return "finishing"
        return "recording" if self._started else "idle"

    # -- loop side ---------------------------------------------------------------------------

    def _put(self, item: object) -> None:
        if self._worker is not None:
            self._worker.put(item)

    def _forward(self, packet: VideoPacket) -> None:
        self._in_pts = packet.pts
        self._put(packet)

    async def _pump(self) -> None:
        sub = self._subscription
        assert sub is not None and self._info is not None
        epoch: int | None = None
        error: str | None = None
        try:
            async for packet in sub:
                if self._finishing or self._closed:
                    return
                if epoch is None:
                    epoch = packet.epoch
                elif packet.epoch != epoch:
                    error = "the camera reconnected (its timestamps restarted)"
                    break
                self._forward(packet)
                done = self._worker.done_pts if self._worker is not None else None
                if done is not None and packet.pts - done > self._max_lag:
                    # Hopeless (this machine cannot keep up): stop now, not after the backlog.
                    self._fail(f"the {self.mode} worker is {packet.pts - done:.0f} s behind")
                    return
        except SourceEnded:
            error = "the camera disconnected"
        except Exception as exc:  # the recording ends, the bridge goes on
            log.exception("camera %r: HKSV pump failed", self.name)
            error = f"internal error: {exc}"
        else:
            if error is None and not (self._finishing or self._closed):
                error = "the camera's stream ended"
        if error is not None and not (self._finishing or self._closed):
            self._finishing = True
            sub.close()
            self._put(End(RecordingFailed(error)))

    def _start_audio(self) -> None:
        # An input with a lifetime (bridge.media.camera_audio) subscribes now and stops with
        # the recording's input; a plain AudioInput has neither.
        start = getattr(self._audio, "start", None)
        if start is None:
            return
        try:
            start()
        except CameraUnavailable as exc:
            log.info("camera %r: HKSV recording without sound: %s", self.name, exc)
            self._audio = None

    def _stop_input(self) -> None:
        close_audio = getattr(self._audio, "close", None)
        if close_audio is not None:
            close_audio()
        if self._subscription is not None:
            self._subscription.close()
        task = self._pump_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _deliver(self, item: RecordingChunk | End) -> None:
        """On the loop: a chunk (or the end) from the worker."""
        if self._closed or self._end is not None:
            return
        if isinstance(item, End):  # the worker has returned: nothing more to forward
            if item.error is not None:
                self.error = str(item.error)
                log.warning("camera %r: HKSV recording failed: %s", self.name, item.error)
            self._end = item
            self._stop_input()
        else:
            self._chunks.append(item)
            self._pending_bytes += len(item.data)
            too_many = len(self._chunks) > self._max_pending
            if too_many or self._pending_bytes > self._max_pending_bytes:
                self._fail(
                    f"consumer too slow: {len(self._chunks)} fragments "
                    f"({self._pending_bytes / 2**20:.1f} MiB) not taken"
                )
        self._wakeup.set()

    def _fail(self, reason: str) -> None:
        self.error = reason
        log.warning("camera %r: HKSV recording failed: %s", self.name, reason)
        self._chunks.clear()
        self._pending_bytes = 0
        self._end = End(RecordingFailed(reason))
        self._finishing = True
        self._stop_input()
        self._put(STOP)

    def _send(self, item: RecordingChunk | End) -> bool:
        """From the worker thread: hand a chunk (or the end) to the loop."""
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(self._deliver, item)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            return False
        return True
