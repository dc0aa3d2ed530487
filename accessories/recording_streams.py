"""The dataSend side of one camera's HKSV: who may record, one recording at a time.

Implements hds.session.DataSendHandler for every data stream a hub sets up on this camera.
A dataSend/open is refused with the protocol's reason: not a recording we serve (unsupported),
what the Home app chose forbids it (``refusal``: not allowed / invalid configuration), another
recording of this camera runs (busy; one per camera, whichever hub or connection asks), the
camera is down (unexpected failure). Otherwise the backend's RecordingStream goes to the hub
through a RecordingSender, started only once the accepting answer is on the wire, and told of
every MotionDetected change (``set_trigger``). A session that closes takes its recording with
it; acks for a stream that is not ours get a protocol-error close, closes are ignored (two
peers answering closes with closes would bounce forever, docs/hds.md §6).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from .backend import CameraUnavailable, RecordingBackend, RecordingRequest
from .hds.messages import CloseReason, DataSendAck, DataSendClose, DataSendOpen, close_event
from .hds.recording_sender import RecordingResult, RecordingSender
from .hds.session import DataStreamSession

logger = logging.getLogger(__name__)


class RecordingStreams:
    def __init__(
        self,
        name: str,
        backend: RecordingBackend,
        *,
        post_roll: float,
        max_seconds: float,
        trigger: Callable[[], bool],
        refusal: Callable[[], tuple[CloseReason, str] | None],
        request: Callable[[], RecordingRequest],
    ) -> None:
        self.name = name
        self._backend = backend
        self._post_roll = post_roll
        self._max_seconds = max_seconds
        self._trigger = trigger
        self._refusal = refusal
        self._request = request
        self.sender: RecordingSender | None = None
        self.last: RecordingResult | None = None
        self.recordings = 0
        self.ends: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()

    # ---- DataSendHandler ----

    def open_stream(
        self, session: DataStreamSession, request: DataSendOpen
    ) -> tuple[CloseReason, Callable[[], None] | None]:
        refusal = self._why_not(request)
        if refusal is not None:
            reason, why = refusal
            self.refusals[reason.name.lower()] += 1
            logger.info("%s: recording refused (%s): %s", self.name, reason.name.lower(), why)
            return reason, None
        try:
            stream = self._backend.open_recording(self._request())
        except CameraUnavailable as exc:
            self.refusals["unexpected_failure"] += 1
            logger.info("%s: recording refused: %s", self.name, exc)
            return CloseReason.UNEXPECTED_FAILURE, None
        sender = RecordingSender(
            session, request.stream_id, stream,
            post_roll=self._post_roll, max_seconds=self._max_seconds,
            on_done=self._sender_done, name=f"{self.name} recording {request.stream_id}",
        )  # fmt: skip
        self.sender = sender
        self.recordings += 1
        session.streams_open += 1
        logger.info("%s: recording %d opened (%s)", self.name, request.stream_id, request.reason)

        def start() -> None:
            if self.sender is sender and not session.closed:
                sender.start()
                sender.set_trigger(self._trigger())

        return CloseReason.NORMAL, start

    def _why_not(self, request: DataSendOpen) -> tuple[CloseReason, str] | None:
        if not request.is_recording:
            return CloseReason.UNSUPPORTED, f"type {request.type!r}, target {request.target!r}"
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        if self.sender is not None:
            return CloseReason.BUSY, "a recording is running"
        return None

    def _sender_done(self, sender: RecordingSender) -> None:
        sender.session.streams_open = max(0, sender.session.streams_open - 1)
        if self.sender is sender:
            self.sender = None
        self.last = sender.result
        self.ends[sender.result.reason] += 1

    def ack(self, session: DataStreamSession, message: DataSendAck) -> None:
        sender = self.sender
        if sender is not None and sender.session is session:
            if sender.stream_id == message.stream_id:
                sender.ack(message.end_of_stream)
                return
        logger.info("%s: dataSend/ack for stream %d, which is not ours", self.name,
                    message.stream_id)  # fmt: skip
        session.send_soon(*close_event(message.stream_id, CloseReason.PROTOCOL_ERROR))

    def close_stream(self, session: DataStreamSession, message: DataSendClose) -> None:
        sender = self.sender
        sid = message.stream_id
        if sender is not None and sender.session is session and sender.stream_id == sid:
            sender.hub_closed(message.reason)
        else:  # ignored (docs/hds.md §6): answering a close with a close could bounce forever
            logger.info("%s: dataSend/close for stream %d, which is not ours", self.name, sid)

    def session_closed(self, session: DataStreamSession) -> None:
        sender = self.sender
        if sender is not None and sender.session is session:
            self._spawn(sender.stop("connection_lost"))

    # ---- the camera's side ----

    def set_trigger(self, active: bool) -> None:
        if self.sender is not None:
            self.sender.set_trigger(active)

    def stop_recording(self, why: str, close: CloseReason) -> None:
        """The Home app turned the camera or its recording off: end now, tell the hub."""
        sender = self.sender
        if sender is not None:
            logger.info("%s: recording stopped: %s", self.name, why)
            self._spawn(sender.stop("turned_off", close))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def stop(self) -> None:
        sender = self.sender
        if sender is not None:
            await sender.stop("bridge_stopping", CloseReason.CANCELLED)

    def status(self) -> dict[str, Any]:
        sender = self.sender
        return {
            "recording": None if sender is None else sender.result.as_dict(),
            "last_recording": None if self.last is None else self.last.as_dict(),
            "recordings": self.recordings,
            "ended": dict(self.ends),
            "refused": dict(self.refusals),
        }
