"""HDS frames (docs/hds.md §2-§4): key derivation, sealing and opening, the payload split.

A HomeKit Data Stream connection is a sequence of ChaCha20-Poly1305 frames, one key and one
counter per direction. This module owns exactly that and nothing else: no socket (the session
reads ``FRAME_HEADER_SIZE`` bytes, asks ``parse_frame_header`` how many follow, reads
``length + TAG_SIZE`` more and hands both to ``FrameOpener.open``), no clock, no logging.

Keys come from HKDF-SHA512 over the pair-verify shared secret of the HAP connection that set the
stream up. HAP-python keeps that secret to itself but offers ``derive_key(salt, info)``;
``session_keys`` takes any such function, so the secret never has to leave HAP-python.

An opener advances its counter only when a frame authenticates. The server can therefore try a
new connection's first frame against every prepared session's opener (trial decryption) and
keep the one that opened it, already counting from 1.

Usage::

    keys = session_keys(connection.derive_key, controller_salt, accessory_salt)
    opener = FrameOpener(keys.controller_to_accessory)
    sealer = FrameSealer(keys.accessory_to_controller)
    payload = opener.open(head, body)              # head: 4 bytes, body: length + 16 bytes
    header, message = decode_payload(payload)
    writer.write(sealer.seal(encode_payload(response_header, response_message)))
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .format import Bytes, HDSFormatError, decode, encode

FRAME_TYPE = 0x01
FRAME_HEADER_SIZE = 4  # type (1) + payload length (u24 BE)
TAG_SIZE = 16
# HAP-NodeJS's connection refuses larger payloads in both directions; a 256 KiB media chunk with
# its metadata is ~262 350 bytes.
MAX_PAYLOAD = 0xFFFFF
MAX_HEADER = 0xFF  # the payload's header length is one byte
KEY_SIZE = 32
SALT_SIZE = 32  # each of the controller's and the accessory's
ACCESSORY_TO_CONTROLLER_INFO = b"HDS-Read-Encryption-Key"
CONTROLLER_TO_ACCESSORY_INFO = b"HDS-Write-Encryption-Key"
_MAX_COUNTER = (1 << 64) - 1

# derive(salt, info) -> 32 bytes; HAP-python's derive_key returns None before pair-verify.
Derive = Callable[[bytes, bytes], "bytes | None"]


class HDSFrameError(ValueError):
    """A frame that is malformed, too large or does not authenticate, or a bad key."""


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The two 32-byte keys of one data stream (never printed: repr hides them)."""

    accessory_to_controller: bytes = field(repr=False)
    controller_to_accessory: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("accessory_to_controller", "controller_to_accessory"):
            key = getattr(self, name)
            if not isinstance(key, bytes) or len(key) != KEY_SIZE:
                raise HDSFrameError(f"{name} key must be {KEY_SIZE} bytes")


def hkdf_from_secret(shared_secret: bytes) -> Callable[[bytes, bytes], bytes]:
    """A ``derive(salt, info)`` over ``shared_secret``: 32 bytes of HKDF-SHA512 (tests, peers)."""
    secret = bytes(shared_secret)

    def derive(salt: bytes, info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA512(), length=KEY_SIZE, salt=salt, info=info).derive(secret)

    return derive


def session_keys(derive: Derive, controller_salt: bytes, accessory_salt: bytes) -> SessionKeys:
    """Both keys for salts (controller's first, each 32 bytes) from a pair-verify ``derive``."""
    for name, salt in (("controller", controller_salt), ("accessory", accessory_salt)):
        if len(salt) != SALT_SIZE:
            raise HDSFrameError(f"{name} key salt must be {SALT_SIZE} bytes, got {len(salt)}")
    salt = bytes(controller_salt) + bytes(accessory_salt)
    a2c = derive(salt, ACCESSORY_TO_CONTROLLER_INFO)
    c2a = derive(salt, CONTROLLER_TO_ACCESSORY_INFO)
    if a2c is None or c2a is None:
        raise HDSFrameError("the HAP connection has no pair-verify secret")
    return SessionKeys(accessory_to_controller=bytes(a2c), controller_to_accessory=bytes(c2a))


def nonce(counter: int) -> bytes:
    """The 12-byte nonce of frame ``counter``: 4 zero bytes, then the counter as u64 LE."""
    return b"\x00\x00\x00\x00" + struct.pack("<Q", counter)


def frame_header(length: int) -> bytes:
    """The 4 header bytes (also the AAD) of a frame with a ``length``-byte payload."""
    if not 0 <= length <= MAX_PAYLOAD:
        raise HDSFrameError(f"payload of {length} bytes exceeds MAX_PAYLOAD ({MAX_PAYLOAD})")
    return bytes((FRAME_TYPE,)) + length.to_bytes(3, "big")


