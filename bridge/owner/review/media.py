"""An event's video served by byte ranges, decrypted chunk by chunk (docs/review.md §4).

`PartReader` reads one part (an age file in the bucket) at random: its header once (a ranged
GET of the first 4 KiB, more if needed) to unwrap the file key, then only the 64 KiB chunks a
range covers, in one ranged GET per run of chunks (crypto/age_random.py does the arithmetic
and the authentication). Before it serves any byte of a part it authenticates the part's final
chunk, as age's DecryptReaderAt does, so a part cut short fails at once instead of at its end.

`EventVideo` is the event as one MP4: part 0's `ftyp` and `moov`, an index for players
(mp4index.py), the rest of part 0, then each later part after its `ftyp` and `moov`
(byte-identical in every part, clip-format.md §8; checked as a part's first chunk is read).
Its layout is known from the parts' headers and first chunks, so a seek to the middle costs
those and the chunks around it.

Trust: a chunk is authenticated under its part's file key, but anyone can encrypt a file to
the owner's public key; what ties a part to the manifest is its SHA-256, which needs the whole
object. `verify_part` reads the whole part once in the background after it is first served and
compares; a mismatch is reported (docs/threat-model.md) and the part is refused from then on.

Plaintext lives only in memory: an LRU of decrypted chunks shared by the app (bounded), so a
player's overlapping requests do not fetch and decrypt twice. Nothing is written to disk.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import logging
import struct
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.owner.review.mp4index import first_decode_time, segment_index, tracks
from bridge.store.bucket import Bucket
from crypto.age import AgeError
from crypto.age_keys import X25519Identity
from crypto.age_random import AgeRandomAccess, NeedMore

log = logging.getLogger(__name__)

PREFIX = 4096  # a header with a few recipients fits; NeedMore says when it does not
MAX_RUN = 16  # chunks per ranged GET (1 MiB): bounded memory per request
FIRST_RUN = 2  # the first GET of a request: players drop many requests after a few bytes
CACHE_CHUNKS = 512  # 32 MiB of plaintext at most, shared: a replayed event is not re-fetched
HASH_PIECE = 4 << 20


class MediaError(Exception):
    """A part that cannot be served: missing, not decryptable, or not what the manifest says.
    `kind` is the problem's kind for /api/status ("missing", "forged", "swapped", ...)."""

    def __init__(self, kind: str, message: str, oid: str) -> None:
        super().__init__(message)
        self.kind, self.oid = kind, oid


class ChunkCache:
    """Decrypted chunks by (object name, index), least recently used out."""

    def __init__(self, limit: int = CACHE_CHUNKS) -> None:
        self._items: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        self.limit = limit
        self.hits = self.misses = 0

    def get(self, key: tuple[str, int]) -> bytes | None:
        data = self._items.get(key)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return data

    def put(self, key: tuple[str, int], data: bytes) -> None:
        self._items[key] = data
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)


class TrafficCounter(Protocol):
    gets: int
    bytes_fetched: int


@dataclass(frozen=True, slots=True)
class PartSpec:
    oid: str  # object id
    name: str  # full object name in the bucket
    size: int  # ciphertext bytes, as the manifest records them
    sha256: str
    duration_ms: int = 0  # the manifest's end - start: the last part's length in the index


