"""Retention: delete this bridge's objects older than `retention_days` (HKSV keeps 10 days).

The bucket holds no times (object names are random, and an operator-side mtime is not trusted),
so the caller passes (object_name, recorded_at) pairs from its own state. With a `record` hook
the deletions are logged first and the objects deleted after (docs/manifest.md §6 rule 4): a
verify run in between sees deleted-but-present objects (harmless), never live-but-missing ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime

from bridge.store.bucket import Bucket

log = logging.getLogger(__name__)

DAY = 86400.0
Recorded = tuple[str, float | datetime]  # (object name, when: epoch seconds or aware datetime)


def _epoch(when: float | datetime) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError("recorded_at datetimes must be timezone-aware")
        return when.timestamp()
    return float(when)


def expired(entries: Iterable[Recorded], now: float, retention_days: float) -> list[str]:
    """Names recorded more than `retention_days` before `now` (epoch seconds), oldest first."""
    cutoff = now - retention_days * DAY
    old = [(t, name) for name, when in entries if (t := _epoch(when)) < cutoff]
    return [name for _, name in sorted(old)]


async def delete_expired(
    bucket: Bucket,
    entries: Iterable[Recorded],
    now: float,
    retention_days: float,
    *,
    concurrency: int = 8,
) -> list[str]:
    """Delete the expired objects; returns the names now gone (a failed delete is left for the
    next round and not returned). Deleting an object that is already missing counts as done."""
    return await delete_objects(bucket, expired(entries, now, retention_days), concurrency)


async def delete_objects(
    bucket: Bucket, names: Sequence[str], concurrency: int = 8, why: str = "retention"
) -> list[str]:
    """Delete `names`; returns those now gone (a failed delete is logged and left out)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(name: str) -> str | None:
        async with gate:
            try:
                await bucket.delete(name)
            except Exception as e:
                log.warning("%s: cannot delete %s yet: %s", why, name, e)
                return None
            return name

    done = await asyncio.gather(*(one(n) for n in names))
    deleted = [n for n in done if n is not None]
    if deleted:
        log.info("%s: deleted %d object(s)", why, len(deleted))
    return deleted


class RetentionTask:
    """Every `interval` seconds: ask `entries()` for (name, recorded_at); hand what expired to
    `record` (which logs the deletions and returns the names safe to delete now: published),
    delete those, and hand the names gone to `on_deleted`."""

    def __init__(
        self,
        bucket: Bucket,
        retention_days: float,
        entries: Callable[[], Sequence[Recorded] | Awaitable[Sequence[Recorded]]],
        on_deleted: Callable[[list[str]], Awaitable[None] | None],
        *,
        record: Callable[[list[str]], Awaitable[list[str]]] | None = None,
        interval: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bucket = bucket
        self.retention_days = retention_days
        self.entries = entries
        self.on_deleted = on_deleted
        self.record = record
        self.interval = interval
        self.clock = clock
        self.deleted_total = 0
        self.last_run_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> list[str]:
        listed = self.entries()
        current = await listed if inspect.isawaitable(listed) else listed
        names = expired(current, self.clock(), self.retention_days)
        if names and self.record is not None:
            names = await self.record(names)  # in the log, and the log in the bucket, first
        deleted = await delete_objects(self.bucket, names)
        if deleted:
            result = self.on_deleted(deleted)
            if inspect.isawaitable(result):
                await result
        self.deleted_total += len(deleted)
        self.last_run_at = self.clock()
        return deleted

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("retention round failed; trying again in %.0f s", self.interval)
            await asyncio.sleep(self.interval)

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="retention")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
