"""accessories.hds.frames: HKDF keys, sealed frames and payloads against HAP-NodeJS's vectors.

Every frame of `encryption_framing` and of both `sessions` opens with the given key at its
counter, re-seals byte for byte, and its payload decodes to the header and message given (and
re-encodes to the same bytes). Plus: wrong keys, tampering, replay and garbage.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest
from pyhap.hap_crypto import hap_hkdf

from accessories.hds.format import HDSFormatError, Int64, decode, encode
from accessories.hds.frames import (
    FRAME_HEADER_SIZE,
    MAX_PAYLOAD,
    TAG_SIZE,
    FrameOpener,
    FrameSealer,
    HDSFrameError,
    SessionKeys,
    decode_payload,
    encode_payload,
    hkdf_from_secret,
    nonce,
    parse_frame_header,
    session_keys,
)
from tests.hds_vectors import load_vectors


def value_of(desc: dict[str, Any], hap_nodejs: bool = False) -> object:
    """A vector's value description as the Python value (Int64 kept so re-encoding is exact).

    ``hap_nodejs``: plain ints beyond int16 as Int64, the form HAP-NodeJS writes them in (its
    int32 check only admits -2^31, docs/hds.md §9 quirk 2); we write the smallest form.
    """
    kind = desc["type"]
    if kind == "int" and hap_nodejs and not -32768 <= desc["value"] <= 32767:
        return Int64(desc["value"])
    if kind in ("bool", "int", "number", "string"):
        return desc["value"]
    if kind == "Int64":
        return Int64(desc["value"])
    if kind == "data":
        if "hex" in desc:
            return bytes.fromhex(desc["hex"])
        data = bytes(i % 251 for i in range(desc["length"]))
        assert hashlib.sha256(data).hexdigest() == desc["sha256"]
        return data
    if kind == "array":
        return [value_of(item, hap_nodejs) for item in desc["items"]]
    if kind == "dict":
        return {key: value_of(item, hap_nodejs) for key, item in desc["entries"]}
    raise AssertionError(f"unexpected value type {kind}")


def dict_of(desc: dict[str, Any], hap_nodejs: bool = False) -> dict[str, object]:
    value = value_of(desc, hap_nodejs)
    assert isinstance(value, dict)
    return value


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


V = load_vectors()
C2A = "controller->accessory"
SESSION_FRAMES = [(s["name"], f) for s in V["sessions"] for f in s["frames"]]


def test_hkdf_vector() -> None:
    h = V["hkdf"]
    assert (h["hash"], h["length"]) == ("sha512", 32)
    controller_salt = bytes.fromhex(h["controller_key_salt_hex"])
    accessory_salt = bytes.fromhex(h["accessory_key_salt_hex"])
    keys = session_keys(
        hkdf_from_secret(bytes.fromhex(h["shared_secret_hex"])), controller_salt, accessory_salt
    )
    assert keys.accessory_to_controller.hex() == h["accessory_to_controller_key_hex"]
    assert keys.controller_to_accessory.hex() == h["controller_to_accessory_key_hex"]
    # HAP-python's own HKDF (its connection's derive_key uses it) gives the same keys.
    secret = bytes.fromhex(h["shared_secret_hex"])
    assert (
        session_keys(
            lambda salt, info: hap_hkdf(secret, salt, info), controller_salt, accessory_salt
        )
        == keys
    )
    # The salts are ordered controller first.
    swapped = session_keys(hkdf_from_secret(secret), accessory_salt, controller_salt)
    assert swapped.accessory_to_controller != keys.accessory_to_controller


def test_derived_keys_open_the_second_session() -> None:
    h = V["hkdf"]
    keys = session_keys(
        hkdf_from_secret(bytes.fromhex(h["shared_secret_hex"])),
        bytes.fromhex(h["controller_key_salt_hex"]),
        bytes.fromhex(h["accessory_key_salt_hex"]),
    )
    session = next(s for s in V["sessions"] if "HKDF" in s["name"])
    for frame in session["frames"]:
        key = (
            keys.controller_to_accessory
            if frame["direction"] == C2A
            else keys.accessory_to_controller
        )
        assert frame["key_hex"] == key.hex()
        blob = bytes.fromhex(frame["frame_hex"])
        assert FrameOpener(key).open(blob[:4], blob[4:]).hex() == frame["payload_hex"]


def test_session_keys_refuses_bad_input() -> None:
    derive = hkdf_from_secret(b"\x33" * 32)
    with pytest.raises(HDSFrameError, match="controller key salt must be 32 bytes"):
        session_keys(derive, b"\x44" * 16, b"\x55" * 32)
    with pytest.raises(HDSFrameError, match="accessory key salt"):
        session_keys(derive, b"\x44" * 32, b"")
    with pytest.raises(HDSFrameError, match="no pair-verify secret"):
        session_keys(lambda salt, info: None, b"\x44" * 32, b"\x55" * 32)
    with pytest.raises(HDSFrameError, match="32 bytes"):
        session_keys(lambda salt, info: b"short", b"\x44" * 32, b"\x55" * 32)


def test_keys_are_not_printed() -> None:
    keys = SessionKeys(b"\x11" * 32, b"\x22" * 32)
    assert "11" not in repr(keys) and "22" not in repr(keys)


def replay(frames: list[dict[str, Any]], keys: dict[str, str]) -> None:
    """Open and re-seal each frame in order, one opener and one sealer per direction."""
    openers: dict[str, FrameOpener] = {}
    sealers: dict[str, FrameSealer] = {}
    for frame in frames:
        key = bytes.fromhex(frame["key_hex"])
        direction = frame["direction"]
        expected_key = keys[
            "controller_to_accessory" if direction == C2A else "accessory_to_controller"
        ]
        assert frame["key_hex"] == expected_key
        opener = openers.setdefault(direction, FrameOpener(key))
        sealer = sealers.setdefault(direction, FrameSealer(key))
        assert opener.counter == sealer.counter == frame["counter"]
        assert nonce(frame["counter"]).hex() == frame["nonce_hex"]
        if "frame_hex" in frame:
            blob = bytes.fromhex(frame["frame_hex"])
            payload_hex = frame.get("payload_hex") or frame["plaintext_hex"]
            head, body = blob[:FRAME_HEADER_SIZE], blob[FRAME_HEADER_SIZE:]
            assert head.hex() == frame["aad_hex"]
            assert parse_frame_header(head) + TAG_SIZE == len(body)
            payload = opener.open(head, body)
            assert payload.hex() == payload_hex
            assert sealer.seal(payload) == blob
        else:  # the 256 KiB frame is given by hashes: rebuild its payload, seal, compare
            payload = encode_payload(
                dict_of(frame["header_input"], hap_nodejs=True),
                dict_of(frame["message_input"], hap_nodejs=True),
            )
            assert sha(payload) == frame["payload_sha256"]
            sealed = sealer.seal(payload)
            assert sha(sealed) == frame["frame_sha256"]
            assert len(sealed) == frame["frame_length"]
            assert sealed[:4].hex() == frame["aad_hex"]
            assert sealed[:64].hex() == frame["frame_first64_hex"]
            assert sealed[-16:].hex() == frame["auth_tag_hex"]
            assert opener.open(sealed[:4], sealed[4:]) == payload
        assert opener.counter == sealer.counter == frame["counter"] + 1


def test_encryption_framing_small_frames() -> None:
    framing = V["encryption_framing"]
    frames = framing["small_frames"]
    assert len(frames) == 4
    replay(frames, framing["keys"])


@pytest.mark.parametrize("index", range(len(V["sessions"])))
def test_session_frames_open_and_reseal_byte_for_byte(index: int) -> None:
    session = V["sessions"][index]
    keys = session.get("keys") or {
        "accessory_to_controller": V["hkdf"]["accessory_to_controller_key_hex"],
        "controller_to_accessory": V["hkdf"]["controller_to_accessory_key_hex"],
    }
    replay(session["frames"], keys)


@pytest.mark.parametrize(
    ("session", "frame"), SESSION_FRAMES, ids=[f["label"] for _, f in SESSION_FRAMES]
)
def test_session_payloads_decode_and_reencode(session: str, frame: dict[str, Any]) -> None:
    # HAP-NodeJS's exact bytes, from the inputs in the form it writes them.
    header_in = dict_of(frame["header_input"], hap_nodejs=True)
    message_in = dict_of(frame["message_input"], hap_nodejs=True)
    payload = encode_payload(header_in, message_in)
    if "payload_hex" in frame:
        assert payload.hex() == frame["payload_hex"]
        assert encode(header_in).hex() == frame["header_hex"]
        assert encode(message_in).hex() == frame["message_hex"]
    else:
        assert sha(payload) == frame["payload_sha256"]
        assert payload[:64].hex() == frame["payload_first64_hex"]
        assert payload[-128:].hex() == frame["payload_last128_hex"]
    assert payload[0] == frame["header_length"]
    assert len(payload) == frame["payload_length"]
    header, message = decode_payload(payload)
    assert header == value_of(frame["hap_nodejs_decode"]["header"]) == header_in
    assert message == value_of(frame["hap_nodejs_decode"]["message"]) == message_in
    # Our canonical encoding of the same values: identical, but for HAP-NodeJS's int64 quirk.
    ours = encode_payload(dict_of(frame["header_input"]), dict_of(frame["message_input"]))
    if "payload_hex" in frame:
        assert ours == payload
    else:  # dataTotalSize 262144: `32 00000400` for its `33 00000400 00000000`
        assert len(ours) == len(payload) - 4
        assert payload.count(bytes.fromhex("330000040000000000")) == 1
        assert ours.count(bytes.fromhex("3200000400")) == 1
        assert decode_payload(ours) == (header, message)


def test_reencoding_a_parsed_header_needs_int64_for_id_and_status() -> None:
    frame = next(f for _, f in SESSION_FRAMES if f["label"] == "dataSend/open response")
    header, message = decode_payload(bytes.fromhex(frame["payload_hex"]))
    # Decoded ints lose their width; HDS headers carry id/status as Int64 (messages.Header does it).
    assert encode_payload(header, message).hex() != frame["payload_hex"]
    request_id, status = header["id"], header["status"]
    assert isinstance(request_id, int) and isinstance(status, int)
    header = {**header, "id": Int64(request_id), "status": Int64(status)}
    assert encode_payload(header, message).hex() == frame["payload_hex"]


# ---- frames: what must fail ----

KEY = b"\x11" * 32
OTHER = b"\x22" * 32


def test_parse_frame_header_checks_type_size_and_length() -> None:
    assert parse_frame_header(b"\x01\x00\x01\x00") == 256
    assert parse_frame_header(bytes([1]) + MAX_PAYLOAD.to_bytes(3, "big")) == MAX_PAYLOAD
    with pytest.raises(HDSFrameError, match="frame type 0x02"):
        parse_frame_header(b"\x02\x00\x00\x01")
    with pytest.raises(HDSFrameError, match="more than"):
        parse_frame_header(bytes([1]) + (MAX_PAYLOAD + 1).to_bytes(3, "big"))
    with pytest.raises(HDSFrameError, match="4 bytes"):
        parse_frame_header(b"\x01\x00\x00")


def test_max_payload_bounds() -> None:
    assert 256 * 1024 + 4096 <= MAX_PAYLOAD <= 2**24 - 1
    frame = FrameSealer(KEY).seal(bytes(MAX_PAYLOAD))
    assert len(frame) == 4 + MAX_PAYLOAD + 16
    assert FrameOpener(KEY).open(frame[:4], frame[4:]) == bytes(MAX_PAYLOAD)
    sealer = FrameSealer(KEY)
    with pytest.raises(HDSFrameError, match="exceeds MAX_PAYLOAD"):
        sealer.seal(bytes(MAX_PAYLOAD + 1))
    assert sealer.counter == 0


def test_wrong_key_fails_without_advancing_the_counter() -> None:
    sealer = FrameSealer(KEY)
    first, second = sealer.seal(b"\x00hello"), sealer.seal(b"\x00again")
    wrong = FrameOpener(OTHER)
    with pytest.raises(HDSFrameError, match="frame 0 does not authenticate"):
        wrong.open(first[:4], first[4:])
    assert wrong.counter == 0
    # Trial decryption: a fresh opener per prepared session; the one that opens keeps counting.
    candidates = [FrameOpener(OTHER), FrameOpener(KEY)]
    winners = []
    for opener in candidates:
        try:
            opener.open(first[:4], first[4:])
            winners.append(opener)
        except HDSFrameError:
            assert opener.counter == 0
    assert winners == [candidates[1]] and winners[0].counter == 1
    assert winners[0].open(second[:4], second[4:]) == b"\x00again"


def test_tampering_replay_and_reordering_fail() -> None:
    sealer = FrameSealer(KEY)
    frames = [sealer.seal(bytes([0, i]) * 20) for i in range(3)]
    blob = frames[0]
    for position in (0, 3, 4, len(blob) - 20, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        opener = FrameOpener(KEY)
        with pytest.raises(HDSFrameError):
            opener.open(bytes(tampered[:4]), bytes(tampered[4:]))
        assert opener.counter == 0
    opener = FrameOpener(KEY)
    with pytest.raises(HDSFrameError):  # frame 1 first
        opener.open(frames[1][:4], frames[1][4:])
    opener.open(blob[:4], blob[4:])
    with pytest.raises(HDSFrameError):  # frame 0 again
        opener.open(blob[:4], blob[4:])
    with pytest.raises(HDSFrameError, match="body is"):
        opener.open(frames[1][:4], frames[1][4:-1])
    assert opener.open(frames[1][:4], frames[1][4:]) == bytes([0, 1]) * 20


def test_keys_must_be_32_bytes() -> None:
    for cls in (FrameSealer, FrameOpener):
        with pytest.raises(HDSFrameError):
            cls(b"\x00" * 16)


# ---- payloads ----


def test_payload_header_is_limited_to_255_bytes() -> None:
    assert len(encode_payload({"k": "x" * 250}, {})) == 1 + 255 + 1
    with pytest.raises(HDSFormatError, match="more than 255"):
        encode_payload({"k": "x" * 251}, {})


@pytest.mark.parametrize(
    ("hex_payload", "message"),
    [
        ("", "empty payload"),
        ("05e0", "header length 5 exceeds the 1 bytes left"),
        ("0109e0", "header is a int"),
        ("01e0d0", "message is a list"),
        ("01e0", "message: HDS value at offset 0: truncated"),
        ("01e0e009", "message: HDS value at offset 1: 1 bytes after"),
        ("02e0e0", "header: HDS value at offset 1: 1 bytes after"),
    ],
)
def test_decode_payload_errors(hex_payload: str, message: str) -> None:
    with pytest.raises(HDSFormatError, match=message):
        decode_payload(bytes.fromhex(hex_payload))


def test_seeded_fuzz_of_payloads_and_frames() -> None:
    rng = random.Random(2024)
    good = encode_payload(
        {"protocol": "dataSend", "event": "ack"}, {"streamId": 1, "endOfStream": True}
    )
    for _ in range(5000):
        blob = bytearray(good if rng.random() < 0.6 else rng.randbytes(rng.randrange(0, 40)))
        for _ in range(rng.randrange(0, 3)):
            if blob:
                blob[rng.randrange(len(blob))] = rng.randrange(256)
        try:
            header, message = decode_payload(bytes(blob))
            assert isinstance(header, dict) and isinstance(message, dict)
        except HDSFormatError:
            pass
    sealer = FrameSealer(KEY)
    frame = sealer.seal(good)
    for _ in range(2000):
        blob = bytearray(frame)
        blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        cut = rng.randrange(len(blob) + 1)
        opener = FrameOpener(KEY)
        with pytest.raises(HDSFrameError):
            opener.open(bytes(blob[:4]), bytes(blob[4:cut]))
        assert opener.counter == 0
    assert decode(good[1 : 1 + good[0]]) == {"protocol": "dataSend", "event": "ack"}
