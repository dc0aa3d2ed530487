"""crypto/age.py against the stock `age` CLI (Debian package `age`), both directions."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from crypto import bech32
from crypto.age import (
    AgeError,
    AgeReader,
    AgeWriter,
    X25519Identity,
    X25519Recipient,
    decrypt,
    decrypt_file,
    encrypt,
    encrypted_size,
    load_identities,
    parse_identities,
    read_header,
    reencrypt,
    share_copy,
    write_identity_file,
)
from crypto.age_header import CHUNK, CT_CHUNK

pytestmark = pytest.mark.skipif(shutil.which("age") is None, reason="stock age CLI not installed")

SIZES = [0, 1, 65535, 65536, 65537, 3 * 65536, (1 << 20) + 17]


def run_age(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["age", *map(str, args)], input=stdin, capture_output=True)


@pytest.fixture
def keygen_identity(tmp_path: Path) -> tuple[Path, str]:
    """An identity file written by the stock age-keygen, and its recipient."""
    path = tmp_path / "keygen.key"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return path, recipient


@pytest.fixture
def our_identity(tmp_path: Path) -> tuple[Path, X25519Identity]:
    identity = X25519Identity.generate()
    path = tmp_path / "ours.key"
    write_identity_file(path, identity)
    return path, identity


def chunked_writes(w: AgeWriter, data: bytes, rng: random.Random) -> None:
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 7, 4096, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK])
        w.write(data[pos:pos + n])
        pos += n


# -- keys --------------------------------------------------------------------------------------


def test_keys_match_age_keygen(keygen_identity: tuple[Path, str]) -> None:
    path, recipient = keygen_identity
    [identity] = load_identities(path)  # comments in the file are skipped
    assert str(identity.recipient) == recipient
    assert X25519Identity.parse(str(identity)) == identity
    assert str(X25519Recipient.parse(recipient)) == recipient
    assert "AGE-SECRET-KEY" not in repr(identity)


def test_our_identity_file_works_with_age_keygen(our_identity: tuple[Path, X25519Identity]) -> None:
    path, identity = our_identity
    assert path.stat().st_mode & 0o777 == 0o600
    out = subprocess.run(["age-keygen", "-y", str(path)], capture_output=True, text=True)
    assert out.stdout.strip() == str(identity.recipient)
    with pytest.raises(FileExistsError):
        write_identity_file(path, identity)  # never overwrites a key


def test_identity_file_errors_do_not_echo_secrets() -> None:
    secret = str(X25519Identity.generate())
    broken = secret[:-1] + ("Q" if secret[-1] != "Q" else "P")
    with pytest.raises(AgeError) as e:
        parse_identities(f"# comment\n\n{broken}\n")
    assert "line 3" in str(e.value) and broken not in str(e.value)
    with pytest.raises(AgeError, match="no identity"):
        parse_identities("# only a comment\n")
    with pytest.raises(AgeError, match="passphrase"):
        parse_identities("age-encryption.org/v1\n-> scrypt …")


def test_bech32_rejects_mixed_case_and_bad_checksum() -> None:
    r = str(X25519Identity.generate().recipient)
    assert bech32.decode(r.upper())[1] == bech32.decode(r)[1]
    with pytest.raises(bech32.Bech32Error):
        bech32.decode(r[:10] + r[10:].upper())
    with pytest.raises(AgeError):
        X25519Recipient.parse(r[:-1] + ("q" if r[-1] != "q" else "p"))


# -- interoperability ------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_stock_age_decrypts_our_output(
    size: int, tmp_path: Path, keygen_identity: tuple[Path, str],
    our_identity: tuple[Path, X25519Identity],
) -> None:
    data = os.urandom(size)
    kg_path, kg_recipient = keygen_identity
    our_path, ours = our_identity
    for key_path, recipient in ((kg_path, kg_recipient), (our_path, ours.recipient)):
        out = io.BytesIO()
        with AgeWriter([recipient], out) as w:
            chunked_writes(w, data, random.Random(size))
        ct = out.getvalue()
        assert len(ct) == w.size == encrypted_size(size)
        (tmp_path / "c.age").write_bytes(ct)
        result = run_age("-d", "-i", key_path, tmp_path / "c.age")
        assert result.returncode == 0, result.stderr
        assert result.stdout == data


@pytest.mark.parametrize("size", SIZES)
def test_we_decrypt_stock_age_output(
    size: int, tmp_path: Path, keygen_identity: tuple[Path, str]
) -> None:
    data = os.urandom(size)
    (tmp_path / "p").write_bytes(data)
    key_path, recipient = keygen_identity
    assert run_age("-r", recipient, "-o", tmp_path / "c.age", tmp_path / "p").returncode == 0
    ids = load_identities(key_path)
    with open(tmp_path / "c.age", "rb") as f:  # streaming, odd read sizes
        r = AgeReader(ids, f)
        parts, rng = [], random.Random(size)
        while chunk := r.read(rng.choice([1, 1000, CHUNK, CHUNK + 5])):
            parts.append(chunk)
    assert b"".join(parts) == data
    assert decrypt_file(ids, tmp_path / "c.age", tmp_path / "out") == size
    assert (tmp_path / "out").read_bytes() == data


def test_multiple_recipients_both_directions(
    tmp_path: Path, keygen_identity: tuple[Path, str], our_identity: tuple[Path, X25519Identity]
) -> None:
    data = os.urandom(200_000)
    kg_path, kg_recipient = keygen_identity
    our_path, ours = our_identity
    third = X25519Identity.generate()
    ct = encrypt([kg_recipient, ours.recipient, third.recipient], data)
    assert len(read_header(io.BytesIO(ct)).stanzas) == 3
    (tmp_path / "c.age").write_bytes(ct)
    for key in (kg_path, our_path):
        assert run_age("-d", "-i", key, tmp_path / "c.age").stdout == data
    assert decrypt([third], ct) == data
    (tmp_path / "p").write_bytes(data)
    run_age("-r", kg_recipient, "-r", str(ours.recipient), "-o", tmp_path / "s.age", tmp_path / "p")
    stock = (tmp_path / "s.age").read_bytes()
    assert decrypt(load_identities(kg_path), stock) == data
    assert decrypt([ours], stock) == data
    assert decrypt([third, ours], stock) == data  # the first identity that matches wins


# -- rejection -------------------------------------------------------------------------------


@pytest.fixture
def sample() -> tuple[X25519Identity, bytes, bytes]:
    identity = X25519Identity.generate()
    data = os.urandom(3 * CHUNK + 100)
    return identity, data, encrypt([identity.recipient], data)


def header_len(ct: bytes) -> int:
    return ct.index(b"\n---") + 49


def test_wrong_key(sample: tuple[X25519Identity, bytes, bytes]) -> None:
    _, _, ct = sample
    with pytest.raises(AgeError, match="no identity matches"):
        decrypt([X25519Identity.generate()], ct)


def test_flipped_bytes_everywhere_are_rejected(sample: tuple[X25519Identity, bytes, bytes]) -> None:
    identity, _, ct = sample
    h = header_len(ct)
    # stanza share, stanza body, MAC, payload nonce, first chunk, last chunk's tag
    for pos in (35, 80, h - 10, h + 3, h + 16 + 100, len(ct) - 1):
        bad = bytearray(ct)
        bad[pos] ^= 0x01
        with pytest.raises(AgeError):
            decrypt([identity], bytes(bad))
    bad = bytearray(ct)
    bad[h - 10] ^= 0x01
    with pytest.raises(AgeError, match=r"MAC|base64"):
        decrypt([identity], bytes(bad))


def test_truncation_is_rejected(sample: tuple[X25519Identity, bytes, bytes]) -> None:
    identity, _, ct = sample
    payload = header_len(ct) + 16
    cuts = [
        len(ct) - 1,  # inside the final chunk
        payload + CT_CHUNK * 3,  # exactly after a full, non-final chunk
        payload + CT_CHUNK,
        payload,  # no chunk at all
        payload - 5,  # inside the payload nonce
        header_len(ct) - 20,  # inside the header
    ]
    for cut in cuts:
        with pytest.raises(AgeError, match=r"truncated|header"):
            decrypt([identity], ct[:cut])


def test_appended_data_is_rejected(sample: tuple[X25519Identity, bytes, bytes]) -> None:
    identity, _, ct = sample
    for extra in (b"x", os.urandom(CT_CHUNK), os.urandom(CT_CHUNK + 20)):
        with pytest.raises(AgeError):
            decrypt([identity], ct + extra)
    full = encrypt([identity.recipient], os.urandom(2 * CHUNK))  # final chunk is a full one
    with pytest.raises(AgeError, match="trailing data"):
        decrypt([identity], full + b"garbage")


def test_a_failed_stream_never_looks_finished(sample: tuple[X25519Identity, bytes, bytes]) -> None:
    identity, _, ct = sample
    reader = AgeReader([identity], io.BytesIO(ct[:-1]))
    with pytest.raises(AgeError):
        reader.read()
    with pytest.raises(AgeError):  # not b"" as if the plaintext had ended
        reader.read(10)


def test_reordered_chunks_are_rejected(sample: tuple[X25519Identity, bytes, bytes]) -> None:
    identity, _, ct = sample
    p = header_len(ct) + 16
    c0, c1 = ct[p:p + CT_CHUNK], ct[p + CT_CHUNK:p + 2 * CT_CHUNK]
    swapped = ct[:p] + c1 + c0 + ct[p + 2 * CT_CHUNK:]
    with pytest.raises(AgeError, match="chunk 0"):
        decrypt([identity], swapped)


def test_no_unauthenticated_plaintext_on_disk(
    tmp_path: Path, sample: tuple[X25519Identity, bytes, bytes]
) -> None:
    identity, _, ct = sample
    (tmp_path / "cut.age").write_bytes(ct[:-1])
    with pytest.raises(AgeError):
        decrypt_file([identity], tmp_path / "cut.age", tmp_path / "out.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.age"]


def test_armored_and_foreign_files(sample: tuple[X25519Identity, bytes, bytes]) -> None:
    identity, _, _ = sample
    with pytest.raises(AgeError, match="armored"):
        decrypt([identity], b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n")
    with pytest.raises(AgeError, match="not an age file"):
        decrypt([identity], b"\x00\x00\x00\x18ftypisom")
    with pytest.raises(AgeError, match="empty"):
        decrypt([identity], b"")


# -- streaming -------------------------------------------------------------------------------


class RecordingSink:
    def __init__(self) -> None:
        self.total = 0
        self.largest = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(memoryview(data))
        self.total += n
        self.largest = max(self.largest, n)
        return n


def test_writer_streams_with_bounded_buffers() -> None:
    sink = RecordingSink()
    w = AgeWriter([X25519Identity.generate().recipient], sink)
    start = sink.total
    block = os.urandom(1 << 20)
    for _ in range(8):
        w.write(block)
    # All but the last (possibly final) chunk are out before close().
    assert sink.total - start == (8 * 16 - 1) * CT_CHUNK
    assert sink.largest <= CT_CHUNK + 200
    w.close()
    assert sink.total == encrypted_size(8 << 20)
    with pytest.raises(ValueError):
        w.write(b"more")


def test_an_aborted_writer_leaves_an_undecryptable_file() -> None:
    identity = X25519Identity.generate()
    out = io.BytesIO()
    with pytest.raises(RuntimeError), AgeWriter([identity.recipient], out) as w:
        w.write(os.urandom(CHUNK * 2 + 5))
        raise RuntimeError("recorder failed")
    with pytest.raises(AgeError, match="truncated"):
        decrypt([identity], out.getvalue())


# -- shares ----------------------------------------------------------------------------------


def test_share_copy_opens_for_the_engineer_only(
    tmp_path: Path, keygen_identity: tuple[Path, str], our_identity: tuple[Path, X25519Identity]
) -> None:
    owner_path, owner_recipient = keygen_identity
    engineer_path, engineer = our_identity
    data = os.urandom(300_000)
    original = encrypt([owner_recipient], data)
    copy = io.BytesIO()
    n = share_copy(load_identities(owner_path), io.BytesIO(original), copy, [engineer.recipient])
    shared = copy.getvalue()
    assert n == len(shared)
    # Same payload bytes, new header with only the engineer's stanza.
    assert shared[header_len(shared):] == original[header_len(original):]
    (tmp_path / "shared.age").write_bytes(shared)
    ok = run_age("-d", "-i", engineer_path, tmp_path / "shared.age")
    assert ok.returncode == 0 and ok.stdout == data
    denied = run_age("-d", "-i", owner_path, tmp_path / "shared.age")
    assert denied.returncode != 0 and b"no identity matched" in denied.stderr
    with pytest.raises(AgeError, match="no identity matches"):
        decrypt(load_identities(owner_path), shared)
    with pytest.raises(AgeError, match="no identity matches"):
        decrypt([engineer], original)


def test_share_copy_refuses_a_damaged_source(sample: tuple[X25519Identity, bytes, bytes]) -> None:
    identity, _, ct = sample
    with pytest.raises(AgeError):
        engineer = X25519Identity.generate().recipient
        share_copy([identity], io.BytesIO(ct[:-10]), io.BytesIO(), [engineer])


def test_reencrypt_uses_a_fresh_key(sample: tuple[X25519Identity, bytes, bytes]) -> None:
    identity, data, ct = sample
    engineer = X25519Identity.generate()
    out = io.BytesIO()
    reencrypt([identity], io.BytesIO(ct), out, [engineer.recipient])
    fresh = out.getvalue()
    assert decrypt([engineer], fresh) == data
    assert fresh[header_len(fresh):] != ct[header_len(ct):]
