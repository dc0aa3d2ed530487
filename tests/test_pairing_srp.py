"""Pair-setup's SRP agrees with a controller's even when a value starts with a zero byte.

The seeds make os.urandom deterministic so that B and K (seed 534) and S (seed 271) start with
a zero byte: HAP-python's own server fails these exchanges with aiohomekit (about 1 pairing in
85 fails that way); ours must not.
"""

from __future__ import annotations

import hashlib
import random
from unittest import mock

import pytest
from aiohomekit.crypto.srp import SrpClient
from pyhap.hsrp import Server
from pyhap.params import get_srp_context
from pyhap.util import long_to_bytes

from accessories.srp import PaddedSrpServer

CODE = "482-91-375"


def exchange(seed: int, padded: bool) -> bool:
    with mock.patch("os.urandom", random.Random(seed).randbytes):
        if padded:
            server: Server = PaddedSrpServer(CODE.encode())
        else:
            server = Server(get_srp_context(3072, hashlib.sha512, 16), b"Pair-Setup", CODE.encode())
        client = SrpClient("Pair-Setup", CODE)
    salt, b_public = server.get_challenge()
    client.set_salt(bytearray(salt))
    client.set_server_public_key(long_to_bytes(b_public))  # as hap_handler encodes it
    server.set_A(client.get_public_key_bytes())
    server_proof = server.verify(client.get_proof_bytes())
    if server_proof is None or not client.verify_servers_proof_bytes(server_proof):
        return False
    # The session key feeds HKDF for the encrypted M5/M6 exchange: both must be identical.
    return long_to_bytes(server.get_session_key()) == client.get_session_key_bytes()


@pytest.mark.parametrize("seed", [271, 534, 1, 2])
def test_padded_server_agrees_with_controller(seed: int) -> None:
    assert exchange(seed, padded=True)


@pytest.mark.parametrize("seed", [271, 534])
def test_these_seeds_do_hit_the_leading_zero_cases(seed: int) -> None:
    assert not exchange(seed, padded=False)  # stock HAP-python: the bug this guards against
