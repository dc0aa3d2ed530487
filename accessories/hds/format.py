"""The HDS data format (docs/hds.md §5): our own codec, strict on input, canonical on output.

HomeKit Data Stream headers and messages are values in an OPACK-like, self-delimiting encoding.
The reference everybody copies, HAP-NodeJS's DataStreamParser, disagrees with itself in several
places (docs/hds.md §9): its encoder writes 39 as a tag its decoder rejects, its decoder drops
short data and does not advance past float64s, and its two back-reference tables differ. So this
module reads every form any writer uses, by the rules of the *encoder's* table, and writes one
form per value that every reader we know reads: no back-references, no inline data, no 0x2F.

Usage::

    blob = encode({"protocol": "dataSend", "request": "open", "id": Int64(2)})
    assert decode(blob) == {"protocol": "dataSend", "request": "open", "id": 2}

Pure functions: no I/O, no clock, no logging.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import ClassVar, Self, TypeAlias

MAX_DEPTH = 32  # containers nested deeper than this are refused (a hub nests 4 deep)

Bytes: TypeAlias = bytes | bytearray | memoryview


class HDSFormatError(ValueError):
    """A value that cannot be encoded, or bytes that are not one well-formed HDS value."""


# ---- wrappers: force the form the writer emits ----


class _SizedInt(int):
    tag: ClassVar[int]
    fmt: ClassVar[str]

    def __new__(cls, value: int) -> Self:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HDSFormatError(f"{cls.__name__} needs an int, got {value!r}")
        bits = struct.calcsize(cls.fmt) * 8
        if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
            raise HDSFormatError(f"{value} does not fit {cls.__name__}")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({int(self)})"


class Int8(_SizedInt):
    tag, fmt = 0x30, "<b"


class Int16(_SizedInt):
    tag, fmt = 0x31, "<h"


class Int32(_SizedInt):
    tag, fmt = 0x32, "<i"


class Int64(_SizedInt):
    tag, fmt = 0x33, "<q"


class _TaggedFloat(float):
    tag: ClassVar[int]
    fmt: ClassVar[str]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({float(self)!r})"


class Float32(_TaggedFloat):
    tag, fmt = 0x35, "<f"


class Float64(_TaggedFloat):
    tag, fmt = 0x36, "<d"


class SecondsSince2001(_TaggedFloat):
    """A date (tag 0x06): seconds since 2001-01-01 00:00:00 UTC, as a float64."""

    tag, fmt = 0x06, "<d"


# ---- encoding ----

_INT_FORMS = (Int8, Int16, Int32, Int64)


def encode(value: object) -> bytes:
    """Encode one value in our canonical form (docs/hds.md §5.3); raises HDSFormatError."""
    out = bytearray()
    _write(out, value, 0)
    return bytes(out)


def _write(out: bytearray, value: object, depth: int) -> None:
    if value is None:
        out.append(0x04)
    elif value is True:
        out.append(0x01)
    elif value is False:
        out.append(0x02)
    elif isinstance(value, _SizedInt | _TaggedFloat):
        _write_packed(out, value.tag, value.fmt, value)
    elif isinstance(value, int):
        _write_int(out, value)
    elif isinstance(value, float):
        _write_packed(out, 0x36, "<d", value)
    elif isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            raise HDSFormatError(f"string {value[:20]!r}... is not valid Unicode") from None
        if len(raw) <= 32:
            out.append(0x40 + len(raw))
        else:
            _write_length(out, 0x61, len(raw))
        out += raw
    elif isinstance(value, bytes | bytearray | memoryview):
        try:
            view = memoryview(value).cast("B")
        except TypeError:
            raise HDSFormatError("data must be a contiguous buffer") from None
        _write_length(out, 0x91, len(view))  # never 0x70+n: HAP-NodeJS reads those as nothing
        out += view
    elif isinstance(value, uuid.UUID):
        out.append(0x05)
        out += value.bytes
    elif isinstance(value, list | tuple):
        _check_depth(depth)
        counted = len(value) <= 12
        out.append(0xD0 + len(value) if counted else 0xDF)
        for item in value:
            _write(out, item, depth + 1)
        if not counted:
            out.append(0x03)
    elif isinstance(value, dict):
        _check_depth(depth)
        counted = len(value) <= 14
        out.append(0xE0 + len(value) if counted else 0xEF)
        for key, item in value.items():
            if not isinstance(key, str):
                raise HDSFormatError(f"dict keys must be str, got {key!r}")
            _write(out, key, depth + 1)
            _write(out, item, depth + 1)
        if not counted:
            out.append(0x03)
    else:
        raise HDSFormatError(f"cannot encode a value of type {type(value).__name__}")


def _check_depth(depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise HDSFormatError(f"containers nested deeper than {MAX_DEPTH}")


def _write_int(out: bytearray, value: int) -> None:
    if value == -1:
        out.append(0x07)
    elif 0 <= value <= 38:  # 39 would be 0x2F, which HAP-NodeJS's reader rejects
        out.append(0x08 + value)
    else:
        for form in _INT_FORMS:
            bits = struct.calcsize(form.fmt) * 8
            if -(1 << (bits - 1)) <= value < 1 << (bits - 1):
                _write_packed(out, form.tag, form.fmt, value)
                return
        raise HDSFormatError(f"integer {value} does not fit int64")


def _write_packed(out: bytearray, tag: int, fmt: str, value: float) -> None:
    try:
        packed = struct.pack(fmt, value)
    except (struct.error, OverflowError):
        raise HDSFormatError(f"{value!r} does not fit tag {tag:#04x}") from None
    out.append(tag)
    out += packed


def _write_length(out: bytearray, base: int, length: int) -> None:
    """The smallest of base (u8), base+1 (u16), base+2 (u32), base+3 (u64) length prefixes."""
    for step, fmt in enumerate(("<B", "<H", "<I", "<Q")):
        if length < 1 << (8 * struct.calcsize(fmt)):
            out.append(base + step)
            out += struct.pack(fmt, length)
            return
    raise HDSFormatError(f"length {length} does not fit 64 bits")  # pragma: no cover


# ---- decoding ----

_TERMINATOR = object()  # what _Reader.value returns for 0x03 where a terminator is allowed
_LENGTH_FORMS = {0: "<B", 1: "<H", 2: "<I", 3: "<Q"}  # 0x61.. / 0x91.. minus the base
_INT_READ = {0x30: "<b", 0x31: "<h", 0x32: "<i", 0x33: "<q"}


class _Reader:
    """One value tree: position, back-reference table and nesting depth."""

    __slots__ = ("buf", "pos", "table")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.table: list[object] = []

    def fail(self, offset: int, what: str) -> HDSFormatError:
        return HDSFormatError(f"HDS value at offset {offset}: {what}")

    def take(self, n: int, offset: int, what: str) -> bytes:
        left = len(self.buf) - self.pos
        if n > left:
            raise self.fail(offset, f"{what} needs {n} bytes, {left} left")
        start = self.pos
        self.pos += n
        return self.buf[start : self.pos]

    def unpack(self, fmt: str, offset: int, what: str) -> int | float:
        result: int | float = struct.unpack(fmt, self.take(struct.calcsize(fmt), offset, what))[0]
        return result

    def tracked(self, value: object) -> object:
        self.table.append(value)
        return value

    def text(self, raw: bytes, offset: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(offset, f"string is not UTF-8 ({exc.reason})") from None

    def value(self, depth: int, terminator_ok: bool = False) -> object:
        offset = self.pos
        if offset >= len(self.buf):
            raise self.fail(offset, "truncated: a value was expected")
        tag = self.buf[offset]
        self.pos += 1
        reader = _DISPATCH[tag]
        if reader is None:
            raise self.fail(offset, f"unknown tag {tag:#04x}")
        result = reader(self, tag, offset, depth)
        if result is _TERMINATOR and not terminator_ok:
            raise self.fail(offset, "terminator 0x03 outside a terminated array or dict")
        return result


_ReadFn = Callable[[_Reader, int, int, int], object]


_CONSTANTS: dict[int, object] = {0x01: True, 0x02: False, 0x03: _TERMINATOR, 0x04: None, 0x07: -1}


def _read_constant(r: _Reader, tag: int, offset: int, depth: int) -> object:
    return _CONSTANTS[tag]


def _read_small_int(r: _Reader, tag: int, offset: int, depth: int) -> object:
    return tag - 0x08


def _read_uuid(r: _Reader, tag: int, offset: int, depth: int) -> object:
    return r.tracked(uuid.UUID(bytes=r.take(16, offset, "UUID")))


def _read_date(r: _Reader, tag: int, offset: int, depth: int) -> object:
    return r.tracked(SecondsSince2001(r.unpack("<d", offset, "date")))


def _read_int(r: _Reader, tag: int, offset: int, depth: int) -> object:
    return r.tracked(int(r.unpack(_INT_READ[tag], offset, "integer")))


def _read_float(r: _Reader, tag: int, offset: int, depth: int) -> object:
    return r.tracked(float(r.unpack("<f" if tag == 0x35 else "<d", offset, "float")))


def _read_length(r: _Reader, step: int, offset: int) -> int:
    return int(r.unpack(_LENGTH_FORMS[step], offset, "length"))


def _read_string(r: _Reader, tag: int, offset: int, depth: int) -> object:
    if tag <= 0x60:
        length = tag - 0x40
    elif tag == 0x6F:  # NUL-terminated
        end = r.buf.find(b"\x00", r.pos)
        if end < 0:
            raise r.fail(offset, "NUL-terminated string has no NUL")
        raw = r.take(end - r.pos, offset, "string")
        r.pos += 1
        return r.tracked(r.text(raw, offset))
    else:
        length = _read_length(r, tag - 0x61, offset)
    return r.tracked(r.text(r.take(length, offset, "string"), offset))


def _read_data(r: _Reader, tag: int, offset: int, depth: int) -> object:
    length = tag - 0x70 if tag <= 0x90 else _read_length(r, tag - 0x91, offset)
    return r.tracked(r.take(length, offset, "data"))


def _read_reference(r: _Reader, tag: int, offset: int, depth: int) -> object:
    index = tag - 0xA0
    if index >= len(r.table):
        raise r.fail(offset, f"back-reference {index} but only {len(r.table)} values so far")
    return r.table[index]


def _read_array(r: _Reader, tag: int, offset: int, depth: int) -> object:
    if depth >= MAX_DEPTH:
        raise r.fail(offset, f"containers nested deeper than {MAX_DEPTH}")
    items: list[object] = []
    if tag == 0xDF:
        while (item := r.value(depth + 1, terminator_ok=True)) is not _TERMINATOR:
            items.append(item)
    else:
        for _ in range(tag - 0xD0):
            items.append(r.value(depth + 1))
    return items


def _read_dict(r: _Reader, tag: int, offset: int, depth: int) -> object:
    if depth >= MAX_DEPTH:
        raise r.fail(offset, f"containers nested deeper than {MAX_DEPTH}")
    result: dict[str, object] = {}
    terminated = tag == 0xEF
    remaining = -1 if terminated else tag - 0xE0
    while remaining != 0:
        key_offset = r.pos
        key = r.value(depth + 1, terminator_ok=terminated)
        if key is _TERMINATOR:
            break
        if not isinstance(key, str):
            raise r.fail(key_offset, f"dict key is a {type(key).__name__}, not a string")
        if key in result:
            raise r.fail(key_offset, f"dict key {key!r} repeated")
        result[key] = r.value(depth + 1)
        remaining -= 1
    return result


def _read_unsupported(r: _Reader, tag: int, offset: int, depth: int) -> object:
    raise r.fail(offset, "terminated data (0x9f) is not supported (docs/hds.md §5.1)")


def _dispatch_table() -> list[_ReadFn | None]:
    table: list[_ReadFn | None] = [None] * 256
    spans: list[tuple[int, int, _ReadFn]] = [
        (0x01, 0x04, _read_constant),
        (0x05, 0x05, _read_uuid),
        (0x06, 0x06, _read_date),
        (0x07, 0x07, _read_constant),
        (0x08, 0x2F, _read_small_int),
        (0x30, 0x33, _read_int),
        (0x35, 0x36, _read_float),
        (0x40, 0x64, _read_string),
        (0x6F, 0x6F, _read_string),
        (0x70, 0x94, _read_data),
        (0x9F, 0x9F, _read_unsupported),
        (0xA0, 0xCF, _read_reference),
        (0xD0, 0xDF, _read_array),
        (0xE0, 0xEF, _read_dict),
    ]
    for first, last, fn in spans:
        for tag in range(first, last + 1):
            table[tag] = fn
    return table


_DISPATCH = _dispatch_table()


def decode(data: Bytes) -> object:
    """Decode exactly one value that fills ``data``; raises HDSFormatError naming the offset."""
    reader = _Reader(bytes(data))
    result = reader.value(0)
    if reader.pos != len(reader.buf):
        raise reader.fail(reader.pos, f"{len(reader.buf) - reader.pos} bytes after the value")
    return result


__all__ = [
    "MAX_DEPTH",
    "Float32",
    "Float64",
    "HDSFormatError",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "SecondsSince2001",
    "decode",
    "encode",
]
