"""The owner's side of the bridge's local API: requests proven with the owner's identity
(bridge/owner/proof.py), with errors that name the URL tried."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from bridge.config import Config
from bridge.owner.audit import OwnerError
from bridge.owner.proof import HEADER_CHALLENGE, HEADER_PROOF, open_challenge, proof
from crypto.age_keys import AgeError, X25519Identity


def status_url(config: Config) -> str:
    """http://host:port of the status API in `config` (a wildcard bind is reached on loopback)."""
    host = config.status.address
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    host = "::1" if host == "::" else host
    return f"http://{f'[{host}]' if ':' in host else host}:{config.status.port}"


class BridgeError(OwnerError):
    """A request the bridge did not carry out, or may not have.

    `refused`: the bridge certainly did not act on it: it answered with a 4xx status (its
    refusals append nothing), or the request never reached it (connection refused, no such
    host, or the challenge before it failed). Otherwise (a time-out, a dropped connection, a
    5xx status, an answer that is not JSON) it may have acted, or may still be acting."""

    def __init__(self, message: str, *, refused: bool, status: int | None = None,
                 detail: str = "") -> None:
        super().__init__(message)
        self.refused = refused
        self.status = status
        self.detail = detail


#: Seconds to wait for an answer. The bridge answers a share once it has re-read the copy and
#: waited (at most 30 s) for its new manifest head to be in the bucket.
TIMEOUT = 120.0


class BridgeClient:
    def __init__(
        self, config: Config | None, identities: Sequence[X25519Identity], url: str | None = None
    ) -> None:
        if url is None:
            if config is None:
                raise OwnerError("no bridge to ask: give its URL (--url) or its configuration")
            url = status_url(config)
        self.base = url.rstrip("/")
        self.identities = identities

    def _call(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        url = self.base + path
        req = urllib.request.Request(
            url, data=data, method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            try:
                detail = str(json.loads(detail)["error"])
            except (ValueError, KeyError, TypeError):
                pass
            shown = detail
            if e.code in (404, 405) and path != "/status" and "live" not in detail:
                shown = f"this bridge does not support {path} yet (upgrade it)"
            if e.code < 500:
                raise BridgeError(
                    f"the bridge at {self.base} refused {path}: {shown}",
                    refused=True, status=e.code, detail=detail,
                ) from None
            raise BridgeError(
                f"the bridge at {self.base} failed on {path} (HTTP {e.code}: {shown})",
                refused=False, status=e.code, detail=detail,
            ) from None
        except ValueError:
            raise BridgeError(
                f"{url} did not answer like an Obscura bridge (not JSON)", refused=False
            ) from None
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ConnectionRefusedError | socket.gaierror):
                raise BridgeError(
                    f"the bridge is not reachable at {url} ({reason}): is `obscura run` "
                    "running, and is this its configuration? (or pass --url)",
                    refused=True,
                ) from None
            if isinstance(reason, TimeoutError):
                reason = f"no answer within {TIMEOUT:.0f} s"
            raise BridgeError(
                f"the bridge at {self.base} did not answer {path} ({reason or type(e).__name__})",
                refused=False,
            ) from None

    def check(self, bridge_id: str) -> None:
        """The bridge at this URL is running and is `bridge_id`, whose manifest holds the clip."""
        storage = (self._call("GET", "/status") or {}).get("storage") or {}
        if storage.get("error"):
            raise OwnerError(f"the bridge at {self.base} records no clips: {storage['error']}")
        if storage.get("bridge_id") != bridge_id:
            raise OwnerError(
                f"the bridge at {self.base} is not bridge {bridge_id}, whose manifest records "
                f"this clip (it is {storage.get('bridge_id') or 'one without [storage]'})"
            )

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST `body` to `path` with a fresh owner proof. BridgeError says whether the bridge
        may have acted on it; up to the challenge, it did not."""
        try:
            challenge = self._call("POST", "/owner/challenge", b"{}")
        except BridgeError as e:
            raise BridgeError(str(e), refused=True, status=e.status, detail=e.detail) from None
        try:
            nonce = open_challenge(self.identities, str(challenge["challenge"]))
        except AgeError as e:
            raise BridgeError(
                f"cannot answer the bridge's owner challenge ({e}): this identity is not one of "
                "the bridge's [storage] recipients", refused=True,
            ) from None
        except (KeyError, TypeError):
            raise BridgeError(
                f"the bridge at {self.base} sent no owner challenge", refused=True
            ) from None
        data = json.dumps(body).encode()
        cid = str(challenge["id"])
        headers = {HEADER_CHALLENGE: cid, HEADER_PROOF: proof(nonce, cid, "POST", path, data)}
        return self._call("POST", path, data, headers)
