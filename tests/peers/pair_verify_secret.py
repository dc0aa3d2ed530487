"""The pair-verify X25519 shared secret of aiohomekit's HAP sessions, kept for the test hub.

A home hub derives its HDS keys from the shared secret of the pair-verify that opened the HAP
connection which wrote SetupDataStreamTransport. aiohomekit keeps that secret only inside the
`derive` closure that `aiohomekit.protocol.get_session_keys()` returns; it is used once in
`SecureHomeKitConnection._connect_once` (for the control keys) and dropped.
`capture_pair_verify_secrets()` wraps both, in this process only, so that each connection keeps
the secret of its latest pair-verify. Checked against aiohomekit 4.0.1; test_hds_peer.py
verifies the kept secret against the connection's own control keys, across a reconnect.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import Any

_connecting: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "hds_hub_connecting", default=None
)
_secrets: weakref.WeakKeyDictionary[object, bytes] = weakref.WeakKeyDictionary()
_installed = False


def _secret_in(derive: Callable[..., bytes]) -> bytes:
    cells = [c.cell_contents for c in (getattr(derive, "__closure__", None) or ())]
    found = [c for c in cells if isinstance(c, bytes) and len(c) == 32]
    if len(found) != 1:
        raise RuntimeError("aiohomekit's derive() no longer closes over one 32-byte secret")
    return found[0]


def capture_pair_verify_secrets() -> None:
    """Patch aiohomekit (this process only, once) so each secure connection keeps the X25519
    shared secret of its latest pair-verify; read it with `pair_verify_secret(connection)`."""
    global _installed
    if _installed:
        return
    from aiohomekit.controller.ip import connection as conn_mod

    original_keys: Callable[..., Generator[Any, Any, Any]] = conn_mod.get_session_keys  # type: ignore[attr-defined]
    original_connect: Callable[[Any], Awaitable[Any]] = (
        conn_mod.SecureHomeKitConnection._connect_once
    )

    def get_session_keys(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        owner = _connecting.get()
        result: Any = yield from original_keys(*args, **kwargs)  # (session id, derive)
        if owner is not None:
            _secrets[owner] = _secret_in(result[1])
        return result

    async def _connect_once(self: Any) -> Any:
        token = _connecting.set(self)
        try:
            return await original_connect(self)
        finally:
            _connecting.reset(token)

    conn_mod.get_session_keys = get_session_keys  # type: ignore[attr-defined]
    conn_mod.SecureHomeKitConnection._connect_once = _connect_once  # type: ignore[method-assign]
    _installed = True


def pair_verify_secret(connection: object) -> bytes:
    try:
        return _secrets[connection]
    except KeyError:
        raise LookupError("no pair-verify secret for this connection (capture not on?)") from None
