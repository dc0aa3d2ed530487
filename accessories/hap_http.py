"""HAP requests that a controller got wrong answer 4xx, never 500 with a traceback.

HAP-python 5.2's ``HAPServerHandler.dispatch`` turns every exception into 500 and logs its
traceback: an unknown path or method (a KeyError in its routing table), ``GET
/characteristics`` without ``id`` or with ``id=garbage``, a body that is not JSON, a snapshot
request for an unknown aid, a pairing message without the tags its state needs. Such requests
are the client's mistake, and a log full of tracebacks hides our own bugs (and fills the disk
when a peer repeats them).

``CheckedHandler`` routes like HAP-python (same table) and parses what it can check up front:
404 for an unknown path, 405 for a known path with another method, 400 with HAP status -70410
for a malformed query, body or pairing message (``hap_requests.BadRequest``), and the per-id
rules of ``hap_access.CheckedAccessDriver`` for the rest. Only an exception that remains is
ours: it still answers 500 and logs its traceback. The Content-Type of a request is not
checked, as neither HAP-python nor Apple's ADK checks it for these paths; the body must parse.

``CheckedProtocol`` gives every connection this handler (accessories/bridge.py combines it
with the connection caps of hap_connections.py). A malformed request is answered and its
connection stays open (the request itself was framed correctly); HTTP that h11 cannot parse
still closes that one connection only.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import h11
import orjson
from pyhap import tlv
from pyhap.accessory import Bridge
from pyhap.hap_handler import (
    HAP_TLV_STATES,
    HAPResponse,
    HAPServerHandler,
    UnprivilegedRequestException,
)
from pyhap.hap_protocol import HAPServerProtocol
from pyhap.util import to_hap_json

from .camera import MAX_SNAPSHOT_SIDE
from .hap_requests import BadRequest, Status, parse_read_query

__all__ = ["CheckedHandler", "CheckedProtocol"]

logger = logging.getLogger(__name__)

# Pairing messages: the TLV tags HAP-python reads for each state (tag 6) of pair-setup and
# pair-verify, and for each request type (tag 0) of /pairings (spec sections 5.6-5.11).
_STATE, _METHOD = 6, 0
_PUBLIC_KEY, _PROOF, _ENCRYPTED, _IDENTIFIER, _PERMISSIONS = 3, 4, 5, 1, 11
_PAIR_SETUP = {1: (), 3: (_PUBLIC_KEY, _PROOF), 5: (_ENCRYPTED,)}
_PAIR_VERIFY = {1: (_PUBLIC_KEY,), 3: (_ENCRYPTED,)}
_PAIRINGS = {3: (_IDENTIFIER, _PUBLIC_KEY, _PERMISSIONS), 4: (_IDENTIFIER,), 5: ()}


class _NotFound(Exception):
    pass


class _NotAllowed(Exception):
    pass


class CheckedHandler(HAPServerHandler):
    """HAPServerHandler with client errors answered 4xx (see module doc)."""

    def dispatch(self, request: h11.Request, body: bytes | None = None) -> HAPResponse:
        self.command = request.method.decode("ascii", "replace")
        self.path = request.target.decode("ascii", "replace")
        self.request_body = body
        self.response = HAPResponse()
        try:
            self.parsed_url = urlsplit(self.path)  # type: ignore[assignment]
            getattr(self, self._route(self.command, self.parsed_url.path))()
        except _NotFound:
            self._fail(HTTPStatus.NOT_FOUND, None, "unknown path")
        except _NotAllowed:
            self._fail(HTTPStatus.METHOD_NOT_ALLOWED, None, "method not allowed")
        except BadRequest as exc:
            self._fail(HTTPStatus.BAD_REQUEST, Status.INVALID_VALUE, str(exc))
        except UnprivilegedRequestException:
            self._fail(HTTPStatus.UNAUTHORIZED, Status.INSUFFICIENT_PRIVILEGES, "not verified")
        except Exception:
            logger.exception("%s: failed to process %s request", self.client_address, self.command)
            self._fail(HTTPStatus.INTERNAL_SERVER_ERROR, Status.COMMUNICATION_FAILURE, None)
        response, self.response = self.response, None
        return response

    def _route(self, method: str, path: str) -> str:
        name = self.HANDLERS.get(method, {}).get(path)
        if name is not None:
            return name
        if any(path in routes for routes in self.HANDLERS.values()):
            raise _NotAllowed
        raise _NotFound

    def _fail(self, http: HTTPStatus, status: int | None, why: str | None) -> None:
        if why is not None:
            logger.debug(
                "%s: %s %s -> %d: %s",
                self.client_address, self.command, (self.path or "")[:64], http.value, why,
            )  # fmt: skip
        self.response = HAPResponse()
        self.send_response(http)
        if status is not None:
            self.send_header("Content-Type", self.JSON_RESPONSE_TYPE)
            self.end_response(to_hap_json({"status": int(status)}))

    def _json_body(self) -> Any:
        try:
            return orjson.loads(self.request_body or b"")
        except orjson.JSONDecodeError:
            raise BadRequest("body is not JSON") from None

    # ---- characteristics ----

    def handle_get_characteristics(self) -> None:
        if not self.is_encrypted:
            raise UnprivilegedRequestException
        assert self.parsed_url is not None
        ids = parse_read_query(self.parsed_url.query)
        answer = self.accessory_handler.get_characteristics([f"{a}.{i}" for a, i in ids])
        rows = answer["characteristics"]
        if all(row["status"] == Status.SUCCESS for row in rows):
            self.send_response(HTTPStatus.OK)
            for row in rows:
                del row["status"]
        else:
            self.send_response(HTTPStatus.MULTI_STATUS)
        self.send_header("Content-Type", self.JSON_RESPONSE_TYPE)
        self.end_response(to_hap_json(answer))

    def handle_set_characteristics(self) -> None:
        if not self.is_encrypted:
            raise UnprivilegedRequestException
        answer = self.accessory_handler.set_characteristics(
            self._json_body(),
            self.client_address,  # type: ignore[arg-type]
        )
        if answer is None:
            self.send_response(HTTPStatus.NO_CONTENT)
            return
        self.send_response(HTTPStatus.MULTI_STATUS)
        self.send_header("Content-Type", self.JSON_RESPONSE_TYPE)
        self.end_response(to_hap_json(answer))

    def handle_prepare(self) -> None:
        if not self.is_encrypted:
            raise UnprivilegedRequestException
        body = self._json_body()
        if not isinstance(body, dict):
            raise BadRequest("body is not a JSON object")
        answer = self.accessory_handler.prepare(body, self.client_address)  # type: ignore[arg-type]
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", self.JSON_RESPONSE_TYPE)
        self.end_response(to_hap_json(answer))

    # ---- snapshots ----

    def handle_resource(self) -> None:
        if not self.is_encrypted:
            raise UnprivilegedRequestException
        body = self._json_body()
        if not isinstance(body, dict):
            raise BadRequest("body is not a JSON object")
        if body.get("resource-type", "image") != "image":
            raise BadRequest("resource-type is not image")
        for key in ("image-width", "image-height"):
            size = body.get(key)
            if isinstance(size, bool) or not isinstance(size, int):
                raise BadRequest(f"{key} must be an integer")
            if not 0 < size <= MAX_SNAPSHOT_SIDE:
                raise BadRequest(f"{key} out of range")
        top = self.accessory_handler.accessory
        target = top
        if isinstance(top, Bridge):
            aid = body.get("aid")
            if isinstance(aid, bool) or not isinstance(aid, int):
                raise BadRequest("aid must be an integer")
            target = top.accessories.get(aid)
        if target is None or getattr(target, "async_get_snapshot", None) is None:
            self._fail(HTTPStatus.NOT_FOUND, Status.NO_SUCH_RESOURCE, "no camera with that aid")
            return
        super().handle_resource()

    # ---- pairing ----

    def handle_pairing(self) -> None:
        if not self.accessory_handler.pairing_locked_out and not self.state.paired:
            self._check_pairing_tlv(_STATE, _PAIR_SETUP, "pair-setup")
            state = tlv.decode(self.request_body or b"")[bytes([_STATE])][0]
            verifier = getattr(self.accessory_handler, "_srp_verifier", None)
            if state != 1 and verifier is None:
                raise BadRequest("pair-setup: M3 or M5 before M1")
            if state == 5 and getattr(verifier, "K", None) is None:
                raise BadRequest("pair-setup: M5 before M3")
        super().handle_pairing()

    def handle_pair_verify(self) -> None:
        if self.state.paired:
            self._check_pairing_tlv(_STATE, _PAIR_VERIFY, "pair-verify")
            items = tlv.decode(self.request_body or b"")
            state = items[bytes([_STATE])][0]
            if state == 1 and len(items[bytes([_PUBLIC_KEY])]) != 32:
                raise BadRequest("pair-verify: the public key is not 32 bytes")
            if state == 3 and self.enc_context is None:
                raise BadRequest("pair-verify: M3 before M1")
            if state == 3:
                self._pair_verify_m3()
                return
        super().handle_pair_verify()

    def _pair_verify_m3(self) -> None:
        """M3 carries an encrypted identifier and signature. Any peer can encrypt it (M1 needs
        no pairing), so a malformed inside (no identifier, one that is not a UUID) is a failed
        verification like a bad signature: kTLVError_Authentication, not a traceback."""
        try:
            super().handle_pair_verify()
        except (KeyError, ValueError, TypeError) as exc:
            logger.debug("%s: pair-verify M3 malformed: %r", self.client_address, exc)
            self.response = HAPResponse()
            self._send_authentication_error_tlv_response(HAP_TLV_STATES.M4)

    def handle_pairings(self) -> None:
        if self.is_encrypted and self.client_uuid is not None:
            self._check_pairing_tlv(_METHOD, _PAIRINGS, "pairings")
            items = tlv.decode(self.request_body or b"")
            method = items[bytes([_METHOD])][0]
            if method in (3, 4):
                _check_uuid(items[bytes([_IDENTIFIER])])
            if method == 3 and (
                len(items[bytes([_PUBLIC_KEY])]) != 32 or len(items[bytes([_PERMISSIONS])]) != 1
            ):
                raise BadRequest("pairings: add needs a 32-byte key and a 1-byte permission")
        super().handle_pairings()

    def _check_pairing_tlv(self, key: int, rules: dict[int, tuple[int, ...]], what: str) -> None:
        try:
            items = tlv.decode(self.request_body or b"")
        except ValueError:
            raise BadRequest(f"{what}: not TLV8") from None
        selector = items.get(bytes([key]))
        if selector is None or len(selector) != 1 or selector[0] not in rules:
            raise BadRequest(f"{what}: missing or unknown tag {key}")
        missing = [tag for tag in rules[selector[0]] if not items.get(bytes([tag]))]
        if missing:
            raise BadRequest(f"{what}: missing tags {missing}")


def _check_uuid(raw: bytes) -> None:
    try:
        uuid.UUID(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("pairings: the identifier is not a UUID") from None


class CheckedProtocol(HAPServerProtocol):
    """HAPServerProtocol whose requests go to a CheckedHandler. Put it first among the bases
    of a combined protocol: a base that refuses a connection before HAP-python's
    ``connection_made`` (no handler yet) keeps it refused."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.handler is not None:
            self.handler = CheckedHandler(self.accessory_driver, self.peername)  # type: ignore[arg-type]
