"""accessories.hds.format against HAP-NodeJS's vectors, hand-written forms, garbage and fuzz.

Every `encoding` vector is decoded (where HAP-NodeJS's own decode is wrong per the vectors'
`quirks`, we assert the correct value) and encoded: to the exact bytes where HAP-NodeJS's
output is canonical, to hand-written bytes where docs/hds.md §5.3 deliberately differs.
"""

from __future__ import annotations

import hashlib
import random
import struct
import uuid
from typing import Any

import pytest

from accessories.hds.format import (
    MAX_DEPTH,
    Float32,
    Float64,
    HDSFormatError,
    Int8,
    Int16,
    Int32,
    Int64,
    SecondsSince2001,
    decode,
    encode,
)
from tests.hds_vectors import load_vectors

WRAPPERS: dict[str, Any] = {
    "Int8": Int8,
    "Int16": Int16,
    "Int32": Int32,
    "Int64": Int64,
    "Float32": Float32,
    "Float64": Float64,
    "SecondsSince2001": SecondsSince2001,
}


def pattern(length: int) -> bytes:
    return bytes(i % 251 for i in range(length))


def value_of(desc: dict[str, Any]) -> object:
    """A vector's value description as the Python value (wrappers kept, so encode is exact)."""
    kind = desc["type"]
    if kind == "null":
        return None
    if kind in ("bool", "int", "number", "string"):
        return desc["value"]
    if kind == "float":
        return float(desc["value"])
    if kind == "data":
        data = bytes.fromhex(desc["hex"]) if "hex" in desc else pattern(desc["length"])
        if "sha256" in desc:
            assert hashlib.sha256(data).hexdigest() == desc["sha256"]
        return data
    if kind == "array":
        return [value_of(item) for item in desc["items"]]
    if kind == "dict":
        return {key: value_of(item) for key, item in desc["entries"]}
    if kind == "UUID":
        return uuid.UUID(desc["value"])
    if kind in WRAPPERS:
        return WRAPPERS[kind](desc["value"])
    raise AssertionError(f"unexpected value type {kind}")


VECTORS_DATA = load_vectors()
ENCODING = {case["name"]: case for case in VECTORS_DATA["encoding"]}

# Where we deliberately write other bytes than HAP-NodeJS (docs/hds.md §5.3 and §9).
OURS = {
    "int 65535": "32ffff0000",  # quirk 2: smallest form, not its u32-in-int64
    "int 2147483647": "32ffffff7f",  # quirk 2
    "string emoji": "44f09f9880",  # quirk 5: tagged by UTF-8 length
    "data len 0": "9100",  # quirk 3: never 0x70+n
    "data len 32": "9120" + pattern(32).hex(),  # quirk 3
    # No back-references (§5.3): the repeated values are written in full.
    "response header with id 0 (back-reference)": (
        "e4" + "4870726f746f636f6c" + "486461746153656e64" + "48726573706f6e7365" + "446f70656e"
        "426964" + "330000000000000000" + "46737461747573" + "330000000000000000"
    ),
    "repeated dict key/value string": "e141784178",
    "repeated int8-range number": "d230643064",
    "same Buffer object twice": "d2" + ("9128" + pattern(40).hex()) * 2,
    "index mismatch: bool before repeated string": "d30141784178",
    "back-reference to index 0 after a small int (unaffected)": (
        "e2" + "4873747265616d4964" + "09" + "46726561736f6e" + "4873747265616d4964"
    ),
}
# Values HAP-NodeJS cannot encode at all (its int64 is a u32): our exact bytes.
BEYOND = {
    "int 1099511627776": "330000000000010000",
    "int 4294967296": "330000000001000000",
    "int -40000": "32c063ffff",
    "Int64(-1)": "33ffffffffffffffff",
}


def test_every_vector_is_covered() -> None:
    encodable = {name for name, case in ENCODING.items() if "encoded_hex" in case}
    assert set(BEYOND) == set(ENCODING) - encodable
    assert set(OURS) <= encodable
    assert len(ENCODING) == 50


