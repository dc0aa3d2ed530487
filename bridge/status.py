"""Local status API (aiohttp): JSON health of each camera and live session, Prometheus /metrics.

Bound to loopback by default: it shows camera states and stream counters, never credentials.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

StatusProvider = Callable[[], dict[str, Any]]


def build_app(provider: StatusProvider) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        status = provider()
        ok = all(c["state"] == "streaming" for c in status["cameras"])
        return web.json_response(status, status=200 if ok else 503)

    async def status_(_: web.Request) -> web.Response:
        return web.json_response(provider())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=prometheus_text(provider()), content_type="text/plain")

    app = web.Application()
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
    return "\n".join(lines) + "\n"


async def start_status_server(
    provider: StatusProvider,
    address: str,
    port: int,
    extend: Callable[[web.Application], None] | None = None,
) -> web.AppRunner:
    app = build_app(provider)
    if extend is not None:
        extend(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, address, port)
    await site.start()
    return runner
