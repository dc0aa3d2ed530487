"""One bounded pool of named threads for the bridge's media work (snapshots, posters, codecs).

Why our own pool and not `asyncio.to_thread`: the loop's default executor is shared with
everything else (aiohttp, getaddrinfo, file I/O). A hostile run sent 50 snapshots at once; the
renders got stuck in native code (a swscale context shared across threads) and the default
executor was starved for good. Then `asyncio.run` waited for the stuck threads at exit and the
bridge never stopped on SIGTERM. `concurrent.futures.ThreadPoolExecutor` would not help: its
threads are joined at interpreter exit, so one stuck thread still holds the process.

So, here:
- a fixed number of daemon threads named ``media-1`` … ``media-N``: visible in thread dumps (the
  shutdown watchdog logs them by name) and never holding the process at exit;
- a bounded backlog: when that many jobs wait, `submit` raises `MediaBusy` at once. A controller
  gives up on a snapshot after ~10 s; queueing behind work nobody waits for only makes it worse;
- a job whose caller went away before it started is dropped (cancelled futures leave the queue);
- `aclose` cancels what has not started and waits a bounded time for what has, then names the
  threads that did not finish instead of waiting for them;
- `status()` for /status: workers, busy, queued, the backlog limit, rejections, the longest run.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BACKLOG = 32


def default_workers() -> int:
    """Media work is CPU-bound: more threads than cores only adds latency; two keep one slow
    render from holding up the next."""
    return max(2, min(4, os.cpu_count() or 2))


class MediaBusy(RuntimeError):
    """The media pool's backlog is full (or the pool is closed): try again later."""


@dataclass(slots=True)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    what: str
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class MediaExecutor:
    def __init__(
        self, workers: int | None = None, backlog: int = DEFAULT_BACKLOG, name: str = "media"
    ) -> None:
        if backlog < 1:
            raise ValueError("backlog must be at least 1")
        self.name = name
        self.workers = workers or default_workers()
        self.backlog = backlog
        self._queue: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._running: dict[str, tuple[float, str]] = {}  # thread name -> (started, what)
        self.submitted = self.completed = self.failed = self.rejected = self.cancelled = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i + 1}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, fn: Callable[..., T], *args: Any, what: str = ""
    ) -> concurrent.futures.Future[T]:
        """Queue fn(*args); raises MediaBusy when `backlog` jobs already wait. Thread-safe."""
        job = _Job(fn, args, what or getattr(fn, "__name__", "job"))
        with self._cv:
            if self._closed:
                raise MediaBusy(f"{self.name} pool is shut down")
            if len(self._queue) >= self.backlog:
                self.rejected += 1
                raise MediaBusy(f"{self.name} pool busy: {len(self._queue)} jobs waiting")
            self._queue.append(job)
            self.submitted += 1
            self._cv.notify()
        job.future.add_done_callback(lambda f: self._forget(job) if f.cancelled() else None)
        return job.future

    async def run(self, fn: Callable[..., T], *args: Any, what: str = "") -> T:
        """Await fn(*args) on the pool. Cancelling the caller drops the job if it has not
        started (a started one runs to its end; its result is discarded)."""
        return await asyncio.wrap_future(self.submit(fn, *args, what=what))

    def _forget(self, job: _Job) -> None:
        with self._cv:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # already taken by a worker (which will see the cancellation)
            self.cancelled += 1

    def _work(self) -> None:
        me = threading.current_thread().name
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return  # closed and drained
                job = self._queue.popleft()
                if not job.future.set_running_or_notify_cancel():
                    self.cancelled += 1
                    continue
                self._running[me] = (time.monotonic(), job.what)
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.fn(*job.args)
            except BaseException as exc:  # delivered to the caller
                error = exc
            with self._cv:  # counted before the caller hears back: status() is never behind
                self._running.pop(me, None)
                self.completed += error is None
                self.failed += error is not None
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)
            del job, result, error  # drop the job's arguments (frames) before the next one

    def close(self) -> None:
        """No new jobs; cancel the ones that have not started; idle workers exit."""
        with self._cv:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
            self.cancelled += sum(job.future.cancel() for job in waiting)

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stuck(self) -> list[str]:
        """Workers still alive, with what they run and for how long (for logs)."""
        now = time.monotonic()
        with self._cv:
            running = dict(self._running)
        out = []
        for thread in self._threads:
            if thread.is_alive():
                started, what = running.get(thread.name, (now, "idle"))
                out.append(f"{thread.name} ({what}, {now - started:.1f} s)")
        return out

    async def aclose(self, timeout: float = 2.0) -> list[str]:
        """close(), then wait up to `timeout` s (without blocking the loop) for running jobs.
        Returns the workers that did not finish; they are daemon threads and never hold the
        process at exit."""
        self.close()
        deadline = time.monotonic() + timeout
        while self._alive() and time.monotonic() < deadline:  # noqa: ASYNC110 - threads
            await asyncio.sleep(0.02)
        left = self.stuck()
        if left:
            log.error("%s pool: still running at shutdown: %s", self.name, ", ".join(left))
        return left

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._cv:
            starts = [started for started, _ in self._running.values()]
            return {
                "workers": self.workers,
                "busy": len(self._running),
                "queued": len(self._queue),
                "backlog": self.backlog,
                "completed": self.completed,
                "failed": self.failed,
                "rejected": self.rejected,
                "cancelled": self.cancelled,
                "longest_running_seconds": round(now - min(starts), 3) if starts else 0.0,
            }
