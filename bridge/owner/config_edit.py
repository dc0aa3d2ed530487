"""Small, comment-preserving edits of the TOML configuration (the recipients list)."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

from bridge.config import ConfigError

_SECTION = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$", re.MULTILINE)
_RECIPIENTS = re.compile(r"^(\s*)recipients\s*=\s*\[[^\]]*\]", re.MULTILINE)


def _storage_span(text: str) -> tuple[int, int] | None:
    """Start and end offsets of the [storage] table's body, or None."""
    for match in _SECTION.finditer(text):
        if match.group(1).strip() == "storage":
            nxt = _SECTION.search(text, match.end())
            # Arrays of tables ([[cameras]]) also end the table.
            arr = re.search(r"^\s*\[\[", text[match.end() :], re.MULTILINE)
            ends = [m for m in (nxt.start() if nxt else None,) if m is not None]
            if arr:
                ends.append(match.end() + arr.start())
            return match.end(), min(ends) if ends else len(text)
    return None


def set_recipients(path: Path, recipients: list[str], default_bucket: str) -> None:
    """Rewrite [storage].recipients (adding [storage] with a local bucket when missing)."""
    text = path.read_text(encoding="utf-8")
    listed = "[" + ", ".join(json.dumps(r) for r in recipients) + "]"
    span = _storage_span(text)
    if span is None:
        text = text.rstrip("\n") + (
            "\n\n[storage]\n"
            f"bucket = {json.dumps(default_bucket)}   # or s3://bucket/prefix?endpoint=…\n"
            f"recipients = {listed}   # the owner's public keys (obscura keys …)\n"
            "retention_days = 10\n"
        )
    else:
        start, end = span
        body = text[start:end]
        if _RECIPIENTS.search(body):
            body = _RECIPIENTS.sub(lambda m: f"{m.group(1)}recipients = {listed}", body, count=1)
        else:
            body = f"\nrecipients = {listed}" + body
        text = text[:start] + body + text[end:]
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # never write a config we cannot read back
        raise ConfigError(
            path, "storage.recipients", f"could not update the file safely: {exc}"
        ) from None
    tmp = path.with_name(path.name + ".tmp")
    mode = path.stat().st_mode & 0o777
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)
