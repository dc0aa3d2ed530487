"""A memory debugging aid for `obscura run`, off by default: what grows, Python or native?

Why: RSS alone cannot tell apart the three things that make a long-running bridge grow: Python
objects that pile up (a leak of ours), native memory that codecs allocate and never free, and
memory glibc keeps after it was freed (retention, not a leak). The memory soak (BENCHMARKS.md,
benchmark 14) needed that split. Set in the bridge's environment:

- ``OBSCURA_MEMORY_REPORT=1``: `obscura run` logs a report (logger ``bridge.debug_memory``) every
  ``OBSCURA_MEMORY_EVERY`` seconds (300; 0: only on the signal) and on SIGUSR2: RSS; glibc's
  heap (``mallinfo2``: in use, and free but kept in the arenas: "in use" growing is live native
  or Python memory, "free" growing is retention); the gc-tracked types whose number of objects
  changed most since the previous report (VideoFrame, Task, dict, ...). Cheap: a gc pass.
- ``OBSCURA_TRACEMALLOC=N`` (implies the reports): tracemalloc from the start, and in each
  report the allocation sites that grew most since the first report and since the previous one
  (file:line; grouped by tracebacks of N frames when N > 1). Not for production: tracemalloc
  keeps a record per live block (RSS of a traced run is not comparable with an untraced one)
  and slows allocation-heavy code down.
- ``OBSCURA_MALLOC_TRIM=1``: each report ends with RSS before and after ``malloc_trim(0)``, i.e.
  how much of RSS glibc gives back when asked. It changes what it measures: a separate switch.

``OBSCURA_MEMORY_TOP`` sets how many lines each list has (15).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Mapping

from bridge.heap_trim import LIBC, malloc_trim, rss_bytes

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


def glibc_heap() -> dict[str, int] | None:
    """glibc's heap in bytes: ``in_use`` (malloc'd, mmap'd chunks included) and ``free`` (held
    in the arenas); None where there is no mallinfo2 (musl, glibc < 2.33)."""
    fn = getattr(LIBC, "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return {"in_use": info.uordblks + info.hblkhd, "free": info.fordblks}


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
    def __init__(self, frames: int = 0, top: int = 15, trim: bool = False) -> None:
        """`frames`: tracemalloc's traceback depth (0: no allocation sites)."""
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
        types = type_counts()
        heap = glibc_heap()
        lines = [
            f"memory at {(time.monotonic() - self._started) / 60:.1f} min: RSS "
            f"{rss_bytes() / 2**20:.1f} MiB"
            + (
                f"; glibc in use {heap['in_use'] / 2**20:.1f} MiB, free in arenas "
                f"{heap['free'] / 2**20:.1f} MiB"
                if heap
                else ""
            )
        ]
        if tracemalloc.is_tracing():
            lines[0] += self._traced(lines)
        if self._types is not None:
            diff = Counter(types)
            diff.subtract(self._types)
            changed = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[: self.top]
            lines.append("object counts since the last report: " + ", ".join(
                f"{name} {d:+d} ({types[name]})" for name, d in changed if d
            ))  # fmt: skip
        self._types = types
        if self.trim:
            before = rss_bytes()
            malloc_trim()
            lines.append(
                f"malloc_trim(0): RSS {before / 2**20:.1f} -> {rss_bytes() / 2**20:.1f} MiB"
            )
        return "\n".join(lines)

    def _traced(self, lines: list[str]) -> str:
        """Appends the growth by site to `lines`; returns the totals for the first line."""
        snap = tracemalloc.take_snapshot().filter_traces(_IGNORED)
        traced, peak = tracemalloc.get_traced_memory()
        own = tracemalloc.get_tracemalloc_memory()
        sites = {st.traceback: (st.size, st.count) for st in snap.statistics(self.group)}
        del snap  # a snapshot holds every live block; the sizes per site are enough
        bases = [("since the first report", self._first)]
        if self._last is not self._first:
            bases.append(("since the last", self._last))
        for title, base in bases:
            if base is not None:
                lines += self._growth(title, sites, base)
        self._first = self._first or sites
        self._last = sites
        return (
            f"; traced by Python {traced / 2**20:.1f} MiB (peak {peak / 2**20:.1f}, "
            f"tracemalloc's own {own / 2**20:.1f})"
        )

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


def install_from_env(environ: Mapping[str, str] | None = None) -> MemoryReporter | None:
    """Start the reports (and tracemalloc) as the environment asks; main thread only."""
    env = os.environ if environ is None else environ
    traced = env.get("OBSCURA_TRACEMALLOC", "").strip()
    frames = (int(traced) if traced.isdigit() else 1) if traced not in ("", "0") else 0
    if not frames and env.get("OBSCURA_MEMORY_REPORT", "").strip() in ("", "0"):
        return None
    every = float(env.get("OBSCURA_MEMORY_EVERY", "300"))
    reporter = MemoryReporter(
        frames=frames,
        top=int(env.get("OBSCURA_MEMORY_TOP", "15")),
        trim=env.get("OBSCURA_MALLOC_TRIM", "") == "1",
    )
    if frames:
        tracemalloc.start(frames)
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
        "memory reports every %s and on SIGUSR2 (pid %d)%s: a debugging aid, not for production",
        f"{every:g} s" if every > 0 else "never", os.getpid(),
        f"; tracemalloc on ({frames} frame(s))" if frames else "",
    )  # fmt: skip
    return reporter
