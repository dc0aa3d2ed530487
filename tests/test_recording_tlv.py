"""accessories.recording_tlv against hand-written bytes (HKSV TLVs 205/206/207/209, 130/131).

Inputs are built here with a TLV writer and reader of this file's own, never with the module
under test or accessories.tlv8, so a bug shared by both cannot hide. The reference vectors are
the hksv-protocol.md examples and the base64 strings of HAP-NodeJS's RecordingManagement.spec.ts
(its 209 is a real hub's selection).
"""

from __future__ import annotations

import base64
import dataclasses
import random
import struct

import pytest

from accessories.backend import RecordingRequest, VideoCapabilities
from accessories.recording_tlv import (
    SUPPORTED_DATA_STREAM_CONFIG,
    AudioCodec,
    BitrateMode,
    EventTrigger,
    SelectedRecordingConfig,
    SetupDataStreamRequest,
    SetupDataStreamStatus,
    check_selected,
    parse_selected_recording_config,
    parse_setup_data_stream,
    recording_resolutions,
    setup_data_stream_response,
    supported_audio_recording_config,
    supported_camera_recording_config,
    supported_video_recording_config,
)
from accessories.tlv8 import TLVError

HAP_NODEJS_209 = base64.b64decode(
    "AR0BBKAPAAACCAEAAAAAAAAAAwsBAQACBgEEoA8AAAIkAQEAAhIBAQECAQIDBNAHAAAEBKAPAAADCwECsAQCAkAGAwEY"
    "AxQBAQACDwEBAQIBAAMBAwQEQAAAAA=="
)
CAPS_1080 = VideoCapabilities(1920, 1080, 30)


# ---- this file's own TLV8 ----


def t(tag: int, value: bytes) -> bytes:
    """One item; values over 255 bytes become 255-byte fragments of the same tag."""
    out = b""
    while len(value) > 255:
        out += bytes([tag, 255]) + value[:255]
        value = value[255:]
    return out + bytes([tag, len(value)]) + value


Spec = list[tuple[int, "bytes | Spec"]]


def build(spec: Spec) -> bytes:
    return b"".join(t(tag, v if isinstance(v, bytes) else build(v)) for tag, v in spec)


def walk(raw: bytes) -> list[tuple[int, bytes]]:
    """Read items, joining a 255-byte fragment with what follows; separators dropped."""
    items: list[tuple[int, bytes]] = []
    pos, joining = 0, False
    while pos < len(raw):
        tag, size = raw[pos], raw[pos + 1]
        value = raw[pos + 2 : pos + 2 + size]
        assert len(value) == size
        pos += 2 + size
        if tag == 0 and size == 0:
            joining = False
            continue
        if joining and items[-1][0] == tag:
            items[-1] = (tag, items[-1][1] + value)
        else:
            items.append((tag, value))
        joining = size == 255
    return items


