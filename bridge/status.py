"""Local status API (aiohttp): JSON health of each camera and live session, Prometheus /metrics.

Bound to loopback by default: it shows camera states and stream counters, never credentials.

DNS rebinding: a web page the owner opens can point its own host name at 127.0.0.1 and then
read this API as "same origin". The browser still sends the page's name in ``Host``, so every
request (the owner routes that share the app included) must name this server: a loopback name
(localhost, 127.0.0.1, [::1]) or the configured address, with the port it listens on; when the
configured address is a wildcard (0.0.0.0, ::), any address of this host's interfaces. Anything
else gets 421 Misdirected Request and nothing more. Connections are capped (MAX_CONNECTIONS, the
newcomer closed at once) and an idle one is closed after KEEPALIVE_TIMEOUT (aiohttp counts from
the connection's start, so one that never sends a request goes too).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ifaddr
from aiohttp import web

StatusProvider = Callable[[], dict[str, Any]]
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
MAX_CONNECTIONS = 32  # the CLI, `obscura doctor`, a Prometheus scraper: a handful at most
KEEPALIVE_TIMEOUT = 15.0  # seconds; aiohttp's default keeps an idle connection for an hour


def _host_literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def interface_hosts() -> set[str]:
    """This host's addresses as they appear in a Host header (IPv6 in brackets, no zone)."""
    hosts = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            hosts.add(_host_literal(str(ipaddress.ip_address(address.split("%", 1)[0]))))
    return hosts


def _is_ip_literal(name: str) -> bool:
    bracketed = name.startswith("[") and name.endswith("]")
    try:
        ip = ipaddress.ip_address(name[1:-1] if bracketed else name)
    except ValueError:
        return False
    return bracketed == (ip.version == 6)


class HostCheck:
    """Which Host headers name this server; ``port`` is set once the server listens."""

    def __init__(self, address: str, port: int = 0) -> None:
        self.address = address
        self.port = port
        self.wildcard = ipaddress.ip_address(address).is_unspecified
        self._interfaces: set[str] = set()
        self._listed_at = float("-inf")

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        name, sep, port = host.lower().rpartition(":")
        if not sep or not port.isdigit() or int(port) != self.port:
            return False
        if name in LOOPBACK_NAMES or name == _host_literal(self.address).lower():
            return True
        if self.wildcard and _is_ip_literal(name):
            if name not in self._interfaces and time.monotonic() - self._listed_at > 5.0:
                self._interfaces = interface_hosts()  # an address may have been added since
                self._listed_at = time.monotonic()
            return name in self._interfaces
        return False

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self.allows(request.headers.get("Host")):
            return web.Response(status=421, text="misdirected request\n")
        return await handler(request)


def build_app(provider: StatusProvider, host_check: HostCheck | None = None) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        status = provider()
        ok = all(c["state"] == "streaming" for c in status["cameras"])
        return web.json_response(status, status=200 if ok else 503)

    async def status_(_: web.Request) -> web.Response:
        return web.json_response(provider())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=prometheus_text(provider()), content_type="text/plain")

    app = web.Application(middlewares=[host_check.middleware] if host_check else [])
    app.router.add_get("/", status_)
    app.router.add_get("/status", status_)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def prometheus_text(status: dict[str, Any]) -> str:
    lines = [
        "# HELP obscura_up Whether the bridge is running.",
        "# TYPE obscura_up gauge",
        "obscura_up 1",
        "# HELP obscura_uptime_seconds Seconds since the bridge started.",
        "# TYPE obscura_uptime_seconds gauge",
        f"obscura_uptime_seconds {time.time() - status['started_at']:.1f}",
        "# HELP obscura_paired_controllers Paired HomeKit controllers.",
        "# TYPE obscura_paired_controllers gauge",
        f"obscura_paired_controllers {status['hap']['paired_controllers']}",
    ]
    per_camera = [
        (
            "camera_up",
            "gauge",
            "1 when the camera is streaming.",
            lambda c: int(c["state"] == "streaming"),
        ),
        (
            "camera_reconnects_total",
            "counter",
            "Times the camera connection was lost.",
            lambda c: c["reconnects"],
        ),
        (
            "camera_packets_total",
            "counter",
            "Encoded video packets received.",
            lambda c: c["packets"],
        ),
        ("camera_bytes_total", "counter", "Encoded video bytes received.", lambda c: c["bytes"]),
        (
            "camera_prebuffer_seconds",
            "gauge",
            "Seconds of video in the prebuffer.",
            lambda c: c["prebuffer_seconds"],
        ),
        (
            "camera_live_sessions",
            "gauge",
            "Live-view sessions streaming now.",
            lambda c: len(c["live_sessions"]),
        ),
        (
            "camera_snapshots_total",
            "counter",
            "Snapshots served.",
            lambda c: c["snapshots"]["served"],
        ),
        (
            "camera_snapshot_errors_total",
            "counter",
            "Snapshots refused (camera down).",
            lambda c: c["snapshots"]["errors"],
        ),
    ]
    for metric, kind, help_text, get in per_camera:
        lines.append(f"# HELP obscura_{metric} {help_text}")
        lines.append(f"# TYPE obscura_{metric} {kind}")
        for cam in status["cameras"]:
            lines.append(f'obscura_{metric}{{camera="{_label(cam["name"])}"}} {get(cam)}')
    lines.extend(_hksv_metrics(status["cameras"]))
    lines.extend(_doorbell_metrics(status["cameras"]))
    return "\n".join(lines) + "\n"


