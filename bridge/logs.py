"""Logging set-up: one line per record, credentials scrubbed from every message, repeats collapsed.

Why collapse: a hostile run made asyncio's accept loop log 349,743 identical EMFILE tracebacks
(156 MB in ~50 s) when the HAP port ran out of file descriptors; anything a peer can trigger
over and over can fill the disk the same way. RateLimitFilter keeps the first of identical
messages (and the first few from one line of code) per minute and then says how many it held
back: "… repeated N times in the last M s". Debug records pass untouched (asked for).
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.redact import redact


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pyhap") and "Error while setting" in str(record.msg):
            # HAP-python logs the written value; for SetupEndpoints it holds the SRTP key.
            args = tuple(record.args or ())[:2]
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, ValueError):
                # A malformed write from a controller is its problem, not a bug of ours: one
                # line (the parser's message describes structure only), no traceback.
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                record.msg = "%s: rejected a malformed write to %s: %s"
                args = (*args, exc)
                record.exc_info = None
                record.exc_text = None
            else:
                record.msg = "%s: Error while setting characteristic %s (value withheld)"
            record.args = args
        message = record.getMessage()
        scrubbed = redact(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


class PeerErrorFilter(logging.Filter):
    """aiohttp logs a malformed request (a peer's doing, not a bug of ours) at ERROR with a
    traceback: one WARNING line instead, naming the peer and what was wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "aiohttp.server" and record.exc_info:
            from aiohttp.http_exceptions import HttpProcessingError

            exc = record.exc_info[1]
            if isinstance(exc, HttpProcessingError):
                remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
                reason = " ".join(str(exc.message).split()) or f"status {exc.code}"
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                record.msg = "refused a malformed HTTP request from %s: %s"
                record.args = (remote, reason)
                record.exc_info = None
                record.exc_text = None
        return True


@dataclass(slots=True)
class _Window:
    start: float
    exact: bool  # keyed by the exact message (else by the line of code)
    passed: int = 1
    held: int = 0
    sample: logging.LogRecord | None = None  # the first record held back, for the summary


SUMMARY = "obscura_summary"  # attribute marking our own summary records


class RateLimitFilter(logging.Filter):
    """Collapses repeated records (INFO and above) per ``window`` seconds.

    Two keys: the exact message (logger, level, text, exception type and text) passes once per
    window; one line of code (logger, level, file, line) passes ``per_site`` times, so a storm of
    messages that differ only by a peer address or a counter is bounded too. What is held back
    is counted, and once the window has passed a summary record goes to the handler, as soon as
    any record passes through (at most one scan a second) or at ``flush()``. Thread-safe;
    ``attach`` it to a handler after the filters that rewrite messages."""

    def __init__(
        self,
        window: float = 60.0,
        per_site: int = 10,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        super().__init__()
        self.window, self.per_site, self.max_keys = window, per_site, max_keys
        self._clock = clock
        self._windows: dict[tuple[Any, ...], _Window] = {}
        self._lock = threading.Lock()
        self._next_scan = float("-inf")
        self._emit: Callable[[logging.LogRecord], Any] | None = None

    def attach(self, handler: logging.Handler) -> RateLimitFilter:
        handler.addFilter(self)
        self._emit = handler.handle
        return self

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO or getattr(record, SUMMARY, False):
            return True
        now = self._clock()
        exc = record.exc_info[1] if record.exc_info else None
        exact = (record.name, record.levelno, record.getMessage(), type(exc).__name__, str(exc))
        site = (record.name, record.levelno, record.pathname, record.lineno)
        ended: list[_Window] = []
        with self._lock:
            if now >= self._next_scan:
                self._next_scan = now + 1.0
                for key in [k for k, w in self._windows.items() if now - w.start >= self.window]:
                    ended.append(self._windows.pop(key))
            keep = self._admit(exact, True, record, now, ended) and self._admit(
                site, False, record, now, ended
            )
        self._send(ended, now)
        return keep

    def flush(self) -> None:
        """Send the summaries of every open window now (at shutdown, or in tests)."""
        with self._lock:
            ended = list(self._windows.values())
            self._windows.clear()
        self._send(ended, self._clock())

    def _admit(
        self,
        key: tuple[Any, ...],
        exact: bool,
        record: logging.LogRecord,
        now: float,
        ended: list[_Window],
    ) -> bool:
        w = self._windows.get(key)
        if w is None or now - w.start >= self.window:
            if w is not None:
                ended.append(w)
            self._windows.pop(key, None)
            self._windows[key] = _Window(now, exact)
            while len(self._windows) > self.max_keys:  # the oldest window goes, with its summary
                ended.append(self._windows.pop(next(iter(self._windows))))
            return True
        if w.passed < (1 if exact else self.per_site):
            w.passed += 1
            return True
        w.held += 1
        if w.sample is None:
            w.sample = record
        return False

    def _send(self, ended: list[_Window], now: float) -> None:
        for w in ended:
            if w.held and w.sample is not None and self._emit is not None:
                self._emit(self._summary(w, now))

    def _summary(self, w: _Window, now: float) -> logging.LogRecord:
        assert w.sample is not None
        seconds = max(1, round(min(now - w.start, self.window)))
        text = w.sample.getMessage().split("\n", 1)[0]
        if len(text) > 200:
            text = text[:200] + "…"
        what = "repeated" if w.exact else "and similar messages repeated"
        record = logging.LogRecord(
            w.sample.name, w.sample.levelno, w.sample.pathname, w.sample.lineno,
            "%s … %s %d times in the last %d s", (text, what, w.held, seconds), None,
        )  # fmt: skip
        setattr(record, SUMMARY, True)
        return record


# errno values asyncio's accept loop reports through the loop's exception handler: the process
# (EMFILE) or the system (ENFILE) is out of descriptors, or the kernel out of buffers/memory.
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_loop_log = logging.getLogger("bridge.loop")


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """One line, no traceback, for running out of descriptors while accepting (asyncio retries
    on its own a second later); everything else goes to asyncio's default handler. Both are
    rate-limited by RateLimitFilter."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno in ACCEPT_RESOURCE_ERRORS:
        sock = context.get("socket")
        where = "a socket"
        try:
            host, port = sock.getsockname()[:2]
            where = f"{host}:{port}"
        except (AttributeError, OSError, TypeError, ValueError):
            pass
        _loop_log.warning(
            "cannot accept connections on %s: %s (%s); asyncio retries in a second",
            where, os.strerror(exc.errno), errno.errorcode.get(exc.errno, exc.errno),
        )  # fmt: skip
        return
    loop.default_exception_handler(context)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    handler.addFilter(PeerErrorFilter())
    limiter = RateLimitFilter().attach(handler)  # after redaction: compares scrubbed messages
    atexit.register(limiter.flush)  # runs before logging's own shutdown (atexit is LIFO)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # HAP-python logs every characteristic write at debug, SRTP master keys included: keep it
    # at info whatever our own level is (secrets are never logged).
    logging.getLogger("pyhap").setLevel(max(logging.INFO, root.level))
    # FFmpeg's own log lines can contain the URL it was opened with; PyAV keeps them quiet by
    # default and we surface errors through exceptions (redacted) instead.
