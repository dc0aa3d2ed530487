"""A memory debugging aid for `obscura run`, off by default: what grows, Python or native?

Why: RSS alone cannot tell apart the three things that make a long-running bridge grow: Python
objects that pile up (a leak of ours), native memory that codecs allocate and never free, and
memory glibc keeps after it was freed (retention, not a leak). The memory soak (BENCHMARKS.md,
benchmark 14) needed that split. With ``OBSCURA_TRACEMALLOC`` set, `obscura run` starts
tracemalloc before the service and then logs one report (logger ``bridge.debug_memory``) every
``OBSCURA_TRACEMALLOC_EVERY`` seconds (300; 0: only on the signal) and on SIGUSR2:

- RSS; what tracemalloc sees Python allocate; glibc's heap (``mallinfo2``: in use, and free but
  kept in the arenas). Python flat while "in use" grows: native. "Free" growing: retention;
- the allocation sites that grew most since the first report and since the previous one
  (file:line; with ``OBSCURA_TRACEMALLOC=N`` > 1, grouped by tracebacks of N frames);
- the gc-tracked types whose number of objects changed most since the previous report
  (VideoFrame, Task, dict, ...);
- with ``OBSCURA_MALLOC_TRIM=1``, RSS before and after ``malloc_trim(0)``: how much of RSS glibc
  gives back when asked. It changes what it measures, so it is a separate switch.

``OBSCURA_TRACEMALLOC_TOP`` sets how many lines each list has (15). Not for production:
tracemalloc keeps a record per live block (RSS grows with the number of objects, so RSS of a
traced run is not comparable with an untraced one) and slows allocation-heavy code down.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import threading
import time
import tracemalloc
from collections import Counter
from typing import Any

log = logging.getLogger(__name__)

_IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
    tracemalloc.Filter(False, "<unknown>"),
    tracemalloc.Filter(False, __file__),  # the reports' own bookkeeping
)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _libc() -> Any:
    with contextlib.suppress(OSError, TypeError):
        return ctypes.CDLL(ctypes.util.find_library("c"))
    return None


def glibc_heap() -> dict[str, int] | None:
    """glibc's heap in bytes: ``in_use`` (malloc'd, mmap'd chunks included) and ``free`` (held
    in the arenas); None where there is no mallinfo2 (musl, glibc < 2.33)."""
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return {"in_use": info.uordblks + info.hblkhd, "free": info.fordblks}


def malloc_trim() -> bool:
    libc = _libc()
    fn = getattr(libc, "malloc_trim", None)
    return bool(fn(0)) if fn is not None else False


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def type_counts() -> Counter[str]:
    """Objects the collector tracks, by type (module.qualname)."""
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        t = type(obj)
        counts[f"{t.__module__}.{t.__qualname__}"] += 1
    return counts


def _short(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    stdlib = os.path.dirname(os.__file__) + os.sep
    if filename.startswith(stdlib):
        return filename[len(stdlib) :]
    return os.path.relpath(filename) if os.path.isabs(filename) else filename


def _mib(n: float) -> str:
    return f"{n / 2**20:+.1f}" if n < 0 or n > 0 else "0.0"


_Sites = dict[tracemalloc.Traceback, tuple[int, int]]  # allocation site -> (bytes, blocks)


class MemoryReporter:
    def __init__(self, frames: int = 1, top: int = 15, trim: bool = False) -> None:
        self.frames, self.top, self.trim = frames, top, trim
        self.group = "traceback" if frames > 1 else "lineno"
        self._first: _Sites | None = None
        self._last: _Sites | None = None
        self._types: Counter[str] | None = None
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def report(self) -> str:
        with self._lock:
            return self._report()

    def _report(self) -> str:
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces(_IGNORED)
        types = type_counts()
        traced, peak = tracemalloc.get_traced_memory()
        heap = glibc_heap()
        own = tracemalloc.get_tracemalloc_memory()
        lines = [
            f"memory at {(time.monotonic() - self._started) / 60:.1f} min: RSS "
            f"{rss_bytes() / 2**20:.1f} MiB; traced by Python {traced / 2**20:.1f} MiB (peak "
            f"{peak / 2**20:.1f}, tracemalloc's own {own / 2**20:.1f})"
            + (
                f"; glibc in use {heap['in_use'] / 2**20:.1f} MiB, free in arenas "
                f"{heap['free'] / 2**20:.1f} MiB"
                if heap
                else ""
            )
        ]
        sites = {st.traceback: (st.size, st.count) for st in snap.statistics(self.group)}
        del snap  # a snapshot holds every live block; the sizes per site are enough
        bases = [("since the first report", self._first)]
        if self._last is not self._first:
            bases.append(("since the last", self._last))
        for title, base in bases:
            if base is not None:
                lines += self._growth(title, sites, base)
        if self._types is not None:
            diff = Counter(types)
            diff.subtract(self._types)
            changed = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[: self.top]
            lines.append("object counts since the last report: " + ", ".join(
                f"{name} {d:+d} ({types[name]})" for name, d in changed if d
            ))  # fmt: skip
        if self.trim:
            before = rss_bytes()
            malloc_trim()
            lines.append(
                f"malloc_trim(0): RSS {before / 2**20:.1f} -> {rss_bytes() / 2**20:.1f} MiB"
            )
        self._first = self._first or sites
        self._last, self._types = sites, types
        return "\n".join(lines)

    def _growth(self, title: str, now: _Sites, base: _Sites) -> list[str]:
        diffs = []
        for where in now.keys() | base.keys():
            size, count = now.get(where, (0, 0))
            size0, count0 = base.get(where, (0, 0))
            diffs.append((size - size0, count - count0, size, where))
        diffs.sort(key=lambda d: -abs(d[0]))
        lines = [f"top sites {title} (all sites: {_mib(sum(d[0] for d in diffs))} MiB):"]
        for size_diff, count_diff, size, where in diffs[: self.top]:
            at = " <- ".join(f"{_short(f.filename)}:{f.lineno}" for f in reversed(where))
            lines.append(
                f"  {_mib(size_diff)} MiB ({count_diff:+d} blocks) -> {size / 2**20:.1f} MiB: {at}"
            )
        return lines


def install_from_env(environ: dict[str, str] | None = None) -> MemoryReporter | None:
    """Start tracemalloc and the reports when OBSCURA_TRACEMALLOC is set (main thread only)."""
    env = os.environ if environ is None else environ
    value = env.get("OBSCURA_TRACEMALLOC", "").strip()
    if value in ("", "0"):
        return None
    frames = int(value) if value.isdigit() else 1
    every = float(env.get("OBSCURA_TRACEMALLOC_EVERY", "300"))
    reporter = MemoryReporter(
        frames=max(1, frames),
        top=int(env.get("OBSCURA_TRACEMALLOC_TOP", "15")),
        trim=env.get("OBSCURA_MALLOC_TRIM", "") == "1",
    )
    tracemalloc.start(max(1, frames))
    wake = threading.Event()
    signal.signal(signal.SIGUSR2, lambda *_: wake.set())

    def loop() -> None:
        while True:
            wake.wait(every if every > 0 else None)
            wake.clear()
            try:
                log.info("%s", reporter.report())
            except Exception:
                log.exception("memory report failed")

    threading.Thread(target=loop, name="debug-memory", daemon=True).start()
    log.warning(
        "OBSCURA_TRACEMALLOC: tracing allocations (%d frame(s)); a report every %s and on "
        "SIGUSR2 (pid %d). Slower, and more memory: not for production",
        frames, f"{every:g} s" if every > 0 else "never", os.getpid(),
    )  # fmt: skip
    return reporter