def le(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


# The real hub's selection (HAP_NODEJS_209), field by field.
REAL = {
    "prebuffer": 4000, "triggers": 1, "container": 0, "fragment": 4000, "codec": 0, "profile": 1,
    "level": 2, "bitrate": 2000, "iframe": 4000, "width": 1200, "height": 1600, "fps": 24,
    "acodec": 0, "channels": 1, "mode": 0, "rate": 3, "abitrate": 64,
}  # fmt: skip


def selection(**fields: int) -> Spec:
    """A 209 as a nested spec: REAL with ``fields`` changed."""
    assert set(fields) <= set(REAL)
    f = {**REAL, **fields}
    return [
        (1, [
            (1, le(f["prebuffer"], 4)), (2, le(f["triggers"], 8)),
            (3, [(1, le(f["container"], 1)), (2, [(1, le(f["fragment"], 4))])]),
        ]),
        (2, [
            (1, le(f["codec"], 1)),
            (2, [(1, le(f["profile"], 1)), (2, le(f["level"], 1)), (3, le(f["bitrate"], 4)),
                 (4, le(f["iframe"], 4))]),
            (3, [(1, le(f["width"], 2)), (2, le(f["height"], 2)), (3, le(f["fps"], 1))]),
        ]),
        (3, [
            (1, le(f["acodec"], 1)),
            (2, [(1, le(f["channels"], 1)), (2, le(f["mode"], 1)), (3, le(f["rate"], 1)),
                 (4, le(f["abitrate"], 4))]),
        ]),
    ]  # fmt: skip


def leaves(spec: Spec, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    paths = []
    for tag, value in spec:
        paths.append((*prefix, tag))
        if not isinstance(value, bytes):
            paths += leaves(value, (*prefix, tag))
    return paths


def edit(spec: Spec, path: tuple[int, ...], value: bytes | None) -> Spec:
    """A copy of spec with the item at path replaced by value (None: removed)."""
    out: Spec = []
    for tag, old in spec:
        if tag != path[0]:
            out.append((tag, old))
        elif len(path) > 1:
            assert not isinstance(old, bytes)
            out.append((tag, edit(old, path[1:], value)))
        elif value is not None:
            out.append((tag, value))
    return out


# Each required item of 209, and a word its TLVError must contain.
FIELD_NAMES = {
    (1,): "recording", (1, 1): "prebuffer", (1, 2): "event triggers", (1, 3): "media container",
    (1, 3, 1): "type", (1, 3, 2): "parameters", (1, 3, 2, 1): "fragment length",
    (2,): "video", (2, 1): "codec", (2, 2): "parameters", (2, 2, 1): "profile",
    (2, 2, 2): "level", (2, 2, 3): "bitrate", (2, 2, 4): "I-frame interval",
    (2, 3): "attributes", (2, 3, 1): "width", (2, 3, 2): "height", (2, 3, 3): "fps",
    (3,): "audio", (3, 1): "codec", (3, 2): "parameters", (3, 2, 1): "channels",
    (3, 2, 2): "bit-rate mode", (3, 2, 3): "sample rate", (3, 2, 4): "max bitrate",
}  # fmt: skip
INT_SIZES = {
    (1, 1): 4, (1, 2): 8, (1, 3, 1): 1, (1, 3, 2, 1): 4, (2, 1): 1, (2, 2, 1): 1, (2, 2, 2): 1,
    (2, 2, 3): 4, (2, 2, 4): 4, (2, 3, 1): 2, (2, 3, 2): 2, (2, 3, 3): 1, (3, 1): 1,
    (3, 2, 1): 1, (3, 2, 2): 1, (3, 2, 3): 1, (3, 2, 4): 4,
}  # fmt: skip


# ---- what we advertise ----


def test_205_defaults_are_the_doc_example() -> None:
    doc = "01 04 a0 0f 00 00 02 08 01 00 00 00 00 00 00 00 03 0b 01 01 00 02 06 01 04 a0 0f 00 00"
    assert supported_camera_recording_config() == bytes.fromhex(doc)


def test_205_prebuffer_and_doorbell_match_hap_nodejs() -> None:
    raw = supported_camera_recording_config(
        prebuffer_ms=8000, triggers=EventTrigger.MOTION | EventTrigger.DOORBELL
    )
    assert raw == base64.b64decode("AQRAHwAAAggDAAAAAAAAAAMLAQEAAgYBBKAPAAA=")


@pytest.mark.parametrize("kwargs", [{"prebuffer_ms": 3999}, {"fragment_ms": 0}])
def test_205_refuses_what_a_hub_would_reject(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        supported_camera_recording_config(**kwargs)


def test_207_is_the_doc_example() -> None:
    doc = "01 0e 01 01 00 02 09 01 01 01 02 01 00 03 01 03"
    assert supported_audio_recording_config() == bytes.fromhex(doc)
    assert supported_audio_recording_config() == base64.b64decode("AQ4BAQACCQEBAQIBAAMBAw==")


def test_206_for_1080p_byte_for_byte() -> None:
    expected = (
        "01 3b 01 01 00 02 1a"
        " 01 01 00 00 00 01 01 01 00 00 01 01 02"  # profiles baseline, main, high
        " 02 01 00 00 00 02 01 01 00 00 02 01 02"  # levels 3.1, 3.2, 4.0
        " 03 0b 01 02 80 07 02 02 38 04 03 01 1e 00 00"  # 1920x1080@30, separator
        " 03 0b 01 02 00 05 02 02 d0 02 03 01 1e"  # 1280x720@30
    )
    assert supported_video_recording_config(CAPS_1080) == bytes.fromhex(expected)


def _advertised_sizes(raw: bytes) -> list[tuple[int, int, int]]:
    [(tag, codec)] = walk(raw)
    assert tag == 1
    found = []
    for item_tag, value in walk(codec):
        if item_tag == 3:
            attrs = dict(walk(value))
            w, h = struct.unpack("<HH", attrs[1] + attrs[2])
            found.append((w, h, attrs[3][0]))
    return found


@pytest.mark.parametrize(
    ("native", "expected"),
    [
        ((1920, 1080, 30), [(1920, 1080, 30), (1280, 720, 30)]),
        ((3840, 2160, 60), [(1920, 1080, 30), (1280, 720, 30)]),
        ((2592, 1944, 20), [(1440, 1080, 20), (960, 720, 20)]),  # 4:3
        ((1080, 1920, 25), [(1080, 1920, 25), (720, 1280, 25)]),  # portrait
        ((1600, 900, 15), [(1600, 900, 15), (1280, 720, 15)]),
        ((1280, 720, 30), [(1280, 720, 30)]),
        ((640, 480, 30), [(640, 480, 30)]),  # never upscaled
        ((1279, 719, 30), [(1278, 718, 30)]),  # even
        ((3840, 1080, 30), [(1920, 540, 30)]),  # 32:9: the 720-line variant would be wider
    ],
)
def test_recording_resolutions(native: tuple[int, int, int], expected: list) -> None:
    caps = VideoCapabilities(*native)
    assert recording_resolutions(caps) == expected
    assert _advertised_sizes(supported_video_recording_config(caps)) == expected


def test_recording_resolutions_properties_seeded() -> None:
    rng = random.Random(9)
    for _ in range(2000):
        w, h, fps = rng.randint(2, 8000), rng.randint(2, 8000), rng.randint(1, 120)
        sizes = recording_resolutions(VideoCapabilities(w, h, fps))
        assert 1 <= len(sizes) <= 3 and len(set(sizes)) == len(sizes)
        areas = [sw * sh for sw, sh, _ in sizes]
        assert areas == sorted(areas, reverse=True)
        for sw, sh, sfps in sizes:
            assert sw % 2 == 0 and sh % 2 == 0 and sfps == min(fps, 30)
            assert sw <= max(w, 2) and sh <= max(h, 2)
            assert max(sw, sh) <= 1920 and min(sw, sh) <= 1080
            if min(sw, sh) >= 100:  # rounding to even bends small sizes' aspect
                assert abs(sw / sh - w / h) / (w / h) < 0.02


def test_recording_resolutions_rejects_nonsense() -> None:
    for caps in (VideoCapabilities(0, 1080, 30), VideoCapabilities(1920, 1080, 0)):
        with pytest.raises(ValueError):
            recording_resolutions(caps)


# ---- SelectedCameraRecordingConfiguration ----


def test_parse_real_hub_selection() -> None:
    assert build(selection()) == HAP_NODEJS_209  # this file's writer agrees with the vector
    selected = parse_selected_recording_config(HAP_NODEJS_209)
    # The TLV says width (tag 1) 1200 and height (tag 2) 1600: a portrait selection, from a
    # list that offered both orientations (hksv-protocol.md's "1600x1200" names it loosely).
    assert selected == SelectedRecordingConfig(
        prebuffer_ms=4000, fragment_ms=4000, triggers=EventTrigger.MOTION, video_codec=0,
        profile="main", level="4.0", bitrate_kbps=2000, iframe_interval_ms=4000,
        width=1200, height=1600, fps=24, audio_codec=AudioCodec.AAC_LC, audio_channels=1,
        audio_bitrate_mode=BitrateMode.VARIABLE, audio_sample_rate=32000,
        audio_max_bitrate_kbps=64, raw=HAP_NODEJS_209,
    )  # fmt: skip


def test_to_request() -> None:
    selected = parse_selected_recording_config(build(selection(width=1920, height=1080)))
    assert selected.to_request(False) == RecordingRequest(
        width=1920, height=1080, fps=24, bitrate_kbps=2000, iframe_interval_ms=4000,
        fragment_ms=4000, prebuffer_ms=4000, profile="main", level="4.0",
        audio_sample_rate=32000, audio_channels=1, audio_bitrate_kbps=64, audio_active=False,
    )  # fmt: skip
    assert selected.to_request(True).audio_active


@pytest.mark.parametrize(
    ("field", "code", "expected"),
    [
        ("profile", 0, "baseline"), ("profile", 2, "high"), ("level", 0, "3.1"),
        ("level", 1, "3.2"), ("rate", 0, 8000), ("rate", 4, 44100), ("rate", 5, 48000),
        ("mode", 1, BitrateMode.CONSTANT), ("acodec", 1, AudioCodec.AAC_ELD),
        ("triggers", 3, EventTrigger.MOTION | EventTrigger.DOORBELL),
    ],
)  # fmt: skip
def test_parse_enumerations(field: str, code: int, expected: object) -> None:
    selected = parse_selected_recording_config(build(selection(**{field: code})))
    attr = {"rate": "audio_sample_rate", "mode": "audio_bitrate_mode", "acodec": "audio_codec"}
    assert getattr(selected, attr.get(field, field)) == expected


def test_short_integers_and_unknown_items_are_accepted() -> None:
    spec = edit(selection(), (1, 1), b"\xa0\x0f")  # a 2-byte prebuffer
    spec = edit(spec, (2, 3, 1), b"\x80\x07")
    spec[1][1].append((9, b"ignored"))  # type: ignore[union-attr]
    selected = parse_selected_recording_config(build(spec))
    assert (selected.prebuffer_ms, selected.width) == (4000, 1920)


def test_values_over_255_bytes_are_joined() -> None:
    """A video record padded past 255 bytes arrives as two fragments of tag 2."""
    spec = selection()
    video = spec[1][1]
    assert not isinstance(video, bytes)
    video.append((9, bytes(300)))  # an item we ignore
    raw = build(spec)
    assert raw.count(bytes([2, 255])) >= 1
    selected = parse_selected_recording_config(raw)
    assert (selected.width, selected.height, selected.raw) == (1200, 1600, raw)


@pytest.mark.parametrize("path", list(FIELD_NAMES))
def test_missing_item_is_named(path: tuple[int, ...]) -> None:
    assert set(leaves(selection())) == set(FIELD_NAMES)
    with pytest.raises(TLVError, match=FIELD_NAMES[path]):
        parse_selected_recording_config(build(edit(selection(), path, None)))


@pytest.mark.parametrize("path", list(INT_SIZES))
def test_bad_integer_length_is_named(path: tuple[int, ...]) -> None:
    for value in (b"", bytes(INT_SIZES[path] + 1)):
        with pytest.raises(TLVError, match=FIELD_NAMES[path]):
            parse_selected_recording_config(build(edit(selection(), path, value)))


@pytest.mark.parametrize(
    ("field", "code", "name"),
    [
        ("profile", 3, "profile"), ("level", 3, "level"), ("rate", 6, "sample rate"),
        ("acodec", 2, "codec"), ("mode", 2, "bit-rate mode"), ("container", 1, "type"),
    ],
)  # fmt: skip
def test_unknown_code_is_named(field: str, code: int, name: str) -> None:
    with pytest.raises(TLVError, match=f"{name} .*{code}"):
        parse_selected_recording_config(build(selection(**{field: code})))


@pytest.mark.parametrize("path", [(1,), (1, 3), (2,), (2, 2), (2, 3), (3,), (3, 2)])
def test_garbage_record_is_an_error(path: tuple[int, ...]) -> None:
    with pytest.raises(TLVError, match=FIELD_NAMES[path]):
        parse_selected_recording_config(build(edit(selection(), path, b"\x01\x05ab")))


def test_fuzz_only_tlv_errors() -> None:
    rng = random.Random(20260209)
    valid = build(selection())
    inputs = [rng.randbytes(rng.randint(0, 120)) for _ in range(1500)]
    for _ in range(3000):
        raw = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            op, pos = rng.randrange(4), rng.randrange(len(raw))
            if op == 0:
                raw[pos] = rng.randrange(256)
            elif op == 1:
                del raw[pos:]
            elif op == 2:
                raw[pos:pos] = rng.randbytes(rng.randint(1, 4))
            elif raw:
                del raw[pos]
            if not raw:
                break
        inputs.append(bytes(raw))
    parsed = 0
    for raw in inputs:
        try:
            selected = parse_selected_recording_config(raw)
        except TLVError:
            continue
        parsed += 1
        assert selected.raw == raw
        try:
            check_selected(selected, VideoCapabilities(1200, 1600, 24))
        except TLVError:
            pass
    assert parsed > 30  # some mutations keep the shape: check_selected sees them too


# ---- check_selected ----


def _parsed(**fields: int) -> SelectedRecordingConfig:
    return parse_selected_recording_config(build(selection(**fields)))


@pytest.mark.parametrize(
    "caps",
    [CAPS_1080, VideoCapabilities(2592, 1944, 20), VideoCapabilities(1080, 1920, 15),
     VideoCapabilities(640, 480, 10)],
)  # fmt: skip
def test_check_accepts_every_advertised_size(caps: VideoCapabilities) -> None:
    for w, h, fps in recording_resolutions(caps):
        for profile in (0, 1, 2):
            for level in (0, 1, 2):
                check_selected(
                    _parsed(width=w, height=h, fps=fps, profile=profile, level=level), caps
                )


@pytest.mark.parametrize(
    "fields",
    [
        {"fps": 15}, {"fps": 1}, {"bitrate": 1}, {"bitrate": 100_000}, {"iframe": 1000},
        {"mode": 1}, {"prebuffer": 3000}, {"triggers": 3}, {"triggers": 0}, {"fragment": 2000},
        {"abitrate": 24},
    ],
)  # fmt: skip
def test_check_tolerates_harmless_differences(fields: dict[str, int]) -> None:
    check_selected(_parsed(**{"width": 1920, "height": 1080, **fields}), CAPS_1080)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"codec": 1}, "not H.264"), ({"width": 1200, "height": 1600}, "1200x1600 was not"),
        ({"width": 1080, "height": 1920}, "not offered"), ({"width": 1920, "height": 1088}, "not"),
        ({"fps": 31}, "fps 31"), ({"fps": 0}, "fps 0"), ({"bitrate": 0}, "video bitrate"),
        ({"iframe": 0}, "I-frame"), ({"fragment": 0}, "fragment length 0"),
        ({"fragment": 60_000}, "fragment length"), ({"prebuffer": 8000}, "prebuffer 8000"),
        ({"acodec": 1}, "AAC_ELD"), ({"channels": 2}, "channels 2"), ({"channels": 0}, "channels"),
        ({"rate": 1}, "16000 Hz"), ({"rate": 5}, "48000 Hz"), ({"abitrate": 0}, "audio max"),
    ],
)  # fmt: skip
def test_check_rejects_what_we_did_not_offer(fields: dict[str, int], message: str) -> None:
    selected = _parsed(**{"width": 1920, "height": 1080, **fields})
    with pytest.raises(TLVError, match=message):
        check_selected(selected, CAPS_1080)