@pytest.mark.parametrize("name", [n for n, c in ENCODING.items() if "encoded_hex" in c])
def test_vector_encodes_to_the_canonical_bytes(name: str) -> None:
    case = ENCODING[name]
    blob = encode(value_of(case["input"]))
    if name in OURS:
        assert blob.hex() == OURS[name]
        assert blob != bytes.fromhex(case["encoded_hex"])
    else:
        assert blob.hex() == case["encoded_hex"]
    if "encoded_sha256" in case:
        assert hashlib.sha256(blob).hexdigest() == case["encoded_sha256"]


@pytest.mark.parametrize("name", [n for n, c in ENCODING.items() if "encoded_hex" in c])
def test_vector_decodes_to_the_input_value(name: str) -> None:
    case = ENCODING[name]
    blob = bytes.fromhex(case["encoded_hex"])
    if name == "string emoji":
        # HAP-NodeJS tags 4 UTF-8 bytes as a 2-byte string: the tag cuts the character.
        with pytest.raises(HDSFormatError, match="offset 0: string is not UTF-8"):
            decode(blob)
        assert decode(encode(value_of(case["input"]))) == "\U0001f600"
        return
    expected = value_of(case["input"])
    assert decode(blob) == expected  # including where HAP-NodeJS's decode is wrong
    if name in OURS:
        assert decode(bytes.fromhex(OURS[name])) == expected


def test_where_hap_nodejs_decodes_wrongly_we_do_not() -> None:
    wrong = {n for n, c in ENCODING.items() if c.get("decode") and not c["decode"]["value_equal"]}
    assert wrong == {
        "UUID",
        "string emoji",
        "data len 0",
        "data len 32",
        "index mismatch: bool before repeated string",
    }
    assert decode(bytes.fromhex(ENCODING["data len 0"]["encoded_hex"])) == b""
    assert decode(bytes.fromhex(ENCODING["data len 32"]["encoded_hex"])) == pattern(32)
    assert decode(bytes.fromhex("d3014178a0")) == [True, "x", "x"]  # it returns [true, 'x', true]
    assert decode(bytes.fromhex(ENCODING["UUID"]["encoded_hex"])) == uuid.UUID(
        "00000000-0000-1000-8000-0026bb765291"
    )
    # float64 not advanced past by HAP-NodeJS: we read all 9 bytes, and what follows.
    assert decode(bytes.fromhex("d236000000000000d0bf09")) == [-0.25, 1]


@pytest.mark.parametrize("name", sorted(BEYOND))
def test_values_hap_nodejs_cannot_encode(name: str) -> None:
    value = value_of(ENCODING[name]["input"])
    assert encode(value).hex() == BEYOND[name]
    assert decode(encode(value)) == value


# ---- hand-written forms (independent of the encoder) ----


@pytest.mark.parametrize(
    ("hex_blob", "value"),
    [
        ("2f", 39),  # quirk 1: HAP-NodeJS writes it, its decoder does not read it
        ("07", -1),
        ("2e", 38),
        ("3080", -128),
        ("33ffff000000000000", 65535),  # HAP-NodeJS's "int64"
        ("33ffffffffffffff7f", 2**63 - 1),
        ("330000000000000080", -(2**63)),
        ("350000c03f", 1.5),
        ("06" + struct.pack("<d", 7.25).hex(), SecondsSince2001(7.25)),
        ("6203006162 63".replace(" ", ""), "abc"),
        ("63030000006162 63".replace(" ", ""), "abc"),
        ("640300000000000000616263", "abc"),
        ("6f61626300", "abc"),
        ("6f00", ""),
        ("7301 0203".replace(" ", ""), b"\x01\x02\x03"),
        ("920200abcd", b"\xab\xcd"),
        ("9302000000abcd", b"\xab\xcd"),
        ("940200000000000000abcd", b"\xab\xcd"),
        ("df03", []),
        ("df010203", [True, False]),
        ("ef03", {}),
        ("ef41610103", {"a": True}),
        ("de" + "08" * 14, [0] * 14),  # counted form up to 14
        (
            "ee" + "".join(f"41{0x61 + i:02x}08" for i in range(14)),
            {chr(97 + i): 0 for i in range(14)},
        ),
        ("d3 4178 a0 a0".replace(" ", ""), ["x", "x", "x"]),  # references are not tracked
        ("d4 3064 0f a0 3201000000".replace(" ", ""), [100, 7, 100, 1]),
        (
            "d4 0500112233445566778899aabbccddeeff a0 060000000000000000 a1".replace(" ", ""),
            [uuid.UUID(int=0x00112233445566778899AABBCCDDEEFF)] * 2 + [SecondsSince2001(0.0)] * 2,
        ),
    ],
)
def test_decode_hand_written_forms(hex_blob: str, value: object) -> None:
    result = decode(bytes.fromhex(hex_blob))
    assert result == value
    assert type(result) is type(value)


