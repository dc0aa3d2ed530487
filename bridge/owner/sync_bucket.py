"""The async Bucket driven from the owner's synchronous code, with read-ahead for chain walks.

The manifest verifier walks segments newest to oldest through pointers inside each (encrypted)
segment, so it cannot know the next object before it has decrypted this one: one GET at a
time, which on S3 is most of the load time. `Readahead` takes a guess at the order (the chain
the owner verified last time) and keeps a window of those GETs in flight while the walk decrypts;
the walk still reads and checks every byte it uses, a wrong guess only costs a wasted GET.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from bridge.store.bucket import Bucket

T = TypeVar("T")
CHUNK = 4 << 20
READAHEAD = 32  # GETs in flight ahead of the walk: ~1 ms each on S3, a few KiB each
#: Larger objects are never fetched ahead (segments are a few KiB): 32 MiB held at most.
READAHEAD_MAX_OBJECT = 1 << 20


class SyncBucket:
    """The async Bucket driven from synchronous code (the verifier's get/list are sync). Its
    loop runs only inside `run`, from one thread at a time."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self._loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def list(self, prefix: str = "") -> list[tuple[str, int]]:
        async def collect() -> list[tuple[str, int]]:
            return [item async for item in self.bucket.list(prefix)]

        return self.run(collect())

    def get(self, name: str, limit: int) -> bytes | None:
        """At most `limit` bytes of `name` (the operator chooses how large an object is)."""
        return self.run(self.bucket.get_range(name, 0, limit))

    def sha256(self, name: str, limit: int) -> tuple[str, int] | None:
        """SHA-256 and length of the first `limit` bytes of `name`, read in CHUNK pieces."""
        h, n = hashlib.sha256(), 0
        while n < limit:
            want = min(limit, n + CHUNK) - n
            data = self.run(self.bucket.get_range(name, n, n + want))
            if data is None:
                return None if n == 0 else (h.hexdigest(), n)
            h.update(data)
            n += len(data)
            if len(data) < want:  # the end of the object
                break
        return h.hexdigest(), n

    def readahead(self, expected: Sequence[str], limit: int, window: int = READAHEAD) -> Readahead:
        return Readahead(self, expected, limit, window)

    def _task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        return self._loop.create_task(coro)

    def close(self) -> None:
        self.run(self.bucket.close())
        self._loop.close()


class Readahead:
    """`get(name)` like SyncBucket.get, fetching the names expected next while waiting.

    Asking for an expected name starts the GETs of the `window` names after it; a name asked for
    out of that order (new since the guess, or the guess was wrong) is fetched on its own. Use it
    as a context manager: GETs nobody asked for are cancelled at the end."""

    def __init__(self, sync: SyncBucket, expected: Sequence[str], limit: int, window: int) -> None:
        self._sync = sync
        self._order = list(expected)
        self._at = {name: i for i, name in enumerate(self._order)}
        self._limit = limit
        self._window = max(1, window)
        self._started = 0  # names [0, _started) have been started (or skipped)
        self._tasks: dict[str, asyncio.Task[bytes | None]] = {}

    def get(self, name: str) -> bytes | None:
        i = self._at.get(name)
        if i is None:
            return self._sync.get(name, self._limit)
        self._start_until(i + 1 + self._window)
        task = self._tasks.pop(name, None)
        if task is None:  # asked twice, or its task was dropped as passed
            return self._sync.get(name, self._limit)
        return self._sync.run(self._wait(task))

    def _start_until(self, end: int) -> None:
        end = min(end, len(self._order))
        bucket = self._sync.bucket
        for name in self._order[self._started:end]:
            if name not in self._tasks:
                self._tasks[name] = self._sync._task(bucket.get_range(name, 0, self._limit))
        self._started = max(self._started, end)

    @staticmethod
    async def _wait(task: asyncio.Task[bytes | None]) -> bytes | None:
        return await task

    def close(self) -> None:
        pending = list(self._tasks.values())
        self._tasks.clear()
        for task in pending:
            task.cancel()
        if pending:  # let them finish cancelling, and retrieve what they raised
            self._sync.run(asyncio.wait(pending))
            for task in pending:
                if not task.cancelled():
                    task.exception()

    def __enter__(self) -> Readahead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
