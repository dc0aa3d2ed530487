"""crypto/age_random.py: ranges of files written by stock `age` and by AgeWriter equal the same
slices of `age -d`'s output, and only the chunks a range covers are read."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crypto.age import AgeReader, AgeWriter, X25519Identity, decrypt, load_identities
from crypto.age_header import CHUNK, CT_CHUNK, MAX_HEADER, chunk_nonce, encode_header, payload_key
from crypto.age_keys import AgeError, NoIdentityMatch, Stanza
from crypto.age_random import FIRST_FETCH, AgeRandomAccess, ChunkError, NeedMore

pytestmark = pytest.mark.skipif(shutil.which("age") is None, reason="stock age CLI not installed")

SIZES = [0, 1, 65535, 65536, 65537, 3 * 65536, 5 * (1 << 20) + 7]
BIG = SIZES[-1]


def run_age(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["age", *map(str, args)], capture_output=True)


@dataclass
class Recorder:
    """A bytes object read through `fetch(start, end)`, remembering every range read."""

    data: bytes
    reads: list[tuple[int, int]] = field(default_factory=list)

    def fetch(self, start: int, end: int) -> bytes:
        assert 0 <= start <= end <= len(self.data), (start, end, len(self.data))
        self.reads.append((start, end))
        return self.data[start:end]

    @property
    def bytes_read(self) -> int:
        return sum(e - s for s, e in self.reads)


@dataclass(frozen=True)
class Sample:
    ciphertext: bytes
    plaintext: bytes  # what `age -d` printed
    identity: X25519Identity
    recipients: int


@dataclass(frozen=True)
class Keys:
    dir: Path
    stock: list[tuple[Path, X25519Identity]]  # age-keygen identity files
    samples: dict[tuple[str, int, int], Sample] = field(default_factory=dict)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    stock = []
    for i in range(3):
        path = d / f"k{i}.key"
        subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
        stock.append((path, load_identities(path)[0]))
    return Keys(d, stock)


def sample(keys: Keys, writer: str, recipients: int, size: int) -> Sample:
    """An age file of `size` random bytes (seeded) by `writer` ("age" or "ours"), decrypted by
    `age -d` with the last recipient's identity (not the first stanza)."""
    key = (writer, recipients, size)
    if key in keys.samples:
        return keys.samples[key]
    data = random.Random(size * 7 + recipients).randbytes(size)
    ids = keys.stock[:recipients]
    d = keys.dir / f"{writer}-{recipients}-{size}"
    d.mkdir()
    (d / "p").write_bytes(data)
    if writer == "age":
        args = [a for _, i in ids for a in ("-r", str(i.recipient))]
        assert run_age(*args, "-o", d / "c.age", d / "p").returncode == 0
    else:
        with open(d / "c.age", "wb") as f, AgeWriter([i.recipient for _, i in ids], f) as w:
            w.write(data)
    result = run_age("-d", "-i", ids[-1][0], d / "c.age")
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    s = Sample((d / "c.age").read_bytes(), result.stdout, ids[-1][1], recipients)
    keys.samples[key] = s
    return s


def ranges(rng: random.Random, size: int, n: int) -> list[tuple[int, int]]:
    """Random ranges plus the edges a player hits: start, end, chunk boundaries, everything."""
    out = [(0, size), (0, min(size, 2)), (max(size - 1, 0), size), (size, size)]
    for b in (CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK):
        if b <= size:
            out += [(b, min(size, b + 1)), (max(0, b - 3), min(size, b + 3))]
    for _ in range(n):
        a = rng.randrange(size + 1)
        out.append((a, min(size, a + rng.choice([1, 100, CHUNK, 256 << 10, 1 << 20]))))
        b = rng.randrange(size + 1)
        out.append((min(a, b), max(a, b)))
    return out


