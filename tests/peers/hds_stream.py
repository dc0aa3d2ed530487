"""One HomeKit Data Stream connection, from the home hub's side (HKSV tests).

`DataStream` speaks to the accessory's HDS listener like a hub: control/hello, then
dataSend/open {target "controller", type "ipcamera.recording", streamId, reason}; a
`Recording` collects the dataSend/data events of one stream, reassembles the chunks of each
mediaInitialization / mediaFragment, notes every protocol slip in `problems` (a test asserts
it is empty) and times each fragment (time.monotonic). When the accessory says endOfStream the
hub answers `ack {streamId, endOfStream: true}` (auto_ack); either side may `close`.

The hub never raises out of its reader: frames that do not open, undecodable payloads and
oversized frames end the connection (as a hub would) and are recorded in `problems`. Every
wait has a timeout (TimeoutError), so nothing here can hang a test. Wire code: hds_wire.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.peers import hds_wire as w

CHUNK_LIMIT = 256 * 1024
INIT, FRAGMENT = "mediaInitialization", "mediaFragment"
# dataSend/close reasons and open-refusal statuses (hksv-protocol.md)
CLOSE_NORMAL, NOT_ALLOWED, BUSY, CANCELLED, UNSUPPORTED = 0, 1, 2, 3, 4
UNEXPECTED_FAILURE, TIMEOUT, BAD_DATA, PROTOCOL_ERROR, INVALID_CONFIGURATION = 5, 6, 7, 8, 9
HDS_PROTOCOL_SPECIFIC_ERROR = 6  # header status of a refused open


class StreamClosed(ConnectionError):
    """The HDS connection ended while the hub waited for an answer."""


@dataclass(frozen=True)
class Response:
    protocol: str
    topic: str
    id: int
    status: Any  # header status (0 = success)
    message: Any
    at: float

    @property
    def message_status(self) -> Any:
        return self.message.get("status") if isinstance(self.message, dict) else None

    @property
    def accepted(self) -> bool:
        return self.status == 0 and self.message_status in (None, 0)


class RecordingRefused(AssertionError):
    def __init__(self, response: Response) -> None:
        super().__init__(f"dataSend/open refused: {response}")
        self.response = response


@dataclass(frozen=True)
class Fragment:
    kind: str  # INIT or FRAGMENT
    sequence: int  # dataSequenceNumber
    data: bytes
    chunks: int
    started_at: float  # arrival of its first chunk
    completed_at: float  # arrival of its last chunk


@dataclass
class _Partial:
    kind: str
    sequence: int
    total: int | None
    started_at: float
    parts: list[bytes] = field(default_factory=list)


class _Changes:
    """Wake waiters whenever something was recorded."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def until(self, done: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not done():
                await self._event.wait()


