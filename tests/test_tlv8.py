"""accessories.tlv8: fragmenting, separators, strict decoding, round trips."""

from __future__ import annotations

import random

import pytest

from accessories.tlv8 import TLV, TLVError, decode, encode, f32, read_f32, read_uint, u8, u16, u32


def item(tag: int, value: bytes) -> bytes:
    """One raw TLV item, written by hand (independent of the encoder under test)."""
    assert len(value) <= 255
    return bytes([tag, len(value)]) + value


# ---- encode ----


def test_encode_simple_items_in_order() -> None:
    assert encode([(1, b"\x05"), (2, b"ab")]) == b"\x01\x01\x05\x02\x02ab"


def test_empty_value_is_one_zero_length_item() -> None:
    assert encode([(6, b"")]) == b"\x06\x00"


@pytest.mark.parametrize(
    ("size", "fragments"),
    [(254, [254]), (255, [255]), (256, [255, 1]), (510, [255, 255]), (511, [255, 255, 1])],
)
def test_long_values_are_split_into_255_byte_fragments(size: int, fragments: list[int]) -> None:
    value = bytes(i % 251 for i in range(size))
    expected = b""
    offset = 0
    for length in fragments:
        expected += item(9, value[offset : offset + length])
        offset += length
    assert encode([(9, value)]) == expected


def test_exact_multiple_of_255_has_no_trailing_empty_fragment() -> None:
    data = encode([(3, b"x" * 765)])
    assert len(data) == 3 * 257
    assert data[-257:] == item(3, b"x" * 255)


def test_list_value_repeats_the_tag_with_separators() -> None:
    assert encode([(1, [b"\x00", b"\x01", b"\x02"])]) == (
        b"\x01\x01\x00\x00\x00\x01\x01\x01\x00\x00\x01\x01\x02"
    )


def test_adjacent_items_with_the_same_tag_get_a_separator() -> None:
    assert encode([(3, b"a"), (3, b"b"), (4, b"c"), (3, b"d")]) == (
        b"\x03\x01a\x00\x00\x03\x01b\x04\x01c\x03\x01d"
    )


def test_explicit_separator_is_not_doubled() -> None:
    assert encode([(3, b"a"), (0, b""), (3, b"b")]) == b"\x03\x01a\x00\x00\x03\x01b"


@pytest.mark.parametrize("bad", [[(256, b"")], [(-1, b"")], [(1, [])], [(1, "text")], [(1, [1])]])
def test_encode_rejects_bad_input(bad: list) -> None:
    with pytest.raises(TLVError):
        encode(bad)


# ---- decode ----


def test_decode_keeps_order_and_repeats() -> None:
    raw = item(1, b"a") + item(2, b"b") + item(1, b"c")
    assert decode(raw) == [(1, b"a"), (2, b"b"), (1, b"c")]


def test_decode_merges_only_after_a_full_fragment() -> None:
    raw = item(5, b"x" * 255) + item(5, b"yz")
    assert decode(raw) == [(5, b"x" * 255 + b"yz")]
    # a short item followed by the same tag is two items, not a continuation
    assert decode(item(5, b"ab") + item(5, b"cd")) == [(5, b"ab"), (5, b"cd")]


def test_decode_separator_splits_full_fragments() -> None:
    raw = item(5, b"x" * 255) + b"\x00\x00" + item(5, b"y" * 255)
    assert decode(raw) == [(5, b"x" * 255), (5, b"y" * 255)]


def test_decode_accepts_the_pairing_separator_too() -> None:
    raw = item(5, b"a") + b"\xff\x00" + item(5, b"b")
    assert decode(raw) == [(5, b"a"), (5, b"b")]


def test_decode_does_not_merge_across_another_tag() -> None:
    raw = item(5, b"x" * 255) + item(6, b"") + item(5, b"y")
    assert decode(raw) == [(5, b"x" * 255), (6, b""), (5, b"y")]


