"""Hand the heap's free pages back to the system once a minute (glibc's ``malloc_trim``).

Why: in the 30-minute memory soak (BENCHMARKS.md, benchmark 14) the bridge's RSS kept climbing
after warm-up while the memory actually in use did not: glibc's ``mallinfo2`` showed the heap in
use flat (128 MiB between sessions, 144 with a transcoder, from minute 8 to 28), and the memory
*free* inside the arenas growing from ~35 to ~70 MiB. Live sessions (a transcoder and its
decoder hold tens of MiB of frames), snapshots and detection allocate and free frame-sized
buffers every few seconds; glibc reuses that space but returns to the system only what is free
at the very top of a heap, so freed holes between long-lived allocations stay resident. That is
retention, not a leak, but it grew RSS without bound as far as anyone could tell.

``malloc_trim(0)`` gives the free pages inside every arena back (``madvise``), so RSS follows
what is in use. Measured in the soak: each call released 15-43 MiB and took a few
milliseconds; it runs on a worker thread, off the loop. A no-op without glibc (musl, macOS).
``OBSCURA_HEAP_TRIM_EVERY`` in the environment sets the period in seconds (0: never; for
measurements, e.g. `bench.soak_memory --bridge-env OBSCURA_HEAP_TRIM_EVERY=0`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)

TRIM_EVERY_SECONDS = 60.0


def _libc() -> Any:
    with contextlib.suppress(OSError, TypeError):
        return ctypes.CDLL(ctypes.util.find_library("c"))
    return None


LIBC = _libc()  # the C library (None where it cannot be loaded)


def malloc_trim() -> bool:
    """glibc's malloc_trim(0); False where there is none (or nothing was released)."""
    fn = getattr(LIBC, "malloc_trim", None)
    return bool(fn(0)) if fn is not None else False


def rss_bytes() -> int:
    """This process's resident set size (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrimmer:
    """Calls malloc_trim every `every` seconds from a worker thread; `status()` says what it did."""

    def __init__(self, every: float = TRIM_EVERY_SECONDS) -> None:
        self.every = every
        self.available = getattr(LIBC, "malloc_trim", None) is not None and every > 0
        self.trims = 0
        self.released = 0  # bytes of RSS given back, summed over every trim
        self.last_ms = self.max_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls) -> HeapTrimmer:
        value = os.environ.get("OBSCURA_HEAP_TRIM_EVERY", "").strip()
        try:
            return cls(float(value) if value else TRIM_EVERY_SECONDS)
        except ValueError:
            log.warning(
                "OBSCURA_HEAP_TRIM_EVERY=%r is not a number: trimming every %g s",
                value,
                TRIM_EVERY_SECONDS,
            )
            return cls()

    def start(self) -> None:
        if self.available and self._task is None:
            self._task = asyncio.create_task(self._run(), name="heap-trim")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def trim_once(self) -> int:
        """One trim (blocking: call it off the loop); returns the bytes of RSS it released."""
        before = rss_bytes()
        started = time.perf_counter()
        malloc_trim()
        self.last_ms = (time.perf_counter() - started) * 1000
        self.max_ms = max(self.max_ms, self.last_ms)
        released = max(0, before - rss_bytes())
        self.trims += 1
        self.released += released
        log.debug("malloc_trim: %.1f MiB released in %.1f ms", released / 2**20, self.last_ms)
        return released

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await asyncio.to_thread(self.trim_once)

    def status(self) -> dict[str, Any]:
        return {
            "rss_mib": round(rss_bytes() / 2**20, 1),
            "heap_trim_every_s": self.every if self.available else None,
            "heap_trims": self.trims,
            "heap_released_mib": round(self.released / 2**20, 1),
            "heap_trim_ms": round(self.last_ms, 1),
            "heap_trim_ms_max": round(self.max_ms, 1),
        }