def _hksv_metrics(cameras: list[dict[str, Any]]) -> list[str]:
    """HomeKit Secure Video: recordings, how they ended, refusals, data stream sessions."""
    hksv = [(_label(c["name"]), c["hksv"]) for c in cameras if c.get("hksv")]
    lines = [
        "# HELP obscura_hksv_recordings_total HKSV recordings the hub opened and we accepted.",
        "# TYPE obscura_hksv_recordings_total counter",
        *(f'obscura_hksv_recordings_total{{camera="{n}"}} {h["recordings"]}' for n, h in hksv),
        "# HELP obscura_hksv_recording_ends_total HKSV recordings ended, by how they ended.",
        "# TYPE obscura_hksv_recording_ends_total counter",
    ]
    for name, h in hksv:
        for reason, count in sorted(h["ended"].items()):
            lines.append(
                f'obscura_hksv_recording_ends_total{{camera="{name}",reason="{_label(reason)}"}}'
                f" {count}"
            )
    lines += [
        "# HELP obscura_hksv_refused_total HKSV recording requests refused, by reason.",
        "# TYPE obscura_hksv_refused_total counter",
    ]
    for name, h in hksv:
        for reason, count in sorted(h["refused"].items()):
            lines.append(
                f'obscura_hksv_refused_total{{camera="{name}",reason="{_label(reason)}"}} {count}'
            )
    lines += [
        "# HELP obscura_hksv_sessions HomeKit Data Stream sessions open.",
        "# TYPE obscura_hksv_sessions gauge",
        *(f'obscura_hksv_sessions{{camera="{n}"}} {h["hds_sessions"]}' for n, h in hksv),
        "# HELP obscura_hksv_recording 1 while an HKSV recording is being sent.",
        "# TYPE obscura_hksv_recording gauge",
        *(f'obscura_hksv_recording{{camera="{n}"}} {int(bool(h["recording"]))}' for n, h in hksv),
    ]
    return lines


def _doorbell_metrics(cameras: list[dict[str, Any]]) -> list[str]:
    bells = [(_label(c["name"]), c["doorbell"]) for c in cameras if c.get("doorbell")]
    return [
        "# HELP obscura_doorbell_rings_total Doorbell rings sent to HomeKit.",
        "# TYPE obscura_doorbell_rings_total counter",
        *(f'obscura_doorbell_rings_total{{camera="{n}"}} {d["rings"]}' for n, d in bells),
        "# HELP obscura_doorbell_suppressed_total Rings within 2 s of the last one, not sent.",
        "# TYPE obscura_doorbell_suppressed_total counter",
        *(f'obscura_doorbell_suppressed_total{{camera="{n}"}} {d["suppressed"]}' for n, d in bells),
    ]


async def start_status_server(
    provider: StatusProvider,
    address: str,
    port: int,
    extend: Callable[[web.Application], None] | None = None,
) -> web.AppRunner:
    host_check = HostCheck(address, port)
    app = build_app(provider, host_check)
    if extend is not None:
        extend(app)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT)
    await runner.setup()
    assert runner.server is not None
    cap_connections(runner.server, MAX_CONNECTIONS)
    site = web.TCPSite(runner, address, port)
    await site.start()
    host_check.port = runner.addresses[0][1]  # the real one when port is 0
    return runner


def cap_connections(server: web.Server, limit: int) -> None:
    """Over ``limit`` open connections, a new one is aborted as it arrives (aiohttp has no cap
    of its own; its Server is told of each connection before any byte is read)."""
    admit = server.connection_made

    def connection_made(handler: Any, transport: Any) -> None:
        admit(handler, transport)
        if len(server.connections) > limit:
            # On the loop's next turn: aiohttp queues the handler's task right after this
            # returns, and a connection lost before that task first ran tripped its assertion
            # ("Task exception was never retrieved" for every refused socket).
            asyncio.get_running_loop().call_soon(transport.abort)

    server.connection_made = connection_made  # type: ignore[method-assign]
