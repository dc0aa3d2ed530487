"""Upload spooled ciphertext to the bucket: oldest first, retried with backoff, verified.

Each spool entry carries the object name fixed at commit time, so a retry — after an outage, or
after a crash in the middle of a PUT — re-uploads the same bytes under the same name: an object
never appears under two names, and a re-PUT is idempotent. An entry leaves the spool only after:

1. the PUT succeeded (a file is streamed from disk: multipart parts of `bucket.part_size`),
2. the PUT's response or a HEAD reports the expected ETag where the bucket's ETags are MD5s
   (the MD5, or for a multipart upload the MD5 of the parts' MD5s + "-N"), else HEAD reports
   the same size,
3. its bytes are the committed ones: the ETag was hashed from them as they were written into
   the spool, so a match proves it end to end with no second read. Where there is no such ETag
   the file is re-hashed (SHA-256) while it uploads. A locally corrupted entry is quarantined
   and its upload deleted; a corrupted manifest segment is never dropped (the head would name
   a missing segment): its upload is deleted and it is retried, with an error once a minute,
4. `on_uploaded(item)` returned (so a crash before it means the callback runs again after the
   restart: it is at-least-once, keyed by `item.object_name`).

The loop never blocks: hashing, sidecar updates and deletions run in threads; the bucket client is
async. While the bucket is down the spool simply grows (up to its cap).

Noticing the bucket's return: the uploads' own backoff grows to minutes (a PUT of megabytes at
every try would hammer a sick server), so after a failure a `BucketWatch` (bucket.py) also probes
the bucket with one cheap request every 2 s. Its return resets the backoff and the upload is sent
at once (an attempt sent while the bucket was down, maybe hanging on a half-started server, is
dropped and sent again): uploads resume within ~2 s of the bucket's return, however long the
outage. The vault's head upload shares the watch (`suspect`, `pause`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from bridge.redact import redact
from bridge.store.bucket import PROBE_INTERVAL, Bucket, BucketWatch, Superseded
from bridge.store.digests import Digests, file_digests
from bridge.store.spool import Spool, SpoolItem

log = logging.getLogger(__name__)

OnUploaded = Callable[[SpoolItem], Awaitable[None] | None]
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")
_LOG_EVERY = 60.0  # while failing, log at most once a minute


class VerifyError(Exception):
    """The object in the bucket is not what was sent."""


class CorruptSegment(Exception):
    """A manifest segment's local copy is damaged: kept and retried, never quarantined."""


