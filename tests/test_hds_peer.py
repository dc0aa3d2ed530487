"""The HKSV test hub itself: its HDS wire code against HAP-NodeJS's vectors, its recording TLVs
against the documented examples, and its capture of the pair-verify secret against a real
`obscura run` (the hub's HDS keys come from that secret, so a wrong capture would fail every
end-to-end recording test for the wrong reason).

Vectors: tests/data/hds/hds-vectors-dev.json, produced by running HAP-NodeJS 1.2.0's own HDS
code. Where its reader is wrong (the file's `quirks`), the expected value is what the bytes
mean: the value the writer encoded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohomekit.controller.ip.connection import SecureHomeKitProtocol

from tests.peers import hds_wire as w
from tests.peers import recording_tlv_peer as rt
from tests.peers.bridge_process import BridgeProcess, demo_bridge
from tests.peers.hds_hub import TestHub
from tests.peers.hds_recording import CHUNK_LIMIT, FRAGMENT, INIT, Recording, top_level_boxes
from tests.peers.hds_stream import DataStream

VECTORS = Path(__file__).parent / "data/hds/hds-vectors-dev.json"  # HAP-NodeJS 1.2.0's output
V: dict[str, Any] = json.loads(VECTORS.read_text())
WRAPPERS = {
    "Int8": w.Int8, "Int16": w.Int16, "Int32": w.Int32, "Int64": w.Int64,
    "Float32": w.Float32, "Float64": w.Float64,
}  # fmt: skip


def pattern(length: int) -> bytes:
    return bytes(i % 251 for i in range(length))


def data_of(d: dict[str, Any]) -> bytes:
    raw = bytes.fromhex(d["hex"]) if "hex" in d else pattern(d["length"])
    assert len(raw) == d["length"]
    if "sha256" in d:
        assert hashlib.sha256(raw).hexdigest() == d["sha256"]
    return raw


def to_encode(d: dict[str, Any]) -> Any:
    """A vector's `input` as a value for our encoder (sized wrappers kept)."""
    t = d["type"]
    if t == "null":
        return None
    if t in ("bool", "int", "float", "string"):
        return d["value"]
    if t == "data":
        return data_of(d)
    if t == "array":
        return [to_encode(x) for x in d["items"]]
    if t == "dict":
        return {k: to_encode(v) for k, v in d["entries"]}
    if t in WRAPPERS:
        return WRAPPERS[t](d["value"])
    if t == "UUID":
        return uuid.UUID(d["value"])
    if t == "SecondsSince2001":
        return w.Date(d["value"])
    raise AssertionError(f"unknown input type {t}")


def meaning(d: dict[str, Any]) -> Any:
    """What a decoder must return for bytes written from `input` (sizes are not kept)."""
    t = d["type"]
    if t in WRAPPERS:
        return d["value"]
    if t == "array":
        return [meaning(x) for x in d["items"]]
    if t == "dict":
        return {k: meaning(v) for k, v in d["entries"]}
    return to_encode(d)


def encoded(e: dict[str, Any]) -> bytes:
    raw = bytes.fromhex(e["encoded_hex"])
    assert len(raw) == e["encoded_length"]
    if "encoded_sha256" in e:
        assert hashlib.sha256(raw).hexdigest() == e["encoded_sha256"]
    return raw


ENCODINGS = [e for e in V.get("encoding", []) if "encoded_hex" in e]
# HAP-NodeJS's writer tags short strings by UTF-16 length: its bytes are not a valid encoding.
WRITER_BUGS = {"string emoji"}


# ---- keys and frames ----


