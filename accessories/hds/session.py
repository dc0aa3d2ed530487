"""One HomeKit Data Stream connection, after the server has identified it (docs/hds.md).

The hub sends control/hello first (within HELLO_TIMEOUT, or the connection is closed), then
dataSend requests and events; we answer requests and pass dataSend to a ``DataSendHandler``
(the camera's recording glue). Everything that goes wrong is local to this connection: a frame
that does not decrypt, a payload that does not decode or a header that is not one of
event/request/response closes this connection only; an unknown protocol or topic in a request
gets an error response and the connection goes on.

Frames are written one at a time under a lock (the sealing counter must match the order on the
wire) and each write waits for the socket to drain, up to SEND_TIMEOUT: a hub that stops reading
ends its own session instead of growing our buffers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from .format import HDSFormatError
from .frames import (
    FRAME_HEADER_SIZE,
    TAG_SIZE,
    FrameOpener,
    FrameSealer,
    HDSFrameError,
    SessionKeys,
    decode_payload,
    encode_payload,
    parse_frame_header,
)
from .messages import (
    CloseReason,
    DataSendAck,
    DataSendClose,
    DataSendOpen,
    HDSMessageError,
    HeaderStatus,
    Hello,
    Unknown,
    error_response,
    hello_response,
    open_response,
    parse_header,
    parse_incoming,
)

logger = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0  # the hub says hello right after connecting
SEND_TIMEOUT = 10.0  # a hub that reads nothing for this long loses its session
READ_IDLE_TIMEOUT = 600.0  # a connection silent this long (no stream open) is dropped

ClientAddr = tuple[str, int]


class DataSendHandler(Protocol):
    """The camera side of dataSend on one session (accessories/recording.py)."""

    def open_stream(
        self, session: DataStreamSession, request: DataSendOpen
    ) -> tuple[CloseReason, Callable[[], None] | None]:
        """Accept (NORMAL, and a start function called once the answer is on the wire, so no
        data overtakes it) or refuse with a reason (and None)."""

    def ack(self, session: DataStreamSession, message: DataSendAck) -> None: ...

    def close_stream(self, session: DataStreamSession, message: DataSendClose) -> None: ...

    def session_closed(self, session: DataStreamSession) -> None:
        """The connection is gone: stop every stream of this session at once."""


class DataStreamSession:
    """Owns its reader task and its transport; ``close()`` is idempotent."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        keys: SessionKeys,
        opener: FrameOpener,
        *,
        owner: ClientAddr | None,
        handler: DataSendHandler,
        on_closed: Callable[[DataStreamSession], None],
        name: str = "hds",
    ) -> None:
        self.name = name
        self.owner = owner
        self._reader = reader
        self._writer = writer
        self._opener = opener
        self._sealer = FrameSealer(keys.accessory_to_controller)
        self._handler = handler
        self._on_closed = on_closed
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._closed = False
        self.hello_done = False
        self.close_reason: str | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_out = 0
        self.streams_open = 0  # kept by the handler

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def handler(self) -> DataSendHandler:
        return self._handler

    def start(self, first_payload: bytes) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(first_payload), name=f"{self.name} reader"
        )

    # ---- sending ----

    async def send(self, header: dict[str, object], message: dict[str, object]) -> None:
        """Seal and write one frame; raises ConnectionError once the session is closed."""
        payload = encode_payload(header, message)
        async with self._send_lock:
            if self._closed:
                raise ConnectionError(f"{self.name} is closed")
            frame = self._sealer.seal(payload)
            self._writer.write(frame)
            self.frames_out += 1
            self.bytes_out += len(frame)
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self._writer.drain()
            except TimeoutError:
                self.close(f"the hub read nothing for {SEND_TIMEOUT:g}s")
                raise ConnectionError(f"{self.name}: send timed out") from None
            except (ConnectionError, OSError) as exc:
                self.close(f"connection lost ({exc.__class__.__name__})")
                raise ConnectionError(f"{self.name}: {exc}") from None

    def send_soon(
        self,
        header: dict[str, object],
        message: dict[str, object],
        then: Callable[[], None] | None = None,
    ) -> None:
        """Send in the background (answers, closes), then call ``then``; failures close the
        session. Frames keep their order: each waits for the lock in the order asked."""
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._send_quietly(header, message, then))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send_quietly(
        self,
        header: dict[str, object],
        message: dict[str, object],
        then: Callable[[], None] | None,
    ) -> None:
        try:
            await self.send(header, message)
        except ConnectionError:
            return
        if then is not None:
            then()

    # ---- receiving ----

    async def _run(self, first_payload: bytes) -> None:
        reason = "closed by the hub"
        try:
            self._dispatch(first_payload)
            while not self._closed:
                timeout = READ_IDLE_TIMEOUT if self.hello_done else HELLO_TIMEOUT
                if self.streams_open:
                    timeout = None
                try:
                    async with asyncio.timeout(timeout):
                        payload = await self._read_frame()
                except TimeoutError:
                    reason = "no hello" if not self.hello_done else "idle"
                    break
                if payload is None:
                    break
                self._dispatch(payload)
        except (HDSFrameError, HDSFormatError, HDSMessageError) as exc:
            reason = f"bad data from the hub: {exc}"
            logger.warning("%s: %s", self.name, reason)
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost ({exc.__class__.__name__})"
        except asyncio.CancelledError:
            reason = reason if self.close_reason is None else self.close_reason
            raise
        finally:
            self.close(reason)

    async def _read_frame(self) -> bytes | None:
        try:
            head = await self._reader.readexactly(FRAME_HEADER_SIZE)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise HDSFrameError("connection ended inside a frame header") from None
            return None
        length = parse_frame_header(head)
        try:
            body = await self._reader.readexactly(length + TAG_SIZE)
        except asyncio.IncompleteReadError:
            raise HDSFrameError("connection ended inside a frame") from None
        self.frames_in += 1
        return self._opener.open(head, body)

    def _dispatch(self, payload: bytes) -> None:
        header_value, message = decode_payload(payload)
        header = parse_header(header_value)
        try:
            incoming = parse_incoming(header, message)
        except HDSMessageError as exc:
            if header.kind != "request":
                raise
            logger.info("%s: refused %s/%s: %s", self.name, header.protocol, header.topic, exc)
            self.send_soon(*error_response(header, exc.status))
            return
        if isinstance(incoming, Hello):
            self.hello_done = True
            self.send_soon(*hello_response(incoming.request_id))
            return
        if not self.hello_done:
            raise HDSMessageError(
                "dataSend before control/hello", HeaderStatus.PROTOCOL_SPECIFIC_ERROR
            )
        if isinstance(incoming, DataSendOpen):
            status, start = self._handler.open_stream(self, incoming)
            self.send_soon(*open_response(incoming.request_id, status), then=start)
        elif isinstance(incoming, DataSendAck):
            self._handler.ack(self, incoming)
        elif isinstance(incoming, DataSendClose):
            self._handler.close_stream(self, incoming)
        elif isinstance(incoming, Unknown):
            if header.kind == "request":
                logger.info("%s: no handler for %s/%s", self.name, header.protocol, header.topic)
                self.send_soon(*error_response(header, HeaderStatus.MISSING_PROTOCOL))
            else:
                logger.debug("%s: ignored event %s/%s", self.name, header.protocol, header.topic)

    # ---- lifetime ----

    def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        logger.info("%s: closed: %s", self.name, reason)
        try:
            self._handler.session_closed(self)
        finally:
            self._writer.close()
            task = self._task
            if task is not None and task is not asyncio.current_task() and not task.done():
                task.cancel()
            self._on_closed(self)

    async def wait_closed(self) -> None:
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=2.0)
        try:
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()
        except (TimeoutError, ConnectionError, OSError):
            pass

    def stats(self) -> dict[str, object]:
        return {
            "owner": f"{self.owner[0]}:{self.owner[1]}" if self.owner else None,
            "hello": self.hello_done,
            "streams": self.streams_open,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
        }
