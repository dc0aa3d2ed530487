"""The review app's routes (docs/review.md §3). Every one sits behind security.guard.

State lives in the app under AppKeys (app.py); handlers only translate HTTP to the library
(timeline), the videos (ranged, decrypted media) and the owner's actions (share, delete).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from aiohttp import web

from bridge.owner.events import Event
from bridge.owner.review.keys import ACTIONS, LIBRARY, POSTERS, STATIC, VIDEOS
from bridge.owner.review.library import Query, decode_cursor
from bridge.owner.review.media import MediaError

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
_RANGE = re.compile(r"^(\d*)-(\d*)$")


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": message, "kind": kind}, status=status)


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(request.app[STATIC] / "index.html")


@routes.get("/api/status")
async def status(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response({
        **app[LIBRARY].status(),
        "media": app[VIDEOS].stats(),
        "bridge_reachable": app[ACTIONS].bridge_status(),  # None: not known yet
    })  # fmt: skip


@routes.post("/api/refresh")
async def refresh(request: web.Request) -> web.Response:
    request.app[LIBRARY].refresh()
    request.app[VIDEOS].clear()
    return web.json_response({"state": "loading"}, status=202)


def _ints(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)  # type: ignore[arg-type]
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be milliseconds since 1970") from None


@routes.get("/api/events")
async def list_events(request: web.Request) -> web.Response:
    q = request.query
    try:
        before = decode_cursor(q["before"]) if q.get("before") else None
        limit = int(q.get("limit", "50"))
    except ValueError:
        return _error(400, "bad-query", "before must be a cursor from `next`, limit a number")
    query = Query(
        cameras=frozenset(q.getall("camera", [])),
        subjects=frozenset(q.getall("subject", [])),
        start_ms=_ints(q.get("from"), "from"),
        end_ms=_ints(q.get("to"), "to"),
        before=before,
        limit=limit,
    )
    return web.json_response(request.app[LIBRARY].page(query))


def _event(request: web.Request) -> Event:
    event = request.app[LIBRARY].event(request.match_info["id"])
    if event is None:
        raise web.HTTPNotFound(text="no such event (deleted, or not loaded yet)")
    return event


@routes.get("/api/events/{id}/poster")
async def poster(request: web.Request) -> web.Response:
    event = _event(request)
    try:
        jpeg = await request.app[POSTERS].jpeg(event)
    except MediaError as exc:
        request.app[LIBRARY].note_problem(event, exc.kind, str(exc), exc.oid)
        return _error(502, exc.kind, str(exc))
    if jpeg is None:
        return _error(404, "no-poster", "this event has no poster")
    return web.Response(body=jpeg, content_type="image/jpeg")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a `Range: bytes=…` header (the first range of several); None: the
    whole body (no header, or a unit or form we do not know, as RFC 9110 allows). Raises
    ValueError for a range that cannot be satisfied."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    m = _RANGE.match(spec.split(",", 1)[0].strip())
    if unit.strip().lower() != "bytes" or m is None or not (m[1] or m[2]):
        return None
    if m[1]:
        start = int(m[1])
        end = min(size, int(m[2]) + 1) if m[2] else size
    else:
        start, end = max(0, size - int(m[2])), size
    if start >= size or end <= start:
        raise ValueError("unsatisfiable")
    return start, end


@routes.get("/api/events/{id}/video")
async def video(request: web.Request) -> web.StreamResponse:
    event = _event(request)
    library = request.app[LIBRARY]
    try:
        media = await request.app[VIDEOS].get(event)
    except MediaError as exc:
        library.note_problem(event, exc.kind, str(exc), exc.oid)
        return _error(502, exc.kind, str(exc))
    headers = {"Accept-Ranges": "bytes", "Content-Type": "video/mp4"}
    if request.query.get("download"):
        headers["Content-Disposition"] = f'attachment; filename="{download_name(event)}"'
    try:
        span = parse_range(request.headers.get("Range"), media.size)
    except ValueError:
        headers["Content-Range"] = f"bytes */{media.size}"
        return web.Response(status=416, headers=headers)
    start, end = span or (0, media.size)
    response = web.StreamResponse(status=206 if span else 200, headers=headers)
    if span:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{media.size}"
    response.content_length = end - start
    if request.method == "HEAD":
        await response.prepare(request)
        return response
    pieces = media.read(start, end)
    try:  # the first piece before the headers: an error then is still a clean JSON answer
        first = await anext(pieces, b"")
    except MediaError as exc:
        library.note_problem(event, exc.kind, str(exc), exc.oid)
        return _error(502, exc.kind, str(exc))
    try:
        await response.prepare(request)
        await response.write(first)
        async for piece in pieces:
            await response.write(piece)
    except MediaError as exc:
        # Mid-body: cut the connection short of Content-Length, so the browser sees an error
        # rather than playing what follows.
        library.note_problem(event, exc.kind, str(exc), exc.oid)
        log.warning("review: %s", exc)
        if request.transport is not None:
            request.transport.close()
        return response
    except ConnectionError:
        return response  # the player moved on (a seek, the player closed): nothing to report
    finally:
        await pieces.aclose()  # a request cut short leaves no half-read generator behind
    request.app[VIDEOS].served(event, media)
    try:
        await response.write_eof()
    except ConnectionError:
        pass
    return response


def download_name(event: Event) -> str:
    camera = re.sub(r"[^A-Za-z0-9._-]+", "-", event.camera).strip("-") or "camera"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(event.start_ms / 1000))
    return f"{camera}-{stamp}.mp4"


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPBadRequest(text="send JSON (Content-Type: application/json)")
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def _still_verifying() -> web.Response:
    # Acting on an event needs the whole manifest verified (the proofs name its state).
    return _error(409, "loading", "the manifest is still being verified: try again when it is done")


@routes.post("/api/events/{id}/share")
async def share(request: web.Request) -> web.Response:
    event = _event(request)
    if request.app[LIBRARY].early:
        return _still_verifying()
    body = await _json_body(request)
    recipient = body.get("recipient")
    if not isinstance(recipient, str):
        return _error(400, "bad-recipient", "give the recipient's age public key (age1…)")
    return await request.app[ACTIONS].share(event, recipient)


@routes.post("/api/events/{id}/delete")
async def delete(request: web.Request) -> web.Response:
    event = _event(request)
    if request.app[LIBRARY].early:
        return _still_verifying()
    await _json_body(request)
    return await request.app[ACTIONS].delete(event)
