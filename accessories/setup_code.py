"""HomeKit setup codes: validation and generation."""

from __future__ import annotations

import re
import secrets

_FORMAT = re.compile(r"^\d{3}-\d{2}-\d{3}$")
# The HAP specification forbids these codes: every digit equal, and the two "sequences".
TRIVIAL_CODES = frozenset(
    [f"{d}{d}{d}-{d}{d}-{d}{d}{d}" for d in "0123456789"] + ["123-45-678", "876-54-321"]
)


def setup_code_problem(code: str) -> str | None:
    if not _FORMAT.fullmatch(code):
        return f"must look like 123-45-679 (8 digits as XXX-XX-XXX), got {code!r}"
    if code in TRIVIAL_CODES:
        return (
            f"{code} is too easy to guess and is refused by HomeKit; "
            "run `obscura init` for a new one"
        )
    return None


def generate_setup_code() -> str:
    while True:
        digits = f"{secrets.randbelow(10**8):08d}"
        code = f"{digits[:3]}-{digits[3:5]}-{digits[5:]}"
        if code not in TRIVIAL_CODES:
            return code
