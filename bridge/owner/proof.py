"""Owner proof of possession for the bridge's local API (docs/manifest.md §11).

The bridge signs manifest entries; only the owner may ask it to record a share or a deletion.
The bridge holds no owner secret, only the recipients' public keys, so it proves who is asking
with a challenge only an owner identity can open:

1. `POST /owner/challenge` → `{"id", "challenge"}`: `challenge` is base64 of an age file to the
   bridge's [storage] recipients whose plaintext is `CHALLENGE_PREFIX ‖ nonce` (32 random
   bytes). The bridge keeps (id → nonce) in memory, single use, for `TTL` seconds.
2. The client decrypts it with its identity and sends the request with the headers
   `X-Obscura-Challenge: id` and `X-Obscura-Proof: hex(HMAC-SHA256(nonce, M))`,
   `M = "obscura-owner-proof-v1" ‖ 0 ‖ id ‖ 0 ‖ method ‖ 0 ‖ path ‖ 0 ‖ body bytes`.
   The proof covers the exact request, so a captured one authorizes nothing else, and the
   challenge is spent by the first request that names it: right, wrong or no proof at all.

This module is the part both sides share; it does no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crypto.age import Identity, Recipient, decrypt, encrypt
from crypto.age_keys import AgeError

#: The plaintext's prefix: the client decrypts only what it recognises as a challenge, so a
#: fake bridge cannot use it to decrypt (or test guesses about) clips or manifest objects.
CHALLENGE_PREFIX = b"obscura-owner-challenge-v1\n"
NONCE_SIZE = 32
PROOF_CONTEXT = b"obscura-owner-proof-v1"
HEADER_CHALLENGE = "X-Obscura-Challenge"
HEADER_PROOF = "X-Obscura-Proof"
TTL = 60.0
#: Outstanding challenges kept; the oldest is dropped first (a flood only makes the owner retry).
MAX_OUTSTANDING = 32


def proof(nonce: bytes, challenge_id: str, method: str, path: str, body: bytes) -> str:
    # Fields before the body are hex ids, a verb and a fixed path: none holds a 0 byte.
    message = b"\0".join(
        [PROOF_CONTEXT, challenge_id.encode(), method.upper().encode(), path.encode(), body]
    )
    return hmac.new(nonce, message, hashlib.sha256).hexdigest()


def open_challenge(identities: Iterable[Identity], challenge_b64: str) -> bytes:
    """The nonce inside a challenge; AgeError if no identity opens it or it is not one."""
    try:
        ciphertext = base64.b64decode(challenge_b64, validate=True)
    except ValueError:
        raise AgeError("the challenge is not base64") from None
    plaintext = decrypt(identities, ciphertext)
    if len(plaintext) != len(CHALLENGE_PREFIX) + NONCE_SIZE or not plaintext.startswith(
        CHALLENGE_PREFIX
    ):
        raise AgeError("that is not an Obscura owner challenge; not answering it")
    return plaintext[len(CHALLENGE_PREFIX) :]


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 401: no usable challenge; 403: a proof that does not match
    message: str


class ChallengeStore:
    """Outstanding challenges: issued to the recipients, redeemed once, expiring after `ttl`."""

    def __init__(
        self,
        ttl: float = TTL,
        limit: int = MAX_OUTSTANDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.limit = limit
        self.clock = clock
        self._open: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # id -> nonce, expiry

    def __len__(self) -> int:
        return len(self._open)

    def issue(self, recipients: Iterable[Recipient]) -> tuple[str, str]:
        """A new challenge: (id, base64 of the age file)."""
        now = self.clock()
        for cid in [c for c, (_, expiry) in self._open.items() if expiry <= now]:
            del self._open[cid]
        while len(self._open) >= self.limit:
            self._open.popitem(last=False)
        nonce = secrets.token_bytes(NONCE_SIZE)
        cid = secrets.token_hex(16)
        self._open[cid] = (nonce, now + self.ttl)
        return cid, base64.b64encode(encrypt(recipients, CHALLENGE_PREFIX + nonce)).decode()

    def redeem(
        self, cid: str | None, given: str | None, method: str, path: str, body: bytes
    ) -> Refusal | None:
        """None when `given` proves the request; else why not. A challenge the request names is
        spent either way, even with no proof: its first use is its only one."""
        entry = self._open.pop(cid, None) if cid else None
        if not cid or not given:
            return Refusal(
                401,
                "owner proof required: this request must be made with the owner's identity "
                "(`obscura clips share|delete --identity …`)",
            )
        if entry is None or entry[1] <= self.clock():
            return Refusal(401, "owner challenge unknown, expired or already used: ask a new one")
        expected = bytes.fromhex(proof(entry[0], cid, method, path, body))
        try:
            ok = hmac.compare_digest(expected, bytes.fromhex(given))
        except ValueError:
            ok = False
        if not ok:
            return Refusal(
                403,
                "owner proof does not match: the requester holds no identity of this bridge's "
                "recipients, or the request was altered",
            )
        return None
