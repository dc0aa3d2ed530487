"""Cheap "is the camera there?" probes, asked while a camera is down.

A full RTSP open costs a TCP connection, four RTSP round trips, a media pipeline started on the
camera and a thread here; a camera that is off answers none of it. Retrying the full open with
backoff either hammers a dead camera (short delays) or notices its return late (long delays: the
hostile run saw 7.6-8.3 s after a 10 s outage). A probe that costs one TCP handshake (or one
stat() of a device node) can run every half second for as long as a camera is down, and the full
open runs only once the probe answers.

A probe returns None when the camera answers, otherwise a NoAnswer with a one-line reason (for
/status). It never raises and never blocks the loop. A refusal or a missing device is a definite
no. A probe that merely timed out is not: a slow link (or a slow name lookup) could make a live
camera miss a short timeout forever, so CameraSource still tries a full open now and then.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}
LOOKUP_TIMEOUT = 5.0  # a name lookup (a camera by host name) may take longer than a connect
LOOKUP_CACHE = 30.0  # seconds a looked-up address is probed before it is looked up again
AddrInfo = tuple[int, int, int, Any]  # family, type, proto, sockaddr


@dataclass(frozen=True, slots=True)
class NoAnswer:
    reason: str
    definite: bool = True  # False: timed out, which proves little


Probe = Callable[[], Awaitable[NoAnswer | None]]


def tcp_probe(host: str, port: int, timeout: float) -> Probe:
    """Answers when a TCP connection to host:port is accepted within `timeout` seconds."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    numeric = _numeric(host, port)
    cached: tuple[float, AddrInfo] | None = None  # (monotonic expiry, lookup result)

    async def lookup() -> AddrInfo | NoAnswer:
        # Without a thread for an address (the default executor may be busy exactly when this
        # should answer), and a host name at most once per LOOKUP_CACHE seconds.
        nonlocal cached
        if numeric is not None:
            return numeric
        loop = asyncio.get_running_loop()
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            return NoAnswer(f"{where}: no name lookup within {LOOKUP_TIMEOUT:g} s", False)
        except OSError as exc:
            return NoAnswer(f"{where}: name lookup failed ({_reason(exc)})")
        family, kind, proto, _, sockaddr = infos[0]
        cached = (loop.time() + LOOKUP_CACHE, (family, kind, proto, sockaddr))
        return cached[1]

    async def probe() -> NoAnswer | None:
        target = await lookup()
        if isinstance(target, NoAnswer):
            return target
        family, kind, proto, sockaddr = target
        with socket.socket(family, kind, proto) as sock:
            sock.setblocking(False)
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.get_running_loop().sock_connect(sock, sockaddr)
            except TimeoutError:
                return NoAnswer(f"{where} not answering (no reply within {timeout:g} s)", False)
            except OSError as exc:
                return NoAnswer(f"{where} not answering ({_reason(exc)})")
        return None

    return probe


def _numeric(host: str, port: int) -> AddrInfo | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 4:
        return socket.AF_INET, socket.SOCK_STREAM, 0, (str(ip), port)
    return socket.AF_INET6, socket.SOCK_STREAM, 0, (str(ip), port, 0, 0)


def _reason(exc: OSError) -> str:
    # asyncio words a refusal "Connect call failed (addr)"; say what the kernel said instead.
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        return (exc.strerror or str(exc) or type(exc).__name__).lower()
    return os.strerror(exc.errno).lower()


def path_probe(path: str | os.PathLike[str]) -> Probe:
    """Answers when `path` exists (a V4L2 device node that comes back when re-plugged, a file)."""

    async def probe() -> NoAnswer | None:
        # One stat() of a local path (a /dev node, a local file): cheaper than a hop to a
        # thread, whose pool may be busy with media work exactly when this should answer.
        try:
            os.stat(path)
        except OSError as exc:
            return NoAnswer(f"{os.fspath(path)}: {exc.strerror or type(exc).__name__}")
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