def test_check_prebuffer_follows_our_offer() -> None:
    selected = _parsed(width=1920, height=1080, prebuffer=8000)
    check_selected(selected, CAPS_1080, prebuffer_ms=8000)


def test_check_profile_names_outside_the_table() -> None:
    selected = dataclasses.replace(_parsed(width=1920, height=1080), level="5.1")
    with pytest.raises(TLVError, match=r"5\.1"):
        check_selected(selected, CAPS_1080)


# ---- DataStreamTransportManagement ----

SALT = bytes(range(32))


def test_supported_data_stream_config() -> None:
    assert walk(SUPPORTED_DATA_STREAM_CONFIG) == [(1, t(1, b"\x00"))]


def test_parse_setup_data_stream() -> None:
    raw = bytes.fromhex("010100 020100 0320") + SALT
    assert parse_setup_data_stream(raw) == SetupDataStreamRequest(0, 0, SALT)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (t(2, b"\x00") + t(3, SALT), "session command"),
        (t(1, b"\x00") + t(3, SALT), "transport type"),
        (t(1, b"\x00") + t(2, b"\x00"), "controller key salt"),
        (t(1, b"\x01") + t(2, b"\x00") + t(3, SALT), "session command 1"),
        (t(1, b"\x00") + t(2, b"\x01") + t(3, SALT), "transport type 1"),
        (t(1, b"\x00") + t(2, b"\x00") + t(3, SALT[:31]), "salt must be 32 bytes, got 31"),
        (t(1, b"\x00") + t(2, b"\x00") + t(3, SALT + b"x"), "salt must be 32 bytes, got 33"),
        (t(1, b"\x00") + t(2, b"\x00") + t(3, b""), "salt must be 32 bytes, got 0"),
        (t(1, b"\x00\x00") + t(2, b"\x00") + t(3, SALT), "session command"),
        (t(1, b"\x00") + t(2, b"") + t(3, SALT), "transport type"),
        (t(1, b"\x00") + bytes([2, 5, 0]), "truncated"),
    ],
)
def test_setup_data_stream_errors_are_named(raw: bytes, name: str) -> None:
    with pytest.raises(TLVError, match=name):
        parse_setup_data_stream(raw)


