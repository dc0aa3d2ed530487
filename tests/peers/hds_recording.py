"""One HKSV recording stream as the test hub receives it: chunk reassembly, checks, timings.

`Recording` collects what the accessory sends for one streamId in dataSend/data events (see
hds_stream.py for the connection): it reassembles the chunks of each mediaInitialization /
mediaFragment by dataSequenceNumber / dataChunkSequenceNumber / isLastDataChunk, checks each
against dataTotalSize and the 256 KiB chunk limit, notes every slip in `problems` instead of
raising (a test asserts the list is empty), and records when each fragment's first and last
chunk arrived (time.monotonic), and how the stream ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.peers.hds_stream import Response

CHUNK_LIMIT = 256 * 1024
INIT, FRAGMENT = "mediaInitialization", "mediaFragment"
# dataSend/close reasons and open-refusal statuses (hksv-protocol.md)
CLOSE_NORMAL, NOT_ALLOWED, BUSY, CANCELLED, UNSUPPORTED = 0, 1, 2, 3, 4
UNEXPECTED_FAILURE, TIMEOUT, BAD_DATA, PROTOCOL_ERROR, INVALID_CONFIGURATION = 5, 6, 7, 8, 9


@dataclass(frozen=True)
class Fragment:
    kind: str  # INIT or FRAGMENT
    sequence: int  # dataSequenceNumber
    data: bytes
    chunks: int
    started_at: float  # arrival of its first chunk
    completed_at: float  # arrival of its last chunk


@dataclass
class _Partial:
    kind: str
    sequence: int
    total: int | None
    started_at: float
    parts: list[bytes] = field(default_factory=list)


class Changes:
    """Wake waiters whenever something was recorded."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def until(self, done: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not done():
                await self._event.wait()


class Recording:
    """What the accessory sent for one streamId, and how the stream ended."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.opened_at = time.monotonic()  # when the hub sent dataSend/open
        self.response: Response | None = None
        self.fragments: list[Fragment] = []
        self.problems: list[str] = []
        # "endOfStream", "close" (by the accessory), "hub closed", "connection closed", "refused"
        self.end: str | None = None
        self.close_reason: Any = None
        self.ended_at: float | None = None
        self.acked_at: float | None = None
        self.after_end = 0  # packets that arrived after the end
        self._partial: _Partial | None = None
        self._changes = Changes()

    @property
    def init(self) -> Fragment | None:
        return self.fragments[0] if self.fragments and self.fragments[0].kind == INIT else None

    @property
    def media(self) -> list[Fragment]:
        return [f for f in self.fragments if f.kind == FRAGMENT]

    async def wait_fragments(self, count: int, timeout_s: float = 30.0) -> list[Fragment]:
        """Until `count` media fragments (not counting the init segment) arrived or it ended."""
        await self._changes.until(
            lambda: len(self.media) >= count or self.end is not None, timeout_s
        )
        return self.media

    async def wait_end(self, timeout_s: float = 60.0) -> str:
        await self._changes.until(lambda: self.end is not None, timeout_s)
        assert self.end is not None
        return self.end

    def _finish(self, how: str, reason: Any = None) -> None:
        if self.end is None:
            self.end, self.close_reason, self.ended_at = how, reason, time.monotonic()
            if self._partial is not None and how in ("endOfStream", "close"):
                self.problems.append(f"stream ended inside fragment {self._partial.sequence}")
        self._changes.notify()

    def _packet(self, packet: Any, now: float) -> None:
        bad = self.problems.append
        if not isinstance(packet, dict) or not isinstance(packet.get("metadata"), dict):
            bad(f"packet is not {{data, metadata}}: {packet!r:.200}")
            return
        data, md = packet.get("data"), packet["metadata"]
        kind, seq = md.get("dataType"), md.get("dataSequenceNumber")
        chunk, last = md.get("dataChunkSequenceNumber"), md.get("isLastDataChunk")
        total = md.get("dataTotalSize")
        if not isinstance(data, bytes) or kind not in (INIT, FRAGMENT):
            bad(f"packet data/dataType wrong: {type(data).__name__}, {kind!r}")
            return
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (seq, chunk)):
            bad(f"sequence numbers are not integers: {seq!r}, {chunk!r}")
            return
        if not isinstance(last, bool):
            bad(f"isLastDataChunk is not a bool: {last!r}")
        if len(data) > CHUNK_LIMIT:
            bad(f"chunk of {len(data)} bytes (limit {CHUNK_LIMIT})")
        if self.end is not None:
            self.after_end += 1  # in flight after the hub's close is normal; after the
            if self.end != "hub closed":  # accessory's own end it is not
                bad(f"data after the stream ended ({self.end})")
        part = self._partial
        if part is None:
            expected = self.fragments[-1].sequence + 1 if self.fragments else 1
            if seq != expected:
                bad(f"dataSequenceNumber {seq}, expected {expected}")
            if chunk != 1:
                bad(f"fragment {seq} starts with chunk {chunk}")
            if (kind == INIT) != (not self.fragments):
                bad(f"fragment {seq} is {kind}")
            if not isinstance(total, int):
                bad(f"first chunk of fragment {seq} has no dataTotalSize ({total!r})")
            part = self._partial = _Partial(
                kind, seq, total if isinstance(total, int) else None, now
            )
        elif seq != part.sequence or kind != part.kind:
            bad(f"{kind} {seq} began before the last chunk of fragment {part.sequence}")
        elif chunk != len(part.parts) + 1:
            bad(f"fragment {seq}: chunk {chunk}, expected {len(part.parts) + 1}")
        part.parts.append(data)
        if last:
            blob = b"".join(part.parts)
            if part.total is not None and len(blob) != part.total:
                bad(f"fragment {part.sequence}: {len(blob)} bytes, dataTotalSize {part.total}")
            self.fragments.append(
                Fragment(part.kind, part.sequence, blob, len(part.parts), part.started_at, now)
            )
            self._partial = None
        self._changes.notify()


def top_level_boxes(data: bytes) -> list[str]:
    """The ISO-BMFF box types at the top level of a segment ('ftyp', 'moov' / 'moof', 'mdat')."""
    out, i = [], 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8].decode("latin-1")
        if size == 1 and i + 16 <= len(data):
            size = int.from_bytes(data[i + 8 : i + 16], "big")
        if size < 8:
            out.append(f"bad box size {size} at {i}")
            break
        out.append(kind)
        i += size
    return out
