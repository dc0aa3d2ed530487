"""accessories.hds.messages: the sessions' messages parsed and rebuilt, chunking, bad fields.

The hub's frames of both `sessions` parse to typed messages; our builders reproduce the
accessory's frames of the vectors byte for byte (payload and sealed frame), except where
docs/hds.md §9 says we write a shorter integer than HAP-NodeJS.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from accessories.hds.format import HDSFormatError, decode, encode
from accessories.hds.frames import (
    MAX_PAYLOAD,
    FrameOpener,
    FrameSealer,
    HDSFrameError,
    decode_payload,
    encode_payload,
)
from accessories.hds.messages import (
    MAX_CHUNK,
    MEDIA_FRAGMENT,
    MEDIA_INITIALIZATION,
    CloseReason,
    DataSendAck,
    DataSendClose,
    DataSendOpen,
    HDSMessageError,
    Header,
    HeaderStatus,
    Hello,
    MediaPacket,
    Unknown,
    chunk_media,
    close_event,
    data_event,
    error_response,
    hello_response,
    open_response,
    parse_header,
    parse_incoming,
)
from tests.hds_vectors import load_vectors


def pattern(length: int) -> bytes:
    return bytes(i % 251 for i in range(length))


V = load_vectors()
FRAMES = {f["label"]: f for s in V["sessions"] for f in s["frames"]}
C2A = "controller->accessory"


def opened(frame: dict[str, Any]) -> tuple[dict[str, object], dict[str, object]]:
    return decode_payload(bytes.fromhex(frame["payload_hex"]))


# ---- what the hub sends ----


def test_hub_frames_parse_to_typed_messages() -> None:
    parsed = {
        label: parse_incoming(parse_header(opened(f)[0]), opened(f)[1])
        for label, f in FRAMES.items()
        if f["direction"] == C2A
    }
    assert parsed == {
        "control/hello request": Hello(1),
        "control/hello request (derived keys)": Hello(1),
        "dataSend/open request": DataSendOpen(
            request_id=2,
            stream_id=1,
            type="ipcamera.recording",
            target="controller",
            reason="motion",
        ),
        "dataSend/ack event": DataSendAck(stream_id=1, end_of_stream=True),
    }
    open_request = parsed["dataSend/open request"]
    assert isinstance(open_request, DataSendOpen) and open_request.is_recording


def test_a_hub_session_end_to_end_with_our_builders() -> None:
    """The first session replayed: we open the hub's frames and seal our answers."""
    session = V["sessions"][0]
    keys = {k: bytes.fromhex(v) for k, v in session["keys"].items()}
    opener = FrameOpener(keys["controller_to_accessory"])
    sealer = FrameSealer(keys["accessory_to_controller"])
    ours: list[bytes] = []
    for frame in session["frames"]:
        if frame["direction"] != C2A:
            continue
        blob = bytes.fromhex(frame["frame_hex"])
        header_value, message = decode_payload(opener.open(blob[:4], blob[4:]))
        incoming = parse_incoming(parse_header(header_value), message)
        if isinstance(incoming, Hello):
            ours.append(sealer.seal(encode_payload(*hello_response(incoming.request_id))))
        elif isinstance(incoming, DataSendOpen):
            ours.append(
                sealer.seal(encode_payload(*open_response(incoming.request_id, CloseReason.NORMAL)))
            )
            init = chunk_media(pattern(100), MEDIA_INITIALIZATION, 1)
            ours.append(sealer.seal(encode_payload(*data_event(incoming.stream_id, init))))
        else:
            assert incoming == DataSendAck(1, True)
    expected = [f for f in session["frames"] if f["direction"] != C2A][:3]
    assert [frame.hex() for frame in ours] == [f["frame_hex"] for f in expected]


# ---- what we send ----