def test_hkdf_vector() -> None:
    h = V["hkdf"]
    assert bytes.fromhex(h["salt_hex"]) == bytes.fromhex(
        h["controller_key_salt_hex"]
    ) + bytes.fromhex(h["accessory_key_salt_hex"])
    keys = w.HdsKeys.derive(
        bytes.fromhex(h["shared_secret_hex"]),
        bytes.fromhex(h["controller_key_salt_hex"]),
        bytes.fromhex(h["accessory_key_salt_hex"]),
    )
    assert keys.accessory_to_hub.hex() == h["accessory_to_controller_key_hex"]
    assert keys.hub_to_accessory.hex() == h["controller_to_accessory_key_hex"]
    assert h["info_accessory_to_controller"].encode() == w.READ_INFO
    assert h["info_controller_to_accessory"].encode() == w.WRITE_INFO
    # the second session ran on exactly these keys
    derived = V["sessions"][1]
    by_direction = {f["direction"]: f["key_hex"] for f in derived["frames"]}
    assert by_direction["accessory->controller"] == keys.accessory_to_hub.hex()
    assert by_direction["controller->accessory"] == keys.hub_to_accessory.hex()


@pytest.mark.parametrize(
    "frame", V.get("encryption_framing", {}).get("small_frames", []), ids=lambda f: f["label"]
)
def test_encryption_framing(frame: dict[str, Any]) -> None:
    key, counter = bytes.fromhex(frame["key_hex"]), frame["counter"]
    raw, plain = bytes.fromhex(frame["frame_hex"]), bytes.fromhex(frame["plaintext_hex"])
    assert w.nonce(counter).hex() == frame["nonce_hex"]
    assert raw[:4].hex() == frame["aad_hex"] == w.frame_header(len(plain)).hex()
    assert w.open_frame(key, counter, raw) == plain
    assert w.seal(key, counter, plain) == raw
    with pytest.raises(w.FrameError):
        w.open_frame(key, counter + 1, raw)


def _frame_bytes(f: dict[str, Any]) -> tuple[bytes, bytes]:
    """(frame, payload) of a session frame; the 256 KiB one is rebuilt from its input and
    checked against the recorded hashes."""
    if "frame_hex" in f:
        return bytes.fromhex(f["frame_hex"]), bytes.fromhex(f["payload_hex"])
    message = w.encode(to_encode(f["message_input"]))
    assert len(message) == f["message_length"]
    assert message[:64].hex() == f["message_first64_hex"]
    assert hashlib.sha256(message).hexdigest() == f["message_sha256"]
    payload = w.pack_payload(bytes.fromhex(f["header_hex"]), message)
    assert hashlib.sha256(payload).hexdigest() == f["payload_sha256"]
    assert payload[-128:].hex() == f["payload_last128_hex"]
    frame = w.seal(bytes.fromhex(f["key_hex"]), f["counter"], payload)
    assert len(frame) == f["frame_length"]
    assert frame[:64].hex() == f["frame_first64_hex"]
    assert hashlib.sha256(frame).hexdigest() == f["frame_sha256"]
    return frame, payload


@pytest.mark.parametrize("session", V.get("sessions", []), ids=lambda s: s["name"][:40])
def test_session_frames_open_decode_and_reseal_byte_for_byte(session: dict[str, Any]) -> None:
    directions: dict[str, w.Direction] = {}
    for f in session["frames"]:
        key = bytes.fromhex(f["key_hex"])
        d = directions.setdefault(f["direction"], w.Direction(key))
        assert d.counter == f["counter"], f["label"]  # one counter per direction, from 0
        assert w.nonce(d.counter).hex() == f["nonce_hex"]
        frame, payload = _frame_bytes(f)
        assert frame[:4].hex() == f["aad_hex"] and frame[-16:].hex() == f["auth_tag_hex"]
        assert w.seal(key, d.counter, payload) == frame
        assert d.open(frame) == payload
        header, message = w.unpack_payload(payload)
        assert len(header) == f["header_length"] and header.hex() == f["header_hex"]
        if "message_hex" in f:
            assert message.hex() == f["message_hex"]
        assert w.decode(header) == meaning(f["header_input"])
        assert w.decode(message) == meaning(f["message_input"])
        # our writer makes the same bytes from the same values (Int64 id/status and all)
        assert w.encode(to_encode(f["header_input"])) == header
        assert w.encode(to_encode(f["message_input"])) == message


