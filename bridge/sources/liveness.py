"""Cheap "is the camera there?" probes, asked while a camera is down.

A full RTSP open costs a TCP connection, four RTSP round trips, a media pipeline started on the
camera and a thread here; a camera that is off answers none of it. Retrying the full open with
backoff either hammers a dead camera (short delays) or notices its return late (long delays: the
hostile run saw 7.6-8.3 s after a 10 s outage). A probe that costs one TCP handshake (or one
stat() of a device node) can run every half second for as long as a camera is down, and the full
open runs only once the probe answers.

A probe returns None when the camera answers, otherwise a one-line reason (for /status). It
never raises and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

Probe = Callable[[], Awaitable[str | None]]

DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}


def tcp_probe(host: str, port: int, timeout: float) -> Probe:
    """Answers when a TCP connection to host:port is accepted within `timeout` seconds."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def probe() -> str | None:
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            return f"{where} not answering (no reply within {timeout:g} s)"
        except OSError as exc:
            return f"{where} not answering ({_reason(exc)})"
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(timeout):
                await writer.wait_closed()
        return None

    return probe


def _reason(exc: OSError) -> str:
    # asyncio words a refusal "Connect call failed (addr)"; say what the kernel said instead.
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        return (exc.strerror or str(exc) or type(exc).__name__).lower()
    return os.strerror(exc.errno).lower()


def path_probe(path: str | os.PathLike[str]) -> Probe:
    """Answers when `path` exists (a V4L2 device node that comes back when re-plugged, a file)."""
    target = Path(path)

    async def probe() -> str | None:
        # One stat() of a local path (a /dev node, a local file): cheaper than a hop to a
        # thread, whose pool may be busy with media work exactly when this should answer.
        try:
            os.stat(target)
        except OSError as exc:
            return f"{target}: {exc.strerror or type(exc).__name__}"
        return None

    return probe


def probe_for(source: str, timeout: float) -> Probe | None:
    """The probe that fits a camera source URL; None when there is nothing cheap to ask."""
    try:
        parts = urlsplit(source)
        scheme = parts.scheme.lower()
        if scheme in DEFAULT_PORTS:
            if not parts.hostname:
                return None
            return tcp_probe(parts.hostname, parts.port or DEFAULT_PORTS[scheme], timeout)
    except ValueError:  # a port that is not a number: let the full open report it
        return None
    if scheme in ("v4l2", "file"):
        return path_probe(unquote(parts.path))
    return None
