"""Typed HDS messages (docs/hds.md §6-§7): the only place that knows their dict shapes.

The hub speaks in untyped dicts. HAP-NodeJS passes them around as ``Record<any, any>`` and
reads fields wherever it needs them; here every incoming header and message is checked once and
turned into a frozen dataclass (``parse_header``, ``parse_incoming``), and every outgoing one
is built by one function that returns ``(header, message)`` ready for
``frames.encode_payload``. The numeric forms are the ones hubs and HAP-NodeJS use: header ``id``
and ``status`` as Int64, numbers in message bodies compact.

A malformed field raises ``HDSMessageError`` carrying the header status to answer a request
with (3 for the header, 4 for the message). Protocols and topics we do not serve parse to
``Unknown`` so the session can answer "missing protocol" to a request and ignore the rest.

Usage::

    header = parse_header(header_dict)
    match parse_incoming(header, message_dict):
        case DataSendOpen() as request:
            send(*open_response(request.request_id, CloseReason.NORMAL))
            for packet in chunk_media(init_segment, MEDIA_INITIALIZATION, 1):
                send(*data_event(request.stream_id, [packet]))

Pure functions: no I/O, no clock, no logging.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal, TypeAlias, TypeGuard

from .format import Int64

PROTOCOL_CONTROL = "control"
PROTOCOL_DATA_SEND = "dataSend"
TOPIC_HELLO = "hello"
TOPIC_OPEN = "open"
TOPIC_DATA = "data"
TOPIC_ACK = "ack"
TOPIC_CLOSE = "close"
RECORDING_TYPE = "ipcamera.recording"
RECORDING_TARGET = "controller"
MEDIA_INITIALIZATION = "mediaInitialization"
MEDIA_FRAGMENT = "mediaFragment"
MAX_CHUNK = 256 * 1024  # bytes of media per data event (hubs expect at most this)

Kind: TypeAlias = Literal["event", "request", "response"]
_KINDS: tuple[Kind, ...] = ("event", "request", "response")


class CloseReason(IntEnum):
    """dataSend close reasons; also the ``status`` of a refused dataSend open."""

    NORMAL = 0
    NOT_ALLOWED = 1
    BUSY = 2
    CANCELLED = 3
    UNSUPPORTED = 4
    UNEXPECTED_FAILURE = 5
    TIMEOUT = 6
    BAD_DATA = 7
    PROTOCOL_ERROR = 8
    INVALID_CONFIGURATION = 9


class HeaderStatus(IntEnum):
    """The ``status`` of a response header."""

    SUCCESS = 0
    OUT_OF_MEMORY = 1
    TIMEOUT = 2
    HEADER_ERROR = 3
    PAYLOAD_ERROR = 4
    MISSING_PROTOCOL = 5
    PROTOCOL_SPECIFIC_ERROR = 6


class HDSMessageError(ValueError):
    """A header or message of the wrong shape; ``status`` is what a request is answered with."""

    def __init__(self, message: str, status: HeaderStatus = HeaderStatus.PAYLOAD_ERROR) -> None:
        super().__init__(message)
        self.status = status


# ---- headers ----


@dataclass(frozen=True, slots=True)
class Header:
    """A message header: ``kind`` is which of event/request/response carries the topic."""

    protocol: str
    topic: str
    kind: Kind
    id: int | None = None  # requests and responses
    status: int | None = None  # responses

    def to_value(self) -> dict[str, object]:
        """The header dict, in HAP-NodeJS's key order, id and status as Int64."""
        value: dict[str, object] = {"protocol": self.protocol, self.kind: self.topic}
        if self.kind != "event":
            if self.id is None:
                raise ValueError(f"a {self.kind} header needs an id")
            value["id"] = Int64(self.id)
        if self.kind == "response":
            if self.status is None:
                raise ValueError("a response header needs a status")
            value["status"] = Int64(self.status)
        return value


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_header(d: object) -> Header:
    """Check a decoded header dict (HDSMessageError with HEADER_ERROR); extra keys are ignored."""

    def bad(what: str) -> HDSMessageError:
        return HDSMessageError(f"header: {what}", HeaderStatus.HEADER_ERROR)

    if not isinstance(d, Mapping):
        raise bad(f"a {type(d).__name__}, not a dict")
    protocol = d.get("protocol")
    if not isinstance(protocol, str):
        raise bad("protocol missing or not a string")
    kinds = [kind for kind in _KINDS if kind in d]
    if len(kinds) != 1:
        raise bad(f"needs exactly one of event/request/response, has {kinds or 'none'}")
    kind = kinds[0]
    topic = d[kind]
    if not isinstance(topic, str):
        raise bad(f"{kind} is not a string")
    if kind == "event":
        return Header(protocol, topic, kind)
    request_id = d.get("id")
    if not _integer(request_id):
        raise bad(f"{kind} id missing or not an integer")
    if kind == "request":
        return Header(protocol, topic, kind, request_id)
    status = d.get("status")
    if not _integer(status):
        raise bad("response status missing or not an integer")
    return Header(protocol, topic, kind, request_id, status)


