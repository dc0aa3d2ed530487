"""Sends one HKSV recording (a RecordingStream) to the hub over one dataSend stream.

The recording follows its trigger: while it is active the fragments go out as the producer
finishes them (the prebuffer's at once, then live); when it ends a post-roll runs, and if the
trigger does not come back the producer is asked to finish: it flushes the fragment in
progress, and an empty last fragment carries ``endOfStream``; the hub then answers with an ack
(or we close after ACK_TIMEOUT). A recording also ends at ``max_seconds``.

Pacing comes from the session: every frame waits for the socket to drain (session.py), so the
hub is never sent more than TCP holds for it; the producer keeps what is not yet sent, bounded,
and fails the recording ("consumer too slow") rather than buffer a whole event. Nothing here
drops a fragment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..backend import RecordingChunk, RecordingFailed, RecordingStream
from .messages import (
    MEDIA_FRAGMENT,
    CloseReason,
    MediaPacket,
    chunk_media,
    close_event,
    data_event,
)
from .session import DataStreamSession

logger = logging.getLogger(__name__)

ACK_TIMEOUT = 5.0
DATA_TYPES = {"init": "mediaInitialization", "fragment": "mediaFragment"}


@dataclass
class RecordingResult:
    """How a recording ended: for /status and the metrics."""

    started_at: float
    ended_at: float | None = None
    reason: str = "running"  # end_of_stream | hub_closed | trigger_timeout | failed | ...
    detail: str = ""
    fragments: int = 0
    bytes: int = 0
    media_seconds: float = 0.0
    mode: str = ""
    first_fragment_after: float | None = None  # seconds from open to the first mediaFragment

    def as_dict(self) -> dict[str, object]:
        return {
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "seconds": None if self.ended_at is None else round(self.ended_at - self.started_at, 2),
            "ended": self.reason,
            "detail": self.detail,
            "fragments": self.fragments,
            "bytes": self.bytes,
            "media_seconds": round(self.media_seconds, 2),
            "mode": self.mode,
            "first_fragment_after": self.first_fragment_after,
        }


class RecordingSender:
    """One dataSend stream: owns its task; ``stop()`` is idempotent and awaits it."""

    def __init__(
        self,
        session: DataStreamSession,
        stream_id: int,
        stream: RecordingStream,
        *,
        post_roll: float,
        max_seconds: float,
        on_done: Callable[[RecordingSender], None],
        name: str = "recording",
    ) -> None:
        self.session = session
        self.stream_id = stream_id
        self.name = name
        self._stream = stream
        self._post_roll = post_roll
        self._max_seconds = max_seconds
        self._on_done = on_done
        self._trigger = True
        self._post_roll_timer: asyncio.TimerHandle | None = None
        self._max_timer: asyncio.TimerHandle | None = None
        self._finishing = False
        self._acked = asyncio.Event()
        self._sequence = 0  # the last dataSequenceNumber sent
        self._task: asyncio.Task[None] | None = None
        self.result = RecordingResult(started_at=time.time(), mode=stream.mode)
        self._opened = time.monotonic()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"{self.name} sender")
        self._max_timer = loop.call_later(self._max_seconds, self._finish, "max_length")

    # ---- trigger ----

    def set_trigger(self, active: bool) -> None:
        """The camera's MotionDetected (or doorbell) changed."""
        self._trigger = active
        if active:
            if self._post_roll_timer is not None:
                self._post_roll_timer.cancel()
                self._post_roll_timer = None
        elif self._post_roll_timer is None and not self._finishing:
            self._post_roll_timer = asyncio.get_running_loop().call_later(
                self._post_roll, self._finish, "trigger_ended"
            )

    def _finish(self, why: str) -> None:
        if self._finishing:
            return
        self._finishing = True
        self.result.detail = why
        logger.info("%s: finishing (%s)", self.name, why.replace("_", " "))
        self._stream.finish()

    # ---- hub messages ----

    def ack(self, end_of_stream: bool) -> None:
        if end_of_stream:
            self._acked.set()

    def hub_closed(self, reason: CloseReason | int) -> None:
        self._end("hub_closed", f"reason {int(reason)}")
        self._cancel()  # the finally clause closes the producer

    # ---- the stream ----

    async def _run(self) -> None:
        try:
            async for chunk in self._stream:
                await self._send(chunk, end_of_stream=False)
            # An empty last fragment carries the end (the form homebridge's HKSV plugins send
            # through HAP-NodeJS): holding each fragment back until the next one, so the last
            # could carry it, delayed a slow transcoder's fragments by a whole fragment each.
            empty = MediaPacket(b"", MEDIA_FRAGMENT, self._sequence + 1, 1, True, 0)
            await self.session.send(*data_event(self.stream_id, [empty], end_of_stream=True))
            try:
                async with asyncio.timeout(ACK_TIMEOUT):
                    await self._acked.wait()
                self._end("end_of_stream", self.result.detail)
            except TimeoutError:
                self._end("end_of_stream", f"{self.result.detail}; no ack from the hub")
                self.session.send_soon(*close_event(self.stream_id, CloseReason.NORMAL))
        except RecordingFailed as exc:
            self._end("failed", str(exc))
            self.session.send_soon(*close_event(self.stream_id, CloseReason.UNEXPECTED_FAILURE))
        except ConnectionError as exc:
            self._end("connection_lost", str(exc))
        except asyncio.CancelledError:
            self._end(self.result.reason if self.result.reason != "running" else "cancelled", "")
            raise
        finally:
            try:
                await self._stream.close()
            finally:  # even if cancelled again meanwhile: the camera must not stay busy
                self._cancel_timers()
                self._on_done(self)

    async def _send(self, chunk: RecordingChunk, *, end_of_stream: bool) -> None:
        packets = chunk_media(chunk.data, DATA_TYPES[chunk.kind], chunk.sequence)
        self._sequence = chunk.sequence
        for index, packet in enumerate(packets):
            last = end_of_stream and index == len(packets) - 1
            await self.session.send(*data_event(self.stream_id, [packet], end_of_stream=last))
        if chunk.kind == "fragment":
            self.result.fragments += 1
            self.result.media_seconds += chunk.duration
            if self.result.first_fragment_after is None:
                self.result.first_fragment_after = round(time.monotonic() - self._opened, 3)
        self.result.bytes += len(chunk.data)

    def _end(self, reason: str, detail: str) -> None:
        if self.result.ended_at is not None:
            return
        self.result.ended_at = time.time()
        self.result.reason = reason
        if detail:
            self.result.detail = detail
        logger.info(
            "%s: ended (%s%s): %d fragments, %.1f s of media",
            self.name, reason.replace("_", " "), f": {detail}" if detail else "",
            self.result.fragments, self.result.media_seconds,
        )  # fmt: skip

    def _cancel_timers(self) -> None:
        for timer in (self._post_roll_timer, self._max_timer):
            if timer is not None:
                timer.cancel()

    async def stop(self, reason: str = "stopped", close: CloseReason | None = None) -> None:
        """End now (hub gone, camera turned off, shutdown); tells the hub when ``close``."""
        self._end(reason, "")
        if close is not None:
            self.session.send_soon(*close_event(self.stream_id, close))
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            self._cancel()
            await asyncio.wait([task], timeout=3.0)

    def _cancel(self) -> None:
        """Cancel the task once: a second cancel (the hub closes, then its connection drops)
        would interrupt the finally clause that closes the producer."""
        task = self._task
        if task is not None and not task.done() and not task.cancelling():
            task.cancel()

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()
