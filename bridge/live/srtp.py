"""SRTP/SRTCP with AES_CM_128_HMAC_SHA1_80 via pylibsrtp (libsrtp).

HomeKit uses one master key per stream: the controller sends it in SetupEndpoints, the accessory
echoes it, and both directions (our RTP/RTCP, the controller's RTCP) are protected with it. The
streams differ by SSRC, which libsrtp folds into the keystream, so sharing the key is safe.
"""

from __future__ import annotations

import pylibsrtp

KEY_SIZE = 16
SALT_SIZE = 14
AUTH_TAG_SIZE = 10  # HMAC-SHA1-80; SRTCP adds another 4 bytes of E flag + index
# pylibsrtp works in a fixed 1500-byte buffer and reserves 144 bytes for the largest possible
# trailer (tag + MKI), so it refuses plain RTP packets longer than this.
MAX_PLAIN_PACKET = 1500 - 144


class SrtpError(Exception):
    """A packet failed SRTP authentication or replay checks."""


class SrtpContext:
    """Outbound protection and inbound verification for one live-view stream."""

    def __init__(self, key: bytes, salt: bytes) -> None:
        if len(key) != KEY_SIZE or len(salt) != SALT_SIZE:
            raise ValueError(
                f"AES_CM_128_HMAC_SHA1_80 needs a {KEY_SIZE}-byte key and {SALT_SIZE}-byte salt"
            )
        profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        self._tx = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=key + salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile
            )
        )
        self._rx = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=key + salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile
            )
        )

    def protect(self, rtp: bytes) -> bytes:
        return self._tx.protect(rtp)

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        return self._tx.protect_rtcp(rtcp)

    def unprotect(self, srtp: bytes) -> bytes:
        """An incoming RTP packet (the controller's talk-back on the audio port)."""
        try:
            return self._rx.unprotect(srtp)
        except (pylibsrtp.Error, ValueError) as exc:  # ValueError: longer than it handles
            raise SrtpError(str(exc)) from exc

    def unprotect_rtcp(self, srtcp: bytes) -> bytes:
        try:
            return self._rx.unprotect_rtcp(srtcp)
        except (pylibsrtp.Error, ValueError) as exc:  # ValueError: longer than it handles
            raise SrtpError(str(exc)) from exc
