"""age X25519 recipients (`age1…`) and identities (`AGE-SECRET-KEY-1…`), and identity files.

Identity files are what `age-keygen` writes: `#` comment lines, blank lines, one
`AGE-SECRET-KEY-1…` per line. Error messages never echo a secret key.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto import bech32

RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"
X25519_LABEL = b"age-encryption.org/v1/X25519"
FILE_KEY_SIZE = 16
_ZERO_NONCE = bytes(12)


class AgeError(Exception):
    """An age file, key or identity file is invalid, or no identity can open it."""


class NoIdentityMatch(AgeError):
    """The file is well-formed, but none of the given identities opens any of its stanzas."""


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


@dataclass(frozen=True, slots=True)
class Stanza:
    """One recipient stanza of an age header: `-> type args…` and a binary body."""

    type: str
    args: tuple[str, ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class X25519Recipient:
    """An age X25519 public key. `str()` gives the `age1…` form."""

    public: bytes

    def __post_init__(self) -> None:
        if len(self.public) != 32:
            raise AgeError("an X25519 recipient is 32 bytes")

    @classmethod
    def parse(cls, text: str) -> X25519Recipient:
        text = text.strip()
        try:
            hrp, data = bech32.decode(text)
        except bech32.Bech32Error as e:
            raise AgeError(f"not an age recipient (age1…): {text[:12]}…: {e}") from None
        if hrp != RECIPIENT_HRP or len(data) != 32:
            raise AgeError(f"not an age X25519 recipient (age1…): {text[:12]}…")
        return cls(data)

    def __str__(self) -> str:
        return bech32.encode(RECIPIENT_HRP, self.public)

    def wrap(self, file_key: bytes) -> Stanza:
        """A fresh `X25519` stanza carrying `file_key` to this recipient."""
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        try:
            shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self.public))
        except ValueError:  # low-order point: the shared secret would be all zeros
            raise AgeError(f"recipient {self} is not a usable X25519 key") from None
        key = hkdf(shared, share + self.public, X25519_LABEL)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return Stanza("X25519", (b64encode(share),), body)


@dataclass(frozen=True, slots=True)
class X25519Identity:
    """An age X25519 secret key. `str()` gives the `AGE-SECRET-KEY-1…` form; repr() hides it."""

    secret: bytes = field(repr=False)
    _key: X25519PrivateKey = field(init=False, repr=False, compare=False)
    _public: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise AgeError("an X25519 identity is 32 bytes")
        key = X25519PrivateKey.from_private_bytes(self.secret)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_public", key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> X25519Identity:
        text = text.strip()
        try:
            hrp, data = bech32.decode(text)
        except bech32.Bech32Error as e:
            raise AgeError(f"not an age identity (AGE-SECRET-KEY-1…): {e}") from None
        if hrp != IDENTITY_HRP or len(data) != 32:
            raise AgeError("not an age X25519 identity (AGE-SECRET-KEY-1…)")
        return cls(data)

    @property
    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self._public)

    def __str__(self) -> str:
        return bech32.encode(IDENTITY_HRP, self.secret).upper()

    def __repr__(self) -> str:
        return f"X25519Identity(recipient={self.recipient})"

    def unwrap(self, stanzas: Iterable[Stanza]) -> bytes | None:
        """The file key from the first X25519 stanza addressed to this identity, or None."""
        for stanza in stanzas:
            if stanza.type != "X25519":
                continue
            if len(stanza.args) != 1:
                raise AgeError("malformed X25519 stanza: wrong number of arguments")
            share = b64decode(stanza.args[0])
            if len(share) != 32:
                raise AgeError("malformed X25519 stanza: the share is not 32 bytes")
            # The length check comes before any decryption (partitioning-oracle defence).
            if len(stanza.body) != FILE_KEY_SIZE + 16:
                raise AgeError("malformed X25519 stanza: the body is not 32 bytes")
            try:
                shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:  # all-zero shared secret: the spec says abort
                raise AgeError("malformed X25519 stanza: low-order share") from None
            key = hkdf(shared, share + self._public, X25519_LABEL)
            try:
                return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, stanza.body, None)
            except InvalidTag:
                continue  # addressed to another recipient (stanzas are anonymous)
        return None


Recipient = X25519Recipient | str
Identity = X25519Identity | str


def as_recipient(r: Recipient) -> X25519Recipient:
    return r if isinstance(r, X25519Recipient) else X25519Recipient.parse(r)


def as_identity(i: Identity) -> X25519Identity:
    return i if isinstance(i, X25519Identity) else X25519Identity.parse(i)


def generate_identity() -> X25519Identity:
    return X25519Identity.generate()


def parse_identities(text: str, source: str = "identity file") -> list[X25519Identity]:
    """Every identity in an identity file's text (comments and blank lines skipped)."""
    if text.startswith(("age-encryption.org/", "-----BEGIN AGE ENCRYPTED FILE-----")):
        raise AgeError(f"{source} is passphrase-encrypted: decrypt it with `age -d` first")
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("AGE-PLUGIN-"):
            raise AgeError(f"{source} line {n}: age plugin identities are not supported")
        if not line.startswith("AGE-SECRET-KEY-1"):
            raise AgeError(f"{source} line {n}: not an age identity (AGE-SECRET-KEY-1…)")
        try:
            out.append(X25519Identity.parse(line))
        except AgeError as e:
            raise AgeError(f"{source} line {n}: {e}") from None
    if not out:
        raise AgeError(f"{source} holds no identity (AGE-SECRET-KEY-1…)")
    return out


def load_identities(path: str | os.PathLike[str]) -> list[X25519Identity]:
    """Identities from an identity file such as `age-keygen -o` or `obscura keys generate` write."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AgeError(f"cannot read identity file {p}: {e}") from None
    return parse_identities(text, str(p))


def identity_file_text(identity: X25519Identity, created: datetime | None = None) -> str:
    """The identity file `age-keygen` would write for `identity`."""
    when = (created or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return (
        f"# created: {when.isoformat().replace('+00:00', 'Z')}\n"
        f"# public key: {identity.recipient}\n"
        f"{identity}\n"
    )


def write_identity_file(path: str | os.PathLike[str], identity: X25519Identity) -> None:
    """Create `path` (mode 0600, never overwriting) holding `identity`; fsync'd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, identity_file_text(identity).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# Unpadded, canonical standard base64 (the spec requires decoders to reject anything else).
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).rstrip(b"=").decode()


def b64decode(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else bytes(text)
    if len(raw) % 4 == 1 or not _B64.issuperset(raw):
        raise AgeError("malformed header: invalid base64")
    data = base64.b64decode(raw + b"=" * (-len(raw) % 4))
    if b64encode(data).encode() != raw:  # non-zero trailing bits
        raise AgeError("malformed header: non-canonical base64")
    return data