class Recording:
    """What the accessory sent for one streamId, and how the stream ended."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.opened_at = time.monotonic()  # when the hub sent dataSend/open
        self.response: Response | None = None
        self.fragments: list[Fragment] = []
        self.problems: list[str] = []
        # "endOfStream", "close" (by the accessory), "hub closed", "connection closed", "refused"
        self.end: str | None = None
        self.close_reason: Any = None
        self.ended_at: float | None = None
        self.acked_at: float | None = None
        self.after_end = 0  # packets that arrived after the end
        self._partial: _Partial | None = None
        self._changes = _Changes()

    @property
    def init(self) -> Fragment | None:
        return self.fragments[0] if self.fragments and self.fragments[0].kind == INIT else None

    @property
    def media(self) -> list[Fragment]:
        return [f for f in self.fragments if f.kind == FRAGMENT]

    async def wait_fragments(self, count: int, timeout_s: float = 30.0) -> list[Fragment]:
        """Until `count` media fragments (not counting the init segment) arrived or it ended."""
        await self._changes.until(
            lambda: len(self.media) >= count or self.end is not None, timeout_s
        )
        return self.media

    async def wait_end(self, timeout_s: float = 60.0) -> str:
        await self._changes.until(lambda: self.end is not None, timeout_s)
        assert self.end is not None
        return self.end

    def _finish(self, how: str, reason: Any = None) -> None:
        if self.end is None:
            self.end, self.close_reason, self.ended_at = how, reason, time.monotonic()
            if self._partial is not None and how in ("endOfStream", "close"):
                self.problems.append(f"stream ended inside fragment {self._partial.sequence}")
        self._changes.notify()

    def _packet(self, packet: Any, now: float) -> None:
        bad = self.problems.append
        if not isinstance(packet, dict) or not isinstance(packet.get("metadata"), dict):
            bad(f"packet is not {{data, metadata}}: {packet!r:.200}")
            return
        data, md = packet.get("data"), packet["metadata"]
        kind, seq = md.get("dataType"), md.get("dataSequenceNumber")
        chunk, last = md.get("dataChunkSequenceNumber"), md.get("isLastDataChunk")
        total = md.get("dataTotalSize")
        if not isinstance(data, bytes) or kind not in (INIT, FRAGMENT):
            bad(f"packet data/dataType wrong: {type(data).__name__}, {kind!r}")
            return
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (seq, chunk)):
            bad(f"sequence numbers are not integers: {seq!r}, {chunk!r}")
            return
        if not isinstance(last, bool):
            bad(f"isLastDataChunk is not a bool: {last!r}")
        if len(data) > CHUNK_LIMIT:
            bad(f"chunk of {len(data)} bytes (limit {CHUNK_LIMIT})")
        if self.end is not None:
            self.after_end += 1  # in flight after the hub's close is normal; after the
            if self.end != "hub closed":  # accessory's own end it is not
                bad(f"data after the stream ended ({self.end})")
        part = self._partial
        if part is None:
            expected = self.fragments[-1].sequence + 1 if self.fragments else 1
            if seq != expected:
                bad(f"dataSequenceNumber {seq}, expected {expected}")
            if chunk != 1:
                bad(f"fragment {seq} starts with chunk {chunk}")
            if (kind == INIT) != (not self.fragments):
                bad(f"fragment {seq} is {kind}")
            if not isinstance(total, int):
                bad(f"first chunk of fragment {seq} has no dataTotalSize ({total!r})")
            part = self._partial = _Partial(
                kind, seq, total if isinstance(total, int) else None, now
            )
        elif seq != part.sequence or kind != part.kind:
            bad(f"{kind} {seq} began before the last chunk of fragment {part.sequence}")
        elif chunk != len(part.parts) + 1:
            bad(f"fragment {seq}: chunk {chunk}, expected {len(part.parts) + 1}")
        part.parts.append(data)
        if last:
            blob = b"".join(part.parts)
            if part.total is not None and len(blob) != part.total:
                bad(f"fragment {part.sequence}: {len(blob)} bytes, dataTotalSize {part.total}")
            self.fragments.append(
                Fragment(part.kind, part.sequence, blob, len(part.parts), part.started_at, now)
            )
            self._partial = None
        self._changes.notify()


class DataStream:
    """An HDS connection the hub opened to the accessory (see the module docstring)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        keys: w.HdsKeys,
        *,
        auto_ack: bool = True,
    ) -> None:
        self.keys = keys
        self.auto_ack = auto_ack
        self.tx = w.Direction(keys.hub_to_accessory)
        self.rx = w.Direction(keys.accessory_to_hub)
        self.recordings: dict[int, Recording] = {}
        self.events: list[tuple[float, dict[str, Any], Any]] = []  # every event received
        self.requests: list[tuple[float, dict[str, Any], Any]] = []  # requests (none expected)
        self.problems: list[str] = []
        self.closed_by: str | None = None  # "accessory", "hub", or "hub: <why>"
        self._reader, self._writer = reader, writer
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._changes = _Changes()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        keys: w.HdsKeys,
        *,
        timeout_s: float = 10.0,
        auto_ack: bool = True,
    ) -> DataStream:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, keys, auto_ack=auto_ack)

    @property
    def is_closed(self) -> bool:
        return self.closed_by is not None

    # ---- receiving ----

    async def _read_loop(self) -> None:
        why = "accessory"
        try:
            while True:
                head = await self._reader.readexactly(w.HEADER_LEN)
                frame_type, length = w.parse_frame_header(head)
                if length > w.MAX_PAYLOAD:
                    why = f"hub: frame of {length} bytes"
                    break
                body = await self._reader.readexactly(length + w.TAG_LEN)
                now = time.monotonic()
                if frame_type != w.FRAME_TYPE:
                    self.problems.append(f"frame type {frame_type:#x} skipped")
                    continue
                header, message = w.decode_payload(self.rx.open(head + body))
                self._dispatch(header, message, now)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (w.FrameError, w.HdsDecodeError) as err:
            why = f"hub: {err}"
        except Exception as err:  # a bug of the hub itself: say so rather than hang a test
            why = f"hub: {type(err).__name__}: {err}"
        finally:
            if why != "accessory":
                self.problems.append(why)
            self._closed(why)

    def _dispatch(self, header: Any, message: Any, now: float) -> None:
        if not isinstance(header, dict) or not isinstance(header.get("protocol"), str):
            self.problems.append(f"header without protocol: {header!r:.200}")
            return
        protocol = header["protocol"]
        if "response" in header:
            rid = header.get("id")
            fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
            if fut is None or fut.done():
                self.problems.append(f"response nobody asked for: {header!r}")
                return
            fut.set_result(
                Response(
                    protocol,
                    str(header["response"]),
                    header["id"],
                    header.get("status"),
                    message,
                    now,
                )
            )
        elif "event" in header:
            self.events.append((now, header, message))
            if protocol == "dataSend":
                self._data_send_event(str(header["event"]), message, now)
        elif "request" in header:
            self.requests.append((now, header, message))
        else:
            self.problems.append(f"header is neither request, response nor event: {header!r}")
        self._changes.notify()

    def _data_send_event(self, topic: str, message: Any, now: float) -> None:
        sid = message.get("streamId") if isinstance(message, dict) else None
        rec = self.recordings.get(sid) if isinstance(sid, int) else None
        if rec is None:
            self.problems.append(f"dataSend/{topic} for unknown stream: {message!r:.200}")
            return
        if topic == "data":
            packets = message.get("packets")
            if not isinstance(packets, list):
                rec.problems.append(f"data event without packets: {message!r:.200}")
            for packet in packets if isinstance(packets, list) else []:
                rec._packet(packet, now)
            if message.get("endOfStream") is True:
                rec._finish("endOfStream")
                if self.auto_ack and not self.is_closed:
                    rec.acked_at = time.monotonic()
                    self._write(
                        {"protocol": "dataSend", "event": "ack"},
                        {"streamId": sid, "endOfStream": True},
                    )
        elif topic == "close":
            rec._finish("close", message.get("reason"))
        else:
            rec.problems.append(f"unexpected dataSend/{topic} event")

    def _closed(self, why: str) -> None:
        if self.closed_by is None:
            self.closed_by = why
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(StreamClosed(f"HDS connection closed ({self.closed_by})"))
        self._pending.clear()
        for rec in self.recordings.values():
            rec._finish("connection closed")
        self._writer.close()
        self._changes.notify()

    # ---- sending ----

    def _write(self, header: dict[str, Any], message: Any) -> None:
        if self.is_closed:
            raise StreamClosed(f"HDS connection closed ({self.closed_by})")
        self._writer.write(self.tx.seal(w.encode_payload(header, message)))

    async def _drain(self, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            await self._writer.drain()

    async def request(
        self, protocol: str, topic: str, message: Any, *, timeout_s: float = 10.0
    ) -> Response:
        rid, self._next_id = self._next_id, self._next_id + 1
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._write({"protocol": protocol, "request": topic, "id": w.Int64(rid)}, message)
            await self._drain(timeout_s)
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            self._pending.pop(rid, None)

    async def event(self, protocol: str, topic: str, message: Any) -> None:
        self._write({"protocol": protocol, "event": topic}, message)
        await self._drain()

    async def hello(self, *, timeout_s: float = 10.0) -> Response:
        response = await self.request("control", "hello", {}, timeout_s=timeout_s)
        if response.status != 0:
            raise AssertionError(f"control/hello refused: {response}")
        return response

    async def open_recording(
        self,
        stream_id: int,
        *,
        reason: str = "record",
        target: str = "controller",
        type: str = "ipcamera.recording",
        timeout_s: float = 10.0,
    ) -> tuple[Response, Recording]:
        """Send dataSend/open; returns the answer and the stream's collector (registered before
        the request, so no data can be missed)."""
        rec = self.recordings[stream_id] = Recording(stream_id)
        message = {"target": target, "type": type, "streamId": stream_id, "reason": reason}
        rec.response = await self.request("dataSend", "open", message, timeout_s=timeout_s)
        if not rec.response.accepted:
            rec._finish("refused", rec.response.message_status)
        return rec.response, rec

    async def record(
        self,
        stream_id: int = 1,
        *,
        until_end: bool = True,
        fragments: int | None = None,
        timeout_s: float = 60.0,
        reason: str = "record",
    ) -> Recording:
        """Open a recording stream and collect it: until it ends (`until_end`), or until
        `fragments` media fragments arrived. Raises RecordingRefused if the open is refused."""
        response, rec = await self.open_recording(stream_id, reason=reason)
        if not response.accepted:
            raise RecordingRefused(response)
        if fragments is not None:
            await rec.wait_fragments(fragments, timeout_s)
        elif until_end:
            await rec.wait_end(timeout_s)
        return rec

    async def close_stream(self, stream_id: int, reason: int = CLOSE_NORMAL) -> None:
        """The hub ends a stream mid-way with dataSend/close."""
        rec = self.recordings.get(stream_id)
        await self.event("dataSend", "close", {"streamId": stream_id, "reason": reason})
        if rec is not None:
            rec._finish("hub closed", reason)

    async def ack(self, stream_id: int, *, end_of_stream: bool = True) -> None:
        await self.event("dataSend", "ack", {"streamId": stream_id, "endOfStream": end_of_stream})

    # ---- hostile input ----

    async def send_raw(self, data: bytes) -> None:
        """Bytes as they are (garbage, a truncated frame, a replay): no counter moves."""
        self._writer.write(data)
        await self._drain()

    async def send_with_wrong_key(self, header: dict[str, Any], message: Any) -> bytes:
        """A well-formed frame at the right counter, sealed with a random key."""
        frame = w.seal(os.urandom(32), self.tx.counter, w.encode_payload(header, message))
        await self.send_raw(frame)
        return frame

    async def send_unknown_request(
        self, protocol: str = "nonsense", topic: str = "nothing", *, timeout_s: float = 5.0
    ) -> Response | None:
        """A request no accessory knows: its response, or None if none came in time."""
        try:
            return await self.request(protocol, topic, {"x": 1}, timeout_s=timeout_s)
        except (TimeoutError, StreamClosed):
            return None

    # ---- ending ----

    async def wait_closed(self, timeout_s: float = 10.0) -> str:
        """Until the connection ended (by the accessory, or by the hub over bad input)."""
        await self._changes.until(lambda: self.is_closed, timeout_s)
        assert self.closed_by is not None
        return self.closed_by

    async def close(self) -> None:
        if not self.is_closed:
            self._closed("hub")
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            async with asyncio.timeout(5):
                await self._task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._writer.wait_closed()


def top_level_boxes(data: bytes) -> list[str]:
    """The ISO-BMFF box types at the top level of a segment ('ftyp', 'moov' / 'moof', 'mdat')."""
    out, i = [], 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8].decode("latin-1")
        if size == 1 and i + 16 <= len(data):
            size = int.from_bytes(data[i + 8 : i + 16], "big")
        if size < 8:
            out.append(f"bad box size {size} at {i}")
            break
        out.append(kind)
        i += size
    return out
