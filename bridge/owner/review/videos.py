"""Open event videos and posters, kept while they are being watched.

A player asks for one event in many range requests (the start, the `moov`, each seek); the
EventVideo of an event (its parts' headers, its layout) is kept in a small LRU so they cost
one set of header GETs, not one per request. A part is checked against the manifest's SHA-256
once it has been served (media.py says why), in the background, one check per part.

Posters are small: fetched whole, checked against the manifest's SHA-256 and size, decrypted
(crypto/age.py), and kept in an LRU too, so scrolling back up the timeline costs nothing.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
from collections.abc import Sequence

from bridge.owner.events import Event
from bridge.owner.review.library import Library
from bridge.owner.review.media import ChunkCache, EventVideo, MediaError, PartReader, PartSpec
from bridge.store.bucket import Bucket
from crypto.age import AgeError, decrypt
from crypto.age_keys import X25519Identity

log = logging.getLogger(__name__)
OPEN_VIDEOS = 16
POSTER_CACHE = 256
MAX_POSTER = 4 << 20


class Videos:
    def __init__(
        self, bucket: Bucket, identities: Sequence[X25519Identity], library: Library
    ) -> None:
        self.bucket, self.identities, self.library = bucket, identities, library
        self.cache = ChunkCache()
        self._open: collections.OrderedDict[str, EventVideo] = collections.OrderedDict()
        self._opening: dict[str, asyncio.Task[EventVideo]] = {}
        self._verified: dict[str, asyncio.Task[None]] = {}
        self.gets = self.bytes_fetched = 0  # media GETs (the background checks not counted)

    async def get(self, event: Event) -> EventVideo:
        video = self._open.get(event.id)
        if video is not None:
            self._open.move_to_end(event.id)
            return video
        task = self._opening.get(event.id)
        if task is None:  # concurrent first requests share one open
            task = asyncio.ensure_future(self._make(event))
            self._opening[event.id] = task
            task.add_done_callback(lambda t: self._opened(event.id, t))
        return await asyncio.shield(task)

    def _opened(self, event_id: str, task: asyncio.Task[EventVideo]) -> None:
        self._opening.pop(event_id, None)
        # Retrieved here too: the requests waiting for it may all have gone (a player that
        # moved on), and its error is theirs to answer, not the log's.
        if not task.cancelled():
            task.exception()

    async def _make(self, event: Event) -> EventVideo:
        root = event.view.layout.root
        specs = [
            PartSpec(p.id, f"{root}/{p.id}", p.size, p.sha256, max(0, p.end_ms - p.start_ms))
            for p in event.live
        ]
        parts = [PartReader(self.bucket, s, self.identities, self.cache, self) for s in specs]
        video = EventVideo(parts)
        await video.open()
        self._open[event.id] = video
        while len(self._open) > OPEN_VIDEOS:
            self._open.popitem(last=False)
        return video

    def served(self, event: Event, video: EventVideo) -> None:
        """Check each part of `video` against the manifest, once (in the background)."""
        for part in video.parts:
            oid = part.spec.oid
            if oid in self._verified or not part.final_checked:
                continue
            task = asyncio.ensure_future(self._verify(event, part))
            self._verified[oid] = task

    async def _verify(self, event: Event, part: PartReader) -> None:
        try:
            await part.verify()
        except MediaError as exc:
            log.warning("review: %s", exc)
            self.library.note_problem(event, exc.kind, str(exc), exc.oid)
        except Exception as exc:  # the bucket went away: try again next time it is served
            log.info("review: could not check %s: %s", part.spec.oid, exc)
            self._verified.pop(part.spec.oid, None)

    def clear(self) -> None:
        self._open.clear()

    def stats(self) -> dict[str, int]:
        """Bucket traffic for media since start (benchmarks and tests: a seek's cost)."""
        return {
            "gets": self.gets,
            "bytes_fetched": self.bytes_fetched,
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
            "open_videos": len(self._open),
        }

    async def close(self) -> None:
        for task in (*self._opening.values(), *self._verified.values()):
            task.cancel()
        await asyncio.gather(
            *self._opening.values(), *self._verified.values(), return_exceptions=True
        )


class Posters:
    def __init__(self, bucket: Bucket, identities: Sequence[X25519Identity]) -> None:
        self.bucket, self.identities = bucket, identities
        self._cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    async def jpeg(self, event: Event) -> bytes | None:
        part = event.poster
        if part is None or part.thumb is None:
            return None
        oid = part.thumb
        cached = self._cache.get(oid)
        if cached is not None:
            self._cache.move_to_end(oid)
            return cached
        size = part.thumb_size or MAX_POSTER
        data = await self.bucket.get_range(f"{event.view.layout.root}/{oid}", 0, size + 1)
        if data is None:
            raise MediaError("missing", f"poster {oid} is missing from the bucket", oid)
        if len(data) != part.thumb_size or hashlib.sha256(data).hexdigest() != part.thumb_sha256:
            raise MediaError("swapped", f"poster {oid} is not the one the manifest records", oid)
        try:
            jpeg = await asyncio.to_thread(decrypt, self.identities, data)
        except AgeError as exc:
            raise MediaError("undecryptable", f"poster {oid}: {exc}", oid) from None
        self._cache[oid] = jpeg
        while len(self._cache) > POSTER_CACHE:
            self._cache.popitem(last=False)
        return jpeg
