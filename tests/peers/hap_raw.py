"""Raw HAP requests over a paired, encrypted aiohomekit session (tests of malformed input).

aiohomekit's public calls only send well-formed requests and hide the HTTP status; tests that
check what the bridge answers to a bad query or body speak to `pairing.connection` directly.
aiohomekit raises HttpErrorResponse for a 4xx; it is turned back into a plain reply here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohomekit.controller.ip import IpPairing
from aiohomekit.exceptions import HttpErrorResponse

HAP_JSON = "application/hap+json"


@dataclass(frozen=True)
class Reply:
    code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def statuses(self) -> dict[tuple[int, int], int]:
        """(aid, iid) -> status of a 207 answer (0 for rows without a status)."""
        rows = (self.json() or {}).get("characteristics", [])
        return {(row["aid"], row["iid"]): row.get("status", 0) for row in rows}


async def request(
    pairing: IpPairing,
    method: str,
    target: str,
    body: bytes | None = None,
    *,
    content_type: str | None = HAP_JSON,
) -> Reply:
    """One request on the pairing's session; the connection is (re)opened if needed."""
    await pairing._ensure_connected()
    headers: list[tuple[str, Any]] = []
    if body is not None:
        headers.append(("Content-Length", len(body)))
        if content_type is not None:
            headers.append(("Content-Type", content_type))
    try:
        response = await pairing.connection.request(method, target, headers=headers, body=body)
    except HttpErrorResponse as err:
        response = err.response
    return Reply(response.code, bytes(response.body))


async def put_json(pairing: IpPairing, body: Any) -> Reply:
    return await request(pairing, "PUT", "/characteristics", json.dumps(body).encode())


async def read(pairing: IpPairing, *keys: tuple[int, int]) -> Reply:
    ids = ",".join(f"{aid}.{iid}" for aid, iid in keys)
    return await request(pairing, "GET", f"/characteristics?id={ids}")