def test_back_reference_indices_33_to_47() -> None:
    strings = [f"s{i:02d}" for i in range(48)]
    blob = bytes([0xDF]) + b"".join(encode(s) for s in strings)
    blob += bytes(range(0xA0, 0xD0)) + b"\x03"
    assert decode(blob) == strings + strings


def test_date_wrapper_round_trips() -> None:
    blob = encode(SecondsSince2001(789.5))
    assert blob == b"\x06" + struct.pack("<d", 789.5)
    assert decode(blob) == 789.5 and isinstance(decode(blob), SecondsSince2001)


@pytest.mark.parametrize(
    ("value", "hex_blob"),
    [
        (39, "3027"),  # never 0x2F
        (-2, "30fe"),
        (128, "318000"),
        (-129, "317fff"),
        (32768, "3200800000"),
        (2**31, "330000008000000000"),
        (Int8(-1), "30ff"),
        (Int16(1), "310100"),
        (Int32(1), "3201000000"),
        (Int64(1), "330100000000000000"),
        (Float32(1.5), "350000c03f"),
        (Float64(0.5), "36000000000000e03f"),
        (0.5, "36000000000000e03f"),
        (b"", "9100"),
        (bytearray(b"\x01"), "910101"),
        (memoryview(b"\x01\x02"), "91020102"),
        (b"x" * 256, "920001" + "78" * 256),
        ("é", "42c3a9"),
        ("a" * 33, "6121" + "61" * 33),
        ("a" * 256, "620001" + "61" * 256),
        ((1, 2), "d2090a"),
        (list(range(13)), "df" + "".join(f"{8 + i:02x}" for i in range(13)) + "03"),
        (
            {f"k{i:02d}": None for i in range(15)},
            "ef"
            + "".join(f"436b{0x30 + i // 10:02x}{0x30 + i % 10:02x}04" for i in range(15))
            + "03",
        ),
    ],
)
def test_encode_forms(value: object, hex_blob: str) -> None:
    assert encode(value).hex() == hex_blob
    assert decode(encode(value)) == (list(value) if isinstance(value, tuple) else value)


# ---- garbage ----

UNKNOWN_TAGS = [
    0x00,
    0x34,
    *range(0x37, 0x40),
    *range(0x65, 0x6F),
    *range(0x95, 0x9F),
    *range(0xF0, 0x100),
]


@pytest.mark.parametrize("tag", UNKNOWN_TAGS)
def test_unknown_tags_are_refused(tag: int) -> None:
    with pytest.raises(HDSFormatError, match=f"offset 1: unknown tag {tag:#04x}"):
        decode(bytes([0xD1, tag, 0, 0, 0, 0, 0, 0, 0, 0]))


@pytest.mark.parametrize(
    ("hex_blob", "message"),
    [
        ("", "offset 0: truncated"),
        ("9f0103", "terminated data"),
        ("03", "offset 0: terminator"),
        ("d103", "offset 1: terminator"),
        ("e1416103", "offset 3: terminator"),
        ("a0", "offset 0: back-reference 0 but only 0"),
        ("d24161a1", "offset 3: back-reference 1 but only 1"),
        ("0909", "offset 1: 1 bytes after the value"),
        ("42ffff", "offset 0: string is not UTF-8"),
        ("e10909", "offset 1: dict key is a int"),
        ("e1910161 09", "offset 1: dict key is a bytes"),
        ("e241610941610a", "offset 4: dict key 'a' repeated"),
        ("64ffffffffffffffff", "offset 0: string needs 18446744073709551615 bytes, 0 left"),
        ("94ffffffffffffff7f00", "offset 0: data needs"),
        ("6f6162", "NUL-terminated string has no NUL"),
        ("33000000", "offset 0: integer needs 8 bytes, 3 left"),
        ("0500", "UUID needs 16 bytes"),
        ("df09", "offset 2: truncated"),
    ],
)
def test_malformed_input_names_the_offset(hex_blob: str, message: str) -> None:
    with pytest.raises(HDSFormatError, match=message):
        decode(bytes.fromhex(hex_blob.replace(" ", "")))


