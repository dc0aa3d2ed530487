"""The manifest writer (bridge side) and verifier (owner side). Format: docs/manifest.md.

Writer, pure (no I/O; bridge/store persists the state and uploads the bytes):

    w = ManifestWriter(key, ["age1…"], state=ManifestState.from_json(saved) or None)
    out = w.append([ClipEntry(...)])      # out.segment_id/out.segment, out.head, out.state
    persist(out.state.to_json()); upload(out.segment_id, out.segment); upload(head_id, out.head)
    out = w.heartbeat()                   # every period: a new head (and a segment if pending)

Verifier (owner side): ManifestVerifier(identities, head_id=…, get=…, list=…,
pinned_key=…, state=…).verify() -> Report(clips, problems, state).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from crypto.age import Recipient, encrypt
from crypto.age_keys import as_recipient
from crypto.manifest_format import (
    ZERO_HASH,
    ClipEntry,
    DeleteEntry,
    Entry,
    FormatError,
    Head,
    HeartbeatEntry,
    InitEntry,
    RecipientsEntry,
    Segment,
    ShareEntry,
    new_object_id,
)
from crypto.manifest_verify import (
    ClipInfo,
    ManifestVerifier,
    Problem,
    Report,
    ShareInfo,
    VerifierState,
)
from crypto.signing import BridgeKey

__all__ = [
    "ClipEntry", "ClipInfo", "DeleteEntry", "Entry", "FormatError", "Head", "HeartbeatEntry",
    "InitEntry", "ManifestOutput", "ManifestState", "ManifestVerifier", "ManifestWriter",
    "Problem", "RecipientsEntry", "Report", "Segment", "ShareEntry", "ShareInfo",
    "VerifierState", "new_object_id",
]

DEFAULT_PERIOD_S = 300


@dataclass(frozen=True, slots=True)
class ManifestState:
    """What the bridge must remember between appends (no secrets): persist it durably before
    uploading the segment it describes, or a crash can fork the chain."""

    seq: int
    hash: bytes
    segment: str
    time_ms: int
    period_s: int
    recipients: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({
            "v": 1, "seq": self.seq, "hash": self.hash.hex(), "segment": self.segment,
            "time_ms": self.time_ms, "period_s": self.period_s,
            "recipients": list(self.recipients),
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ManifestState:
        try:
            d = json.loads(text)
            if d["v"] != 1:
                raise ValueError(f"version {d['v']}")
            return cls(
                seq=int(d["seq"]), hash=bytes.fromhex(d["hash"]), segment=str(d["segment"]),
                time_ms=int(d["time_ms"]), period_s=int(d["period_s"]),
                recipients=tuple(str(r) for r in d["recipients"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"manifest state is unreadable: {e}") from None


@dataclass(frozen=True, slots=True)
class ManifestOutput:
    """Bytes to upload: the segment (when one was appended) and the head; the state to save."""

    head: bytes
    state: ManifestState
    segment_id: str | None = None
    segment: bytes | None = None


class ManifestWriter:
    """Builds signed, encrypted segments and heads. Not thread-safe: one caller at a time.

    On construction it queues a `heartbeat` entry (the bridge started), plus `init` and
    `recipients` for a new log, or `recipients` when the set differs from the state's.
    """

    def __init__(
        self,
        key: BridgeKey,
        recipients: Sequence[Recipient],
        state: ManifestState | None,
        *,
        period_s: int = DEFAULT_PERIOD_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._recipients = tuple(dict.fromkeys(str(as_recipient(r)) for r in recipients))
        if not self._recipients:
            raise ValueError("no recipients: the manifest could be read by no one")
        if not 0 < period_s < 1 << 32:
            raise ValueError(f"heartbeat period {period_s} s is out of range")
        self._state = state
        self._period = period_s
        self._clock = clock
        self._pending: list[Entry] = []
        if state is None:
            self._pending.append(InitEntry(str(key.public), period_s))
            self._pending.append(RecipientsEntry(self._recipients))
        elif state.recipients != self._recipients:
            self._pending.append(RecipientsEntry(self._recipients))
        self._pending.append(HeartbeatEntry(period_s))

    @property
    def state(self) -> ManifestState | None:
        return self._state

    @property
    def pending(self) -> tuple[Entry, ...]:
        return tuple(self._pending)

    def restore(self, state: ManifestState | None, pending: Sequence[Entry]) -> None:
        """Undo an append or heartbeat whose output was not persisted: back to `state` (the
        state before it), with `pending` queued for the next append. The next segment then
        takes the unpersisted one's place instead of chaining to a segment that never existed."""
        self._state = state
        self._pending = list(pending)

    def _now(self, now_ms: int | None) -> int:
        t = int(self._clock() * 1000) if now_ms is None else now_ms
        # Strictly increasing: a clock stepping back must not make a new head look replayed.
        return t if self._state is None else max(t, self._state.time_ms + 1)

    def append(self, entries: Sequence[Entry], now_ms: int | None = None) -> ManifestOutput:
        """A new segment holding the pending entries and `entries`, and the new head."""
        batch = [*self._pending, *entries]
        if not batch:
            raise ValueError("nothing to append")
        now = self._now(now_ms)
        prev = self._state
        seg = Segment(
            seq=0 if prev is None else prev.seq + 1,
            prev=ZERO_HASH if prev is None else prev.hash,
            time_ms=now,
            prev_segment=None if prev is None else prev.segment,
            entries=tuple(batch),
        )
        seg = replace(seg, sig=self._key.sign(seg.message()))
        segment_id = new_object_id()
        state = ManifestState(
            seq=seg.seq, hash=seg.hash(), segment=segment_id, time_ms=now,
            period_s=self._period, recipients=self._recipients,
        )
        segment = encrypt(self._recipients, seg.encode())
        head = self._head(state)
        self._pending.clear()
        self._state = state
        return ManifestOutput(head=head, state=state, segment_id=segment_id, segment=segment)

    def heartbeat(self, now_ms: int | None = None) -> ManifestOutput:
        """A new head with the current time (a segment too when entries are pending)."""
        if self._pending or self._state is None:
            return self.append([], now_ms)
        now = self._now(now_ms)
        s = self._state
        state = ManifestState(s.seq, s.hash, s.segment, now, self._period, s.recipients)
        self._state = state
        return ManifestOutput(head=self._head(state), state=state)

    def _head(self, s: ManifestState) -> bytes:
        head = Head(s.seq, s.hash, s.segment, s.time_ms, s.period_s)
        head = replace(head, sig=self._key.sign(head.message()))
        return encrypt(self._recipients, head.encode())
