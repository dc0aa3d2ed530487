"""SRP-6a for pair-setup with every value padded to its full width, as iOS computes it.

HAP-python's server strips leading zero bytes from B, S and the session key K (its
long_to_bytes), while iOS and aiohomekit pad them (B and S to the 3072-bit group, K to the
64-byte SHA-512 digest). Whenever one of them starts with a zero byte (about 1 pairing in 85)
the two sides derive different proofs or keys and pairing fails for no visible reason. This
server pads everywhere; the integers it hands to HAP-python's handler report a fixed bit
length so that handler's own long_to_bytes pads them too.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pyhap.hsrp import Server
from pyhap.params import get_srp_context

GROUP_BITS = 3072
DIGEST_BYTES = hashlib.sha512().digest_size


class FixedWidthInt(int):
    """An int that pyhap.util.long_to_bytes encodes at a fixed width (leading zeros kept)."""

    _bits: int

    def __new__(cls, value: int, bits: int) -> FixedWidthInt:
        obj = super().__new__(cls, value)
        obj._bits = bits
        return obj

    def bit_length(self) -> int:
        return self._bits


class PaddedSrpServer(Server):
    def __init__(self, pincode: bytes) -> None:
        super().__init__(get_srp_context(GROUP_BITS, hashlib.sha512, 16), b"Pair-Setup", pincode)
        self.Bb = self._padN(self.Bb)

    def _get_K(self) -> int:
        return self._hexdigest_int16(self._padN(self.Sb))

    def set_A(self, bytes_A: bytes) -> None:
        super().set_A(self._padN(bytes_A))
        # Recompute what the parent derived from unpadded values.
        assert self.K is not None
        self.Kb = self.K.to_bytes(DIGEST_BYTES, "big")
        self.M = self._get_M()
        self.HAMK = self._get_HAMK()

    def get_challenge(self) -> tuple[bytes, Any]:
        return self.s, FixedWidthInt(self.B, GROUP_BITS)

    def get_session_key(self) -> Any:
        return None if self.K is None else FixedWidthInt(self.K, DIGEST_BYTES * 8)
