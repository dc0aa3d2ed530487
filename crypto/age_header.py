"""age v1 headers: parsing, encoding, and the file key they carry (c2sp.org/age)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Protocol

from crypto.age_keys import (
    AgeError,
    Identity,
    NoIdentityMatch,
    Stanza,
    as_identity,
    b64decode,
    b64encode,
    hkdf,
)

VERSION_LINE = b"age-encryption.org/v1\n"
CHUNK = 64 * 1024
TAG = 16
CT_CHUNK = CHUNK + TAG
PAYLOAD_NONCE = 16
MAX_HEADER = 1 << 20
LAST_COUNTER = (1 << 88) - 1  # chunk counters are 11 bytes
_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
_INTRO = b"age-encryption.org/"


class TruncatedHeader(AgeError):
    """The input ended inside the header (a random-access reader fetches more and retries)."""


def chunk_nonce(counter: int, final: bool) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce of payload chunk `counter`."""
    if counter > LAST_COUNTER:
        raise AgeError("age file too large (chunk counter overflow)")
    return counter.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def payload_key(file_key: bytes, nonce: bytes) -> bytes:
    """The payload's ChaCha20-Poly1305 key, from the file key and the 16-byte payload nonce."""
    return hkdf(file_key, nonce, b"payload")


class Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> object: ...


class Source(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


# ----------------------------------------------------------------------------------------------
# Header
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    stanzas: tuple[Stanza, ...]
    mac: bytes
    signed: bytes  # the header bytes the MAC covers: up to and including "---"

    def file_key(self, identities: Iterable[Identity]) -> bytes:
        """Unwrap the file key with the first identity that opens a stanza; check the MAC."""
        if any(s.type == "scrypt" for s in self.stanzas):
            raise AgeError("passphrase-encrypted (scrypt) age files are not supported")
        ids = [as_identity(i) for i in identities]
        if not ids:
            raise AgeError("no identity given")
        for identity in ids:
            key = identity.unwrap(self.stanzas)
            if key is not None:
                break
        else:
            raise NoIdentityMatch(
                "no identity matches this file (wrong key, or not encrypted to you)"
            )
        if not hmac.compare_digest(_header_mac(key, self.signed), self.mac):
            raise AgeError("bad header MAC: the header was altered")
        return key


def _header_mac(file_key: bytes, signed: bytes) -> bytes:
    return hmac.new(hkdf(file_key, b"", b"header"), signed, sha256).digest()


def encode_header(file_key: bytes, stanzas: Sequence[Stanza]) -> bytes:
    parts = [VERSION_LINE]
    for s in stanzas:
        parts.append(" ".join(("->", s.type, *s.args)).encode() + b"\n")
        body = b64encode(s.body)
        # Wrapped at 64 columns; the last line is shorter, so possibly empty.
        for i in range(0, len(body) + 1, 64):
            parts.append(body[i:i + 64].encode() + b"\n")
    parts.append(b"---")
    signed = b"".join(parts)
    return signed + b" " + b64encode(_header_mac(file_key, signed)).encode() + b"\n"


class Input:
    """`src` with a pushback buffer: the header is read by lines, the payload by readinto."""

    def __init__(self, src: Source) -> None:
        self._src = src
        self._readinto = getattr(src, "readinto", None)
        self._pending = bytearray()

    def readline(self) -> bytes:
        while True:
            i = self._pending.find(b"\n")
            if i >= 0:
                line = bytes(self._pending[:i + 1])
                del self._pending[:i + 1]
                return line
            if len(self._pending) > MAX_HEADER:
                raise AgeError("malformed header: line too long")
            block = self._src.read(4096)
            if not block:
                raise TruncatedHeader("truncated header")
            self._pending += block

    def peek(self, n: int) -> bytes:
        """Up to `n` bytes ahead, without consuming them."""
        while len(self._pending) < n:
            block = self._src.read(n - len(self._pending))
            if not block:
                break
            self._pending += block
        return bytes(self._pending[:n])

    def readinto(self, buf: memoryview) -> int:
        """Fill `buf` completely unless the source ends first; the number of bytes read."""
        n = min(len(self._pending), len(buf))
        if n:
            buf[:n] = self._pending[:n]
            del self._pending[:n]
        while n < len(buf):
            if self._readinto is not None:
                got = self._readinto(buf[n:]) or 0
            else:
                block = self._src.read(len(buf) - n)
                got = len(block)
                buf[n:n + got] = block
            if not got:
                break
            n += got
        return n


def parse_header(inp: Input) -> Header:
    start = inp.peek(len(_ARMOR))
    if not start:
        raise AgeError("empty file")
    if start == _ARMOR:
        raise AgeError("armored (ASCII) age files are not supported: use binary age files")
    if not _INTRO.startswith(start[:len(_INTRO)]):
        raise AgeError("not an age file")
    first = inp.readline()
    if first != VERSION_LINE:
        raise AgeError("unsupported age version")
    signed = bytearray(first)
    stanzas: list[Stanza] = []
    while True:
        line = inp.readline()
        if len(signed) + len(line) > MAX_HEADER:
            raise AgeError("malformed header: larger than 1 MiB")
        if line.startswith(b"---"):
            if len(line) != 48 or line[3:4] != b" ":
                raise AgeError("malformed header: bad MAC line")
            if not stanzas:
                raise AgeError("malformed header: no recipient stanza")
            signed += b"---"
            return Header(tuple(stanzas), b64decode(line[4:-1]), bytes(signed))
        signed += line
        if not line.startswith(b"-> "):
            raise AgeError("malformed header: expected a stanza or the MAC line")
        args = line[3:-1].split(b" ")
        if any(not a or any(c < 0x21 or c > 0x7E for c in a) for a in args):
            raise AgeError("malformed header: bad stanza arguments")
        body = bytearray()
        while True:
            bline = inp.readline()
            signed += bline
            if len(signed) > MAX_HEADER:
                raise AgeError("malformed header: larger than 1 MiB")
            if len(bline) > 65:
                raise AgeError("malformed header: stanza line longer than 64 columns")
            body += bline[:-1]
            if len(bline) < 65:
                break
        names = [a.decode() for a in args]
        stanzas.append(Stanza(names[0], tuple(names[1:]), b64decode(bytes(body))))


def read_header(src: Source) -> Header:
    """Parse the header at the start of `src` (consumes more than the header; for inspection)."""
    return parse_header(Input(src))