def test_setup_data_stream_fuzz_only_tlv_errors() -> None:
    rng = random.Random(131)
    valid = t(1, b"\x00") + t(2, b"\x00") + t(3, SALT)
    for _ in range(3000):
        raw = bytearray(valid if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 50)))
        if raw:
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        try:
            parse_setup_data_stream(bytes(raw))
        except TLVError:
            pass


def test_setup_data_stream_response() -> None:
    raw = setup_data_stream_response(SetupDataStreamStatus.SUCCESS, 0xD431, SALT)
    assert raw == bytes.fromhex("010100 0204 010231d4 0320") + SALT
    busy = setup_data_stream_response(SetupDataStreamStatus.BUSY, 1234, SALT)
    assert busy == bytes.fromhex("010102")
    assert setup_data_stream_response(SetupDataStreamStatus.GENERIC_ERROR) == b"\x01\x01\x01"


@pytest.mark.parametrize(("port", "salt"), [(None, SALT), (0, SALT), (70000, SALT), (80, None),
                                            (80, SALT[:16])])  # fmt: skip
def test_setup_data_stream_response_needs_port_and_salt(port: int | None, salt: bytes | None):
    with pytest.raises(ValueError):
        setup_data_stream_response(SetupDataStreamStatus.SUCCESS, port, salt)
