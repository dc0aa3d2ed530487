"""POST /shares on the bridge's local status API: record an owner's share in the manifest.

Only the bridge's key signs manifest entries, so `obscura clips share` (on the owner's machine)
uploads the re-wrapped copy itself and then asks the running bridge to append the `share` entry
(docs/manifest.md §4, clip-format.md §7). Mount with `add_share_routes(app, lambda: service.vault)`.

Request (JSON): {"object": source id, "copy": new id, "recipient": "age1…", "sha256", "size"}.
The bridge checks that the source is a clip or poster it recorded and still holds in its
retention index, and that the copy is in the bucket under its prefix with exactly that size and
SHA-256, before signing; the copy then expires with the source's retention.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from crypto.age_keys import AgeError, X25519Recipient
from crypto.manifest import ShareEntry

if TYPE_CHECKING:
    from bridge.store.vault import ClipVault

_ID = re.compile(r"^[0-9a-f]{32}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def _bad(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def make_share_handler(get_vault: Callable[[], ClipVault | None]) -> Any:
    async def post_share(request: web.Request) -> web.Response:
        vault = get_vault()
        if vault is None:
            return _bad(503, "this bridge records no clips ([storage] is not configured)")
        # A browser page must not be able to drive this (CSRF): JSON only, no Origin.
        if request.headers.get("Origin") or request.content_type != "application/json":
            return _bad(403, "JSON requests from local tools only")
        try:
            body = await request.json()
            source, copy = str(body["object"]), str(body["copy"])
            recipient = str(X25519Recipient.parse(str(body["recipient"])))
            sha, size = str(body["sha256"]), int(body["size"])
        except (ValueError, KeyError, TypeError, AgeError) as e:
            return _bad(400, f"malformed share request: {e}")
        if not (_ID.match(source) and _ID.match(copy) and _SHA.match(sha)) or size <= 0:
            return _bad(400, "malformed share request: ids, sha256 or size")
        root = vault.layout.root
        index = vault._index  # object name -> start time: what this bridge recorded and holds
        source_name, copy_name = f"{root}/{source}", f"{root}/{copy}"
        if source_name not in index:
            return _bad(404, f"{source} is not a live clip of this bridge")
        if copy_name in index:
            return _bad(409, f"{copy} is already recorded")
        info = await vault.bucket.head(copy_name)
        if info is None or info.size != size:
            return _bad(409, f"the copy {copy} is not in the bucket with {size} bytes")
        data = await vault.bucket.get(copy_name)
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            return _bad(409, f"the copy {copy} in the bucket does not match its SHA-256")
        index[copy_name] = index[source_name]  # retention removes it with its source
        await vault.append([ShareEntry(source, copy, recipient, sha, size)])
        state = vault.writer.state
        return web.json_response({"seq": state.seq if state else None}, status=201)

    return post_share


def add_share_routes(app: web.Application, get_vault: Callable[[], ClipVault | None]) -> None:
    """e.g. add_share_routes(app, lambda: service.vault), before the app is started."""
    app.router.add_post("/shares", make_share_handler(get_vault))
