"""The manifest's bytes: canonical JSON, entries, signed segments and heads (docs/manifest.md).

Everything here is pure encoding and validation. Signing, encryption and policy live in
crypto/manifest.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from crypto.padding import padded_size

VERSION = 1
SEGMENT_DOMAIN = b"obscura-manifest-v1 segment\x00"
HEAD_DOMAIN = b"obscura-manifest-v1 head\x00"
ZERO_HASH = bytes(32)
PAD_GRANULARITY = 1024
MAX_INT = (1 << 53) - 1
_ID = re.compile(r"^[0-9a-f]{32}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_SIG = re.compile(r"^[0-9a-f]{128}$")
DELETE_REASONS = frozenset({"retention", "evicted", "owner"})


class FormatError(ValueError):
    """A manifest object is malformed (the message says how)."""


def new_object_id() -> str:
    """A fresh random 128-bit object id (32 hex digits)."""
    return secrets.token_hex(16)


# ----------------------------------------------------------------------------------------------
# Canonical JSON (RFC 8785 without floats)
# ----------------------------------------------------------------------------------------------


def _check(value: Any) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise FormatError(f"integer out of range: {value}")
    elif isinstance(value, list):
        for v in value:
            _check(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or not k.isascii():
                raise FormatError(f"bad key {k!r}")
            _check(v)
    else:
        raise FormatError(f"{type(value).__name__} is not allowed in the manifest")


def canonical(value: Any) -> bytes:
    _check(value)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_float(text: str) -> Any:
    raise FormatError("floats are not allowed in the manifest")


def parse_canonical(data: bytes) -> Any:
    """Parse canonical JSON, rejecting any other encoding of the same value."""
    try:
        value = json.loads(data.decode("utf-8"), parse_float=_no_float, parse_constant=_no_float)
    except FormatError:
        raise
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, huge ints, deep nesting
        raise FormatError(f"not JSON: {e}") from None
    if canonical(value) != data:
        raise FormatError("not in canonical form")
    return value


def with_pad(obj: dict[str, Any]) -> bytes:
    """`obj` plus a `pad` of spaces bringing the encoding to a padded size (1 KiB, then Padmé)."""
    base = canonical({**obj, "pad": ""})
    return canonical({**obj, "pad": " " * (padded_size(len(base), PAD_GRANULARITY) - len(base))})


# ----------------------------------------------------------------------------------------------
# Entries
# ----------------------------------------------------------------------------------------------


def _id(v: Any, what: str) -> None:
    if not isinstance(v, str) or not _ID.match(v):
        raise FormatError(f"{what} is not a 32-hex object id")


def _opt_id(v: Any, what: str) -> None:
    if v is not None:
        _id(v, what)


def _sha(v: Any, what: str) -> None:
    if not isinstance(v, str) or not _SHA.match(v):
        raise FormatError(f"{what} is not a hex SHA-256")


def _nat(v: Any, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_INT:
        raise FormatError(f"{what} is not a non-negative integer")


def _text(v: Any, what: str) -> None:
    if not isinstance(v, str) or not v or len(v) > 256:
        raise FormatError(f"{what} is not a string of 1-256 characters")


def _texts(obj: Any, name: str) -> None:
    """Check a list-of-strings member, stored as a tuple (callers may pass any sequence)."""
    if isinstance(getattr(obj, name), list | tuple):
        object.__setattr__(obj, name, tuple(getattr(obj, name)))
    v, what = getattr(obj, name), name
    if not isinstance(v, tuple) or len(v) > 64:
        raise FormatError(f"{what} is not a list (at most 64)")
    for x in v:
        _text(x, what)


@dataclass(frozen=True, slots=True)
class InitEntry:
    type: ClassVar[str] = "init"
    bridge_key: str
    period_s: int

    def __post_init__(self) -> None:
        _text(self.bridge_key, "bridge_key")
        _nat(self.period_s, "period_s")


@dataclass(frozen=True, slots=True)
class RecipientsEntry:
    type: ClassVar[str] = "recipients"
    recipients: tuple[str, ...]

    def __post_init__(self) -> None:
        _texts(self, "recipients")
        if not self.recipients:
            raise FormatError("recipients is empty")


@dataclass(frozen=True, slots=True)
class HeartbeatEntry:
    type: ClassVar[str] = "heartbeat"
    period_s: int

    def __post_init__(self) -> None:
        _nat(self.period_s, "period_s")


@dataclass(frozen=True, slots=True)
class ClipEntry:
    type: ClassVar[str] = "clip"
    object: str
    sha256: str
    size: int
    camera: str
    start_ms: int
    end_ms: int
    subjects: tuple[str, ...] = ()
    thumb: str | None = None
    thumb_sha256: str | None = None
    thumb_size: int | None = None
    # One event is sealed in consecutive parts (docs/clip-format.md §8): the event's id, this
    # part's number from 0, and whether it is the event's last part. All three or none (entries
    # written before parts existed have none: each such clip is a whole event).
    event: str | None = None
    part: int | None = None
    final: bool | None = None

    def __post_init__(self) -> None:
        _id(self.object, "object")
        _sha(self.sha256, "sha256")
        _nat(self.size, "size")
        _text(self.camera, "camera")
        _nat(self.start_ms, "start_ms")
        _nat(self.end_ms, "end_ms")
        _texts(self, "subjects")
        thumb = (self.thumb, self.thumb_sha256, self.thumb_size)
        if any(x is not None for x in thumb):
            _id(self.thumb, "thumb")
            _sha(self.thumb_sha256, "thumb_sha256")
            _nat(self.thumb_size, "thumb_size")
        if any(x is not None for x in (self.event, self.part, self.final)):
            _id(self.event, "event")
            _nat(self.part, "part")
            if not isinstance(self.final, bool):
                raise FormatError("final is not a boolean")


@dataclass(frozen=True, slots=True)
class DeleteEntry:
    type: ClassVar[str] = "delete"
    object: str
    reason: str

    def __post_init__(self) -> None:
        _id(self.object, "object")
        if self.reason not in DELETE_REASONS:
            allowed = ", ".join(sorted(DELETE_REASONS))
            raise FormatError(f"delete reason {self.reason!r} is not one of {allowed}")


@dataclass(frozen=True, slots=True)
class ShareEntry:
    type: ClassVar[str] = "share"
    object: str
    copy: str
    recipient: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        _id(self.object, "object")
        _id(self.copy, "copy")
        _text(self.recipient, "recipient")
        _sha(self.sha256, "sha256")
        _nat(self.size, "size")


Entry = InitEntry | RecipientsEntry | HeartbeatEntry | ClipEntry | DeleteEntry | ShareEntry
ENTRY_TYPES: dict[str, type[Entry]] = {
    t.type: t
    for t in (InitEntry, RecipientsEntry, HeartbeatEntry, ClipEntry, DeleteEntry, ShareEntry)
}


#: Members an entry may leave out as a group (all absent, or all present).
OPTIONAL_MEMBERS: dict[str, frozenset[str]] = {"clip": frozenset({"event", "part", "final"})}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def entry_to_dict(entry: Entry) -> dict[str, Any]:
    # Entries hold only scalars and tuples of them: a shallow read of the fields is what
    # asdict's deep copy gave, at a fraction of its cost (verifying 8,500 segments spent a
    # quarter of its time in asdict).
    names = _FIELD_NAMES.get(type(entry))
    if names is None:
        names = _FIELD_NAMES[type(entry)] = tuple(f.name for f in fields(entry))
    d = {k: list(v) if isinstance(v := getattr(entry, k), tuple) else v for k in names}
    optional = OPTIONAL_MEMBERS.get(entry.type, frozenset())
    if optional and all(d[k] is None for k in optional):
        d = {k: v for k, v in d.items() if k not in optional}  # the older form, byte for byte
    return {"type": entry.type, **d}


def entry_from_dict(d: Any) -> Entry:
    if not isinstance(d, dict) or not isinstance(d.get("type"), str):
        raise FormatError("an entry is not an object with a type")
    cls = ENTRY_TYPES.get(d["type"])
    if cls is None:
        raise FormatError(f"unknown entry type {d['type']!r}")
    names = {f.name for f in fields(cls)}
    optional = OPTIONAL_MEMBERS.get(d["type"], frozenset())
    if set(d) != names | {"type"} and set(d) != (names - optional) | {"type"}:
        raise FormatError(f"{d['type']} entry has members {sorted(set(d) - {'type'})}")
    args: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "type"
    }
    return cls(**args)


# ----------------------------------------------------------------------------------------------
# Segments and heads
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    seq: int
    prev: bytes  # hash of segment seq-1, or 32 zeros
    time_ms: int
    prev_segment: str | None  # object id of segment seq-1
    entries: tuple[Entry, ...]
    sig: bytes = b""

    def body(self) -> dict[str, Any]:
        return {
            "entries": [entry_to_dict(e) for e in self.entries],
            "prev_segment": self.prev_segment,
            "time_ms": self.time_ms,
        }

    def message(self) -> bytes:
        """The signed message M = domain ‖ prev ‖ seq ‖ SHA-256(canonical body)."""
        body_hash = hashlib.sha256(canonical(self.body())).digest()
        return SEGMENT_DOMAIN + self.prev + self.seq.to_bytes(8, "big") + body_hash

    def hash(self) -> bytes:
        return hashlib.sha256(self.message()).digest()

    def encode(self) -> bytes:
        return with_pad({
            "body": self.body(), "prev": self.prev.hex(), "seq": self.seq,
            "sig": self.sig.hex(), "v": VERSION,
        })


def _members(d: Any, names: set[str], what: str) -> dict[str, Any]:
    if not isinstance(d, dict) or set(d) != names:
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise FormatError(f"{what} has members {got}, expected {sorted(names)}")
    return d


def _check_envelope(d: dict[str, Any]) -> None:
    if d["v"] != VERSION:
        raise FormatError(f"unsupported manifest version {d['v']!r}")
    if not isinstance(d["pad"], str) or d["pad"].strip(" "):
        raise FormatError("pad is not spaces")
    if not isinstance(d["sig"], str) or not _SIG.match(d["sig"]):
        raise FormatError("sig is not a hex Ed25519 signature")
    _nat(d["seq"], "seq")


def decode_segment(plaintext: bytes) -> Segment:
    d = _members(
        parse_canonical(plaintext), {"body", "pad", "prev", "seq", "sig", "v"}, "segment"
    )
    _check_envelope(d)
    _sha(d["prev"], "prev")
    body = _members(d["body"], {"entries", "prev_segment", "time_ms"}, "segment body")
    _nat(body["time_ms"], "time_ms")
    _opt_id(body["prev_segment"], "prev_segment")
    if not isinstance(body["entries"], list) or not body["entries"]:
        raise FormatError("entries is not a non-empty list")
    seg = Segment(
        seq=d["seq"], prev=bytes.fromhex(d["prev"]), time_ms=body["time_ms"],
        prev_segment=body["prev_segment"],
        entries=tuple(entry_from_dict(e) for e in body["entries"]), sig=bytes.fromhex(d["sig"]),
    )
    genesis = seg.seq == 0
    if genesis != (seg.prev == ZERO_HASH) or genesis != (seg.prev_segment is None):
        raise FormatError("only segment 0 has no predecessor")
    if any(isinstance(e, InitEntry) for e in seg.entries[1:]) or (
        (seg.seq == 0) != isinstance(seg.entries[0], InitEntry)
    ):
        raise FormatError("an init entry is the first entry of segment 0, and only there")
    return seg


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: bytes  # of segment `seq`
    segment: str  # its object id
    time_ms: int
    period_s: int
    sig: bytes = b""

    def message(self) -> bytes:
        return (
            HEAD_DOMAIN + self.seq.to_bytes(8, "big") + self.hash
            + self.time_ms.to_bytes(8, "big") + self.period_s.to_bytes(4, "big")
            + bytes.fromhex(self.segment)
        )

    def encode(self) -> bytes:
        return with_pad({
            "hash": self.hash.hex(), "period_s": self.period_s, "segment": self.segment,
            "seq": self.seq, "sig": self.sig.hex(), "time_ms": self.time_ms, "v": VERSION,
        })


def decode_head(plaintext: bytes) -> Head:
    names = {"hash", "pad", "period_s", "segment", "seq", "sig", "time_ms", "v"}
    d = _members(parse_canonical(plaintext), names, "head")
    _check_envelope(d)
    _sha(d["hash"], "hash")
    _id(d["segment"], "segment")
    _nat(d["time_ms"], "time_ms")
    _nat(d["period_s"], "period_s")
    if not 0 < d["period_s"] < 1 << 32:
        raise FormatError("period_s out of range")
    return Head(
        seq=d["seq"], hash=bytes.fromhex(d["hash"]), segment=d["segment"], time_ms=d["time_ms"],
        period_s=d["period_s"], sig=bytes.fromhex(d["sig"]),
    )
