"""The owner's requests on the bridge's local status API: shares and deletions.

The bridge signs what they append to the manifest, so they must come from the owner, not from
any process that can reach the loopback port. Each request carries a proof of possession of an
owner age identity (bridge/owner/proof.py, docs/manifest.md §11):

    POST /owner/challenge   -> {"id", "challenge", "expires_in", "bridge_id"}
    POST /shares            (owner proof) record a share            -> share_api.py
    POST /deletions         (owner proof) delete objects it recorded
                            -> {"seq", "pending", "published"}

Both answer once the new manifest head is in the bucket, or when that wait times out:
`"published": false` (the change is signed and saved; the bridge keeps uploading it).

Every route also refuses what a browser page could send (CSRF): an Origin header, or a body that
is not JSON. Mount with `add_owner_routes(app, lambda: service.vault)` before the app starts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge.owner.proof import HEADER_CHALLENGE, HEADER_PROOF, ChallengeStore
from bridge.owner.share_api import ID, record_share, refuse

if TYPE_CHECKING:
    from bridge.store.vault import ClipVault

log = logging.getLogger(__name__)

GetVault = Callable[[], "ClipVault | None"]
OwnerHandler = Callable[["ClipVault", dict[str, Any]], Awaitable[web.Response]]
Handler = Callable[[web.Request], Awaitable[web.Response]]
MAX_OBJECTS = 64  # a clip, its poster and its share copies
#: Seconds a deletion's answer waits to tell whether its head is up (after the 30 s it waited).
PUBLISHED_CHECK = 0.5


def _local_tool(request: web.Request) -> web.Response | None:
    """Browsers send Origin on cross-site POSTs and cannot send JSON without a preflight."""
    if request.headers.get("Origin") or request.content_type != "application/json":
        return refuse(403, "JSON requests from local tools only")
    return None


def _no_vault() -> web.Response:
    return refuse(
        503, "this bridge records no clips: no [storage], or recording is off (`obscura doctor`)"
    )


def make_challenge_handler(get_vault: GetVault, store: ChallengeStore) -> Handler:
    async def post_challenge(request: web.Request) -> web.Response:
        if (bad := _local_tool(request)) is not None:
            return bad
        vault = get_vault()
        if vault is None:
            return _no_vault()
        cid, challenge = store.issue(vault.recipients)
        return web.json_response({
            "id": cid,
            "challenge": challenge,
            "expires_in": store.ttl,
            "bridge_id": vault.bridge_id,
        })

    return post_challenge


def owner_only(get_vault: GetVault, store: ChallengeStore, handler: OwnerHandler) -> Handler:
    """`handler(vault, body)` once the request proved it comes from an owner identity."""

    async def guarded(request: web.Request) -> web.Response:
        if (bad := _local_tool(request)) is not None:
            return bad
        vault = get_vault()
        if vault is None:
            return _no_vault()
        raw = await request.read()  # the proof covers these exact bytes
        refusal = store.redeem(
            request.headers.get(HEADER_CHALLENGE),
            request.headers.get(HEADER_PROOF),
            request.method,
            request.path,
            raw,
        )
        if refusal is not None:
            # Never the nonce or the proof: only that, where and why.
            log.warning(
                "refused an owner request %s %s: %s", request.method, request.path, refusal.message
            )
            return refuse(refusal.status, refusal.message)
        try:
            body = json.loads(raw)
        except ValueError as e:
            return refuse(400, f"malformed request: {e}")
        if not isinstance(body, dict):
            return refuse(400, "malformed request: not a JSON object")
        return await handler(vault, body)

    return guarded


async def delete_objects(vault: ClipVault, body: dict[str, Any]) -> web.Response:
    """{"objects": [clip, poster, share copies…]}, or one share copy: the owner's client reads
    them from the verified manifest; the bridge deletes only objects it recorded and still
    holds (an unknown one: 404 "not a live object", which the client takes as "not the
    bridge's": docs/manifest.md §11)."""
    objects = body.get("objects")
    if (
        not isinstance(objects, list)
        or not 0 < len(objects) <= MAX_OBJECTS
        or not all(isinstance(o, str) and ID.match(o) for o in objects)
        or len(set(objects)) != len(objects)
    ):
        return refuse(400, f"malformed deletion: 1 to {MAX_OBJECTS} distinct object ids")
    names = [f"{vault.layout.root}/{o}" for o in objects]
    for oid, name in zip(objects, names, strict=True):
        if not vault.is_live(name):
            return refuse(404, f"{oid} is not a live object of this bridge")
        if vault.spool.has_object(name):  # deleting it now would let the upload bring it back
            return refuse(409, f"{oid} is still being uploaded; try again in a minute")
    pending = await vault.delete_for_owner(names)
    log.info("owner deletion: %d object(s) recorded as deleted", len(names))
    state = vault.writer.state
    # delete_for_owner waited for the head already: this only asks whether it got there
    # (False, too, if a newer head, a heartbeat's, is not up yet: the cautious answer).
    published = await vault.wait_published(PUBLISHED_CHECK)
    return web.json_response({
        "seq": state.seq if state else None,
        "pending": [vault.layout.object_id(n) for n in pending],
        "published": published,
    })


def add_owner_routes(app: web.Application, get_vault: GetVault) -> None:
    store = ChallengeStore()  # in memory only: a restart voids every outstanding challenge
    app.router.add_post("/owner/challenge", make_challenge_handler(get_vault, store))
    app.router.add_post("/shares", owner_only(get_vault, store, record_share))
    app.router.add_post("/deletions", owner_only(get_vault, store, delete_objects))
