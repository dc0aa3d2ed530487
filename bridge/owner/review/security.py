"""Who may talk to the review app: one middleware that every route goes through.

The app holds the owner's identity and serves plaintext, so it is guarded like a Jupyter
server (docs/review.md §2): anything on this computer can connect to a loopback port, and any
web page the owner has open can make the browser send requests to it.

- **Host** must name this server (bridge/status.py's HostCheck): a DNS-rebinding page sends its
  own name, and gets 403.
- **Session**: the token printed by `obscura review` is exchanged once (`/?token=…`) for an
  HttpOnly, SameSite=Strict cookie holding a second secret, then the browser is redirected to a
  URL without the token (history, screenshots). Scripts may send `Authorization: Bearer TOKEN`.
  Secrets are compared in constant time.
- **Changes come from our own page**: a POST must carry our Origin (a cross-site form or fetch
  carries its own), or no Origin and the Bearer token (a script).
- **Every answer** is `no-store` (plaintext must not land in a disk cache), never framed, never
  sniffed, sends no Referer and allows only our own scripts, styles and media (CSP).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from bridge.status import HostCheck

COOKIE = "obscura_review"
MAX_BODY = 16 * 1024
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
}
SAFE_METHODS = ("GET", "HEAD")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Session:
    """The run's secrets: the printed token and the cookie it is exchanged for."""

    host: HostCheck
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    cookie: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def origin_ok(self, origin: str) -> bool:
        """`Origin: http://HOST:PORT` naming this server (the names the Host check allows)."""
        scheme, sep, host = origin.partition("://")
        return bool(sep) and scheme == "http" and self.host.allows(host)

    def bearer(self, request: web.Request) -> bool:
        kind, _, value = request.headers.get("Authorization", "").partition(" ")
        return kind.lower() == "bearer" and _same(value.strip(), self.token)

    def cookie_ok(self, request: web.Request) -> bool:
        return _same(request.cookies.get(COOKIE, ""), self.cookie)


def _same(given: str, secret: str) -> bool:
    return hmac.compare_digest(given.encode(), secret.encode())


def _refuse(status: int, text: str) -> web.Response:
    return web.json_response({"error": text, "kind": "forbidden"}, status=status)


def guard(session: Session) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _checked(session, request, handler)

    return middleware


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response as it is prepared (a streamed video's headers go before the
    middleware would see it): app.on_response_prepare."""
    response.headers.update(HEADERS)


async def _checked(session: Session, request: web.Request, handler: Handler) -> web.StreamResponse:
    if not session.host.allows(request.headers.get("Host")):
        return _refuse(403, "this server answers only to its own address (Host header)")
    bearer = session.bearer(request)
    token = request.query.get("token")
    if request.path == "/" and token is not None and request.method == "GET":
        if not _same(token, session.token):
            return _refuse(403, "wrong token: open the URL `obscura review` printed")
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(COOKIE, session.cookie, httponly=True, samesite="Strict", path="/")
        return response
    if not (bearer or session.cookie_ok(request)):
        return _refuse(403, "not signed in: open the URL `obscura review` printed")
    if request.method not in SAFE_METHODS:
        origin = request.headers.get("Origin")
        if origin is None and not bearer:
            return _refuse(403, "a change must come from the review page (no Origin)")
        if origin is not None and not session.origin_ok(origin):
            return _refuse(403, "a change must come from the review page (foreign Origin)")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _refuse(413, "request body too large")
    try:
        return await handler(request)
    except web.HTTPException as exc:  # aiohttp's own (404, 405, …): as JSON like ours
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "location")}
        return web.json_response(
            {"error": exc.text or exc.reason, "kind": "http"}, status=exc.status, headers=keep
        )
