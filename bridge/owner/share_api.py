"""POST /shares: record an owner's share in the manifest (mounted by owner_api.py, which
authenticates the owner first).

Only the bridge's key signs manifest entries, so `obscura clips share` (on the owner's machine)
uploads the re-encrypted copy itself and then asks the running bridge to append the `share` entry
(docs/manifest.md §4, clip-format.md §7).

Request (JSON): {"object": source id, "copy": new id, "recipient": "age1…", "sha256", "size"}.
The bridge checks that the source is a clip it recorded and still holds in its retention index
(not a poster or a share copy: the index records each object's kind), and that the copy is in
the bucket under its prefix with exactly that size and SHA-256, before signing; the copy then
expires with the source's retention.

Answer: 201 {"seq", "published"}, once the new manifest head is in the bucket or after 30 s
without it (`published: false`: the share is signed and saved, the head goes up later). A 4xx
answer appends nothing, so the client may remove its copy then (and only then).
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from crypto.age_keys import AgeError, X25519Recipient
from crypto.manifest import ShareEntry

if TYPE_CHECKING:
    from bridge.store.vault import ClipVault

ID = re.compile(r"^[0-9a-f]{32}$")
CHUNK = 4 << 20
_SHA = re.compile(r"^[0-9a-f]{64}$")


def refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _sha256(vault: ClipVault, name: str, size: int) -> str | None:
    """SHA-256 of `name` read in chunks, never past `size` + 1 bytes (a clip can be large; the
    bridge holds one chunk at a time), or None if it is not exactly `size` bytes."""
    h, n = hashlib.sha256(), 0
    while n <= size:
        want = min(size + 1, n + CHUNK) - n
        data = await vault.bucket.get_range(name, n, n + want)
        if data is None:
            return None
        h.update(data)
        n += len(data)
        if len(data) < want:  # the end of the object
            break
    return h.hexdigest() if n == size else None


async def record_share(vault: ClipVault, body: dict[str, Any]) -> web.Response:
    try:
        source, copy = str(body["object"]), str(body["copy"])
        recipient = str(X25519Recipient.parse(str(body["recipient"])))
        sha, size = str(body["sha256"]), int(body["size"])
    except (ValueError, KeyError, TypeError, AgeError) as e:
        return refuse(400, f"malformed share request: {e}")
    if not (ID.match(source) and ID.match(copy) and _SHA.match(sha)) or size <= 0:
        return refuse(400, "malformed share request: ids, sha256 or size")
    root = vault.layout.root
    source_name, copy_name = f"{root}/{source}", f"{root}/{copy}"
    if not vault.is_live(source_name):
        return refuse(404, f"{source} is not a live clip of this bridge")
    if not vault.is_clip(source_name):
        return refuse(
            422, f"{source} is a poster or a share copy, not a clip: only clips can be shared"
        )
    if vault.is_live(copy_name):
        return refuse(409, f"{copy} is already recorded")
    info = await vault.bucket.head(copy_name)
    if info is None or info.size != size:
        return refuse(409, f"the copy {copy} is not in the bucket with {size} bytes")
    if await _sha256(vault, copy_name, size) != sha:
        return refuse(409, f"the copy {copy} in the bucket does not match its SHA-256")
    entry = ShareEntry(source, copy, recipient, sha, size)
    if not await vault.record_share(source_name, copy_name, entry):
        return refuse(409, f"{source} was deleted or {copy} recorded meanwhile")
    published = await vault.wait_published()  # so the owner's next `clips list` shows it
    state = vault.writer.state
    return web.json_response(
        {"seq": state.seq if state else None, "published": published}, status=201
    )