def test_nesting_limit() -> None:
    assert decode(b"\xd1" * (MAX_DEPTH - 1) + b"\xd0") == encode_nested(MAX_DEPTH)
    with pytest.raises(HDSFormatError, match="nested deeper than 32"):
        decode(b"\xd1" * MAX_DEPTH + b"\xd0")
    with pytest.raises(HDSFormatError, match="nested deeper than 32"):
        decode(b"\xe1\x41a" * MAX_DEPTH + b"\xe0")
    assert encode(encode_nested(MAX_DEPTH)) == b"\xd1" * (MAX_DEPTH - 1) + b"\xd0"
    with pytest.raises(HDSFormatError, match="nested deeper"):
        encode(encode_nested(MAX_DEPTH + 1))
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(HDSFormatError, match="nested deeper"):
        encode(loop)


def encode_nested(levels: int) -> list[object]:
    value: list[object] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_every_truncation_of_a_message_is_an_error() -> None:
    blob = encode(
        {
            "streamId": 1,
            "packets": [
                {"data": pattern(40), "metadata": {"dataType": "mediaFragment", "x": -1.5}}
            ],
            "u": uuid.uuid4(),
            "big": 2**40,
        }
    )
    for cut in range(len(blob)):
        with pytest.raises(HDSFormatError):
            decode(blob[:cut])


@pytest.mark.parametrize(
    "value",
    [{1: 2}, {1.5}, object(), 2**63, -(2**63) - 1, Float32(1e40), "\ud800", complex(1, 2)],
)
def test_unencodable_values(value: object) -> None:
    with pytest.raises(HDSFormatError):
        encode(value)


@pytest.mark.parametrize(
    ("wrapper", "value"),
    [(Int8, 128), (Int16, -32769), (Int32, 2**31), (Int64, 2**63), (Int8, True), (Int8, 1.0)],
)
def test_wrappers_check_their_range(wrapper: Any, value: object) -> None:
    with pytest.raises(HDSFormatError):
        wrapper(value)


# ---- seeded round trips and fuzz ----


def random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.randrange(12 if depth < 4 else 8)
    if roll == 0:
        return rng.choice([None, True, False])
    if roll == 1:
        return rng.choice([-1, 0, 38, 39, 40, 127, 128, -129, 2**31, -(2**63), 2**63 - 1])
    if roll == 2:
        return rng.randrange(-(2**40), 2**40)
    if roll == 3:
        return rng.uniform(-1e9, 1e9)
    if roll == 4:
        return "".join(rng.choice("ab\u00e9\u4e2d\U0001f600") for _ in range(rng.randrange(0, 40)))
    if roll == 5:
        return rng.randbytes(rng.choice([0, 1, 32, 33, 255, 256, 70000]))
    if roll == 6:
        return uuid.UUID(int=rng.getrandbits(128))
    if roll == 7:
        return SecondsSince2001(rng.uniform(0, 1e9))
    if roll in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 16))]
    return {
        f"k{i}{rng.random()}": random_value(rng, depth + 1) for i in range(rng.randrange(0, 17))
    }


def test_seeded_round_trips() -> None:
    rng = random.Random(9)
    for _ in range(400):
        value = random_value(rng)
        assert decode(encode(value)) == value


def test_seeded_fuzz_raises_only_format_errors() -> None:
    rng = random.Random(1909)
    seeds = [encode(random_value(rng)) for _ in range(40)] + [
        bytes.fromhex(c["encoded_hex"])
        for c in ENCODING.values()
        if "encoded_hex" in c and len(c["encoded_hex"]) < 2000
    ]
    for _ in range(20000):
        if rng.random() < 0.5:
            blob = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                if blob:
                    blob[rng.randrange(len(blob))] = rng.randrange(256)
        else:
            blob = bytearray(rng.randbytes(rng.randrange(0, 24)))
        try:
            decode(bytes(blob))
        except HDSFormatError:
            pass