def test_builders_reproduce_the_accessory_payloads() -> None:
    assert (
        encode_payload(*hello_response(1)).hex() == FRAMES["control/hello response"]["payload_hex"]
    )
    assert (
        encode_payload(*open_response(2, CloseReason.NORMAL)).hex()
        == FRAMES["dataSend/open response"]["payload_hex"]
    )
    init = chunk_media(pattern(100), MEDIA_INITIALIZATION, 1)
    assert init == [MediaPacket(pattern(100), MEDIA_INITIALIZATION, 1, 1, True, 100)]
    assert (
        encode_payload(*data_event(1, init)).hex()
        == FRAMES["dataSend/data event (mediaInitialization, 100 bytes)"]["payload_hex"]
    )


def test_the_256_kib_chunk_differs_only_by_the_int64_quirk() -> None:
    frame = FRAMES["dataSend/data event (mediaFragment, 256 KiB chunk)"]
    packets = chunk_media(pattern(MAX_CHUNK), MEDIA_FRAGMENT, 2)
    assert len(packets) == 1
    ours = encode_payload(*data_event(1, packets, end_of_stream=True))
    # HAP-NodeJS writes dataTotalSize 262144 as `33 00000400 00000000`, we as `32 00000400`.
    theirs = ours.replace(bytes.fromhex("3200000400"), bytes.fromhex("330000040000000000"))
    assert hashlib.sha256(theirs).hexdigest() == frame["payload_sha256"]
    assert len(ours) == frame["payload_length"] - 4 <= MAX_PAYLOAD
    assert ours[:64].hex() == frame["payload_first64_hex"]
    sealer = FrameSealer(bytes.fromhex(frame["key_hex"]))
    for _ in range(frame["counter"]):
        sealer.seal(b"")
    assert hashlib.sha256(sealer.seal(theirs)).hexdigest() == frame["frame_sha256"]


def test_open_refusal_close_and_error_responses() -> None:
    header, message = open_response(7, CloseReason.BUSY)
    assert decode_payload(encode_payload(header, message)) == (
        {"protocol": "dataSend", "response": "open", "id": 7, "status": 6},
        {"status": 2},
    )
    blob = encode(header)
    assert blob.endswith(bytes.fromhex("46737461747573") + bytes.fromhex("330600000000000000"))
    assert encode(message).hex() == "e1467374617475730a"

    header, message = close_event(3, CloseReason.TIMEOUT)
    assert (
        encode(header).hex()
        == "e2" + "4870726f746f636f6c486461746153656e64" + "456576656e74" + "45636c6f7365"
    )
    assert encode(message).hex() == "e2" + "4873747265616d4964" + "0b" + "46726561736f6e" + "0e"

    request = parse_header({"protocol": "camera", "request": "snapshot", "id": 2**40})
    header, message = error_response(request, HeaderStatus.MISSING_PROTOCOL)
    assert message == {}
    assert decode(encode(header)) == {
        "protocol": "camera",
        "response": "snapshot",
        "id": 2**40,
        "status": 5,
    }
    assert parse_header(decode(encode(header))) == Header(
        "camera", "snapshot", "response", 2**40, 5
    )
    with pytest.raises(ValueError, match="only a request"):
        error_response(Header("dataSend", "close", "event"), HeaderStatus.HEADER_ERROR)
    with pytest.raises(ValueError):
        open_response(1, 42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "header",
    [
        Header("control", "hello", "request", 1),
        Header("dataSend", "open", "response", 2**62, 6),
        Header("dataSend", "data", "event"),
    ],
)
def test_header_round_trip(header: Header) -> None:
    blob = encode(header.to_value())
    assert parse_header(decode(blob)) == header
    if header.kind != "event":
        assert bytes([0x42]) + b"id" + bytes([0x33]) in blob  # id as Int64


# ---- chunking ----


@pytest.mark.parametrize(
    ("size", "max_chunk", "chunks"),
    [
        (1, MAX_CHUNK, [1]),
        (MAX_CHUNK, MAX_CHUNK, [MAX_CHUNK]),
        (MAX_CHUNK + 1, MAX_CHUNK, [MAX_CHUNK, 1]),
        (10, 4, [4, 4, 2]),
    ],
)
def test_chunk_media(size: int, max_chunk: int, chunks: list[int]) -> None:
    data = pattern(size)
    packets = chunk_media(data, MEDIA_FRAGMENT, 5, max_chunk)
    assert [len(p.data) for p in packets] == chunks
    assert b"".join(p.data for p in packets) == data
    assert [p.chunk_sequence for p in packets] == list(range(1, len(chunks) + 1))
    assert [p.is_last for p in packets] == [False] * (len(chunks) - 1) + [True]
    assert [p.total_size for p in packets] == [size] + [None] * (len(chunks) - 1)
    assert {p.sequence for p in packets} == {5} and {p.data_type for p in packets} == {
        MEDIA_FRAGMENT
    }


