"""The test hub's own HomeKit Data Stream (HDS) wire code: keys, frames and the data format.

Written for the hub side of the HKSV tests, independently of the product's accessories/hds/
(a shared codec would hide a shared bug), from the facts in docs/hksv-protocol.md and checked
against HAP-NodeJS's vectors (tests/data/hds/hds-vectors-dev.json) in tests/test_hds_peer.py.

- Keys: HKDF-SHA512 over the pair-verify shared secret, salt = controller salt || accessory
  salt, info "HDS-Read-Encryption-Key" (accessory -> hub) / "HDS-Write-Encryption-Key".
- Frame: [0x01][payload length u24 BE][ChaCha20-Poly1305 ciphertext][16-byte tag], AAD = the
  4 header bytes, nonce = 4 zero bytes || u64 LE counter; one counter per direction, advanced
  only by a frame that opened. Plaintext = [header length u8][header][message].
- Data format: `encode` writes the forms HAP-NodeJS 1.2.0's writer uses (so the accessory
  under test sees what a hub of that lineage sends: Int64 for header id/status, plain integers
  beyond int16 as int64, 39 as 0x2F). `decode` reads every form of the list in
  hksv-protocol.md and gives what the bytes mean where HAP-NodeJS's reader does not (data of
  0..32 bytes, float64/date width, 0x2F). Back-references index the values a writer tracks:
  strings, data, UUIDs, dates and sized numbers, never true/false/null/-1/0..39 or containers
  (HAP-NodeJS's own reader also counts booleans and small ints, which shifts its indices).
  A0..CF are direct indices 0..47, as HAP-NodeJS reads them.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA512
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------

READ_INFO = b"HDS-Read-Encryption-Key"  # accessory -> hub
WRITE_INFO = b"HDS-Write-Encryption-Key"  # hub -> accessory


def hkdf_sha512(secret: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=SHA512(), length=length, salt=salt, info=info).derive(secret)


@dataclass(frozen=True)
class HdsKeys:
    accessory_to_hub: bytes
    hub_to_accessory: bytes

    @classmethod
    def derive(cls, shared_secret: bytes, controller_salt: bytes, accessory_salt: bytes) -> HdsKeys:
        salt = controller_salt + accessory_salt
        return cls(
            accessory_to_hub=hkdf_sha512(shared_secret, salt, READ_INFO),
            hub_to_accessory=hkdf_sha512(shared_secret, salt, WRITE_INFO),
        )


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------

FRAME_TYPE = 0x01
HEADER_LEN = 4
TAG_LEN = 16
MAX_PAYLOAD = 0xFFFFF  # what HAP-NodeJS accepts; the u24 field could say more


class FrameError(ValueError):
    """A frame that is malformed or does not open with the expected key and counter."""


def nonce(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(8, "little")


def frame_header(payload_len: int, frame_type: int = FRAME_TYPE) -> bytes:
    return bytes((frame_type,)) + payload_len.to_bytes(3, "big")


def parse_frame_header(header: bytes) -> tuple[int, int]:
    """(frame type, payload length) of the 4 header bytes."""
    if len(header) != HEADER_LEN:
        raise FrameError(f"frame header needs 4 bytes, got {len(header)}")
    return header[0], int.from_bytes(header[1:4], "big")


def seal(key: bytes, counter: int, plaintext: bytes) -> bytes:
    header = frame_header(len(plaintext))
    return header + ChaCha20Poly1305(key).encrypt(nonce(counter), plaintext, header)


def open_frame(key: bytes, counter: int, frame: bytes) -> bytes:
    frame_type, length = parse_frame_header(frame[:HEADER_LEN])
    if frame_type != FRAME_TYPE:
        raise FrameError(f"frame type {frame_type:#x}")
    if len(frame) != HEADER_LEN + length + TAG_LEN:
        raise FrameError(f"frame of {len(frame)} bytes for a payload of {length}")
    try:
        return ChaCha20Poly1305(key).decrypt(nonce(counter), frame[HEADER_LEN:], frame[:4])
    except InvalidTag as err:
        raise FrameError(f"frame does not open (counter {counter})") from err


class Direction:
    """One direction of a session: its key and its counter (advanced by each sealed frame, and
    by each frame that opened; a frame that fails leaves the counter where it was)."""

    def __init__(self, key: bytes, counter: int = 0) -> None:
        self.key = key
        self.counter = counter

    def seal(self, plaintext: bytes) -> bytes:
        frame = seal(self.key, self.counter, plaintext)
        self.counter += 1
        return frame

    def open(self, frame: bytes) -> bytes:
        plaintext = open_frame(self.key, self.counter, frame)
        self.counter += 1
        return plaintext


def pack_payload(header: bytes, message: bytes) -> bytes:
    if len(header) > 255:
        raise ValueError(f"an HDS header is at most 255 bytes, got {len(header)}")
    return bytes((len(header),)) + header + message


def unpack_payload(plaintext: bytes) -> tuple[bytes, bytes]:
    if not plaintext or plaintext[0] + 1 > len(plaintext):
        raise FrameError("payload shorter than its header length says")
    n = plaintext[0]
    return plaintext[1 : 1 + n], plaintext[1 + n :]


def encode_payload(header: dict[str, Any], message: Any) -> bytes:
    """Header and message encoded separately (back-reference tables restart), then packed."""
    return pack_payload(encode(header), encode(message))


def decode_payload(plaintext: bytes) -> tuple[Any, Any]:
    header, message = unpack_payload(plaintext)
    return decode(header), decode(message)


# --------------------------------------------------------------------------------------------
# Data format: sized values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Int8:
    value: int


@dataclass(frozen=True)
class Int16:
    value: int


@dataclass(frozen=True)
class Int32:
    value: int


@dataclass(frozen=True)
class Int64:
    value: int


@dataclass(frozen=True)
class Float32:
    value: float


@dataclass(frozen=True)
class Float64:
    value: float


@dataclass(frozen=True)
class Date:
    """Seconds since 2001-01-01 00:00:00 UTC (float64)."""

    seconds: float


_SIZED: dict[type, tuple[int, str]] = {
    Int8: (0x30, "<b"),
    Int16: (0x31, "<h"),
    Int32: (0x32, "<i"),
    Int64: (0x33, "<q"),
    Float32: (0x35, "<f"),
    Float64: (0x36, "<d"),
    Date: (0x06, "<d"),
}
_BY_TAG = {tag: (fmt, cls) for cls, (tag, fmt) in _SIZED.items()}

_T = TypeVar("_T")
MAX_BACKREF = 0xCF - 0xA0  # 47
MAX_DEPTH = 64


class HdsDecodeError(ValueError):
    pass


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    writer = _Writer()
    writer.write(value, 0)
    return bytes(writer.out)


def _length_form(n: int, inline_base: int, long_base: int) -> bytes:
    """Tag (and length) of a string (0x40/0x61..) or data (0x70/0x91..) of n bytes."""
    if n <= 32:
        return bytes((inline_base + n,))
    for i, width in enumerate((1, 2, 4, 8)):
        if n < 1 << (8 * width):
            return bytes((long_base + i,)) + n.to_bytes(width, "little")
    raise ValueError(f"{n} bytes is too long")


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()
        self.table: dict[tuple[str, Any], int] = {}

    def _backref(self, key: tuple[str, Any]) -> bool:
        """Write a back-reference if the value was written before (within reach); else
        remember it (first occurrence only) and let the caller write it in full."""
        index = self.table.get(key)
        if index is None:
            self.table[key] = len(self.table)
            return False
        if index <= MAX_BACKREF:
            self.out.append(0xA0 + index)
            return True
        return False

    def write(self, value: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ValueError("nesting too deep")
        out = self.out
        if value is None:
            out.append(0x04)
        elif value is True or value is False:
            out.append(0x01 if value else 0x02)
        elif isinstance(value, int):
            if value == -1:
                out.append(0x07)
            elif 0 <= value <= 39:
                out.append(0x08 + value)
            elif -128 <= value <= 127:
                self.write(Int8(value), depth)
            elif -32768 <= value <= 32767:
                self.write(Int16(value), depth)
            else:  # HAP-NodeJS 1.2.0 never reaches its int32 branch
                self.write(Int64(value), depth)
        elif isinstance(value, float):
            self.write(Float64(value), depth)
        elif type(value) in _SIZED:
            tag, fmt = _SIZED[type(value)]
            number = value.seconds if isinstance(value, Date) else value.value
            if not self._backref((type(value).__name__, number)):
                if isinstance(value, Int64) and number >= 1 << 63:
                    fmt = "<Q"
                out.append(tag)
                out += struct.pack(fmt, number)
        elif isinstance(value, str):
            if not self._backref(("str", value)):
                raw = value.encode()
                out += _length_form(len(raw), 0x40, 0x61) + raw
        elif isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            if not self._backref(("data", raw)):
                out += _length_form(len(raw), 0x70, 0x91) + raw
        elif isinstance(value, uuid.UUID):
            if not self._backref(("uuid", value)):
                out.append(0x05)
                out += value.bytes
        elif isinstance(value, list | tuple):
            out.append(0xD0 + len(value) if len(value) <= 12 else 0xDF)
            for item in value:
                self.write(item, depth + 1)
            if len(value) > 12:
                out.append(0x03)
        elif isinstance(value, dict):
            out.append(0xE0 + len(value) if len(value) <= 14 else 0xEF)
            for key, item in value.items():
                self.write(key, depth + 1)
                self.write(item, depth + 1)
            if len(value) > 14:
                out.append(0x03)
        else:
            raise TypeError(f"cannot encode {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------

_TERMINATOR = 0x03


def decode(data: bytes) -> Any:
    """One value that must span all of `data`."""
    value, end = decode_prefix(data)
    if end != len(data):
        raise HdsDecodeError(f"{len(data) - end} bytes after the value")
    return value


def decode_prefix(data: bytes, offset: int = 0) -> tuple[Any, int]:
    """One value starting at `offset` (fresh back-reference table); returns (value, end)."""
    reader = _Reader(bytes(data), offset)
    return reader.value(0), reader.pos


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos
        self.table: list[Any] = []

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise HdsDecodeError(f"need {n} bytes at {self.pos}, have {len(self.data) - self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def until(self, stop: int) -> bytes:
        end = self.data.find(bytes((stop,)), self.pos)
        if end < 0:
            raise HdsDecodeError(f"no terminator {stop:#x} after {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end + 1
        return chunk

    def length(self, tag: int, long_base: int) -> int:
        return int.from_bytes(self.take(1 << (tag - long_base)), "little")

    def tracked(self, value: _T) -> _T:
        self.table.append(value)
        return value

    def text(self, raw: bytes) -> str:
        try:
            return self.tracked(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise HdsDecodeError(f"string is not UTF-8: {raw!r}") from err

    def at_terminator(self) -> bool:
        if self.pos >= len(self.data):
            raise HdsDecodeError("container not terminated")
        if self.data[self.pos] == _TERMINATOR:
            self.pos += 1
            return True
        return False

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise HdsDecodeError("nesting too deep")
        at = self.pos
        tag = self.take(1)[0]
        if tag == 0x01:
            return True
        if tag == 0x02:
            return False
        if tag == 0x04:
            return None
        if tag == 0x05:
            return self.tracked(uuid.UUID(bytes=self.take(16)))
        if tag == 0x07:
            return -1
        if 0x08 <= tag <= 0x2F:
            return tag - 0x08
        if tag in _BY_TAG:
            fmt, cls = _BY_TAG[tag]
            (number,) = struct.unpack(fmt, self.take(struct.calcsize(fmt)))
            return self.tracked(Date(number) if cls is Date else number)
        if 0x40 <= tag <= 0x60:
            return self.text(self.take(tag - 0x40))
        if 0x61 <= tag <= 0x64:
            return self.text(self.take(self.length(tag, 0x61)))
        if tag == 0x6F:
            return self.text(self.until(0x00))
        if 0x70 <= tag <= 0x90:
            return self.tracked(self.take(tag - 0x70))
        if 0x91 <= tag <= 0x94:
            return self.tracked(self.take(self.length(tag, 0x91)))
        if tag == 0x9F:
            return self.tracked(self.until(_TERMINATOR))
        if 0xA0 <= tag <= 0xCF:
            index = tag - 0xA0
            if index >= len(self.table):
                raise HdsDecodeError(f"back-reference {index} of {len(self.table)} at {at}")
            return self.table[index]
        if 0xD0 <= tag <= 0xDE:
            return [self.value(depth + 1) for _ in range(tag - 0xD0)]
        if tag == 0xDF:
            items = []
            while not self.at_terminator():
                items.append(self.value(depth + 1))
            return items
        if 0xE0 <= tag <= 0xEE:
            return self.pairs(tag - 0xE0, depth)
        if tag == 0xEF:
            return self.pairs(None, depth)
        raise HdsDecodeError(f"unknown tag {tag:#04x} at {at}")

    def pairs(self, count: int | None, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        i = 0
        while (i < count) if count is not None else not self.at_terminator():
            key = self.value(depth + 1)
            if isinstance(key, list | dict):
                raise HdsDecodeError(f"dictionary key of type {type(key).__name__}")
            out[key] = self.value(depth + 1)
            i += 1
        return out
