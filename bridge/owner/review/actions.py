"""Share and delete from the review page: the same owner-proof requests `obscura clips share`
and `clips delete` make (bridge/owner/clips_write.py), on the owner thread.

The bridge records both in its manifest, so the page shows the result only after a refresh
that reads the new manifest (the actions start one). A bridge that cannot be reached is 409
`bridge-offline`: the page says sharing and deleting need it running. A request that may or
may not have been carried out (a time-out) says so, as the CLI does, rather than guess.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from bridge.owner.audit import Owner, OwnerError
from bridge.owner.bridge_client import BridgeClient, BridgeError, status_url
from bridge.owner.clips_write import clip_objects, share_event
from bridge.owner.events import Event
from bridge.owner.review.library import Library, OwnerThread
from crypto.age import AgeError
from crypto.age_keys import X25519Recipient

log = logging.getLogger(__name__)


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": message, "kind": kind}, status=status)


PROBE_EVERY = 5.0  # seconds between checks of whether the bridge answers
PROBE_TIMEOUT = 1.5


class Actions:
    def __init__(self, owner: OwnerThread, library: Library, bridge_url: str | None) -> None:
        self.owner, self.library = owner, library
        config = owner.owner.config
        self.base = bridge_url or (status_url(config) if config is not None else None)
        self.bridge_url = bridge_url
        self.reachable: bool | None = None  # unknown until the first probe answers
        self._probed = -PROBE_EVERY
        self._probe: asyncio.Task[None] | None = None

    def bridge_status(self) -> bool | None:
        """Whether the bridge answered lately (for the page: share and delete need it); a
        stale answer starts a new check in the background and is returned meanwhile."""
        now = time.monotonic()
        stale = now - self._probed > PROBE_EVERY
        if self.base is not None and stale and (self._probe is None or self._probe.done()):
            self._probed = now
            self._probe = asyncio.ensure_future(self._check())
        return self.reachable if self.base is not None else False

    async def _check(self) -> None:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(f"{self.base}/health") as answer,
            ):
                # Any answer: 503 only says a camera is down, the API is there.
                self.reachable = answer.status in (200, 503)
        except (aiohttp.ClientError, TimeoutError, OSError):
            self.reachable = False

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)

    def _client(self, owner: Owner, event: Event) -> BridgeClient:
        client = BridgeClient(owner.config, owner.identities, self.base)
        client.check(event.view.bridge_id)
        return client

    async def share(self, event: Event, recipient: str) -> web.Response:
        try:
            recipient = str(X25519Recipient.parse(recipient.strip()))
        except AgeError as exc:
            return _error(400, "bad-recipient", f"not an age public key (age1…): {exc}")

        def run(owner: Owner) -> dict[str, Any]:
            shared = share_event(owner, event, self._client(owner, event), recipient)
            return {
                "copy": shared.copy_id,
                "name": shared.name,
                "recipient": recipient,
                "command": shared.command,
                "seq": shared.answer.get("seq"),
                "published": shared.answer.get("published", True),
            }

        return await self._do("share", run)

    async def delete(self, event: Event) -> web.Response:
        objects = [o for p in event.live for o in clip_objects(p)]

        def run(owner: Owner) -> dict[str, Any]:
            answer = self._client(owner, event).post("/deletions", {"objects": objects})
            return {"deleted": objects, "seq": answer.get("seq"),
                    "published": answer.get("published", True)}  # fmt: skip

        return await self._do("delete", run)

    async def _do(self, what: str, run: Any) -> web.Response:
        if self.base is None:
            return _error(409, "no-bridge", "no bridge to ask: start obscura review with "
                          "--url (the bridge's local API) or --config (its configuration)")
        try:
            result = await self.owner.run(run, self.owner.owner)
        except BridgeError as exc:
            if exc.refused and exc.status is None:  # never reached it
                return _error(409, "bridge-offline", f"the bridge is not running: {exc}")
            kind = "refused" if exc.refused else "unsure"
            return _error(409 if exc.refused else 504, kind, str(exc))
        except OwnerError as exc:
            return _error(409, "refused", str(exc))
        log.info("review: %s done (%s)", what, result.get("seq"))
        self.library.refresh()  # the bridge recorded it in the manifest: read it again
        return web.json_response(result)