def test_direction_counter_moves_only_on_success() -> None:
    key = bytes(range(32))
    tx, rx = w.Direction(key), w.Direction(key)
    first, second = tx.seal(b"\x00" + w.encode({})), tx.seal(b"\x00" + w.encode([]))
    with pytest.raises(w.FrameError):
        rx.open(second)  # out of order
    assert rx.counter == 0
    forged = first[:4] + bytes(len(first) - 4)
    with pytest.raises(w.FrameError):
        rx.open(forged)
    bad_aad = bytes([first[0], 0, 0, first[3] ^ 1]) + first[4:]
    with pytest.raises(w.FrameError):
        rx.open(bad_aad)
    with pytest.raises(w.FrameError):
        w.Direction(bytes(32)).open(first)  # wrong key
    assert rx.open(first) == b"\x00\xe0" and rx.open(second) == b"\x00\xd0"
    assert rx.counter == 2


# ---- data format ----


@pytest.mark.parametrize("e", ENCODINGS, ids=lambda e: e["name"])
def test_decode_every_encoding_vector(e: dict[str, Any]) -> None:
    raw = encoded(e)
    if e["name"] in WRITER_BUGS:
        with pytest.raises(w.HdsDecodeError):
            w.decode(raw)
        return
    value = w.decode(raw)
    assert value == meaning(e["input"])
    assert type(value) is type(meaning(e["input"]))  # 1 is not True, b"" is not None
    assert w.encode(to_encode(e["input"])) == raw


@pytest.mark.parametrize(
    "e", [e for e in V.get("encoding", []) if "encode_error" in e], ids=lambda e: e["name"]
)
def test_values_hap_nodejs_cannot_write_are_int64(e: dict[str, Any]) -> None:
    value = e["input"]["value"]
    raw = w.encode(to_encode(e["input"]))
    assert raw[0] == 0x33 and int.from_bytes(raw[1:], "little", signed=True) == value
    assert w.decode(raw) == value


def test_quirks_are_the_ones_the_tests_expect() -> None:
    """If the vectors file grows new quirks, this file must be re-read against them."""
    assert len(V["quirks"]) == 10


def test_forms_hap_nodejs_never_writes() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert w.decode(b"\x2f") == 39 and w.encode(39) == b"\x2f"
    assert w.decode(b"\x07") == -1
    assert w.decode(b"\x32" + (-5).to_bytes(4, "little", signed=True)) == -5
    assert w.decode(b"\x33" + (-(2**40)).to_bytes(8, "little", signed=True)) == -(2**40)
    assert w.decode(b"\x35\x00\x00\xc0\x3f") == 1.5
    assert w.decode(b"\x06" + bytes(7) + b"\x40") == w.Date(2.0)
    assert w.decode(b"\x05" + u.bytes) == u
    assert w.decode(b"\x64\x02" + bytes(7) + b"hi") == "hi"
    assert w.decode(b"\x6fhello\x00") == "hello"
    assert w.decode(b"\x94\x01" + bytes(7) + b"z") == b"z"
    assert w.decode(b"\x9fdata\x03") == b"data"
    assert w.decode(b"\xef\x41a\x09\x41b\xa0\x03") == {"a": 1, "b": "a"}
    assert w.decode(b"\xdf\x03") == [] and w.decode(b"\xd2\xd0\xe0") == [[], {}]
    # back-references count strings/data/sized numbers, not true/false/null/-1/0..39
    assert w.decode(b"\xd7\x01\x02\x04\x07\x08\x41x\xa0") == [True, False, None, -1, 0, "x", "x"]
    many = [f"s{i}" for i in range(60)]  # "many" is index 0, s46 index 47: the last reachable
    doc = {"many": many, "again": many[46], "far": many[47]}
    raw = w.encode(doc)
    assert b"\x45again\xcf" in raw and b"\x43far\x43s47" in raw
    assert w.decode(raw) == doc


