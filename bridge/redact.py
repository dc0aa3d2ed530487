"""Keep camera credentials out of logs, status output and error messages."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")


def redact_url(url: str) -> str:
    """rtsp://user:pass@host/path → rtsp://***@host/path; query strings are dropped too."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "***" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact(text: str) -> str:
    """Remove userinfo from every URL inside free text."""
    return _USERINFO.sub(r"\g<scheme>***@", text)
