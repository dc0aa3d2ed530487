"""Bech32 (BIP 173) without the 90-character limit, as age uses it for keys.

age encodes 32-byte keys as Bech32: `age1…` recipients, `AGE-SECRET-KEY-1…` identities. The
checksum is always computed over the lowercase string; a string may be all upper- or all
lowercase, never mixed.
"""

from __future__ import annotations

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_VALUES = {c: i for i, c in enumerate(CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class Bech32Error(ValueError):
    """Not a valid Bech32 string."""


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or (acc << (tobits - bits)) & maxv:
        # Decoding: at most 4 bits of padding, and they must be zero (a canonical encoding).
        raise Bech32Error("non-zero or excess padding bits")
    return out


def encode(hrp: str, data: bytes) -> str:
    """Lowercase Bech32 of `data` under the human-readable part `hrp`."""
    hrp = hrp.lower()
    words = _convert(data, 8, 5, True)
    poly = _polymod([*_hrp_expand(hrp), *words, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(CHARSET[w] for w in words + checksum)


def decode(s: str) -> tuple[str, bytes]:
    """(lowercase hrp, data) of a Bech32 string; raises Bech32Error."""
    if s.lower() != s and s.upper() != s:
        raise Bech32Error("mixed case")
    if any(not 33 <= ord(c) <= 126 for c in s):
        raise Bech32Error("invalid character")
    s = s.lower()
    pos = s.rfind("1")
    if pos < 1 or pos + 7 > len(s):
        raise Bech32Error("missing separator or checksum")
    hrp, rest = s[:pos], s[pos + 1:]
    try:
        words = [_VALUES[c] for c in rest]
    except KeyError:
        raise Bech32Error("invalid data character") from None
    if _polymod(_hrp_expand(hrp) + words) != 1:
        raise Bech32Error("bad checksum")
    return hrp, bytes(_convert(words[:-6], 5, 8, False))
