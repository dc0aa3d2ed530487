"""The owner proof of possession (bridge/owner/proof.py): single use, short-lived, bound to the
exact request, and a client that decrypts nothing but challenges."""

from __future__ import annotations

import base64

import pytest

from bridge.owner.proof import ChallengeStore, open_challenge, proof
from crypto.age import encrypt
from crypto.age_keys import AgeError, X25519Identity

OWNER = X25519Identity.generate()
STRANGER = X25519Identity.generate()
BODY = b'{"object":"00"}'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(store: ChallengeStore, identity: X25519Identity = OWNER) -> tuple[str, bytes]:
    cid, challenge = store.issue([OWNER.recipient])
    return cid, open_challenge([identity], challenge)


def test_the_owner_proves_a_request_once() -> None:
    store = ChallengeStore()
    cid, nonce = answer(store)
    given = proof(nonce, cid, "POST", "/shares", BODY)
    assert store.redeem(cid, given, "POST", "/shares", BODY) is None
    again = store.redeem(cid, given, "POST", "/shares", BODY)
    assert again is not None and again.status == 401 and "already used" in again.message
    assert len(store) == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/deletions", BODY), ("PUT", "/shares", BODY), ("POST", "/shares", BODY + b" ")],
)
def test_the_proof_is_bound_to_the_request(method: str, path: str, body: bytes) -> None:
    store = ChallengeStore()
    cid, nonce = answer(store)
    refusal = store.redeem(cid, proof(nonce, cid, "POST", "/shares", BODY), method, path, body)
    assert refusal is not None and refusal.status == 403 and "does not match" in refusal.message


def test_a_wrong_guess_spends_the_challenge() -> None:
    store = ChallengeStore()
    cid, nonce = answer(store)
    wrong = store.redeem(cid, "00" * 32, "POST", "/shares", BODY)
    assert wrong is not None and wrong.status == 403
    right = store.redeem(cid, proof(nonce, cid, "POST", "/shares", BODY), "POST", "/shares", BODY)
    assert right is not None and right.status == 401  # too late: no brute force on one challenge
    cid, _ = answer(store)
    for junk in ("not hex", "é", ""):
        refusal = store.redeem(cid, junk, "POST", "/shares", BODY)
        assert refusal is not None and refusal.status in (401, 403)


def test_a_request_without_a_proof_spends_the_challenge_it_names() -> None:
    """docs/manifest.md §11: a challenge is spent by the first request that names it."""
    store = ChallengeStore()
    cid, nonce = answer(store)
    for missing in (None, ""):
        bare = store.redeem(cid, missing, "POST", "/shares", BODY)
        assert bare is not None and bare.status == 401 and "owner proof required" in bare.message
    late = store.redeem(cid, proof(nonce, cid, "POST", "/shares", BODY), "POST", "/shares", BODY)
    assert late is not None and late.status == 401 and "already used" in late.message
    assert len(store) == 0


def test_missing_and_expired_proofs() -> None:
    clock = Clock()
    store = ChallengeStore(ttl=60, clock=clock)
    missing = store.redeem(None, None, "POST", "/shares", BODY)
    assert missing is not None and missing.status == 401
    assert "owner proof required" in missing.message
    cid, nonce = answer(store)
    clock.now += 61
    late = store.redeem(cid, proof(nonce, cid, "POST", "/shares", BODY), "POST", "/shares", BODY)
    assert late is not None and late.status == 401 and "expired" in late.message


def test_outstanding_challenges_are_bounded() -> None:
    store = ChallengeStore(limit=3)
    first, nonce = answer(store)
    for _ in range(5):
        store.issue([OWNER.recipient])
    assert len(store) == 3
    gone = store.redeem(first, proof(nonce, first, "POST", "/s", b""), "POST", "/s", b"")
    assert gone is not None and gone.status == 401


def test_only_a_recipient_opens_a_challenge_and_only_challenges_are_opened() -> None:
    store = ChallengeStore()
    _, challenge = store.issue([OWNER.recipient])
    with pytest.raises(AgeError):
        open_challenge([STRANGER], challenge)
    # A fake bridge handing the client some other age file (a clip, a manifest segment).
    other = base64.b64encode(encrypt([OWNER.recipient], b"\0\0\0\x18ftypisom" + b"x" * 40))
    with pytest.raises(AgeError, match="not an Obscura owner challenge"):
        open_challenge([OWNER], other.decode())