# ---- incoming messages ----


@dataclass(frozen=True, slots=True)
class Hello:
    request_id: int


@dataclass(frozen=True, slots=True)
class DataSendOpen:
    request_id: int
    stream_id: int
    type: str
    target: str
    reason: str

    @property
    def is_recording(self) -> bool:
        """Whether this asks for what we serve (anything else is refused as UNSUPPORTED)."""
        return self.type == RECORDING_TYPE and self.target == RECORDING_TARGET


@dataclass(frozen=True, slots=True)
class DataSendAck:
    stream_id: int
    end_of_stream: bool


@dataclass(frozen=True, slots=True)
class DataSendClose:
    stream_id: int
    reason: CloseReason | int  # an int only for values outside CloseReason


@dataclass(frozen=True, slots=True)
class Unknown:
    """A protocol/topic/kind we do not serve: answer a request with MISSING_PROTOCOL."""

    header: Header


Incoming: TypeAlias = Hello | DataSendOpen | DataSendAck | DataSendClose | Unknown


class _Fields:
    """Typed access to one message's fields; errors name the message and the field."""

    __slots__ = ("message", "what")

    def __init__(self, message: Mapping[str, object], what: str) -> None:
        self.message = message
        self.what = what

    def fail(self, name: str, problem: str) -> HDSMessageError:
        return HDSMessageError(f"{self.what}: {name} {problem}", HeaderStatus.PAYLOAD_ERROR)

    def integer(self, name: str, default: int | None = None) -> int:
        value = self.message.get(name, default)
        if value is None:
            raise self.fail(name, "missing")
        if not _integer(value):
            raise self.fail(name, f"is a {type(value).__name__}, not an integer")
        return int(value)

    def string(self, name: str, default: str | None = None) -> str:
        value = self.message.get(name, default)
        if value is None:
            raise self.fail(name, "missing")
        if not isinstance(value, str):
            raise self.fail(name, f"is a {type(value).__name__}, not a string")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.message.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, f"is a {type(value).__name__}, not a bool")
        return value


def parse_incoming(header: Header, message: Mapping[str, object]) -> Incoming:
    """What the hub sent, typed; HDSMessageError (PAYLOAD_ERROR) for a malformed field."""
    route = (header.protocol, header.topic, header.kind)
    what = f"{header.protocol}/{header.topic} {header.kind}"
    if not isinstance(message, Mapping):
        raise HDSMessageError(f"{what}: message is not a dict", HeaderStatus.PAYLOAD_ERROR)
    if header.kind == "request" and header.id is None:
        raise HDSMessageError(f"{what}: no id", HeaderStatus.HEADER_ERROR)
    request_id = header.id if header.id is not None else 0
    fields = _Fields(message, what)
    if route == (PROTOCOL_CONTROL, TOPIC_HELLO, "request"):
        return Hello(request_id)
    if route == (PROTOCOL_DATA_SEND, TOPIC_OPEN, "request"):
        return DataSendOpen(
            request_id=request_id,
            stream_id=fields.integer("streamId"),
            type=fields.string("type"),
            target=fields.string("target"),
            reason=fields.string("reason", ""),
        )
    if route == (PROTOCOL_DATA_SEND, TOPIC_ACK, "event"):
        return DataSendAck(fields.integer("streamId"), fields.boolean("endOfStream", False))
    if route == (PROTOCOL_DATA_SEND, TOPIC_CLOSE, "event"):
        reason = fields.integer("reason", CloseReason.NORMAL)
        known = reason in CloseReason._value2member_map_
        return DataSendClose(fields.integer("streamId"), CloseReason(reason) if known else reason)
    return Unknown(header)


# ---- outgoing messages ----

Outgoing: TypeAlias = tuple[dict[str, object], dict[str, object]]


def _response(protocol: str, topic: str, request_id: int, status: int) -> dict[str, object]:
    return Header(protocol, topic, "response", request_id, int(status)).to_value()


def hello_response(request_id: int) -> Outgoing:
    return _response(PROTOCOL_CONTROL, TOPIC_HELLO, request_id, HeaderStatus.SUCCESS), {}


def open_response(request_id: int, status: CloseReason) -> Outgoing:
    """Accept (NORMAL: header status 0, ``{status: 0}``) or refuse (header status 6)."""
    reason = CloseReason(status)
    header_status = (
        HeaderStatus.SUCCESS
        if reason == CloseReason.NORMAL
        else HeaderStatus.PROTOCOL_SPECIFIC_ERROR
    )
    header = _response(PROTOCOL_DATA_SEND, TOPIC_OPEN, request_id, header_status)
    return header, {"status": int(reason)}


