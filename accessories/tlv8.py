"""TLV8 as HAP uses it: our own codec, strict on input.

HAP-python's ``pyhap.tlv`` merges repeated tags into one value (losing lists such as the
resolutions of SupportedVideoStreamConfiguration) and mis-encodes values of exactly 255·k
bytes, so the camera characteristics use this module instead.

Wire rules (HAP spec, "TLV8 Format"):
- an item is ``tag (1 byte) | length (1 byte) | value (length bytes)``;
- a value longer than 255 bytes is sent as consecutive fragments of the same tag, every one but
  the last exactly 255 bytes long; a value of 255·k bytes is exactly k full fragments;
- two consecutive items with the same tag are a list only when a separator (tag 0x00, length 0)
  stands between them, otherwise a reader may merge them. The encoder therefore writes a
  separator between any two adjacent items of the same tag, and the decoder merges a fragment
  into the previous one only when that previous fragment was exactly 255 bytes long.
  Camera TLVs (and HAP-NodeJS, which iOS is happy with) use 0x00 as the separator; pairing TLVs
  use 0xFF. The decoder accepts a zero-length item of either as a separator.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeAlias

SEPARATOR = 0x00
_SEPARATORS = (0x00, 0xFF)
_MAX_FRAGMENT = 255

Bytes: TypeAlias = bytes | bytearray | memoryview
# A value is bytes, or a list of bytes meaning "repeat the tag once per entry".
Value: TypeAlias = Bytes | Sequence[Bytes]
Item: TypeAlias = tuple[int, bytes]


class TLVError(ValueError):
    """Malformed or incomplete TLV8 data, or a value of the wrong shape."""


def _check_tag(tag: int) -> None:
    if not isinstance(tag, int) or not 0 <= tag <= 0xFF:
        raise TLVError(f"TLV tag must be an integer 0..255, got {tag!r}")


def _flatten(items: Iterable[tuple[int, Value]]) -> Iterator[Item]:
    for tag, value in items:
        _check_tag(tag)
        if isinstance(value, bytes | bytearray | memoryview):
            yield tag, bytes(value)
        elif isinstance(value, list | tuple):
            if not value:
                raise TLVError(f"TLV tag {tag:#04x}: an empty list has no encoding")
            for entry in value:
                if not isinstance(entry, bytes | bytearray | memoryview):
                    raise TLVError(f"TLV tag {tag:#04x}: list entries must be bytes")
                yield tag, bytes(entry)
        else:
            raise TLVError(f"TLV tag {tag:#04x}: value must be bytes or a list of bytes")


def encode(items: Iterable[tuple[int, Value]]) -> bytes:
    """Encode ``(tag, value)`` pairs in order.

    A list value stands for the same tag repeated; a separator is written between any two
    adjacent items that share a tag (explicit separators in ``items`` are kept as given and
    not doubled). An empty value is one zero-length item (for tags 0x00 and 0xFF that reads
    back as a separator).
    """
    out = bytearray()
    previous: int | None = None
    for tag, value in _flatten(items):
        if tag == SEPARATOR and not value:
            out += b"\x00\x00"
            previous = None
            continue
        if tag == previous:
            out += b"\x00\x00"
        if not value:
            out += bytes((tag, 0))
        for start in range(0, len(value), _MAX_FRAGMENT):
            chunk = value[start : start + _MAX_FRAGMENT]
            out += bytes((tag, len(chunk)))
            out += chunk
        previous = tag
    return bytes(out)


def decode(data: Bytes) -> list[Item]:
    """Decode into an ordered list of ``(tag, value)``; separators are dropped.

    Fragments are joined only when the previous fragment of the same tag was exactly 255 bytes
    long and nothing stood in between. Raises TLVError on truncated input.
    """
    buf = bytes(data)
    items: list[Item] = []
    pos = 0
    continuing = False  # the last item read was a full 255-byte fragment
    while pos < len(buf):
        tag = buf[pos]
        if pos + 1 >= len(buf):
            raise TLVError(f"TLV truncated: tag {tag:#04x} at offset {pos} has no length byte")
        length = buf[pos + 1]
        end = pos + 2 + length
        if end > len(buf):
            raise TLVError(
                f"TLV truncated: tag {tag:#04x} at offset {pos} needs {length} bytes, "
                f"{len(buf) - pos - 2} left"
            )
        value = buf[pos + 2 : end]
        pos = end
        if length == 0 and tag in _SEPARATORS:
            continuing = False
            continue
        if continuing and items[-1][0] == tag:
            items[-1] = (tag, items[-1][1] + value)
        else:
            items.append((tag, value))
        continuing = length == _MAX_FRAGMENT
    return items


class TLV:
    """A decoded TLV8 record with lookup helpers; ``what`` names it in error messages."""

    __slots__ = ("items", "what")

    def __init__(self, items: list[Item], what: str = "TLV") -> None:
        self.items = items
        self.what = what

    @classmethod
    def parse(cls, data: Bytes, what: str = "TLV") -> TLV:
        try:
            return cls(decode(data), what)
        except TLVError as exc:
            raise TLVError(f"{what}: {exc}") from None

    def __repr__(self) -> str:
        return f"TLV({self.what}, {self.items!r})"

    def tags(self) -> list[int]:
        return [tag for tag, _ in self.items]

    def all(self, tag: int) -> list[bytes]:
        """Every value of ``tag`` in order (a list in TLV terms)."""
        return [value for t, value in self.items if t == tag]

    def first(self, tag: int) -> bytes | None:
        return next((value for t, value in self.items if t == tag), None)

    def require(self, tag: int, name: str) -> bytes:
        value = self.first(tag)
        if value is None:
            raise TLVError(f"{self.what}: missing {name} (tag {tag})")
        return value

    def nested(self, tag: int, name: str) -> TLV:
        """The required value of ``tag`` decoded as a TLV record of its own."""
        return TLV.parse(self.require(tag, name), f"{self.what}.{name}")

    def optional_nested(self, tag: int, name: str) -> TLV | None:
        value = self.first(tag)
        return None if value is None else TLV.parse(value, f"{self.what}.{name}")

    def uint(self, tag: int, name: str, max_bytes: int = 8) -> int:
        return read_uint(self.require(tag, name), f"{self.what}.{name}", max_bytes)

    def optional_uint(self, tag: int, name: str, max_bytes: int = 8) -> int | None:
        value = self.first(tag)
        return None if value is None else read_uint(value, f"{self.what}.{name}", max_bytes)


# Little-endian scalars, as HAP's TLV8 characteristics carry them.


def u8(value: int) -> bytes:
    return _pack("<B", value)


def u16(value: int) -> bytes:
    return _pack("<H", value)


def u32(value: int) -> bytes:
    return _pack("<I", value)


def f32(value: float) -> bytes:
    return struct.pack("<f", value)


def _pack(fmt: str, value: int) -> bytes:
    try:
        return struct.pack(fmt, value)
    except struct.error:
        raise TLVError(f"{value!r} does not fit {struct.calcsize(fmt)} unsigned byte(s)") from None


def read_uint(value: bytes, name: str, max_bytes: int = 8) -> int:
    """A little-endian unsigned integer of 1..max_bytes bytes (senders may shorten them)."""
    if not 1 <= len(value) <= max_bytes:
        raise TLVError(f"{name}: expected 1..{max_bytes} bytes, got {len(value)}")
    return int.from_bytes(value, "little")


def read_f32(value: bytes, name: str) -> float:
    if len(value) != 4:
        raise TLVError(f"{name}: expected a 4-byte float, got {len(value)} bytes")
    result: float = struct.unpack("<f", value)[0]
    return result