class PartReader:
    """One part, by plaintext ranges. `open()` first (its header); `read()` any range."""

    def __init__(
        self,
        bucket: Bucket,
        spec: PartSpec,
        identities: Sequence[X25519Identity],
        cache: ChunkCache,
        counter: TrafficCounter | None = None,
    ) -> None:
        self.bucket, self.spec, self.identities, self.cache = bucket, spec, identities, cache
        self.counter = counter
        self.access: AgeRandomAccess | None = None
        self.final_checked = False
        self._lock = asyncio.Lock()
        self.refused: MediaError | None = None  # set when the whole-object check failed
        self.gets = 0  # ranged GETs made (tests, benchmarks)
        self.bytes_fetched = 0

    @property
    def plaintext_size(self) -> int:
        assert self.access is not None
        return self.access.plaintext_size

    async def _get(self, start: int, end: int) -> bytes:
        self.gets += 1
        data = await self.bucket.get_range(self.spec.name, start, end)
        if data is None:
            raise MediaError("missing", f"object {self.spec.oid} is missing", self.spec.oid)
        self.bytes_fetched += len(data)
        if self.counter is not None:
            self.counter.gets += 1
            self.counter.bytes_fetched += len(data)
        return data

    async def open(self) -> None:
        """The header, once: a player's parallel first requests share one open (a second
        AgeRandomAccess would start again without its final chunk proven)."""
        if self.access is not None:
            return
        async with self._lock:
            if self.access is None:
                await self._open()

    async def _open(self) -> None:
        want = min(PREFIX, self.spec.size)
        while True:
            prefix = await self._get(0, want)
            try:
                self.access = AgeRandomAccess.open(self.identities, prefix, self.spec.size)
                return
            except NeedMore as more:
                if more.at_least <= want or more.at_least > self.spec.size:
                    raise self._bad(f"header ends past the object ({more})") from None
                want = more.at_least
            except AgeError as exc:
                raise self._bad(str(exc)) from None

    def _bad(self, why: str) -> MediaError:
        return MediaError("undecryptable", f"object {self.spec.oid}: {why}", self.spec.oid)

    async def read(self, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Plaintext [start, end), in pieces of at most a chunk; authenticated before it goes."""
        if self.refused is not None:
            raise self.refused
        await self.open()
        access = self.access
        assert access is not None
        end = min(end, access.plaintext_size)
        if start >= end:
            return
        if not self.final_checked:
            async with self._lock:  # once, before any other chunk (age_random enforces it)
                if not self.final_checked:
                    await self._chunks(range(access.chunk_count - 1, access.chunk_count))
                    self.final_checked = True
        wanted = access.chunks_for(start, end)
        first, size = wanted.start, FIRST_RUN
        while first < wanted.stop:  # runs of 2, 4, 8, then 16 chunks
            run = range(first, min(first + size, wanted.stop))
            first, size = run.stop, min(2 * size, MAX_RUN)
            chunks = await self._chunks(run)
            for index, data in zip(run, chunks, strict=True):
                lo, _hi = access.plaintext_span(index)
                piece = data[max(0, start - lo) : end - lo]
                if piece:
                    yield piece

    async def _chunks(self, run: range) -> list[bytes]:
        """The chunks of `run` from the cache, the missing ones in one ranged GET."""
        name, access = self.spec.name, self.access
        assert access is not None
        have = [self.cache.get((name, i)) for i in run]
        missing = [i for i, data in zip(run, have, strict=True) if data is None]
        if missing:
            lo, hi = missing[0], missing[-1]
            start, end = access.run_range(range(lo, hi + 1))
            blob = await self._get(start, end)
            if len(blob) != end - start:
                raise self._bad(f"truncated: {len(blob)} of {end - start} bytes at {start}")
            try:
                opened = await asyncio.to_thread(self._open_run, blob, range(lo, hi + 1))
            except AgeError as exc:
                oid = self.spec.oid
                raise MediaError("forged", f"object {oid}: {exc}", oid) from None
            for i, data in zip(range(lo, hi + 1), opened, strict=True):
                self.cache.put((name, i), data)
            have = [d if d is not None else opened[i - lo] for i, d in zip(run, have, strict=True)]
        return [d for d in have if d is not None]

    def _open_run(self, blob: bytes, run: range) -> list[bytes]:
        assert self.access is not None
        return list(self.access.open_run(run, blob))

    async def verify(self) -> None:
        """The whole object's SHA-256 against the manifest's (see the module docstring)."""
        h, n = hashlib.sha256(), 0
        while n < self.spec.size:
            end = min(self.spec.size, n + HASH_PIECE)
            data = await self.bucket.get_range(self.spec.name, n, end)
            if not data:
                break
            h.update(data)
            n += len(data)
        if n != self.spec.size or h.hexdigest() != self.spec.sha256:
            self.refused = MediaError(
                "swapped",
                f"object {self.spec.oid} is not the one the manifest records (SHA-256 or size "
                "differs): swapped or altered in the bucket",
                self.spec.oid,
            )
            raise self.refused


def header_length(plain: bytes) -> int:
    """Bytes of `ftyp` + `moov` at the start of a part's plaintext (0 if they are not there)."""
    pos = 0
    for kind in (b"ftyp", b"moov"):
        if len(plain) < pos + 8:
            return 0
        size, box = struct.unpack_from(">I4s", plain, pos)
        if box != kind or size < 8:
            return 0
        pos += size
    return pos if pos <= len(plain) else 0


class EventVideo:
    """The parts of one event as one MP4, by ranges (see the module docstring)."""

    def __init__(self, parts: list[PartReader]) -> None:
        if not parts:
            raise ValueError("an event without parts")
        self.parts = parts
        self.head = b""  # part 0's ftyp + moov: every later part must start with them
        self.index = b""  # the sidx served after the head (mp4index.py), if one could be made
        # (at, source, start, end): the event's bytes from `at` are source[start:end], a part's
        # plaintext or the index's bytes.
        self.segments: list[tuple[int, PartReader | bytes, int, int]] = []
        self.size = 0
        self._checked: set[int] = set()  # later parts whose head was compared

    async def open(self) -> None:
        if self.segments:
            return
        await asyncio.gather(*(p.open() for p in self.parts))
        first = self.parts[0]
        start = b"".join([piece async for piece in first.read(0, PREFIX * 16)])
        n = header_length(start)
        if n == 0 and len(self.parts) > 1:
            raise MediaError(
                "undecryptable", f"object {first.spec.oid}: no ftyp/moov at its start",
                first.spec.oid,
            )  # fmt: skip
        self.head = start[:n]
        self._checked.add(id(first))
        self.index = await self._make_index(start) if n else b""
        pieces: list[tuple[PartReader | bytes, int, int]] = []
        if self.index:
            pieces += [(first, 0, n), (self.index, 0, len(self.index))]
            pieces.append((first, n, first.plaintext_size))
        else:
            pieces.append((first, 0, first.plaintext_size))
        pieces += [(part, n, part.plaintext_size) for part in self.parts[1:]]
        at = 0
        for source, lo, hi in pieces:
            self.segments.append((at, source, lo, hi))
            at += hi - lo
        self.size = at

    async def _make_index(self, start: bytes) -> bytes:
        """The sidx boxes for these parts (mp4index.py), or b"" when their first fragments do
        not say the video's times (then the player reads the whole event first, as before)."""
        found = tracks(self.head)
        if not any(t.handler == b"vide" for t in found):
            return b""
        later = await asyncio.gather(*(self._first_chunk(p) for p in self.parts[1:]))
        n, firsts = len(self.head), [start, *later]
        last_ms = self.parts[-1].spec.duration_ms
        indexed = []
        for track in found:
            times = [first_decode_time(chunk, n, track.track_id) for chunk in firsts]
            starts = [t for t in times if t is not None]
            if len(starts) < len(times):
                if track.handler == b"vide":
                    return b""
                continue  # a track a part lacks: the others are still indexed
            durations = [b - a for a, b in itertools.pairwise(starts)]
            indexed.append((track, starts[0], [*durations, last_ms * track.timescale // 1000]))
        try:
            return segment_index(indexed, [p.plaintext_size - n for p in self.parts])
        except ValueError:  # parts out of order in time, or a part with nothing after its head
            return b""

    async def _first_chunk(self, part: PartReader) -> bytes:
        """A later part's first chunk, its head checked against part 0's."""
        data = b"".join([piece async for piece in part.read(0, PREFIX * 16)])
        if data[: len(self.head)] != self.head:
            raise self._not_this_event(part)
        self._checked.add(id(part))
        return data

    async def read(self, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """The event's bytes [start, end)."""
        for at, source, lo, hi in self.segments:
            length = hi - lo
            if at + length <= start or at >= end:
                continue
            a = lo + max(0, start - at)
            b = lo + min(length, end - at)
            if isinstance(source, bytes):
                yield source[a:b]
                continue
            if at != 0 and id(source) not in self._checked:
                await self._check_head(source)
            async for piece in source.read(a, b):
                yield piece

    async def _check_head(self, part: PartReader) -> None:
        got = b"".join([piece async for piece in part.read(0, len(self.head))])
        if got != self.head:
            raise self._not_this_event(part)
        self._checked.add(id(part))

    @staticmethod
    def _not_this_event(part: PartReader) -> MediaError:
        return MediaError(
            "forged", f"object {part.spec.oid} is not a part of this event (its moov differs)",
            part.spec.oid,
        )  # fmt: skip