def error_response(header: Header, status: HeaderStatus) -> Outgoing:
    """The answer to a request we cannot serve: same protocol, topic and id, ``{}``."""
    if header.kind != "request" or header.id is None:
        raise ValueError(f"only a request can be answered, not a {header.kind}")
    return _response(header.protocol, header.topic, header.id, HeaderStatus(status)), {}


def close_event(stream_id: int, reason: CloseReason) -> Outgoing:
    header = Header(PROTOCOL_DATA_SEND, TOPIC_CLOSE, "event").to_value()
    return header, {"streamId": int(stream_id), "reason": int(CloseReason(reason))}


@dataclass(frozen=True, slots=True)
class MediaPacket:
    """One chunk of one media item (init segment or fragment), as one data event carries it."""

    data: bytes = field(repr=False)
    data_type: str  # MEDIA_INITIALIZATION | MEDIA_FRAGMENT
    sequence: int  # dataSequenceNumber: the item's number in the recording, from 1
    chunk_sequence: int  # dataChunkSequenceNumber: from 1 within the item
    is_last: bool  # isLastDataChunk
    total_size: int | None  # dataTotalSize: the item's size, on its first chunk only

    def to_value(self) -> dict[str, object]:
        metadata: dict[str, object] = {
            "dataType": self.data_type,
            "dataSequenceNumber": self.sequence,
            "dataChunkSequenceNumber": self.chunk_sequence,
            "isLastDataChunk": self.is_last,
        }
        if self.total_size is not None:
            metadata["dataTotalSize"] = self.total_size
        return {"data": self.data, "metadata": metadata}


def chunk_media(
    data: bytes, data_type: str, sequence: int, max_chunk: int = MAX_CHUNK
) -> list[MediaPacket]:
    """Split one media item into packets of at most ``max_chunk`` bytes (ValueError if empty)."""
    if data_type not in (MEDIA_INITIALIZATION, MEDIA_FRAGMENT):
        raise ValueError(
            f"data type {data_type!r} is neither {MEDIA_INITIALIZATION} nor {MEDIA_FRAGMENT}"
        )
    if not 1 <= max_chunk <= MAX_CHUNK:
        raise ValueError(f"max_chunk must be 1..{MAX_CHUNK}, got {max_chunk}")
    if sequence < 1:
        raise ValueError(f"dataSequenceNumber starts at 1, got {sequence}")
    if not data:
        raise ValueError("an empty media item has no encoding (HAP-NodeJS would send nothing)")
    view = memoryview(data)
    starts = range(0, len(view), max_chunk)
    return [
        MediaPacket(
            data=bytes(view[start : start + max_chunk]),
            data_type=data_type,
            sequence=sequence,
            chunk_sequence=number,
            is_last=start + max_chunk >= len(view),
            total_size=len(view) if number == 1 else None,
        )
        for number, start in enumerate(starts, start=1)
    ]


def data_event(
    stream_id: int, packets: Sequence[MediaPacket], end_of_stream: bool = False
) -> Outgoing:
    """A dataSend/data event; ``endOfStream`` is sent only when the last packet ends its item.

    ``packets`` may be empty only to end the stream (``{packets: [], endOfStream: true}``), a
    form HAP-NodeJS never sends; holding back the last item to send it with the end is safer.
    """
    message: dict[str, object] = {
        "streamId": int(stream_id),
        "packets": [packet.to_value() for packet in packets],
    }
    if not packets:
        if not end_of_stream:
            raise ValueError("a data event without packets must end the stream")
        message["endOfStream"] = True
    elif packets[-1].is_last:
        message["endOfStream"] = bool(end_of_stream)
    elif end_of_stream:
        raise ValueError("endOfStream must come with the last chunk of an item")
    return Header(PROTOCOL_DATA_SEND, TOPIC_DATA, "event").to_value(), message


__all__ = [
    "MAX_CHUNK",
    "MEDIA_FRAGMENT",
    "MEDIA_INITIALIZATION",
    "PROTOCOL_CONTROL",
    "PROTOCOL_DATA_SEND",
    "RECORDING_TARGET",
    "RECORDING_TYPE",
    "TOPIC_ACK",
    "TOPIC_CLOSE",
    "TOPIC_DATA",
    "TOPIC_HELLO",
    "TOPIC_OPEN",
    "CloseReason",
    "DataSendAck",
    "DataSendClose",
    "DataSendOpen",
    "HDSMessageError",
    "Header",
    "HeaderStatus",
    "Hello",
    "Incoming",
    "Kind",
    "MediaPacket",
    "Outgoing",
    "Unknown",
    "chunk_media",
    "close_event",
    "data_event",
    "error_response",
    "hello_response",
    "open_response",
    "parse_header",
    "parse_incoming",
]