def test_data_events_of_a_chunked_item() -> None:
    packets = chunk_media(pattern(10), MEDIA_FRAGMENT, 3, 4)
    messages = [data_event(9, [p], end_of_stream=p.is_last)[1] for p in packets]
    assert ["endOfStream" in m for m in messages] == [False, False, True]
    assert messages[-1]["endOfStream"] is True
    metadata = [m["packets"][0]["metadata"] for m in messages]  # type: ignore[index]
    assert metadata[0] == {
        "dataType": MEDIA_FRAGMENT,
        "dataSequenceNumber": 3,
        "dataChunkSequenceNumber": 1,
        "isLastDataChunk": False,
        "dataTotalSize": 10,
    }
    assert "dataTotalSize" not in metadata[1]
    with pytest.raises(ValueError, match="last chunk"):
        data_event(9, packets[:1], end_of_stream=True)
    _header, message = data_event(9, [], end_of_stream=True)
    assert message == {"streamId": 9, "packets": [], "endOfStream": True}
    with pytest.raises(ValueError):
        data_event(9, [])


def test_a_full_chunk_fits_one_frame() -> None:
    packet = chunk_media(bytes(MAX_CHUNK), MEDIA_FRAGMENT, 2**31)[0]
    frame = FrameSealer(b"\x01" * 32).seal(encode_payload(*data_event(2**31, [packet], True)))
    assert len(frame) < MAX_PAYLOAD


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((b"", MEDIA_FRAGMENT, 1), "empty"),
        ((b"x", "video", 1), "data type"),
        ((b"x", MEDIA_FRAGMENT, 0), "starts at 1"),
        ((b"x", MEDIA_FRAGMENT, 1, 0), "max_chunk"),
        ((b"x", MEDIA_FRAGMENT, 1, MAX_CHUNK + 1), "max_chunk"),
    ],
)
def test_chunk_media_refuses(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        chunk_media(*args)


# ---- bad headers and fields ----


@pytest.mark.parametrize(
    "value",
    [
        [],
        {},
        {"protocol": 1, "event": "x"},
        {"protocol": "p"},
        {"protocol": "p", "event": "a", "request": "b", "id": 1},
        {"protocol": "p", "event": 5},
        {"protocol": "p", "request": "x"},
        {"protocol": "p", "request": "x", "id": True},
        {"protocol": "p", "request": "x", "id": "1"},
        {"protocol": "p", "response": "x", "id": 1},
    ],
)
def test_bad_headers(value: object) -> None:
    with pytest.raises(HDSMessageError) as info:
        parse_header(value)
    assert info.value.status == HeaderStatus.HEADER_ERROR


def test_header_extras_are_ignored() -> None:
    assert parse_header({"protocol": "p", "event": "e", "id": "x", "more": [1]}) == Header(
        "p", "e", "event"
    )


OPEN = Header("dataSend", "open", "request", 4)
GOOD_OPEN = {
    "target": "controller",
    "type": "ipcamera.recording",
    "streamId": 1,
    "reason": "record",
}


@pytest.mark.parametrize(
    ("header", "message", "field"),
    [
        (OPEN, {**GOOD_OPEN, "streamId": None}, "streamId"),
        (OPEN, {k: v for k, v in GOOD_OPEN.items() if k != "streamId"}, "streamId missing"),
        (OPEN, {**GOOD_OPEN, "streamId": "1"}, "streamId is a str"),
        (OPEN, {**GOOD_OPEN, "streamId": True}, "streamId is a bool"),
        (OPEN, {**GOOD_OPEN, "type": 5}, "type is a int"),
        (OPEN, {k: v for k, v in GOOD_OPEN.items() if k != "target"}, "target missing"),
        (OPEN, {**GOOD_OPEN, "reason": b"motion"}, "reason is a bytes"),
        (
            Header("dataSend", "ack", "event"),
            {"streamId": 1, "endOfStream": 1},
            "endOfStream is a int",
        ),
        (Header("dataSend", "close", "event"), {"reason": 0}, "streamId missing"),
        (Header("dataSend", "close", "event"), {"streamId": 1, "reason": "0"}, "reason is a str"),
    ],
)
def test_bad_fields(header: Header, message: dict[str, object], field: str) -> None:
    with pytest.raises(HDSMessageError, match=field) as info:
        parse_incoming(header, message)
    assert info.value.status == HeaderStatus.PAYLOAD_ERROR


def test_defaults_and_unknowns() -> None:
    opened_ = parse_incoming(OPEN, {k: v for k, v in GOOD_OPEN.items() if k != "reason"})
    assert isinstance(opened_, DataSendOpen) and opened_.reason == ""
    other = parse_incoming(OPEN, {**GOOD_OPEN, "type": "audio.siri"})
    assert isinstance(other, DataSendOpen) and not other.is_recording
    assert parse_incoming(Header("dataSend", "ack", "event"), {"streamId": 2}) == DataSendAck(
        2, False
    )
    close = Header("dataSend", "close", "event")
    assert parse_incoming(close, {"streamId": 2}) == DataSendClose(2, CloseReason.NORMAL)
    assert parse_incoming(close, {"streamId": 2, "reason": 6}) == DataSendClose(
        2, CloseReason.TIMEOUT
    )
    unknown_reason = parse_incoming(close, {"streamId": 2, "reason": 42})
    assert unknown_reason == DataSendClose(2, 42) and not isinstance(
        unknown_reason.reason, CloseReason
    )
    for header in (
        Header("control", "hello", "event"),
        Header("dataSend", "open", "event"),
        Header("dataSend", "close", "request", 3),
        Header("dataSend", "open", "response", 3, 0),
        Header("targetControl", "whoami", "request", 3),
    ):
        assert parse_incoming(header, {}) == Unknown(header)


def test_seeded_fuzz_raises_only_declared_errors() -> None:
    """Random payloads through decode_payload -> parse_header -> parse_incoming."""
    rng = random.Random(99)
    atoms: list[object] = [None, True, 0, -1, 2**40, 1.5, "", "open", b"x", [], {}]
    good: dict[str, list[object]] = {
        "streamId": [1, 2**31],
        "type": ["ipcamera.recording"],
        "target": ["controller"],
        "reason": ["motion", 6],
        "endOfStream": [True, False],
    }
    outcomes = set()
    for _ in range(4000):
        header: dict[str, object] = {}
        if rng.random() < 0.9:
            header["protocol"] = rng.choice(["dataSend", "control", "x", 3])
        for kind in rng.sample(["event", "request", "response"], rng.choice([0, 1, 1, 1, 2])):
            header[kind] = rng.choice(["open", "ack", "close", "hello", 7])
        for name in ("id", "status"):
            if rng.random() < 0.7:
                header[name] = rng.choice([1, 2**40, *atoms])
        message = {
            name: rng.choice(values if rng.random() < 0.8 else atoms)
            for name, values in good.items()
            if rng.random() < 0.9
        }
        blob = bytearray(encode_payload(header, message))
        if rng.random() < 0.3:
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        try:
            header_value, message_value = decode_payload(bytes(blob))
            incoming = parse_incoming(parse_header(header_value), message_value)
            outcomes.add(type(incoming).__name__)
        except (HDSFormatError, HDSMessageError) as exc:
            outcomes.add(type(exc).__name__)
    assert outcomes == {
        "Hello",
        "DataSendOpen",
        "DataSendAck",
        "DataSendClose",
        "Unknown",
        "HDSMessageError",
        "HDSFormatError",
    }
    with pytest.raises(HDSFrameError):
        FrameOpener(b"\x00" * 32).open(b"\x01\x00\x00\x00", bytes(16))
