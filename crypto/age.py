"""age v1 (c2sp.org/age) with X25519 recipients, streaming, on `cryptography`'s primitives.

    with open(path, "wb") as f:
        w = AgeWriter(["age1…"], f)
        w.write(fragment) ...          # any sizes; one 64 KiB chunk buffered
        w.close()                      # final chunk; the file key is dropped
    r = AgeReader(load_identities("owner.key"), open(path, "rb"))
    r.read(n) ...                      # authenticated plaintext only; AgeError on any tampering

Output is what stock `age`/`rage` read and write (binary, X25519 stanzas). This module never
writes plaintext to disk except through `decrypt_file`, which the owner asks for explicitly.
See docs/clip-format.md.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crypto.age_header import (
    CHUNK,
    CT_CHUNK,
    PAYLOAD_NONCE,
    TAG,
    Header,
    Input,
    Sink,
    Source,
    chunk_nonce,
    encode_header,
    parse_header,
    payload_key,
    read_header,
)
from crypto.age_keys import (
    FILE_KEY_SIZE,
    AgeError,
    Identity,
    Recipient,
    X25519Identity,
    X25519Recipient,
    as_recipient,
    generate_identity,
    identity_file_text,
    load_identities,
    parse_identities,
    write_identity_file,
)

__all__ = [
    "AgeError", "AgeReader", "AgeWriter", "Header", "Identity", "Recipient", "X25519Identity",
    "X25519Recipient",
    "decrypt", "decrypt_file", "encrypt", "encrypted_size", "generate_identity",
    "identity_file_text", "load_identities", "parse_identities", "read_header", "reencrypt",
    "share_copy", "write_identity_file",
]

# ----------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------


def _write_all(out: Sink, data: bytes | bytearray | memoryview) -> None:
    """`out.write`, repeated if a raw file reports a short write (a sink returning None or
    no count is taken to have written everything, as buffered files and most sinks do)."""
    view = memoryview(data)
    while view:
        n = out.write(view)
        if not isinstance(n, int) or n >= len(view):
            return
        view = view[n:]


class AgeWriter:
    """Streaming age encryption to `recipients`, writing ciphertext to `out` as it goes.

    Holds one plaintext chunk and one ciphertext chunk, both preallocated. `out.write` is handed
    a view of the reused ciphertext buffer and must consume it before returning, as files do.
    `close()` seals the last chunk and drops the file key; it does not close `out`. Leaving a
    `with` block on an exception calls `abort()` instead: no final chunk, so the partial file
    can never be taken for a complete one.
    """

    def __init__(self, recipients: Iterable[Recipient], out: Sink) -> None:
        recips = [as_recipient(r) for r in recipients]
        if not recips:
            raise AgeError("no recipients: nothing could ever decrypt this")
        file_key = os.urandom(FILE_KEY_SIZE)
        header = encode_header(file_key, [r.wrap(file_key) for r in recips])
        nonce = os.urandom(PAYLOAD_NONCE)
        self._aead: ChaCha20Poly1305 | None = ChaCha20Poly1305(payload_key(file_key, nonce))
        del file_key
        self._out = out
        self._pt = bytearray(CHUNK)
        self._ct = bytearray(CT_CHUNK)
        self._ctv = memoryview(self._ct)
        self._fill = 0
        self._counter = 0
        self.plaintext_size = 0
        _write_all(out, header + nonce)
        self.size = len(header) + PAYLOAD_NONCE  # ciphertext bytes handed to `out` so far

    def _seal(self, chunk: memoryview | bytearray, final: bool) -> None:
        assert self._aead is not None
        n = len(chunk)
        buf = self._ct if n == CHUNK else self._ctv[:n + TAG]
        self._aead.encrypt_into(chunk_nonce(self._counter, final), chunk, None, buf)
        self._counter += 1
        _write_all(self._out, buf)
        self.size += n + TAG

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._aead is None:
            raise ValueError("AgeWriter is closed")
        mv = memoryview(data).cast("B")
        n = len(mv)
        if not n:
            return 0
        self.plaintext_size += n
        pos = 0
        # A chunk is sealed as non-final only once a later byte exists: the last may be full.
        if self._fill == CHUNK:
            self._seal(self._pt, False)
            self._fill = 0
        if self._fill:
            pos = min(CHUNK - self._fill, n)
            self._pt[self._fill:self._fill + pos] = mv[:pos]
            self._fill += pos
            if pos == n:
                return n
            self._seal(self._pt, False)
            self._fill = 0
        # Whole chunks straight from the caller's buffer, no copy; the last one waits.
        while n - pos > CHUNK:
            self._seal(mv[pos:pos + CHUNK], False)
            pos += CHUNK
        self._pt[:n - pos] = mv[pos:]
        self._fill = n - pos
        return n

    def close(self) -> None:
        """Seal the final chunk (empty if nothing was written) and drop the key."""
        if self._aead is None:
            return
        self._seal(memoryview(self._pt)[:self._fill], True)
        self._drop()

    def abort(self) -> None:
        """Drop the key without the final chunk: what was written will not decrypt."""
        self._drop()

    def _drop(self) -> None:
        self._aead = None
        self._pt[:] = bytes(CHUNK)  # best effort: Python cannot wipe every copy
        self._fill = 0

    def __enter__(self) -> AgeWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            self.close()
        else:
            self.abort()


def encrypted_size(plaintext_size: int, n_recipients: int = 1) -> int:
    """Ciphertext size of an Obscura-written age file (X25519 stanzas only)."""
    chunks = max(1, -(-plaintext_size // CHUNK))
    return 70 + 98 * n_recipients + PAYLOAD_NONCE + plaintext_size + TAG * chunks


# ----------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------


class _Payload:
    """Authenticated chunks of a payload; optionally hands every ciphertext byte to `tee`."""

    def __init__(self, inp: Input, file_key: bytes, tee: Sink | None = None) -> None:
        nonce = bytearray(PAYLOAD_NONCE)
        if inp.readinto(memoryview(nonce)) != PAYLOAD_NONCE:
            raise AgeError("truncated: the file ends inside the payload nonce")
        if tee is not None:
            _write_all(tee, nonce)
        self._aead: ChaCha20Poly1305 | None = ChaCha20Poly1305(payload_key(file_key, bytes(nonce)))
        self._in = inp
        self._tee = tee
        self._ct = bytearray(CT_CHUNK + 1)  # +1: a byte of lookahead tells the final chunk
        self._ctv = memoryview(self._ct)
        self._carry = 0  # lookahead bytes at the start of _ct
        self._pt = bytearray(CHUNK)
        self._ptv = memoryview(self._pt)
        self._counter = 0
        self._error: AgeError | None = None

    def next(self) -> memoryview | None:
        """The next chunk's plaintext (valid until the next call), or None after the final one.
        After an error every call raises it again: a failed stream never looks finished."""
        if self._error is not None:
            raise self._error
        if self._aead is None:
            return None
        got = self._carry + self._in.readinto(self._ctv[self._carry:])
        final = got <= CT_CHUNK
        size = got if final else CT_CHUNK
        i = self._counter
        if size < TAG:
            raise self._fail("truncated: the file ends without its final chunk")
        ct, pt = self._ctv[:size], self._ptv[:size - TAG]
        try:
            self._aead.decrypt_into(chunk_nonce(i, final), ct, None, pt)
        except InvalidTag:
            # The other flag only sharpens the message; either way the data is rejected.
            if self._opens(chunk_nonce(i, not final), ct, pt):
                raise self._fail(
                    "truncated: the file ends without its final chunk" if final
                    else "trailing data after the final chunk"
                ) from None
            raise self._fail(
                f"chunk {i}: authentication failed (altered, reordered or truncated)"
            ) from None
        if final and size == TAG and i > 0:
            raise self._fail("malformed payload: empty final chunk")
        if self._tee is not None:
            self._tee.write(ct)
        self._counter += 1
        if final:
            self._aead = None
        else:
            self._ct[0] = self._ct[CT_CHUNK]
            self._carry = 1
        return pt

    def _opens(self, nonce: bytes, ct: memoryview, pt: memoryview) -> bool:
        assert self._aead is not None
        try:
            self._aead.decrypt_into(nonce, ct, None, pt)
            return True
        except InvalidTag:
            return False

    def _fail(self, message: str) -> AgeError:
        self._aead = None
        self._pt[:] = bytes(CHUNK)  # may hold unauthenticated plaintext
        self._error = AgeError(message)
        return self._error


class AgeReader(io.RawIOBase):
    """Streaming age decryption: a readable file object of the plaintext.

    Only authenticated chunks are returned, but a truncated or extended file is detected only
    when its end is reached: callers that store plaintext must discard it on AgeError.
    """

    def __init__(self, identities: Iterable[Identity], src: Source) -> None:
        super().__init__()
        inp = Input(src)
        header = parse_header(inp)
        self._payload = _Payload(inp, header.file_key(identities))
        self._chunk = memoryview(b"")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        while self._pos == len(self._chunk):
            chunk = self._payload.next()
            if chunk is None:
                return False
            self._chunk, self._pos = chunk, 0
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        n = 0
        while n < len(view) and self._fill():
            take = min(len(view) - n, len(self._chunk) - self._pos)
            view[n:n + take] = self._chunk[self._pos:self._pos + take]
            self._pos += take
            n += take
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(bytes(c) for c in self.chunks())
        if self._fill() and len(self._chunk) - self._pos >= size:
            out = bytes(self._chunk[self._pos:self._pos + size])
            self._pos += size
            return out
        buf = bytearray(size)
        return bytes(buf[:self.readinto(buf)])

    def readall(self) -> bytes:
        return self.read(-1)

    def chunks(self) -> Iterator[memoryview]:
        """The remaining plaintext as views, each valid until the next is requested."""
        while self._fill():
            view = self._chunk[self._pos:]
            self._pos = len(self._chunk)
            yield view


def decrypt_file(
    identities: Iterable[Identity], src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
) -> int:
    """Decrypt `src_path` into `dst_path` (mode 0600); plaintext bytes written.

    The plaintext goes to a temporary file next to `dst_path`, renamed into place only once the
    whole file authenticated; on any error it is deleted.
    """
    dst = Path(dst_path)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    try:
        n = 0
        with open(src_path, "rb") as src, os.fdopen(fd, "wb") as out:
            for chunk in AgeReader(identities, src).chunks():
                out.write(chunk)
                n += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
        return n
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------
# Shares and conveniences
# ----------------------------------------------------------------------------------------------


def share_copy(
    identities: Iterable[Identity], src: Source, dst: Sink, recipients: Iterable[Recipient]
) -> int:
    """Copy an age file for new `recipients`: a new header, the same file key, the payload
    unchanged. The payload is authenticated while copied; on AgeError discard `dst`. Bytes
    written. See docs/clip-format.md §7 (why, and what it reveals)."""
    recips = [as_recipient(r) for r in recipients]
    if not recips:
        raise AgeError("no recipients for the share")
    inp = Input(src)
    file_key = parse_header(inp).file_key(identities)
    header = encode_header(file_key, [r.wrap(file_key) for r in recips])
    counter = _Counter(dst)
    counter.write(header)
    payload = _Payload(inp, file_key, tee=counter)
    del file_key
    while payload.next() is not None:
        pass
    return counter.n


class _Counter:
    def __init__(self, out: Sink) -> None:
        self.out, self.n = out, 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        _write_all(self.out, data)
        n = len(memoryview(data))
        self.n += n
        return n


def reencrypt(
    identities: Iterable[Identity], src: Source, dst: Sink, recipients: Iterable[Recipient]
) -> int:
    """Decrypt and re-encrypt under a fresh file key (unlinkable to the source). Bytes written."""
    reader = AgeReader(identities, src)
    with AgeWriter(recipients, dst) as writer:
        for chunk in reader.chunks():
            writer.write(chunk)
    return writer.size


def encrypt(recipients: Iterable[Recipient], data: bytes | bytearray | memoryview) -> bytes:
    out = io.BytesIO()
    with AgeWriter(recipients, out) as w:
        w.write(data)
    return out.getvalue()


def decrypt(identities: Iterable[Identity], data: bytes | bytearray | memoryview) -> bytes:
    return AgeReader(identities, io.BytesIO(data)).read()
