"""Ringing a doorbell camera through the local API, and `obscura ring` (its client).

    POST /cameras/{name}/ring
    Authorization: Bearer <the contents of state_dir/doorbell.token>

    200 {"camera", "rang": true, "rings"}      the iPhone rings (bridge/doorbell.py: the rest)
    401 no (Bearer) Authorization header        403 a wrong token
    404 no such camera                          409 the camera is not a doorbell
    429 rang less than 2 s ago (Retry-After): suppressed and counted, not queued

The token is checked before anything else, so a caller without it learns nothing, not even
which cameras exist. A browser page cannot send this request on its own: the Authorization
header needs a CORS preflight this server never grants, and the status server's Host check
(bridge/status.py) already turns away DNS-rebinding pages. The route answers only once the
event is handed to HAP-python, which sends it at once.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bridge.config import Config
from bridge.doorbell import MIN_INTERVAL, Doorbells, read_token, token_path

log = logging.getLogger(__name__)

RING_PATH = "/cameras/{name}/ring"
_LOG_EVERY = 10.0  # seconds between two log lines about refused ring requests
TIMEOUT = 10.0


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class _RefusalLog:
    """One log line per _LOG_EVERY seconds about refused requests (a flood must not fill the
    log); never the token that was presented."""

    def __init__(self) -> None:
        self._last = -math.inf
        self._quiet = 0

    def note(self, why: str, remote: str | None) -> None:
        now = time.monotonic()
        if now - self._last < _LOG_EVERY:
            self._quiet += 1
            return
        more = f" ({self._quiet} more since the last report)" if self._quiet else ""
        log.warning("refused a doorbell ring from %s: %s%s", remote or "?", why, more)
        self._last, self._quiet = now, 0


def add_ring_route(app: web.Application, get_doorbells: Callable[[], Doorbells | None]) -> None:
    refusals = _RefusalLog()

    async def ring(request: web.Request) -> web.Response:
        doorbells = get_doorbells()
        if doorbells is None:
            return _error(503, "the bridge is starting or stopping")
        scheme, _, presented = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            doorbells.refused += 1
            refusals.note("no Bearer token", request.remote)
            return _error(401, "a ring needs 'Authorization: Bearer <token>' (the token is in "
                          "the bridge's state_dir/doorbell.token)",
                          {"WWW-Authenticate": 'Bearer realm="obscura"'})  # fmt: skip
        if not doorbells.token_matches(presented.strip()):
            doorbells.refused += 1
            refusals.note("wrong token", request.remote)
            return _error(403, "wrong token")
        name = request.match_info["name"]
        doorbell = doorbells.get(name)
        if doorbell is None:
            if doorbells.is_camera(name):
                return _error(409, f"camera {name!r} is not a doorbell (`doorbell = true` in its "
                              "[[cameras]] table)")  # fmt: skip
            return _error(404, f"no camera named {name!r}")
        result = doorbell.ring()
        if result.outcome == "suppressed":
            wait = max(1, math.ceil(result.retry_after))
            message = (f"camera {doorbell.name!r} rang less than {MIN_INTERVAL:g} s ago: this "
                       "ring is suppressed (counted in /status)")  # fmt: skip
            return _error(429, message, {"Retry-After": str(wait)})
        return web.json_response({"camera": doorbell.name, "rang": True, "rings": doorbell.rings})

    app.router.add_post(RING_PATH, ring)


# ---- the client: `obscura ring` ----


def ring_url(base: str, camera: str) -> str:
    return f"{base.rstrip('/')}/cameras/{urllib.parse.quote(camera, safe='')}/ring"


def ring_camera(config: Config, camera: str, url: str | None = None) -> int:
    """Ring `camera` on the running bridge of `config`: 0 when it rang, 1 otherwise."""
    from bridge.owner.bridge_client import status_url

    try:
        token = read_token(config.state_dir)
    except OSError as exc:
        print(
            f"obscura: cannot read the ring token {token_path(config.state_dir)} "
            f"({exc.strerror or exc}): has `obscura run` started with this configuration, and "
            "may this user read its state directory?",
            file=sys.stderr,
        )
        return 1
    target = ring_url(url or status_url(config), camera)
    request = urllib.request.Request(
        target, data=b"", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            answer: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            detail = str(json.loads(exc.read())["error"])
        except (ValueError, KeyError, TypeError):
            detail = exc.reason
        print(f"obscura: not rung (HTTP {exc.code}): {detail}", file=sys.stderr)
        return 1
    except ValueError:
        print(f"obscura: {target} did not answer like an Obscura bridge", file=sys.stderr)
        return 1
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"obscura: the bridge is not reachable at {target} ({reason}): is `obscura run` "
            "running with this configuration, and its [status] server on? (or pass --url)",
            file=sys.stderr,
        )
        return 1
    print(
        f"rang {answer.get('camera', camera)!r} ({answer.get('rings', '?')} ring(s) since the "
        "bridge started)"
    )
    return 0
