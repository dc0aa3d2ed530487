"""The heap trimmer (bridge/heap_trim.py): freed holes in the heap go back to the system."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.heap_trim import LIBC, HeapTrimmer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    getattr(LIBC, "malloc_trim", None) is None, reason="no glibc malloc_trim here"
)

# 160 MiB in 64 KiB blocks (below glibc's mmap threshold: they come from the heap), each with a
# small block allocated after it that stays: freeing the big ones leaves holes that glibc keeps
# resident, as the bridge's frame buffers did between long-lived allocations.
FRAGMENT = textwrap.dedent(
    """
    import ctypes, json
    from bridge.heap_trim import HeapTrimmer, rss_bytes
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    big, small = [], []
    for _ in range(2560):
        p = libc.malloc(64 * 1024)
        libc.memset(p, 1, 64 * 1024)  # resident
        big.append(p)
        small.append(libc.malloc(64))
    peak = rss_bytes()
    for p in big:
        libc.free(p)
    freed = rss_bytes()
    trimmer = HeapTrimmer()
    released = trimmer.trim_once()
    print(json.dumps({"peak": peak, "freed": freed, "trimmed": rss_bytes(),
                      "released": released, "status": trimmer.status()}))
    """
)


def test_trim_gives_back_the_holes() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENT], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"MALLOC_ARENA_MAX": "2", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    mib = 2**20
    assert r["freed"] > r["peak"] - 40 * mib  # without a trim, glibc keeps the holes resident
    assert r["released"] >= 120 * mib and r["trimmed"] < r["freed"] - 120 * mib
    assert r["status"]["heap_trims"] == 1 and r["status"]["heap_released_mib"] >= 120


def test_periodic_and_off() -> None:
    async def main() -> tuple[int, int]:
        on, off = HeapTrimmer(every=0.05), HeapTrimmer(every=0)
        on.start()
        off.start()
        await asyncio.sleep(0.6)
        await on.stop()
        await off.stop()
        stopped = on.trims
        await asyncio.sleep(0.2)
        assert on.trims == stopped  # stop() ended the task
        assert off.status()["heap_trim_every_s"] is None
        return on.trims, off.trims

    trims_on, trims_off = asyncio.run(main())
    assert trims_on >= 3 and trims_off == 0
