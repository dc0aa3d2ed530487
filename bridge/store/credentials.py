"""Bucket credentials: from a private (0600) file named in the config, or the environment.

The file is env-style, as `storage.credentials_file = "/etc/obscura/s3.env"` suggests:

    AWS_ACCESS_KEY_ID=AKIA...
    AWS_SECRET_ACCESS_KEY=...
    # AWS_SESSION_TOKEN=...      (optional)

An AWS-CLI style file (`[default]` + `aws_access_key_id = ...`) is read too. A file that group or
others may read is refused: the bridge would otherwise run happily with leaked keys. Secrets never
appear in reprs, logs or error messages.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bridge.store.bucket import BucketConfigError


class CredentialsError(BucketConfigError):
    """Credentials are missing, unreadable or unsafely stored."""


@dataclass(frozen=True, slots=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    source: str = "environment"  # where they came from, for status and errors


def read_private_file(path: Path) -> str:
    """The text of `path`, refusing anything but a regular file only its owner can read."""
    try:
        # O_NONBLOCK: a FIFO in its place must not hang the start-up (fstat refuses it below).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CredentialsError(f"credentials file {path} does not exist") from None
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW: whoever controls the link controls the keys
            raise CredentialsError(
                f"credentials file {path} is a symbolic link: name the file itself"
            ) from None
        raise CredentialsError(f"credentials file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)  # fstat the open file: no window between the check and the read
        if not stat.S_ISREG(st.st_mode):
            raise CredentialsError(f"credentials file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise CredentialsError(
                f"credentials file {path} is readable by group or others (mode {mode:04o}); "
                f"it holds secret keys: run `chmod 600 {path}`"
            )
        try:
            with os.fdopen(os.dup(fd), "r", encoding="utf-8") as f:
                return f.read()
        except UnicodeDecodeError:
            raise CredentialsError(f"credentials file {path} is not UTF-8 text") from None
        except OSError as e:
            raise CredentialsError(f"credentials file {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def parse_key_values(text: str) -> dict[str, str]:
    """KEY=VALUE / `export KEY="VALUE"` / ini `key = value` lines, keys upper-cased."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip().upper()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out.setdefault(key, value)  # the first profile wins in an AWS-CLI file
    return out


def load_key_values(credentials_file: Path | None, environ: Mapping[str, str]) -> tuple[
    dict[str, str], str
]:
    """(values, source): the credentials file when configured, else the environment."""
    if credentials_file is not None:
        return parse_key_values(read_private_file(credentials_file)), str(credentials_file)
    return {k.upper(): v for k, v in environ.items()}, "environment"


def s3_credentials(credentials_file: Path | None, environ: Mapping[str, str]) -> S3Credentials:
    values, source = load_key_values(credentials_file, environ)
    key = values.get("AWS_ACCESS_KEY_ID", "").strip()
    secret = values.get("AWS_SECRET_ACCESS_KEY", "").strip()
    if not key or not secret:
        where = (
            f"credentials file {credentials_file} has no"
            if credentials_file is not None
            else "no storage.credentials_file and no"
        )
        raise CredentialsError(
            f"{where} AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: the bridge needs explicit S3 "
            "keys (it never asks a cloud metadata service)"
        )
    token = values.get("AWS_SESSION_TOKEN", "").strip() or None
    return S3Credentials(key, secret, token, source)
