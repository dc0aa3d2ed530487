"""The bridge's Ed25519 signing key (it signs the manifest; docs/manifest.md §7).

The key file is PKCS#8 PEM, mode 0600, created once. The public key is written
`obscura-bridge1…` (Bech32, HRP `obscura-bridge`, 32 raw bytes) so that a typo in a pinned key is
caught by the checksum; `fingerprint()` is the OpenSSH-style `SHA256:…` form for display.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crypto import bech32

PUBLIC_HRP = "obscura-bridge"


class BridgeKeyError(ValueError):
    """A bridge key or key file is invalid or unsafe."""


@dataclass(frozen=True, slots=True)
class BridgePublicKey:
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise BridgeKeyError("an Ed25519 public key is 32 bytes")

    @classmethod
    def parse(cls, text: str) -> BridgePublicKey:
        text = text.strip()
        try:
            hrp, data = bech32.decode(text)
        except bech32.Bech32Error as e:
            raise BridgeKeyError(f"not a bridge key (obscura-bridge1…): {e}") from None
        if hrp != PUBLIC_HRP or len(data) != 32:
            raise BridgeKeyError("not a bridge key (obscura-bridge1…)")
        return cls(data)

    def __str__(self) -> str:
        return bech32.encode(PUBLIC_HRP, self.raw)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.raw).digest()
        return "SHA256:" + base64.b64encode(digest).rstrip(b"=").decode()

    def short_fingerprint(self) -> str:
        """16 hex digits in groups of four, for reading aloud when pairing."""
        h = hashlib.sha256(self.raw).hexdigest()[:16]
        return " ".join(h[i:i + 4] for i in range(0, 16, 4))

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
            return True
        except InvalidSignature:
            return False


class BridgeKey:
    """The bridge's signing key. repr() never shows the secret."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = BridgePublicKey(key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> BridgeKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"BridgeKey({self.public})"

    def pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Create `path` (0600, never overwriting an existing key), fsync'd."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, self.pem())
            os.fsync(fd)
        finally:
            os.close(fd)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BridgeKey:
        """Load a key file; refuses one that group or others can read."""
        p = Path(path)
        try:
            mode = p.stat().st_mode
            data = p.read_bytes()
        except OSError as e:
            raise BridgeKeyError(f"cannot read bridge key {p}: {e}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise BridgeKeyError(f"bridge key {p} is readable by others: chmod 600 {p}")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise BridgeKeyError(f"bridge key {p} is not a PEM private key: {e}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise BridgeKeyError(f"bridge key {p} is not an Ed25519 key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> BridgeKey:
        """The key at `path`, generated and saved on first use."""
        try:
            return cls.load(path)
        except BridgeKeyError:
            if Path(path).exists():
                raise
        key = cls.generate()
        try:
            key.save(path)
        except FileExistsError:  # another process won the race: use its key
            return cls.load(path)
        return key
