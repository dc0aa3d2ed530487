"""What the manifest verifier (crypto/manifest_verify.py) returns and remembers: the report with
its clips, problems and recipients, and the owner's per-bridge state (docs/manifest.md §8-9).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from crypto.manifest_format import FormatError, Head


def local_time(ms: int) -> str:
    """A manifest time (ms since the epoch) as local ISO time with its UTC offset: what the
    owner's tools print everywhere, so `clips list` and `clips verify` agree."""
    return datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class VerifierState:
    """What the owner's tools remember per bridge: the pinned key, the highest verified seq and
    its hash, the newest heartbeat seen."""

    bridge_key: str
    seq: int
    hash: bytes
    time_ms: int

    def to_json(self) -> str:
        return json.dumps({
            "v": 1, "bridge_key": self.bridge_key, "seq": self.seq, "hash": self.hash.hex(),
            "time_ms": self.time_ms,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VerifierState:
        try:
            d = json.loads(text)
            if d["v"] != 1:
                raise ValueError(f"version {d['v']}")
            return cls(str(d["bridge_key"]), int(d["seq"]), bytes.fromhex(d["hash"]),
                       int(d["time_ms"]))
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"verifier state is unreadable: {e}") from None


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding; `kind` is stable (for code and tests), `message` is for people."""

    kind: str
    message: str
    object: str | None = None
    seq: int | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class RecipientChange:
    """A `recipients` entry that changed the set: objects from `seq` on are encrypted to
    `after` (added = after - before, removed = before - after)."""

    seq: int
    time_ms: int
    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def added(self) -> tuple[str, ...]:
        return tuple(r for r in self.after if r not in self.before)

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(r for r in self.before if r not in self.after)


@dataclass(slots=True)
class ShareInfo:
    copy: str
    recipient: str
    seq: int
    deleted: str | None = None
    #: What was re-encrypted: the clip (its id), or its poster or a share copy of it.
    source: str = ""


@dataclass(slots=True)
class ClipInfo:
    id: str
    seq: int  # the segment that recorded it
    camera: str
    start_ms: int
    end_ms: int
    subjects: tuple[str, ...]
    size: int
    sha256: str
    thumb: str | None
    thumb_sha256: str | None
    thumb_size: int | None
    deleted: str | None = None  # the delete reason, once deleted
    #: The poster's delete reason, once deleted: the spool can evict a poster still waiting to
    #: upload after its clip went up ("evicted"), so the clip stays live without it.
    thumb_deleted: str | None = None
    shares: list[ShareInfo] = field(default_factory=list)
    #: Who can open it: the recipients in force when it was recorded.
    recipients: tuple[str, ...] = ()
    #: The event it is a part of (docs/clip-format.md §8); None: a whole event on its own.
    event: str | None = None
    part: int = 0
    final: bool = True  # the event's last part


@dataclass(slots=True)
class Report:
    clips: list[ClipInfo] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    head: Head | None = None
    #: The bridge's current recipients (its newest `recipients` entry).
    recipients: tuple[str, ...] = ()
    #: Every change of the recipient set after segment 0, oldest first.
    recipient_changes: list[RecipientChange] = field(default_factory=list)
    #: The seq the owner had verified before this run (None: first run, nothing to compare).
    verified_seq: int | None = None
    #: No identity opened the head: the owner's key is not (or no longer) a recipient.
    not_recipient: bool = False
    #: The state to save; None when the chain did not verify (keep the previous one).
    state: VerifierState | None = None
    #: The object id of every segment the walk read, by seq (the next walk's read-ahead guess).
    segment_ids: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def new_recipient_changes(self) -> list[RecipientChange]:
        """Changes the owner has not seen verified yet: after the last verified seq."""
        if self.verified_seq is None:
            return []
        return [c for c in self.recipient_changes if c.seq > self.verified_seq]
