"""Upload spooled ciphertext to the bucket: oldest first, retried with backoff, verified.

Each spool entry carries the object name fixed at commit time, so a retry — after an outage, or
after a crash in the middle of a PUT — re-uploads the same bytes under the same name: an object
never appears under two names, and a re-PUT is idempotent. An entry leaves the spool only after:

1. its bytes still hash to the sidecar's SHA-256 (a locally corrupted entry is quarantined),
2. the PUT succeeded (a file is streamed from disk: multipart parts of `bucket.part_size`),
3. HEAD reports the same size and, where the bucket's ETags are MD5s, the expected ETag
   (the MD5, or for a multipart upload the MD5 of the parts' MD5s + "-N"),
4. `on_uploaded(item)` returned (so a crash before it means the callback runs again after the
   restart: it is at-least-once, keyed by `item.object_name`).

The loop never blocks: hashing, sidecar updates and deletions run in threads; the bucket client is
async. While the bucket is down the spool simply grows (up to its cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bridge.redact import redact
from bridge.store.bucket import Bucket
from bridge.store.spool import Spool, SpoolItem

log = logging.getLogger(__name__)

OnUploaded = Callable[[SpoolItem], Awaitable[None] | None]
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-\d+)?$")
_HASH_CHUNK = 1 << 20
_LOG_EVERY = 60.0  # while failing, log at most once a minute


class VerifyError(Exception):
    """The object in the bucket is not what was sent."""


@dataclass(frozen=True, slots=True)
class Digests:
    sha256: str
    etag: str | None  # the S3-style ETag this upload should produce, if the bucket has them


def file_digests(path: Path, part_size: int | None, with_md5: bool) -> Digests:
    """SHA-256 of the file and the expected S3 ETag, in one read (run in a thread)."""
    sha = hashlib.sha256()
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        # obstore uploads a file larger than part_size in parts of exactly part_size: the ETag
        # is then MD5(MD5(part1) || MD5(part2) ...) + "-N"; otherwise the file's MD5.
        multipart = part_size is not None and size > part_size
        step = part_size if multipart and part_size else size or 1
        md5s: list[bytes] = []
        md5 = hashlib.md5(usedforsecurity=False)
        in_step = 0
        while chunk := f.read(_HASH_CHUNK):
            sha.update(chunk)
            if not with_md5:
                continue
            view = memoryview(chunk)
            while view:  # part boundaries need not align with read chunks
                take = min(len(view), step - in_step)
                md5.update(view[:take])
                in_step += take
                view = view[take:]
                if in_step == step:
                    md5s.append(md5.digest())
                    md5, in_step = hashlib.md5(usedforsecurity=False), 0
    if not with_md5:
        return Digests(sha.hexdigest(), None)
    if in_step or not md5s:
        md5s.append(md5.digest())
    if multipart:
        composite = hashlib.md5(b"".join(md5s), usedforsecurity=False).hexdigest()
        return Digests(sha.hexdigest(), f"{composite}-{len(md5s)}")
    return Digests(sha.hexdigest(), md5s[0].hex())


@dataclass(slots=True)
class UploaderStatus:
    bucket: str
    pending_count: int
    pending_bytes: int
    uploading: str | None
    uploaded_count: int
    uploaded_bytes: int
    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None
    consecutive_failures: int
    next_retry_at: float | None
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
    ) -> None:
        self.spool = spool
        self.bucket = bucket
        self.on_uploaded = on_uploaded
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
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
            uploading=self._current,
            uploaded_count=self.uploaded_count,
            uploaded_bytes=self.uploaded_bytes,
            last_success_at=self.last_success_at,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            consecutive_failures=self.failures,
            next_retry_at=self.next_retry_at,
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
                if await self.upload(items[0]):
                    continue
                delay = self._backoff()
                self.next_retry_at = time.time() + delay
                await asyncio.sleep(delay)  # new commits do not shorten an outage's backoff
                self.next_retry_at = None
        finally:
            self.spool.remove_listener(self.wake)
            self._loop = None

    def _backoff(self) -> float:
        base = min(self.max_backoff, self.min_backoff * 2 ** min(self.failures - 1, 30))
        return base * (0.5 + 0.5 * self._rng.random())  # jitter: bridges sharing a bucket spread

    async def upload(self, item: SpoolItem) -> bool:
        """One attempt at `item`: True when it is done with (uploaded, or dropped as corrupt)."""
        if not self.spool.claim(item):
            return True  # evicted meanwhile
        self._current = item.object_name
        try:
            try:
                digests = await asyncio.to_thread(
                    file_digests, item.data_path, self.bucket.part_size, self.bucket.md5_etags
                )
            except FileNotFoundError:
                await asyncio.to_thread(self.spool.quarantine, item, "its data file is missing")
                return True
            if digests.sha256 != item.sha256:
                await asyncio.to_thread(
                    self.spool.quarantine, item, "its bytes no longer match the committed SHA-256"
                )
                return True
            await self.bucket.put(item.object_name, item.data_path)
            await self._verify(item, digests)
            if self.on_uploaded is not None:
                result = self.on_uploaded(item)
                if inspect.isawaitable(result):
                    await result
            await asyncio.to_thread(self.spool.remove, item)
        except asyncio.CancelledError:
            self.spool.release(item)
            raise
        except Exception as e:
            self._failed(item, e)
            self.spool.release(item)
            await asyncio.to_thread(self.spool.record_attempt, item, self.last_error)
            return False
        finally:
            self._current = None
        self._succeeded(item)
        return True

    async def _verify(self, item: SpoolItem, digests: Digests) -> None:
        info = await self.bucket.head(item.object_name)
        if info is None:
            raise VerifyError(f"{item.object_name} is missing right after its PUT")
        if info.size != item.size:
            raise VerifyError(
                f"{item.object_name} is {info.size} bytes in the bucket, sent {item.size}"
            )
        etag = (info.etag or "").lower()
        if digests.etag is not None and _MD5_ETAG.match(etag) and etag != digests.etag:
            raise VerifyError(
                f"{item.object_name}: bucket ETag {etag} != expected {digests.etag} (if this "
                "server's ETags are not MD5s, e.g. SSE-KMS, add verify_etag=false to the URL)"
            )

    def _failed(self, item: SpoolItem, e: Exception) -> None:
        now = time.time()
        self.failures += 1
        self.last_error = redact(f"{type(e).__name__}: {e}".splitlines()[0])[:400]
        self.last_error_at = now
        if self.failures == 1 or now - self._last_logged >= _LOG_EVERY:
            self._last_logged = now
            log.warning(
                "upload of %s %s failed (%d in a row, %d pending): %s",
                item.kind, item.object_name, self.failures, self.spool.pending_count,
                self.last_error,
            )

    def _succeeded(self, item: SpoolItem) -> None:
        if self.failures:
            log.info("bucket %s reachable again after %d failed attempts",
                     self.bucket.describe(), self.failures)
        self.failures = 0
        self.uploaded_count += 1
        self.uploaded_bytes += item.size
        self.last_success_at = time.time()
        log.debug("uploaded %s %s (%d bytes)", item.kind, item.object_name, item.size)
