"""The owner's side of the bridge's local API: requests proven with the owner's identity
(bridge/owner/proof.py), with errors that name the URL tried."""

from __future__ import annotations

import json
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


class BridgeClient:
    def __init__(
        self, config: Config, identities: Sequence[X25519Identity], url: str | None = None
    ) -> None:
        self.base = (url or status_url(config)).rstrip("/")
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
            with urllib.request.urlopen(req, timeout=120) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            try:
                detail = str(json.loads(detail)["error"])
            except (ValueError, KeyError, TypeError):
                pass
            if e.code in (404, 405) and path != "/status" and "live" not in detail:
                detail = f"this bridge does not support {path} yet (upgrade it)"
            raise OwnerError(f"the bridge at {self.base} refused {path}: {detail}") from None
        except ValueError:
            raise OwnerError(f"{url} did not answer like an Obscura bridge (not JSON)") from None
        except OSError as e:
            reason = getattr(e, "reason", e)
            raise OwnerError(
                f"the bridge is not reachable at {url} ({reason}): is `obscura run` running, "
                "and is this its configuration? (or pass --url)"
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
        """POST `body` to `path` with a fresh owner proof."""
        challenge = self._call("POST", "/owner/challenge", b"{}")
        try:
            nonce = open_challenge(self.identities, str(challenge["challenge"]))
        except AgeError as e:
            raise OwnerError(
                f"cannot answer the bridge's owner challenge ({e}): this identity is not one of "
                "the bridge's [storage] recipients"
            ) from None
        except (KeyError, TypeError):
            raise OwnerError(f"the bridge at {self.base} sent no owner challenge") from None
        data = json.dumps(body).encode()
        cid = str(challenge["id"])
        headers = {HEADER_CHALLENGE: cid, HEADER_PROOF: proof(nonce, cid, "POST", path, data)}
        return self._call("POST", path, data, headers)