def parse_frame_header(header: Bytes) -> int:
    """The payload length announced by a 4-byte frame header; checks type and size."""
    if len(header) != FRAME_HEADER_SIZE:
        raise HDSFrameError(f"frame header must be {FRAME_HEADER_SIZE} bytes, got {len(header)}")
    if header[0] != FRAME_TYPE:
        raise HDSFrameError(f"frame type {header[0]:#04x}, expected {FRAME_TYPE:#04x}")
    length = int.from_bytes(header[1:4], "big")
    if length > MAX_PAYLOAD:
        raise HDSFrameError(f"frame announces {length} bytes, more than {MAX_PAYLOAD}")
    return length


class _Direction:
    __slots__ = ("_aead", "_counter")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise HDSFrameError(f"key must be {KEY_SIZE} bytes, got {len(key)}")
        self._aead = ChaCha20Poly1305(bytes(key))
        self._counter = 0

    @property
    def counter(self) -> int:
        """The counter of the next frame (= frames sealed or opened so far)."""
        return self._counter

    def _next(self) -> int:
        if self._counter > _MAX_COUNTER:
            raise HDSFrameError("frame counter exhausted")
        return self._counter

    def __repr__(self) -> str:
        return f"{type(self).__name__}(counter={self._counter})"


class FrameSealer(_Direction):
    """Seals our frames in order: counter 0, 1, 2... (one sealer per connection)."""

    __slots__ = ()

    def seal(self, plaintext: Bytes) -> bytes:
        """The whole frame for ``plaintext`` (a payload): header, ciphertext and tag."""
        header = frame_header(len(plaintext))
        sealed = self._aead.encrypt(nonce(self._next()), bytes(plaintext), header)
        self._counter += 1
        return header + sealed


class FrameOpener(_Direction):
    """Opens the peer's frames in order; a frame that fails leaves the counter where it was."""

    __slots__ = ()

    def open(self, header: Bytes, body: Bytes) -> bytes:
        """The payload of one frame; ``body`` is its ciphertext followed by the 16-byte tag."""
        length = parse_frame_header(header)
        if len(body) != length + TAG_SIZE:
            raise HDSFrameError(
                f"frame body is {len(body)} bytes, header says {length} + {TAG_SIZE} (tag)"
            )
        try:
            payload = self._aead.decrypt(nonce(self._next()), bytes(body), bytes(header))
        except InvalidTag:
            raise HDSFrameError(f"frame {self._counter} does not authenticate") from None
        self._counter += 1
        return payload


def encode_payload(header: Mapping[str, object], message: Mapping[str, object]) -> bytes:
    """``[header length u8][header][message]``; each encoded on its own (HDSFormatError)."""
    head = encode(dict(header))
    if len(head) > MAX_HEADER:
        raise HDSFormatError(f"encoded header is {len(head)} bytes, more than {MAX_HEADER}")
    return bytes((len(head),)) + head + encode(dict(message))


def decode_payload(payload: Bytes) -> tuple[dict[str, object], dict[str, object]]:
    """Split and decode a payload into (header, message), both dicts (HDSFormatError)."""
    if len(payload) < 1:
        raise HDSFormatError("empty payload: no header length")
    size = payload[0]
    if 1 + size > len(payload):
        raise HDSFormatError(f"header length {size} exceeds the {len(payload) - 1} bytes left")
    parts = []
    for what, blob in (("header", payload[1 : 1 + size]), ("message", payload[1 + size :])):
        try:
            value = decode(blob)
        except HDSFormatError as exc:
            raise HDSFormatError(f"{what}: {exc}") from None
        if not isinstance(value, dict):
            raise HDSFormatError(f"{what} is a {type(value).__name__}, not a dict")
        parts.append(value)
    return parts[0], parts[1]


__all__ = [
    "ACCESSORY_TO_CONTROLLER_INFO",
    "CONTROLLER_TO_ACCESSORY_INFO",
    "FRAME_HEADER_SIZE",
    "FRAME_TYPE",
    "KEY_SIZE",
    "MAX_HEADER",
    "MAX_PAYLOAD",
    "SALT_SIZE",
    "TAG_SIZE",
    "Derive",
    "FrameOpener",
    "FrameSealer",
    "HDSFrameError",
    "SessionKeys",
    "decode_payload",
    "encode_payload",
    "frame_header",
    "hkdf_from_secret",
    "nonce",
    "session_keys",
]
