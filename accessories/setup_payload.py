"""The X-HM:// setup payload (what the pairing QR code encodes) and setup ids.

Payload version 0, as the HomeKit ADK, HAP-NodeJS ``setupURI()`` and HAP-python ``xhm_uri()``
build it: a 46-bit number written as 9 base-36 digits (0-9A-Z, zero-padded) after "X-HM://",
then the 4-character setup id:

    bits 45..43 version (0) | 42..39 reserved (0) | 38..31 category | 30..27 flags | 26..0 code

flags, high to low: WAC, BLE, IP, paired; an IP accessory sets IP (2). The code is the 8 digits
as one decimal number. The setup id also goes into the mDNS TXT record ``sh``,
base64(sha512(setup id + device id)[:4]), which HAP-python computes from ``state.setup_id``:
iOS uses it to find the accessory whose QR code was scanned, so each HAP server needs its own
setup id, kept across restarts (HAP-python would draw a new one on every start).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
from pathlib import Path

from .setup_code import setup_code_problem

_SETUP_ID_RE = re.compile(r"^[0-9A-Z]{4}$")
_ALPHANUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

FLAG_PAIRED = 1
FLAG_IP = 2
FLAG_BLE = 4
FLAG_WAC = 8


def validate_setup_code(code: str) -> str:
    """Return ``code`` if HomeKit accepts it ("XXX-XX-XXX", not trivial), else raise ValueError."""
    if not isinstance(code, str):
        raise ValueError(f"setup code must be a string like 123-45-679, got {code!r}")
    problem = setup_code_problem(code)
    if problem is not None:
        raise ValueError(f"setup code {problem}")
    return code


def validate_setup_id(setup_id: str) -> str:
    if not isinstance(setup_id, str) or not _SETUP_ID_RE.match(setup_id):
        raise ValueError(f"setup id must be 4 characters 0-9/A-Z, got {setup_id!r}")
    return setup_id


def generate_setup_id() -> str:
    return "".join(secrets.choice(_ALPHANUM) for _ in range(4))


def load_setup_id(path: Path) -> str:
    """The setup id stored at ``path``, created (0600, atomically) on first use."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return validate_setup_id(path.read_text(encoding="ascii").strip())
    setup_id = generate_setup_id()
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(setup_id + "\n")
    return setup_id


def _base36(value: int) -> str:
    digits = ""
    while value:
        value, rest = divmod(value, 36)
        digits = _ALPHANUM[rest] + digits
    return digits or "0"


def setup_uri(setup_code: str, setup_id: str, category: int, flags: int = FLAG_IP) -> str:
    """The X-HM:// payload for a QR code (or NFC tag)."""
    code = int(validate_setup_code(setup_code).replace("-", ""))
    validate_setup_id(setup_id)
    if not 0 < category <= 0xFF or not 0 <= flags <= 0xF:
        raise ValueError(f"category {category} or flags {flags} out of range")
    payload = (category << 31) | (flags << 27) | code
    return f"X-HM://{_base36(payload).rjust(9, '0')}{setup_id}"


def setup_hash(setup_id: str, device_id: str) -> str:
    """The mDNS ``sh`` value; ``device_id`` is the accessory's "XX:XX:XX:XX:XX:XX" id."""
    digest = hashlib.sha512((setup_id + device_id).encode()).digest()
    return base64.b64encode(digest[:4]).decode()
