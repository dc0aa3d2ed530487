"""Logging set-up: one line per record, credentials scrubbed from every message."""

from __future__ import annotations

import logging

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


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # HAP-python logs every characteristic write at debug, SRTP master keys included: keep it
    # at info whatever our own level is (secrets are never logged).
    logging.getLogger("pyhap").setLevel(max(logging.INFO, root.level))
    # FFmpeg's own log lines can contain the URL it was opened with; PyAV keeps them quiet by
    # default and we surface errors through exceptions (redacted) instead.
