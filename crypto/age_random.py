"""Random access into an age v1 file: decrypt only the chunks a byte range covers.

Why: the review app plays clips in the browser, and a player asks for byte ranges. age's payload
is independent 64 KiB chunks, so a range is served by fetching (ranged GETs to the bucket) and
authenticating only the chunks it covers, never the whole object. The arithmetic is in
docs/clip-format.md §3.2; docs/review.md §4 says how the app uses it.

Pure and synchronous: no I/O, no asyncio, no logging. The caller fetches ciphertext ranges and
hands the bytes in; everything here is CPU work on at most one chunk at a time (run it off the
event loop). The steps, with `get(start, end)` the object's ciphertext bytes [start, end):

    prefix = get(0, min(FIRST_FETCH, size))
    while True:
        try:
            acc = AgeRandomAccess.open(identities, prefix, size)
            break
        except NeedMore as e:                       # a long header: fetch more, open again
            prefix = get(0, e.at_least)
    if not acc.final_verified:                      # (it is when the prefix was the whole file)
        acc.open_chunk(acc.final_index, get(*acc.chunk_range(acc.final_index)))  # proves size
    chunks = acc.chunks_for(a, b)                   # plaintext [a, b), a < b -> chunk indices
    for piece in acc.decrypt_range(a, b, get(*acc.run_range(chunks))):  # one GET per run
        send(piece)                                 # authenticated plaintext only

`open_fetch` and `read` do exactly that with a synchronous `get` (tests, tools, benchmarks).
Chunk-level calls (`chunk_range`, `plaintext_span`, `open_chunk`, `open_run`) let a caller keep
decrypted chunks in its own cache.

Rules it enforces:
- no plaintext from a chunk before that chunk has been authenticated (a chunk is one AEAD open;
  on failure nothing of it is returned);
- the final chunk must be authenticated (with the last-chunk flag, `open_chunk(final_index, …)`)
  before any other chunk is opened, as age's DecryptReaderAt does: it proves the payload's size,
  so an object cut short at a chunk boundary, or extended, fails before a byte of it is served;
- sizes that no age file can have (a final chunk of 1 to 16 bytes after full ones, no chunk at all)
  are refused at `open`.

Errors: `NeedMore` (not an AgeError: fetch a longer prefix and open again); AgeError and its
subclasses, as crypto/age.py names them (`NoIdentityMatch` for a key that opens no stanza, bad
header MAC, malformed header, header over 1 MiB, truncated, malformed size); `ChunkError` (an
AgeError with `.index`) for a chunk that does not authenticate or has the wrong length.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crypto.age_header import (
    CHUNK,
    CT_CHUNK,
    MAX_HEADER,
    PAYLOAD_NONCE,
    TAG,
    Input,
    TruncatedHeader,
    chunk_nonce,
    parse_header,
    payload_key,
)
from crypto.age_keys import AgeError, Identity

__all__ = ["FIRST_FETCH", "AgeRandomAccess", "ChunkError", "Fetch", "NeedMore"]

FIRST_FETCH = 4096  # a first ranged GET of this much holds the header of up to ~40 recipients
_MAC_TAIL = 45  # after the "---" that ends Header.signed: " ", 43 base64 characters, "\n"

Fetch = Callable[[int, int], bytes]  # ciphertext bytes [start, end) of the object


class NeedMore(Exception):
    """The prefix ends before the header and payload nonce do: fetch `at_least` bytes from the
    start of the object and open again. `at_least` is exact once the header's end is in the
    prefix, a doubling otherwise; never more than the object or a maximal header allow."""

    def __init__(self, at_least: int) -> None:
        super().__init__(f"need the first {at_least} bytes of the age file")
        self.at_least = at_least


class ChunkError(AgeError):
    """Chunk `index` does not authenticate (or is not the length the file's size gives it)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"chunk {index}: {message}")
        self.index = index


class AgeRandomAccess:
    """An opened age file of known size: the chunk layout and the payload key.

    Attributes: `ciphertext_size`, `payload_offset` (header + payload nonce: chunk 0 starts
    there), `plaintext_size`, `chunk_count` (at least 1), `final_index`, `final_verified`.
    Holds the payload key (not the file key) until dropped. Keep one per object; its only state
    after `open` is `final_verified`, so worker threads may open chunks of it concurrently.
    """

    def __init__(
        self, aead: ChaCha20Poly1305, ciphertext_size: int, payload_offset: int
    ) -> None:
        """Use `open`. Raises AgeError if no age file can have this size."""
        payload = ciphertext_size - payload_offset
        if payload <= 0:
            raise AgeError("truncated: the file ends without its final chunk")
        n = -(-payload // CT_CHUNK)
        tail = payload - (n - 1) * CT_CHUNK  # the final chunk's ciphertext, 1..CT_CHUNK bytes
        if tail < TAG:
            raise AgeError(
                f"malformed payload size: a final chunk of {tail} bytes cannot hold its tag "
                "(the file was cut short or extended)"
            )
        if tail == TAG and n > 1:
            raise AgeError("malformed payload: empty final chunk")
        self._aead = aead
        self.ciphertext_size = ciphertext_size
        self.payload_offset = payload_offset
        self.chunk_count = n
        self.final_index = n - 1
        self.plaintext_size = payload - TAG * n
        self.final_verified = False

    @classmethod
    def open(
        cls, identities: Iterable[Identity], prefix: bytes | bytearray | memoryview,
        ciphertext_size: int,
    ) -> AgeRandomAccess:
        """Parse the header in `prefix` (the object's first bytes, header and 16-byte payload
        nonce included; more is fine), unwrap the file key, check the size arithmetic.
        Raises NeedMore if `prefix` is too short, AgeError if the file cannot be opened. If the
        prefix is the whole file, the final chunk is authenticated at once."""
        data = bytes(prefix)
        have = len(data)
        if ciphertext_size < 0 or have > ciphertext_size:
            raise ValueError(f"a prefix of {have} bytes of a {ciphertext_size}-byte file")
        if not have and ciphertext_size:
            raise NeedMore(min(FIRST_FETCH, ciphertext_size))
        try:
            header = parse_header(Input(io.BytesIO(data)))
        except TruncatedHeader:
            if have == ciphertext_size:
                raise AgeError("truncated: the file ends inside its header") from None
            limit = MAX_HEADER + PAYLOAD_NONCE
            if have >= limit:
                raise AgeError("malformed header: larger than 1 MiB") from None
            raise NeedMore(min(ciphertext_size, limit, max(2 * have, FIRST_FETCH))) from None
        header_size = len(header.signed) + _MAC_TAIL
        payload_offset = header_size + PAYLOAD_NONCE
        if payload_offset > ciphertext_size:
            raise AgeError("truncated: the file ends inside the payload nonce")
        if have < payload_offset:
            raise NeedMore(payload_offset)
        nonce = data[header_size:payload_offset]
        file_key = header.file_key(identities)
        aead = ChaCha20Poly1305(payload_key(file_key, nonce))
        del file_key
        acc = cls(aead, ciphertext_size, payload_offset)
        if have == ciphertext_size:
            acc.open_chunk(acc.final_index, data[slice(*acc.chunk_range(acc.final_index))])
        return acc

    @classmethod
    def open_fetch(
        cls, identities: Iterable[Identity], fetch: Fetch, ciphertext_size: int
    ) -> AgeRandomAccess:
        """`open` with NeedMore handled and the final chunk authenticated, from a synchronous
        `fetch(start, end)`: the whole opening protocol, in at least two fetches."""
        ids = list(identities)
        want = min(FIRST_FETCH, ciphertext_size)
        while True:
            try:
                acc = cls.open(ids, fetch(0, want), ciphertext_size)
                break
            except NeedMore as e:
                want = e.at_least
        if not acc.final_verified:
            acc.open_chunk(acc.final_index, fetch(*acc.chunk_range(acc.final_index)))
        return acc

    # -- layout ------------------------------------------------------------------------------

    def chunk_range(self, index: int) -> tuple[int, int]:
        """Ciphertext offsets [start, end) of chunk `index` in the object."""
        self._check_index(index)
        start = self.payload_offset + index * CT_CHUNK
        return start, min(start + CT_CHUNK, self.ciphertext_size)

    def plaintext_span(self, index: int) -> tuple[int, int]:
        """Plaintext offsets [start, end) that chunk `index` holds."""
        self._check_index(index)
        return index * CHUNK, min((index + 1) * CHUNK, self.plaintext_size)

    def chunks_for(self, start: int, end: int) -> range:
        """The chunks holding plaintext [start, end) (empty for an empty range)."""
        if not 0 <= start <= end <= self.plaintext_size:
            raise ValueError(f"range [{start}, {end}) outside the plaintext [0, "
                             f"{self.plaintext_size})")
        first = start // CHUNK
        return range(first, (end - 1) // CHUNK + 1 if end > start else first)

    def run_range(self, chunks: range) -> tuple[int, int]:
        """Ciphertext offsets [start, end) of consecutive `chunks`: one ranged GET."""
        if chunks.step != 1 or not chunks:
            raise ValueError(f"not a non-empty run of consecutive chunks: {chunks}")
        return self.chunk_range(chunks.start)[0], self.chunk_range(chunks[-1])[1]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.chunk_count:
            raise IndexError(f"chunk {index} of a file of {self.chunk_count} chunks")

    # -- decryption --------------------------------------------------------------------------

    def open_chunk(self, index: int, ciphertext: bytes | bytearray | memoryview) -> bytes:
        """Authenticate and decrypt chunk `index` (its bytes at `chunk_range(index)`).
        The final chunk must be opened first (RuntimeError otherwise); ChunkError if it does
        not authenticate, and then nothing of it is returned."""
        final = index == self.final_index
        if not final and not self.final_verified:
            raise RuntimeError(
                "authenticate the final chunk first: open_chunk(final_index, …) proves the size"
            )
        start, end = self.chunk_range(index)
        if len(ciphertext) != end - start:
            raise ChunkError(index, f"{len(ciphertext)} ciphertext bytes where the file's size "
                                    f"gives {end - start} (the object changed?)")
        try:
            plaintext = self._aead.decrypt(chunk_nonce(index, final), ciphertext, None)
        except InvalidTag:
            raise self._failure(index, final, ciphertext) from None
        if final:
            self.final_verified = True
        return plaintext

    def _failure(
        self, index: int, final: bool, ciphertext: bytes | bytearray | memoryview
    ) -> ChunkError:
        # Trying the other flag only sharpens the message; either way the chunk is refused.
        try:
            self._aead.decrypt(chunk_nonce(index, not final), ciphertext, None)
        except InvalidTag:
            what = "final chunk" if final else "chunk"
            return ChunkError(
                index, f"{what} fails authentication (altered, reordered, or not this file's)"
            )
        if final:
            return ChunkError(index, "not the final chunk: the file was cut short")
        return ChunkError(index, "marked final, but the file goes on: data was appended")

    def open_run(
        self, chunks: range, ciphertext: bytes | bytearray | memoryview
    ) -> Iterator[bytes]:
        """The plaintext of each of `chunks`, from the ciphertext at `run_range(chunks)`,
        one chunk at a time; stops with ChunkError at the first that does not authenticate."""
        start, end = self.run_range(chunks)
        if len(ciphertext) != end - start:
            raise ChunkError(chunks.start, f"a run of {len(ciphertext)} ciphertext bytes where "
                                           f"the file's size gives {end - start}")
        view = memoryview(ciphertext)
        for index in chunks:
            lo, hi = self.chunk_range(index)
            yield self.open_chunk(index, view[lo - start:hi - start])

    def decrypt_range(
        self, start: int, end: int, ciphertext: bytes | bytearray | memoryview
    ) -> Iterator[memoryview]:
        """Plaintext [start, end), in pieces of at most a chunk, from the ciphertext at
        `run_range(chunks_for(start, end))` (nothing for an empty range)."""
        chunks = self.chunks_for(start, end)
        if not chunks:
            return
        for index, plaintext in zip(chunks, self.open_run(chunks, ciphertext), strict=True):
            base = index * CHUNK
            yield memoryview(plaintext)[max(start - base, 0):min(end - base, len(plaintext))]

    def read(self, start: int, end: int, fetch: Fetch) -> bytes:
        """Plaintext [start, end) with one `fetch` of the chunks it covers (plus the final
        chunk's, if not yet authenticated)."""
        if not self.final_verified:
            self.open_chunk(self.final_index, fetch(*self.chunk_range(self.final_index)))
        chunks = self.chunks_for(start, end)
        if not chunks:
            return b""
        return b"".join(self.decrypt_range(start, end, fetch(*self.run_range(chunks))))