def test_decode_empty_input() -> None:
    assert decode(b"") == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01", "has no length byte"),
        (b"\x01\x03ab", "needs 3 bytes, 2 left"),
        (b"\x01\x01a\x02", "has no length byte"),
        (b"\x01\xff" + b"a" * 254, "needs 255 bytes"),
    ],
)
def test_truncated_input_raises_with_a_clear_message(raw: bytes, message: str) -> None:
    with pytest.raises(TLVError, match=message):
        decode(raw)


def test_tlv_error_is_a_value_error() -> None:
    assert issubclass(TLVError, ValueError)


# ---- helpers ----


def test_record_helpers() -> None:
    inner = item(1, b"\x2a\x00") + item(2, b"\x01")
    rec = TLV.parse(item(7, b"a") + item(7, b"b") + item(8, inner), "Outer")
    assert rec.all(7) == [b"a", b"b"]
    assert rec.first(7) == b"a"
    assert rec.first(9) is None
    assert rec.tags() == [7, 7, 8]
    nested = rec.nested(8, "inner")
    assert nested.uint(1, "width", 2) == 42
    assert nested.optional_uint(3, "absent") is None
    assert rec.optional_nested(9, "absent") is None


def test_record_errors_name_the_field() -> None:
    rec = TLV.parse(item(1, b"\x00\x00\x00") + item(2, b"\x01"), "Thing")
    with pytest.raises(TLVError, match=r"Thing: missing session id \(tag 5\)"):
        rec.require(5, "session id")
    with pytest.raises(TLVError, match=r"Thing.port: expected 1..2 bytes, got 3"):
        rec.uint(1, "port", 2)
    with pytest.raises(TLVError, match=r"Thing.inner: TLV truncated"):
        rec.nested(2, "inner")
    with pytest.raises(TLVError, match="Outer: TLV truncated"):
        TLV.parse(b"\x01\x05", "Outer")


def test_scalars() -> None:
    assert u8(7) == b"\x07"
    assert u16(0x1234) == b"\x34\x12"
    assert u32(0x01020304) == b"\x04\x03\x02\x01"
    assert read_uint(b"\x34\x12", "x") == 0x1234
    assert read_f32(f32(0.5), "x") == 0.5
    with pytest.raises(TLVError):
        u16(70000)
    with pytest.raises(TLVError):
        u8(-1)
    with pytest.raises(TLVError):
        read_uint(b"", "x")
    with pytest.raises(TLVError, match="4-byte float"):
        read_f32(b"\x00\x00", "x")


# ---- property-style round trips (plain random loops: hypothesis is not installed) ----

_LENGTHS = [0, 1, 2, 254, 255, 256, 509, 510, 511, 765, 766]


def _random_items(rng: random.Random) -> list[tuple[int, bytes]]:
    items = []
    for _ in range(rng.randrange(0, 8)):
        tag = rng.choice([1, 2, 3, rng.randrange(1, 255)])  # many repeats; 0, 255 separate
        size = rng.choice(_LENGTHS) if rng.random() < 0.6 else rng.randrange(0, 1200)
        items.append((tag, rng.randbytes(size)))
    return items


def test_round_trip_random_items() -> None:
    rng = random.Random(0x7A8)
    for _ in range(2000):
        items = _random_items(rng)
        assert decode(encode(items)) == items


def test_round_trip_nested_lists() -> None:
    rng = random.Random(0x7A9)
    for _ in range(300):
        inner = [encode(_random_items(rng)) for _ in range(rng.randrange(1, 5))]
        outer = encode([(1, inner), (2, rng.randbytes(rng.randrange(300)))])
        record = TLV.parse(outer)
        assert record.all(1) == inner
        for raw, expected in zip(record.all(1), inner, strict=True):
            assert encode(decode(raw)) == expected


def test_decode_of_random_bytes_raises_only_tlv_error() -> None:
    rng = random.Random(0x7AA)
    for _ in range(3000):
        raw = rng.randbytes(rng.randrange(0, 64))
        try:
            items = decode(raw)
        except TLVError:
            continue
        assert all(value or tag not in (0x00, 0xFF) for tag, value in items)
