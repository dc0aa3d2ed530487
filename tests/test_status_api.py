"""The status API answers only requests that name it (DNS rebinding), and caps its connections.

A real aiohttp server on 127.0.0.1 (port 0), with the owner routes added as the service adds
them; requests are written by hand so the Host header is whatever the test says.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge import status as status_mod
from bridge.logs import PeerErrorFilter
from bridge.owner.owner_api import add_owner_routes
from bridge.status import HostCheck, interface_hosts, start_status_server

SECRET_NAME = "Front door"


def provider() -> dict[str, Any]:
    return {"name": "Obscura", "cameras": [{"name": SECRET_NAME, "state": "streaming"}]}


@contextlib.asynccontextmanager
async def server(**patch: Any) -> AsyncIterator[int]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in patch.items():
            mp.setattr(status_mod, name, value)
        runner = await start_status_server(
            provider, "127.0.0.1", 0, lambda app: add_owner_routes(app, lambda: None)
        )
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def request(
    port: int, host: str | None, path: str = "/status", method: str = "GET", version: str = "1.1"
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"{method} {path} HTTP/{version}\r\n"
        if host is not None:
            head += f"Host: {host}\r\n"
        body = b"{}" if method == "POST" else b""
        head += f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n"
        writer.write((head + "Connection: close\r\n\r\n").encode() + body)
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_loopback_names_with_the_port_are_served() -> None:
    async with server() as port:
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"LOCALHOST:{port}",
            f"[::1]:{port}",
        ):
            code, body = await request(port, host)
            assert code == 200, host
            assert SECRET_NAME.encode() in body


@pytest.mark.parametrize(
    "host",
    [
        "rebind.example:{port}",  # the DNS-rebinding case: the attacker's name, our address
        "rebind.example",
        "127.0.0.1",  # no port
        "127.0.0.1:1",  # another port
        "127.0.0.2:{port}",  # loopback, but not a name we answer to
        "localhost.:{port}",
        "",
        None,  # no Host at all (HTTP/1.0; HTTP/1.1 requires one: aiohttp answers 400)
    ],
)
async def test_a_foreign_host_is_refused_and_learns_nothing(host: str | None) -> None:
    async with server() as port:
        value = None if host is None else host.format(port=port)
        for path, method in (("/status", "GET"), ("/metrics", "GET"), ("/owner/challenge", "POST")):
            code, body = await request(port, value, path, method, "1.1" if value else "1.0")
            assert code == 421, (value, path)
            assert SECRET_NAME.encode() not in body and b"Obscura" not in body
            assert len(body) < 64


async def test_owner_routes_still_answer_a_loopback_host() -> None:
    async with server() as port:
        # No vault behind it: the route itself answers (not the Host check), as for the CLI.
        code, _ = await request(port, f"127.0.0.1:{port}", "/owner/challenge", "POST")
        assert code not in (421, 404)


def test_host_check_for_a_wildcard_or_configured_address() -> None:
    configured = HostCheck("192.168.1.20", 8089)
    assert configured.allows("192.168.1.20:8089")
    assert configured.allows("localhost:8089")
    assert not configured.allows("192.168.1.21:8089")
    assert not configured.allows("bridge.local:8089")
    v6 = HostCheck("fd00::5", 8089)
    assert v6.allows("[fd00::5]:8089") and not v6.allows("fd00::5:8089")
    wildcard = HostCheck("0.0.0.0", 8089)
    mine = sorted(interface_hosts())
    assert "127.0.0.1" in mine
    for host in mine:
        assert wildcard.allows(f"{host}:8089")
    assert not wildcard.allows("203.0.113.9:8089")  # TEST-NET-3: never one of ours
    assert not wildcard.allows("rebind.example:8089")


async def test_connections_are_capped_and_idle_ones_closed() -> None:
    async with server(MAX_CONNECTIONS=4, KEEPALIVE_TIMEOUT=1.0) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await asyncio.sleep(0.1)
        # The fifth is closed at once, without an answer.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with contextlib.suppress(ConnectionError):
            writer.write(f"GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        # Idle connections that never sent a request are closed after the keepalive timeout,
        # which frees the slots.
        for r, _ in held:
            assert await asyncio.wait_for(r.read(), 5) == b""
        for _, w in held:
            w.close()
        code, _ = await request(port, f"127.0.0.1:{port}")
        assert code == 200


async def test_a_malformed_request_is_one_log_line_without_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PeerErrorFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        async with server() as port:
            code, body = await request(port, None)  # HTTP/1.1 without Host: aiohttp's 400
            assert code == 400 and SECRET_NAME.encode() not in body
    finally:
        root.removeHandler(handler)
    log = stream.getvalue()
    assert "malformed HTTP request from 127.0.0.1" in log and "Host" in log
    assert "Traceback" not in log and log.count("\n") == 1
