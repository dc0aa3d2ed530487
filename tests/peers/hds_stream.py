"""One HomeKit Data Stream connection, from the home hub's side (HKSV tests).

`DataStream` speaks to the accessory's HDS listener like a hub: control/hello, then
dataSend/open {target "controller", type "ipcamera.recording", streamId, reason}; a
`Recording` collects the dataSend/data events of one stream, reassembles the chunks of each
mediaInitialization / mediaFragment, notes every protocol slip in `problems` (a test asserts
it is empty) and times each fragment (time.monotonic). When the accessory says endOfStream the
hub answers `ack {streamId, endOfStream: true}` (auto_ack); either side may `close`.

The hub never raises out of its reader: frames that do not open, undecodable payloads and
oversized frames end the connection (as a hub would) and are recorded in `problems`. Every
wait has a timeout (TimeoutError), so nothing here can hang a test. Wire code: hds_wire.py;
the per-stream collector: hds_recording.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

from tests.peers import hds_wire as w
from tests.peers.hds_recording import CLOSE_NORMAL, Changes, Recording

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
        self._changes = Changes()
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
