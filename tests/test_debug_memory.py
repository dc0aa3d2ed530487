"""The memory debugging aid (bridge/debug_memory.py): off unless asked; a report names what grew."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

from bridge.debug_memory import install_from_env

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import logging, os, signal, sys, time
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    from bridge.debug_memory import install_from_env
    reporter = install_from_env()
    os.kill(os.getpid(), signal.SIGUSR2)  # the first report: the baseline
    time.sleep(1.0)
    class Piece:
        def __init__(self):
            self.data = bytearray(4096)  # 10 MiB in all, from line 10 of this program
    hoard = [Piece() for _ in range(2560)]
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(1.5)
    """
)


def test_off_by_default() -> None:
    assert install_from_env({}) is None
    assert install_from_env({"OBSCURA_TRACEMALLOC": "0", "OBSCURA_MEMORY_REPORT": "0"}) is None
    assert not tracemalloc.is_tracing()


def run_child(**env: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=dict(os.environ, **env),
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip


def test_sigusr2_reports_the_growing_site_and_trim() -> None:
    out = run_child(OBSCURA_TRACEMALLOC="1", OBSCURA_MEMORY_EVERY="0", OBSCURA_MALLOC_TRIM="1")
    reports = out.split("memory at ")
    assert len(reports) == 3, out  # the warning, then two reports
    second = reports[2]
    top = second.split("top sites since the first report", 1)[1].splitlines()[1]
    # the hoard: +10.x MiB from line 10 of the child (`-c` is "<string>")
    assert top.strip().startswith("+10.") and top.endswith("<string>:10"), second
    assert "__main__.Piece +2560 (2560)" in second
    assert "malloc_trim(0): RSS" in second
    assert "glibc in use" in second


def test_reports_without_tracemalloc() -> None:
    out = run_child(OBSCURA_MEMORY_REPORT="1", OBSCURA_MEMORY_EVERY="0")
    reports = out.split("memory at ")
    assert len(reports) == 3, out
    assert "__main__.Piece +2560 (2560)" in reports[2]
    assert "top sites" not in out and "traced by Python" not in out