# -- ranges equal age -d -----------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("recipients", [1, 3])
@pytest.mark.parametrize("writer", ["age", "ours"])
def test_ranges_equal_age_d(keys: Keys, writer: str, recipients: int, size: int) -> None:
    s = sample(keys, writer, recipients, size)
    src = Recorder(s.ciphertext)
    acc = AgeRandomAccess.open_fetch([s.identity], src.fetch, len(s.ciphertext))
    assert acc.final_verified
    assert acc.plaintext_size == size
    assert acc.chunk_count == max(1, -(-size // CHUNK))
    assert acc.chunk_range(acc.final_index)[1] == len(s.ciphertext)
    header = len(s.ciphertext) - acc.payload_offset - (size + 16 * acc.chunk_count)
    assert header == 0, "payload_offset + chunks = the file"
    rng = random.Random(size + recipients)
    for a, b in ranges(rng, size, 8 if size == BIG else 20):
        assert acc.read(a, b, src.fetch) == s.plaintext[a:b], (a, b)
    # Chunk by chunk too: each chunk's plaintext is its span of the file.
    for k in sorted({0, acc.final_index, acc.chunk_count // 2}):
        lo, hi = acc.plaintext_span(k)
        assert acc.open_chunk(k, src.fetch(*acc.chunk_range(k))) == s.plaintext[lo:hi]


def test_a_whole_small_file_in_the_prefix_is_authenticated_at_open(keys: Keys) -> None:
    s = sample(keys, "age", 1, 1)
    acc = AgeRandomAccess.open([s.identity], s.ciphertext, len(s.ciphertext))
    assert acc.final_verified and acc.plaintext_size == 1
    s = sample(keys, "age", 1, 65535)
    acc = AgeRandomAccess.open([s.identity], s.ciphertext[:FIRST_FETCH], len(s.ciphertext))
    assert not acc.final_verified


def test_a_middle_range_of_5_mib_reads_only_its_chunks(keys: Keys) -> None:
    s = sample(keys, "ours", 1, BIG)
    src = Recorder(s.ciphertext)
    acc = AgeRandomAccess.open_fetch([s.identity], src.fetch, len(s.ciphertext))
    final = acc.chunk_range(acc.final_index)
    assert src.reads == [(0, FIRST_FETCH), final]  # header, then the final chunk: 2 fetches
    src.reads.clear()
    a = 2 * (1 << 20) + 1000  # 2 MiB + 1000, 300 KiB long: chunks 32..36
    assert acc.read(a, a + 300 * 1024, src.fetch) == s.plaintext[a:a + 300 * 1024]
    assert acc.chunks_for(a, a + 300 * 1024) == range(32, 37)
    assert src.reads == [acc.run_range(range(32, 37))]  # one ranged GET
    assert src.bytes_read == 5 * CT_CHUNK  # 320 KiB of a 5 MiB file
    src.reads.clear()
    assert acc.read(a, a + 1, src.fetch) == s.plaintext[a:a + 1]
    assert src.reads == [acc.chunk_range(32)]
    assert acc.read(a, a, src.fetch) == b""
    assert src.reads == [acc.chunk_range(32)]  # an empty range reads nothing


def test_layout_arithmetic(keys: Keys) -> None:
    s = sample(keys, "ours", 3, 3 * 65536)
    acc = AgeRandomAccess.open_fetch([s.identity], Recorder(s.ciphertext).fetch, len(s.ciphertext))
    h = acc.payload_offset
    assert h == 70 + 98 * 3 + 16
    assert [acc.chunk_range(k) for k in range(3)] == [
        (h, h + CT_CHUNK), (h + CT_CHUNK, h + 2 * CT_CHUNK), (h + 2 * CT_CHUNK, h + 3 * CT_CHUNK)
    ]
    assert acc.plaintext_span(2) == (2 * CHUNK, 3 * CHUNK)
    assert acc.chunks_for(0, 1) == range(0, 1)
    assert acc.chunks_for(CHUNK - 1, CHUNK + 1) == range(0, 2)
    assert acc.chunks_for(CHUNK, 2 * CHUNK) == range(1, 2)
    assert acc.chunks_for(3 * CHUNK, 3 * CHUNK) == range(3, 3)
    assert acc.run_range(range(1, 3)) == (h + CT_CHUNK, len(s.ciphertext))
    with pytest.raises(ValueError):
        acc.chunks_for(0, 3 * CHUNK + 1)
    with pytest.raises(ValueError):
        acc.chunks_for(5, 4)
    with pytest.raises(IndexError):
        acc.chunk_range(3)
    with pytest.raises(ValueError):
        acc.run_range(range(2, 2))
    with pytest.raises(ValueError):
        AgeRandomAccess.open([s.identity], s.ciphertext + b"x", len(s.ciphertext))


# -- wrong keys and damaged files ----------------------------------------------------------------


def test_wrong_identity(keys: Keys) -> None:
    s = sample(keys, "age", 3, 65537)
    stranger = X25519Identity.generate()
    with pytest.raises(NoIdentityMatch, match="no identity matches"):
        AgeRandomAccess.open([stranger], s.ciphertext[:FIRST_FETCH], len(s.ciphertext))
    s1 = sample(keys, "age", 1, 65537)
    with pytest.raises(NoIdentityMatch):  # k2 is a recipient of the 3-recipient file only
        AgeRandomAccess.open([keys.stock[2][1]], s1.ciphertext, len(s1.ciphertext))
    # Any one identity that opens a stanza is enough.
    acc = AgeRandomAccess.open([stranger, keys.stock[0][1]], s.ciphertext, len(s.ciphertext))
    assert acc.final_verified


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:]


def test_a_flipped_byte_in_a_chunk_names_it_and_returns_none_of_it(keys: Keys) -> None:
    s = sample(keys, "age", 1, BIG)
    acc = AgeRandomAccess.open_fetch([s.identity], Recorder(s.ciphertext).fetch, len(s.ciphertext))
    rng = random.Random(5)
    start, end = acc.chunk_range(37)
    bad = Recorder(flip(s.ciphertext, rng.randrange(start, end)))
    a = 36 * CHUNK + 10
    with pytest.raises(ChunkError, match="chunk 37: chunk fails authentication") as err:
        acc.read(a, 39 * CHUNK, bad.fetch)
    assert err.value.index == 37
    # Streaming a run: chunk 36 comes out (authenticated), then the error, nothing of 37.
    pieces = []
    with pytest.raises(ChunkError, match="chunk 37"):
        for piece in acc.decrypt_range(a, 39 * CHUNK, bad.fetch(*acc.run_range(range(36, 39)))):
            pieces.append(bytes(piece))
    assert pieces == [s.plaintext[a:37 * CHUNK]]
    # Ranges that do not touch chunk 37 still play (the damage is local, and named).
    assert acc.read(0, 37 * CHUNK, bad.fetch) == s.plaintext[:37 * CHUNK]
    # A flipped byte in the final chunk, the payload nonce or the header fails at open.
    for at, match in [
        (len(s.ciphertext) - 1, r"chunk 80: final chunk fails authentication"),
        (acc.payload_offset - 1, r"chunk 80: final chunk fails"),
        (40, "bad header MAC|malformed|invalid base64|no identity"),
    ]:
        with pytest.raises(AgeError, match=match):
            AgeRandomAccess.open_fetch([s.identity], Recorder(flip(s.ciphertext, at)).fetch,
                                       len(s.ciphertext))


def test_reordered_chunks_fail(keys: Keys) -> None:
    s = sample(keys, "ours", 1, 3 * 65536 + 5)
    acc = AgeRandomAccess.open_fetch([s.identity], Recorder(s.ciphertext).fetch, len(s.ciphertext))
    c0, c1 = (s.ciphertext[slice(*acc.chunk_range(k))] for k in (0, 1))
    with pytest.raises(ChunkError, match="chunk 0"):
        acc.open_chunk(0, c1)
    with pytest.raises(ChunkError, match=r"chunk 1: \d+ ciphertext bytes where"):
        acc.open_chunk(1, c0[:-1])  # a short read (the object changed)


def test_truncated_at_a_chunk_boundary_fails_on_the_final_chunk_before_any_byte(
    keys: Keys,
) -> None:
    s = sample(keys, "age", 1, BIG)
    full = AgeRandomAccess.open([s.identity], s.ciphertext[:FIRST_FETCH], len(s.ciphertext))
    for keep in (1, 3, 80):  # chunks left; the last left lacks the final flag
        cut = s.ciphertext[:full.chunk_range(keep - 1)[1]]
        src = Recorder(cut)
        with pytest.raises(ChunkError, match="not the final chunk: the file was cut short") as e:
            AgeRandomAccess.open_fetch([s.identity], src.fetch, len(cut))
        assert e.value.index == keep - 1
        # The same with the chunk-level calls: nothing else opens before the final chunk.
        acc = AgeRandomAccess.open([s.identity], cut[:FIRST_FETCH], len(cut))
        assert acc.chunk_count == keep and not acc.final_verified
        if keep > 1:
            with pytest.raises(RuntimeError, match="final chunk first"):
                acc.open_chunk(0, cut[slice(*acc.chunk_range(0))])
        # AgeReader agrees: stock age's output cut there is not an age file.
        with pytest.raises(AgeError, match="truncated"):
            decrypt([s.identity], cut)


@pytest.mark.parametrize("cut", [1, 15, 16, 17, CT_CHUNK - 1])
def test_truncated_inside_a_chunk(keys: Keys, cut: int) -> None:
    s = sample(keys, "ours", 1, 3 * 65536 + 100)  # final chunk: 116 bytes
    data = s.ciphertext[:-cut]
    with pytest.raises(AgeError, match=r"chunk|malformed payload|truncated"):
        AgeRandomAccess.open_fetch([s.identity], Recorder(data).fetch, len(data))


def test_truncated_in_the_header_or_nonce(keys: Keys) -> None:
    s = sample(keys, "ours", 1, 10)
    acc = AgeRandomAccess.open([s.identity], s.ciphertext, len(s.ciphertext))
    po = acc.payload_offset
    for n, match in [
        (0, "empty file"), (50, "ends inside its header"), (po - 16, "inside the payload nonce"),
        (po - 1, "inside the payload nonce"), (po, "without its final chunk"),
        (po + 15, "cannot hold its tag"),
    ]:
        with pytest.raises(AgeError, match=match):
            AgeRandomAccess.open([s.identity], s.ciphertext[:n], n)


@pytest.mark.parametrize("extra", [1, 16, 17, 100, CT_CHUNK, CT_CHUNK + 17])
@pytest.mark.parametrize("size", [1, 65536, 65537])
def test_appended_bytes_fail(keys: Keys, size: int, extra: int) -> None:
    s = sample(keys, "age", 1, size)
    data = s.ciphertext + random.Random(extra).randbytes(extra)
    with pytest.raises(AgeError, match=r"chunk|malformed payload") as e:
        AgeRandomAccess.open_fetch([s.identity], Recorder(data).fetch, len(data))
    if isinstance(e.value, ChunkError):  # the final chunk, as the longer size places it
        po = AgeRandomAccess.open([s.identity], s.ciphertext, len(s.ciphertext)).payload_offset
        assert e.value.index == -(-(len(data) - po) // CT_CHUNK) - 1


def hand_made(
    identity: X25519Identity, chunks: list[tuple[bytes, bool]], extra: tuple[Stanza, ...] = ()
) -> bytes:
    """An age file sealed chunk by chunk as given (to build what no writer would)."""
    file_key = os.urandom(16)
    header = encode_header(file_key, [*extra, identity.recipient.wrap(file_key)])
    nonce = os.urandom(16)
    aead = ChaCha20Poly1305(payload_key(file_key, nonce))
    return header + nonce + b"".join(
        aead.encrypt(chunk_nonce(i, final), pt, None) for i, (pt, final) in enumerate(chunks)
    )


def test_an_empty_final_chunk_after_full_ones_is_refused(tmp_path: Path) -> None:
    identity = X25519Identity.generate()
    data = hand_made(identity, [(b"x" * CHUNK, False), (b"", True)])
    with pytest.raises(AgeError, match="empty final chunk"):
        AgeRandomAccess.open([identity], data, len(data))
    with pytest.raises(AgeError, match="empty final chunk"):
        decrypt([identity], data)  # the streaming reader says the same


# -- headers longer than the first fetch ---------------------------------------------------------


def test_a_header_split_across_the_first_4_kib(keys: Keys, tmp_path: Path) -> None:
    # 60 recipients: a ~5.9 KiB header. The owner's stanza is the last one.
    others = [X25519Identity.generate().recipient for _ in range(59)]
    me = keys.stock[0]
    data = random.Random(60).randbytes(200_000)
    (tmp_path / "p").write_bytes(data)
    args = [a for r in [*others, me[1].recipient] for a in ("-r", str(r))]
    assert run_age(*args, "-o", tmp_path / "c.age", tmp_path / "p").returncode == 0
    ct = (tmp_path / "c.age").read_bytes()
    with pytest.raises(NeedMore) as e:
        AgeRandomAccess.open([me[1]], ct[:FIRST_FETCH], len(ct))
    assert e.value.at_least == 2 * FIRST_FETCH
    acc = AgeRandomAccess.open([me[1]], ct[:e.value.at_least], len(ct))
    assert acc.payload_offset == 70 + 98 * 60 + 16
    # Cut between the header and the end of the nonce: the exact length is asked for.
    with pytest.raises(NeedMore) as e:
        AgeRandomAccess.open([me[1]], ct[:acc.payload_offset - 3], len(ct))
    assert e.value.at_least == acc.payload_offset
    # Cut inside the MAC line.
    with pytest.raises(NeedMore):
        AgeRandomAccess.open([me[1]], ct[:acc.payload_offset - 30], len(ct))
    src = Recorder(ct)
    acc = AgeRandomAccess.open_fetch([me[1]], src.fetch, len(ct))
    assert src.reads[:2] == [(0, FIRST_FETCH), (0, 2 * FIRST_FETCH)]
    assert acc.read(70_000, 140_000, src.fetch) == data[70_000:140_000]
    assert run_age("-d", "-i", me[0], tmp_path / "c.age").stdout == data


def test_a_long_stanza(tmp_path: Path) -> None:
    """A stanza of a type we do not know (age ignores it) with a 20 KB body."""
    identity = X25519Identity.generate()
    (tmp_path / "k").write_text(f"{identity}\n")
    data = random.Random(3).randbytes(3 * CHUNK + 9)
    chunks = [(data[i:i + CHUNK], i + CHUNK >= len(data)) for i in range(0, len(data), CHUNK)]
    grease = Stanza("obscura-test-grease", ("x",), random.Random(4).randbytes(20_000))
    ct = hand_made(identity, chunks, (grease,))
    (tmp_path / "c.age").write_bytes(ct)
    stock = run_age("-d", "-i", tmp_path / "k", tmp_path / "c.age")
    assert stock.returncode == 0 and stock.stdout == data
    src = Recorder(ct)
    acc = AgeRandomAccess.open_fetch([identity], src.fetch, len(ct))
    assert [e for _, e in src.reads[:4]] == [4096, 8192, 16384, 32768]  # doubling
    rng = random.Random(9)
    for a, b in ranges(rng, len(data), 10):
        assert acc.read(a, b, src.fetch) == stock.stdout[a:b]


def test_a_header_over_1_mib_is_refused_after_bounded_fetches() -> None:
    identity = X25519Identity.generate()
    huge = Stanza("obscura-test-grease", (), bytes(MAX_HEADER))
    ct = hand_made(identity, [(b"x", True)], (huge,))
    src = Recorder(ct)
    with pytest.raises(AgeError, match="larger than 1 MiB"):
        AgeRandomAccess.open_fetch([identity], src.fetch, len(ct))
    assert len(src.reads) <= 10 and max(e for _, e in src.reads) <= MAX_HEADER + 16
    with pytest.raises(AgeError, match="larger than 1 MiB"):
        AgeReader([identity], io.BytesIO(ct))


def test_not_an_age_file_fails_at_once() -> None:
    identity = X25519Identity.generate()
    armored = b"-----BEGIN AGE ENCRYPTED FILE-----\n" + bytes(5000)
    for data, match in [(armored, "armored"), (b"\x00" * 5000, "not an age file")]:
        with pytest.raises(AgeError, match=match):
            AgeRandomAccess.open([identity], data[:FIRST_FETCH], len(data))