def test_roundtrip_of_mixed_values() -> None:
    doc: dict[Any, Any] = {
        "protocol": "dataSend", "id": w.Int64(2**40), "neg": w.Int64(-3), "f": 0.5,
        "f32": w.Float32(0.25), "u": uuid.uuid4(), "date": w.Date(7.5), "t": True, "n": None,
        "big": list(range(20)), "wide": {f"k{i}": i * 1000 for i in range(20)},
        "blob": pattern(70000), "s": "é" * 40, 5: "int key", "nested": [[[{"x": b"\x00"}]]],
    }  # fmt: skip
    expect = dict(doc, id=2**40, neg=-3, f32=0.25)
    assert w.decode(w.encode(doc)) == expect


@pytest.mark.parametrize(
    "raw",
    [
        b"", b"\x00", b"\x03", b"\x34", b"\x37", b"\x65", b"\x95", b"\x9e", b"\xa0",
        b"\x41", b"\x61\x05ab", b"\x92\xff", b"\x33\x01", b"\x05" + bytes(15),
        b"\xd1", b"\xdf\x08", b"\xe1\x41a", b"\xef\x41a\x08", b"\xe1\xd0\x08", b"\xe1\xe0\x08",
        b"\x6fnul", b"\x9fno", b"\x42\xff\xfe", b"\x08\x08", b"\xd1" * 100 + b"\x08",
        b"\xd2\x41x\xa1",
    ],
)  # fmt: skip
def test_malformed_data_is_a_decode_error(raw: bytes) -> None:
    with pytest.raises(w.HdsDecodeError):
        w.decode(raw)


def test_random_bytes_only_ever_raise_decode_errors() -> None:
    rng = random.Random(9)
    seeds = [e for e in ENCODINGS if e["encoded_length"] < 400]
    for _ in range(3000):
        raw = bytearray(encoded(rng.choice(seeds)))
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        try:
            w.decode(bytes(raw))
        except w.HdsDecodeError:
            pass


def test_payload_packing() -> None:
    payload = w.encode_payload({"protocol": "control", "event": "x"}, {"a": 1})
    assert w.decode_payload(payload) == ({"protocol": "control", "event": "x"}, {"a": 1})
    with pytest.raises(w.FrameError):
        w.unpack_payload(b"\x05abc")
    with pytest.raises(ValueError):
        w.pack_payload(bytes(256), b"")


# ---- recording TLVs ----

# docs/hksv-protocol.md's examples and HAP-NodeJS's RecordingManagement spec test values
DOC_205 = "01 04 a0 0f 00 00 02 08 01 00 00 00 00 00 00 00 03 0b 01 01 00 02 06 01 04 a0 0f 00 00"
DOC_207 = "01 0e 01 01 00 02 09 01 01 01 02 01 00 03 01 03"
SPEC_209 = (
    "AR0BBKAPAAACCAEAAAAAAAAAAwsBAQACBgEEoA8AAAIkAQEAAhIBAQECAQIDBNAHAAAEBKAPAAADCwECsAQCAkAGAwEY"
    "AxQBAQACDwEBAQIBAAMBAwQEQAAAAA=="
)
SPEC_205 = "AQRAHwAAAggDAAAAAAAAAAMLAQEAAgYBBKAPAAA="
SPEC_206 = (
    "Af4BAQACCwEBAQIBAAAAAgECAwsBAkAGAgKwBAMBGAAAAwsBAqAFAgI4BAMBGAAAAwsBAgAFAgLAAwMBGAAAAwsBAgAE"
    "AgIAAwMBGAAAAwsBAkAGAgKwBAMBDwAAAwsBAqAFAgI4BAMBDwAAAwsBAgAFAgLAAwMBDwAAAwsBAgAEAgIAAwMBDwAA"
    "AwsBArAEAgJABgMBGAAAAwsBAjgEAgKgBQMBGAAAAwsBAsADAgIABQMBGAAAAwsBAgADAgIABAMBGAAAAwsBArAEAgJA"
    "BgMBDwAAAwsBAjgEAgKgBQMBDwAAAwsBAsADAgIABQMBDwAAAwsBAgADAgIABAMBDw=="
)


