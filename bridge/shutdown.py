"""A stop that always finishes: SIGTERM/SIGINT end the process within seconds, whatever a thread is
doing.

Why: a hostile run left worker threads hung in native code (swscale); `asyncio.run` then waited
for them in its default-executor shutdown and the interpreter's exit joined them again, so the
bridge never exited on SIGTERM and systemd had to SIGKILL it after TimeoutStopSec (20 s in
deploy/obscura.service), with nothing in the log saying why. Here:

- `StopSignals`: the first SIGTERM/SIGINT starts the normal stop and arms the watchdog; a second
  one exits at once (status 128 + signal number, as a shell reports a death by that signal);
- `ShutdownWatchdog`: a daemon thread started when the stop begins. If the process is still
  alive `grace` s later (8 s: well inside systemd's 20 s), it logs every thread with its stack
  (which one is stuck, and where), then `os._exit(EXIT_STOP_TIMEOUT)`. A C-level backstop
  (`faulthandler.dump_traceback_later`, which needs no GIL) dumps the stacks to stderr and exits
  with status 1 a little later, in case a thread holds the GIL;
- `run`: `asyncio.run` without the unbounded waits: the default executor is shut down without
  waiting for its threads, and `finish` gives leftover threads a short grace, then names them
  and leaves without joining them (exit status 0: the service's own stop did finish).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Coroutine
from typing import Any, NoReturn

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 8.0
BACKSTOP_EXTRA_SECONDS = 3.0  # faulthandler's exit, after the watchdog's
LEFTOVER_GRACE_SECONDS = 2.0  # threads still running once the loop has closed
EXIT_STOP_TIMEOUT = 70  # EX_SOFTWARE: the stop hung and the watchdog ended the process
_REPORT_SECONDS = 2.0  # at most this long writing the report before exiting anyway
_OWN_THREADS = ("shutdown-watchdog", "shutdown-report")


def thread_report(limit: int = 12) -> str:
    """Every live thread (but ours) with the innermost `limit` lines of its stack."""
    frames = sys._current_frames()
    lines = []
    for thread in threading.enumerate():
        if thread.name in _OWN_THREADS:
            continue
        kind = "daemon" if thread.daemon else "non-daemon"
        lines.append(f"thread {thread.name!r} ({kind}, ident {thread.ident}):")
        frame = frames.get(thread.ident) if thread.ident is not None else None
        if frame is None:
            lines.append("    (no Python frame)")
            continue
        for entry in traceback.format_stack(frame, limit=limit):
            lines.extend("    " + part for part in entry.rstrip().splitlines())
    return "\n".join(lines)


def task_report(loop: asyncio.AbstractEventLoop, limit: int = 10) -> str:
    """The loop's pending tasks and where each awaits (best effort from another thread: the
    loop may change its task set meanwhile)."""
    lines = []
    try:
        tasks = list(asyncio.all_tasks(loop))
    except RuntimeError:  # the set changed while copied
        return "(tasks unavailable)"
    for task in tasks:
        lines.append(f"task {task.get_name()!r}:")
        # Task.get_stack() gives a coroutine's outermost frame only: follow what it awaits.
        awaited: Any = task.get_coro()
        for _ in range(limit):
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:
                if awaited is not None:
                    lines.append(f"    awaiting {type(awaited).__name__}")
                break
            where = traceback.extract_stack(frame, limit=1)[-1]
            lines.append(f"    {where.filename}:{where.lineno} in {where.name}: {where.line}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return "\n".join(lines)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # exiting anyway
            pass


class ShutdownWatchdog:
    def __init__(self, grace: float | None = None) -> None:
        self.grace = STOP_GRACE_SECONDS if grace is None else grace
        self._armed_at: float | None = None
        self._lock = threading.Lock()
        self._disarmed = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None  # its tasks go in the report

    @property
    def armed(self) -> bool:
        return self._armed_at is not None

    def arm(self, reason: str) -> None:
        """Start the countdown (idempotent: the first call counts)."""
        with self._lock:
            if self._armed_at is not None:
                return
            self._armed_at = time.monotonic()
        log.debug("shutdown watchdog armed (%s): %g s", reason, self.grace)
        try:
            faulthandler.dump_traceback_later(
                self.grace + BACKSTOP_EXTRA_SECONDS, exit=True, file=sys.stderr
            )
        except (ValueError, OSError, AttributeError, RuntimeError):  # stderr without a fileno
            pass
        threading.Thread(
            target=self._watch, args=(reason,), name="shutdown-watchdog", daemon=True
        ).start()

    def disarm(self) -> None:
        """For a process that goes on after its stop (tests); the bridge never disarms."""
        self._disarmed.set()
        faulthandler.cancel_dump_traceback_later()

    def _watch(self, reason: str) -> None:
        if self._disarmed.wait(self.grace):
            return
        self.exit_now(EXIT_STOP_TIMEOUT, f"stop ({reason}) did not finish within {self.grace:g} s")

    def exit_now(self, status: int, why: str) -> NoReturn:
        """Log every thread and where it is, then end the process with `status` at once."""

        def report() -> None:
            tasks = f"\n{task_report(self.loop)}" if self.loop is not None else ""
            log.critical(
                "%s: exiting with status %d. Threads:\n%s%s", why, status, thread_report(), tasks
            )
            _flush_logs()

        # Written from a thread of its own: a stuck thread may hold a lock the log needs, and
        # the exit must not wait for it for more than a moment.
        reporter = threading.Thread(target=report, name="shutdown-report", daemon=True)
        reporter.start()
        reporter.join(_REPORT_SECONDS)
        os._exit(status)


class StopSignals:
    """SIGTERM/SIGINT on the loop: the first sets `stop` and arms the watchdog, the second exits."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stop: asyncio.Event,
        watchdog: ShutdownWatchdog,
    ) -> None:
        self.loop, self.stop, self.watchdog = loop, stop, watchdog
        self.received = 0

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        self.received += 1
        name = signal.Signals(sig).name
        if self.received > 1:
            self.watchdog.exit_now(128 + sig, f"{name} again while stopping")
        log.info("%s received (a second one exits at once)", name)
        self.watchdog.arm(name)
        self.stop.set()


def run(main: Coroutine[Any, Any, None], watchdog: ShutdownWatchdog) -> None:
    """`asyncio.run(main)` whose exit never waits for a stuck default-executor thread; the
    watchdog is armed when the loop ends whatever the reason (a failed start too)."""
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        watchdog.loop = loop
        default = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
        loop.set_default_executor(default)
        try:
            runner.run(main)
        finally:
            watchdog.arm("loop ended")
            default.shutdown(wait=False, cancel_futures=True)
            # Runner.close() joins the default executor's threads with no bound: give it an
            # idle one instead (`finish` deals with the old one's leftovers).
            loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))


def finish(status: int, grace: float = LEFTOVER_GRACE_SECONDS) -> int:
    """Return `status` if only daemon threads are left (within `grace` s); otherwise name the
    leftovers and `os._exit(status)`: the interpreter's own exit would join them forever."""
    deadline = time.monotonic() + grace
    while True:
        left = [
            t
            for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and t.is_alive()
        ]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if not left:
        return status
    log.warning(
        "stopped, but %d thread(s) are still running; exiting without them:\n%s",
        len(left), thread_report(),
    )  # fmt: skip
    _flush_logs()
    sys.stdout.flush()
    os._exit(status)