@dataclass(slots=True)
class UploaderStatus:
    bucket: str
    pending_count: int  # in the spool, held ones included
    pending_bytes: int
    held_count: int  # held back: sealed, waiting for the manifest entry that logs them
    uploading: str | None
    uploaded_count: int
    uploaded_bytes: int
    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None
    consecutive_failures: int
    next_retry_at: float | None
    unreachable_since: float | None  # a probe found the bucket down (None: up, or not known)
    evicted_count: int
    evicted_bytes: int
    quarantined: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Uploader:
    def __init__(
        self,
        spool: Spool,
        bucket: Bucket,
        *,
        on_uploaded: OnUploaded | None = None,
        min_backoff: float = 1.0,
        max_backoff: float = 300.0,
        rng: random.Random | None = None,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        self.spool = spool
        self.bucket = bucket
        self.on_uploaded = on_uploaded
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.watch = BucketWatch(bucket, probe_interval, on_back=self._bucket_back)
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._current: str | None = None
        self.uploaded_count = 0
        self.uploaded_bytes = 0
        self.last_success_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failures = 0
        self.next_retry_at: float | None = None
        self._last_logged = 0.0
        self._cleanups: set[asyncio.Task[None]] = set()

    # -- control -----------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="uploader")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.watch.stop()
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)

    def wake(self) -> None:
        """Look at the spool now (thread-safe; the spool calls it after each commit)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing
            loop.call_soon_threadsafe(self._wake.set)

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Until the spool is empty (True), or `timeout` seconds (False)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._idle.wait()
                    if self.spool.pending_count == 0:
                        return True
                    await asyncio.sleep(0.05)
        except TimeoutError:
            return False

    def status(self) -> UploaderStatus:
        stats = self.spool.stats
        return UploaderStatus(
            bucket=self.bucket.describe(),
            pending_count=self.spool.pending_count,
            pending_bytes=self.spool.pending_bytes,
            held_count=self.spool.held_count,
            uploading=self._current,
            uploaded_count=self.uploaded_count,
            uploaded_bytes=self.uploaded_bytes,
            last_success_at=self.last_success_at,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            consecutive_failures=self.failures,
            next_retry_at=self.next_retry_at,
            unreachable_since=self.watch.unreachable_since,
            evicted_count=stats.evicted_count,
            evicted_bytes=stats.evicted_bytes,
            quarantined=stats.quarantined,
        )

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.spool.add_listener(self.wake)
        try:
            while True:
                self._wake.clear()
                items = self.spool.ready()
                if not items:
                    self._idle.set()
                    await self._wake.wait()
                    continue
                self._idle.clear()
                returns = self.watch.returns
                if await self.upload(items[0]) or self.watch.returns != returns:
                    continue  # done, or the bucket came back during the attempt: go on now
                self.watch.suspect(items[0].object_name)
                delay = self._backoff()
                self.next_retry_at = time.time() + delay
                # New commits do not shorten it; the bucket's return does.
                await self.watch.pause(delay)
                self.next_retry_at = None
        finally:
            self.spool.remove_listener(self.wake)
            self._loop = None

    @property
    def unreachable_since(self) -> float | None:
        return self.watch.unreachable_since

    def suspect(self, name: str) -> None:
        """See BucketWatch.suspect (for the vault's head upload)."""
        self.watch.suspect(name)

    async def pause(self, delay: float) -> bool:
        """See BucketWatch.pause."""
        return await self.watch.pause(delay)

    def _bucket_back(self) -> None:
        self.failures = 0  # the backoff starts over

    def _backoff(self) -> float:
        base = min(self.max_backoff, self.min_backoff * 2 ** min(self.failures - 1, 30))
        return base * (0.5 + 0.5 * self._rng.random())  # jitter: bridges sharing a bucket spread

    async def upload(self, item: SpoolItem) -> bool:
        """One attempt at `item`: True when it is done with (uploaded, or dropped as corrupt)."""
        if not self.spool.claim(item):
            return True  # evicted meanwhile
        self._current = item.object_name
        try:
            if not item.data_path.exists():
                await self._drop_corrupt(item, "its data file is missing", delete=False)
                return True
            if not await self.watch.unless_back(self._put_verified(item)):
                return True  # quarantined
            if self.on_uploaded is not None:
                result = self.on_uploaded(item)
                if inspect.isawaitable(result):
                    await result
            await asyncio.to_thread(self.spool.forget, item)
            cleanup = asyncio.create_task(asyncio.to_thread(self.spool.drop_data, item))
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
        except asyncio.CancelledError:
            self.spool.release(item)
            raise
        except Superseded:  # sent while the bucket was down, now back: not a failure
            self.spool.release(item)
            return False
        except Exception as e:
            self._failed(item, e)
            try:  # while still claimed: an entry evicted meanwhile would get its sidecar back
                # A stop() meanwhile waits for it: the thread would write the sidecar anyway.
                record = asyncio.ensure_future(
                    asyncio.to_thread(self.spool.record_attempt, item, self.last_error)
                )
                try:
                    await asyncio.shield(record)
                except asyncio.CancelledError:
                    await asyncio.wait([record])
                    raise
            finally:
                self.spool.release(item)
            return False
        finally:
            self._current = None
        self._succeeded(item)
        return True

    def _committed_etag(self, item: SpoolItem) -> str | None:
        """The ETag hashed at write time, if this bucket reports ETags of that form."""
        bucket = self.bucket
        if bucket.md5_etags and item.etag and item.etag_part_size == bucket.part_size:
            return item.etag
        return None

    async def _put_verified(self, item: SpoolItem) -> bool:
        """PUT and verify `item`: True when it is in the bucket as committed, False when the
        local copy turned out corrupt (quarantined, its upload deleted); raises to retry."""
        etag = self._committed_etag(item)
        if etag is not None:
            reported = await self.bucket.put(item.object_name, item.data_path)
            if reported is not None and reported.lower() == etag:
                return True  # the server hashed what it stored: no HEAD needed
            try:
                if await self._verify(item, etag):
                    return True
            except VerifyError:
                # The server got other bytes: the network's fault (retry) or the disk's.
                if not await self._local_copy_intact(item):
                    return False
                raise
            # The server's ETag is of another kind (e.g. SSE-KMS): check the local bytes.
            return await self._local_copy_intact(item)
        # No end-to-end ETag: check the local bytes while they upload (a second read, but the
        # page cache usually still has them and hashing overlaps the transfer).
        hashing = asyncio.create_task(asyncio.to_thread(
            file_digests, item.data_path, self.bucket.part_size, self.bucket.md5_etags
        ))
        try:
            await self.bucket.put(item.object_name, item.data_path)
        finally:
            digests: Digests = await hashing
        if digests.sha256 != item.sha256:
            await self._drop_corrupt(item, "its bytes no longer match the committed SHA-256")
            return False
        await self._verify(item, digests.etag)
        return True

    async def _local_copy_intact(self, item: SpoolItem) -> bool:
        digests = await asyncio.to_thread(file_digests, item.data_path, None, False)
        if digests.sha256 == item.sha256:
            return True
        await self._drop_corrupt(item, "its bytes no longer match the committed SHA-256")
        return False

    async def _drop_corrupt(self, item: SpoolItem, reason: str, delete: bool = True) -> None:
        if delete:
            try:  # best effort: never leave bad bytes behind
                await self.bucket.delete(item.object_name)
            except Exception as e:
                log.error("cannot delete the corrupt upload of %s %s (%s): %s", item.kind,
                          item.object_name, reason, redact(f"{type(e).__name__}: {e}")[:400])
        if item.kind == "manifest":  # a missing segment would break the owner's chain for good
            raise CorruptSegment(
                f"manifest segment {item.object_name} is damaged in the spool ({reason}); kept "
                f"there, the manifest head cannot be updated until it is repaired"
            )
        await asyncio.to_thread(self.spool.quarantine, item, reason)

    async def _verify(self, item: SpoolItem, expected_etag: str | None) -> bool:
        """Size always; True if the ETag was compared too (raises VerifyError on a mismatch)."""
        info = await self.bucket.head(item.object_name)
        if info is None:
            raise VerifyError(f"{item.object_name} is missing right after its PUT")
        if info.size != item.size:
            raise VerifyError(
                f"{item.object_name} is {info.size} bytes in the bucket, sent {item.size}"
            )
        etag = (info.etag or "").lower().strip('"')
        if expected_etag is None or not _MD5_ETAG.match(etag):
            return False
        if etag != expected_etag:
            raise VerifyError(
                f"{item.object_name}: bucket ETag {etag} != expected {expected_etag} (if this "
                "server's ETags are not MD5s, e.g. SSE-KMS, add verify_etag=false to the URL)"
            )
        return True

    def _failed(self, item: SpoolItem, e: Exception) -> None:
        now = time.time()
        self.failures += 1
        self.last_error = redact(f"{type(e).__name__}: {e}".splitlines()[0])[:400]
        self.last_error_at = now
        if self.failures == 1 or now - self._last_logged >= _LOG_EVERY:
            self._last_logged = now
            log.log(
                logging.ERROR if isinstance(e, CorruptSegment) else logging.WARNING,
                "upload of %s %s failed (%d in a row, %d pending): %s",
                item.kind, item.object_name, self.failures, self.spool.pending_count,
                self.last_error,
            )

    def _succeeded(self, item: SpoolItem) -> None:
        self.watch.answered()  # if a probe had found it down: its return (logged there)
        if self.failures:
            log.info("bucket %s reachable again after %d failed attempts",
                     self.bucket.describe(), self.failures)
        self.failures = 0
        self.uploaded_count += 1
        self.uploaded_bytes += item.size
        self.last_success_at = time.time()
        log.debug("uploaded %s %s (%d bytes)", item.kind, item.object_name, item.size)