def test_parse_documented_supported_configurations() -> None:
    rec = rt.SupportedRecording.parse(bytes.fromhex(DOC_205))
    assert rec == rt.SupportedRecording(4000, rt.TRIGGER_MOTION, (rt.MediaContainer(0, 4000),))
    assert rt.parse_supported_audio(bytes.fromhex(DOC_207)) == [
        rt.AudioRecordingCodec(rt.AUDIO_AAC_LC, 1, (rt.BITRATE_VARIABLE,), (rt.SR_32K,))
    ]
    spec = rt.SupportedRecording.parse(base64.b64decode(SPEC_205))
    assert (spec.prebuffer_ms, spec.trigger_options) == (8000, 3)
    (video,) = rt.parse_supported_video(base64.b64decode(SPEC_206))
    assert video.profiles == (rt.PROFILE_MAIN,)
    assert video.levels == (rt.LEVEL_3_1, rt.LEVEL_4_0)  # a list separated by 00 00
    assert len(video.resolutions) == 16
    assert video.resolutions[0] == (1600, 1200, 24) and video.resolutions[-1] == (768, 1024, 15)


def test_selected_configuration_matches_the_spec_bytes() -> None:
    raw = base64.b64decode(SPEC_209)
    chosen = rt.RecordingSelection(width=1200, height=1600, fps=24)
    assert chosen.encode() == raw
    assert rt.RecordingSelection.parse(raw) == chosen
    odd = rt.RecordingSelection(
        prebuffer_ms=8000, fragment_ms=2000, trigger_options=3, profile=rt.PROFILE_HIGH,
        level=rt.LEVEL_3_2, bitrate_kbps=70000, iframe_interval_ms=2000, width=640,
        height=360, fps=15, channels=2, bitrate_mode=1, sample_rate=rt.SR_48K,
        max_audio_bitrate_kbps=128,
    )  # fmt: skip
    assert rt.RecordingSelection.parse(odd.encode()) == odd


def test_selection_from_supported() -> None:
    rec = rt.SupportedRecording.parse(base64.b64decode(SPEC_205))
    video = rt.parse_supported_video(base64.b64decode(SPEC_206))
    audio = rt.parse_supported_audio(bytes.fromhex(DOC_207))
    pick = rt.RecordingSelection.from_supported(rec, video, audio, resolution=(1280, 960, 15))
    assert (pick.prebuffer_ms, pick.fragment_ms, pick.trigger_options) == (8000, 4000, 3)
    assert (pick.width, pick.height, pick.fps, pick.level) == (1280, 960, 15, rt.LEVEL_4_0)
    assert pick.sample_rate == rt.SR_32K
    with pytest.raises(ValueError):
        rt.RecordingSelection.from_supported(rec, video, audio, resolution=(1, 2, 3))


def test_tlv_lists_and_long_values() -> None:
    long = pattern(600)
    raw = rt.tlv_encode([(1, b"a"), (1, b"b"), (2, long), (2, b""), (3, [(1, b"x")])])
    assert raw[:8] == b"\x01\x01a\x00\x00\x01\x01b"
    assert rt.tlv_decode(raw) == [(1, b"a"), (1, b"b"), (2, long), (2, b""), (3, b"\x01\x01x")]
    exact = pattern(255)  # a 255-byte value, then another item of its type: needs the separator
    assert rt.tlv_decode(rt.tlv_encode([(4, exact), (4, b"z")])) == [(4, exact), (4, b"z")]
    for bad in (b"\x01", b"\x01\x05ab"):
        with pytest.raises(ValueError):
            rt.tlv_decode(bad)


