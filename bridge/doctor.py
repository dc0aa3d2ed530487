"""`obscura doctor`: is the configuration valid, is the bridge running, is every camera up?"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from bridge.config import Config


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = max(0, time.time() - ts)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def doctor(config: Config, url: str | None) -> int:
    where = config.path or "built-in demo configuration"
    print(f"config    {where}: OK ({len(config.cameras)} camera(s))")
    base = url or f"http://{_host(config.status.address)}:{config.status.port}"
    try:
        with urllib.request.urlopen(f"{base}/status", timeout=3) as response:
            status = json.load(response)
    except (urllib.error.URLError, OSError) as exc:
        print(
            f"bridge    not reachable at {base} ({getattr(exc, 'reason', exc)}): "
            "is `obscura run` running?"
        )
        return 1
    hap = status["hap"]
    print(
        f"bridge    {status['name']} up {_ago(status['started_at'])}, HAP on "
        f"{hap['address']}:{hap['port']}, {hap['paired_controllers']} paired controller(s)"
    )
    if not hap["paired_controllers"]:
        print("          not paired yet: run `obscura pair` and scan the code in the Home app")
    problems = 0
    for cam in status["cameras"]:
        video = cam["video"]
        if cam["state"] == "streaming" and video:
            size = f"{video['width']}x{video['height']}@{video['fps']:g}"
            detail = f"{size} {video['profile']}, up {_ago(cam['connected_since'])}"
        else:
            problems += 1
            retry = cam.get("next_retry_at")
            when = f", next try in {max(0, retry - time.time()):.0f} s" if retry else ""
            detail = f"{cam['state'].upper()}: {cam['last_error'] or 'no details'}{when}"
        sessions = len(cam["live_sessions"])
        print(
            f"camera    {cam['name']!r} ({cam['source']}): {detail}; "
            f"{sessions} live viewer(s), {cam['reconnects']} reconnect(s)"
        )
    return 1 if problems else 0


def _host(address: str) -> str:
    if address in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{address}]" if ":" in address else address