def test_data_stream_setup_messages() -> None:
    salt = bytes(range(32))
    req = rt.setup_data_stream_request(salt)
    assert req == bytes.fromhex("010100020100") + b"\x03\x20" + salt
    answer = bytes.fromhex("010100020401023930") + b"\x03\x20" + salt[::-1]
    assert rt.DataStreamSetup.parse(answer) == rt.DataStreamSetup(0, 0x3039, salt[::-1])
    assert rt.DataStreamSetup.parse(b"\x01\x01\x02") == rt.DataStreamSetup(2, None, None)
    assert rt.parse_supported_transports(bytes.fromhex("0103010100")) == [0]


# ---- the hub's HDS connection, against frames HAP-NodeJS produced ----


def _session_frames() -> list[tuple[str, bytes]]:
    return [(f["direction"], _frame_bytes(f)[0]) for f in V["sessions"][0]["frames"]]


@contextlib.asynccontextmanager
async def replay_accessory(
    frames: list[tuple[str, bytes]], *, after: bytes = b""
) -> AsyncIterator[tuple[int, list[bytes]]]:
    """An 'accessory' that expects the hub's frames to be exactly HAP-NodeJS's controller
    frames and answers with HAP-NodeJS's accessory frames, then sends `after` and closes."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for direction, frame in frames:
                if direction == "controller->accessory":
                    head = await reader.readexactly(4)
                    body = await reader.readexactly(int.from_bytes(head[1:], "big") + 16)
                    received.append(head + body)
                    if head + body != frame:
                        break
                else:
                    writer.write(frame)
                    await writer.drain()
            writer.write(after)
            await writer.drain()
            await asyncio.sleep(0.2)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()
        await server.wait_closed()


VECTOR_KEYS = w.HdsKeys(accessory_to_hub=b"\x11" * 32, hub_to_accessory=b"\x22" * 32)


async def test_hub_speaks_hap_nodejs_bytes_and_collects_a_recording() -> None:
    frames = _session_frames()
    async with replay_accessory(frames) as (port, received):
        ds = await DataStream.connect("127.0.0.1", port, VECTOR_KEYS, timeout_s=5)
        try:
            await ds.hello(timeout_s=5)
            response, rec = await ds.open_recording(1, reason="motion", timeout_s=5)
            assert response.accepted and (response.status, response.message) == (0, {"status": 0})
            assert await rec.wait_end(timeout_s=10) == "endOfStream"
            await ds.wait_closed(timeout_s=5)
        finally:
            await ds.close()
    # hello, open and the automatic ack are HAP-NodeJS's controller frames, byte for byte
    assert received == [f for d, f in frames if d == "controller->accessory"]
    assert rec.problems == [] and ds.problems == [] and rec.acked_at is not None
    assert rec.init is not None and rec.init.data == pattern(100) and rec.init.chunks == 1
    (media,) = rec.media
    assert (media.sequence, media.data, media.chunks) == (2, pattern(262144), 1)
    assert rec.opened_at <= rec.init.completed_at <= media.completed_at
    assert ds.closed_by == "accessory"


async def test_hub_drops_a_connection_whose_frame_does_not_open() -> None:
    frames = _session_frames()[:2]
    replayed = frames[1][1]  # the hello response again: its counter is spent
    async with replay_accessory(frames, after=replayed) as (port, _):
        ds = await DataStream.connect("127.0.0.1", port, VECTOR_KEYS, timeout_s=5)
        try:
            await ds.hello(timeout_s=5)
            why = await ds.wait_closed(timeout_s=5)
        finally:
            await ds.close()
    assert why.startswith("hub: frame does not open") and ds.problems == [why]


def test_recording_collector_reports_protocol_slips() -> None:
    def packet(
        kind: str, seq: int, chunk: int, last: bool, data: bytes, total: Any = None
    ) -> dict[str, Any]:
        md = {
            "dataType": kind,
            "dataSequenceNumber": seq,
            "dataChunkSequenceNumber": chunk,
            "isLastDataChunk": last,
        }
        if total is not None:
            md["dataTotalSize"] = total
        return {"data": data, "metadata": md}

    good = Recording(1)
    for p in (
        packet(INIT, 1, 1, True, b"i", 1),
        packet(FRAGMENT, 2, 1, False, b"ab", 5),
        packet(FRAGMENT, 2, 2, False, b"cd"),
        packet(FRAGMENT, 2, 3, True, b"e"),
    ):
        good._packet(p, 1.0)
    assert good.problems == [] and [f.data for f in good.fragments] == [b"i", b"abcde"]
    assert good.media[0].chunks == 3

    bad = Recording(2)
    for p in (
        packet(FRAGMENT, 1, 1, True, b"x", 1),  # no init first
        packet(FRAGMENT, 3, 1, False, b"ab"),  # skips 2, no total
        packet(FRAGMENT, 3, 3, True, b"c"),  # chunk 2 missing
        packet(FRAGMENT, 4, 1, True, b"abc", 9),  # size mismatch
        packet(FRAGMENT, 5, 1, True, bytes(CHUNK_LIMIT + 1), CHUNK_LIMIT + 1),
        {"data": "not bytes", "metadata": {}},
    ):
        bad._packet(p, 1.0)
    bad._finish("endOfStream")
    bad._packet(packet(FRAGMENT, 6, 1, True, b"z", 1), 2.0)
    text = "\n".join(bad.problems)
    for needle in (
        "is mediaFragment",
        "expected 2",
        "no dataTotalSize",
        "chunk 3, expected 2",
        "3 bytes, dataTotalSize 9",
        "limit",
        "data/dataType wrong: str",
        "after the stream ended",
    ):
        assert needle in text, (needle, text)
    assert top_level_boxes(b"\x00\x00\x00\x08ftyp\x00\x00\x00\x08moov") == ["ftyp", "moov"]


# ---- the hub against `obscura run`: the captured pair-verify secret ----


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    with demo_bridge(tmp_path_factory.mktemp("hds-peer")) as process:
        yield process


def _control_keys_of(secret: bytes) -> tuple[bytes, bytes]:
    return (
        w.hkdf_sha512(secret, b"Control-Salt", b"Control-Read-Encryption-Key"),
        w.hkdf_sha512(secret, b"Control-Salt", b"Control-Write-Encryption-Key"),
    )


async def test_hub_keeps_each_connections_pair_verify_secret(bridge: BridgeProcess) -> None:
    """The secret the hub keeps is the one its HAP session runs on: HKDF of it gives exactly
    the session keys aiohomekit uses; a new session (after the connection dropped) has a new
    secret, and the hub follows it."""
    async with TestHub.start(bridge) as hub:
        connection = hub.pairing.connection
        first = hub.shared_secret()
        protocol = connection.protocol
        assert isinstance(protocol, SecureHomeKitProtocol) and connection.transport is not None
        assert len(first) == 32
        assert _control_keys_of(first) == (protocol.a2c_key, protocol.c2a_key)

        connection.transport.close()  # the accessory side sees the session end
        async with asyncio.timeout(15):  # aiohomekit reconnects by itself; it has no event
            while connection.protocol in (None, protocol) or not connection.is_connected:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await hub.refresh()  # the new session works
        second, now = hub.shared_secret(), connection.protocol
        assert second != first and isinstance(now, SecureHomeKitProtocol)
        assert _control_keys_of(second) == (now.a2c_key, now.c2a_key)
