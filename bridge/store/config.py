"""[storage] in the TOML configuration: where encrypted clips go and to whose keys.

```toml
[storage]
bucket = "file:///var/lib/obscura/bucket"  # or s3://bucket/prefix?endpoint=…&region=…
recipients = ["age1…"]                     # the owner's public keys; none: recording is off
retention_days = 10
credentials_file = "/etc/obscura/s3.env"   # bucket keys (mode 0600); else the environment
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge.config_reader import ConfigError, TableReader, config_path

BUCKET_SCHEMES = ("file", "s3", "gs", "gcs", "az", "azure")
_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
#: Why nothing is recorded when [storage] has no recipient. Not a configuration error: after
#: `obscura keys remove --force` of the last key the bridge must still start (live view, and
#: `obscura keys add-recipient` to recover), like it does with a broken bucket.
NO_RECIPIENTS = (
    "no recipients in [storage]: clips could be encrypted to no one, so none are recorded, and "
    "retention and the upload of spooled clips are paused (the manifest that records them is "
    "encrypted to the recipients); run `obscura keys generate` and "
    "`obscura keys add-recipient age1…`, then restart"
)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    bucket: str
    #: Empty (`[]` or missing) turns recording off, not the bridge: see `NO_RECIPIENTS`.
    recipients: tuple[str, ...]
    retention_days: float = 10.0
    credentials_file: Path | None = None
    spool_dir: Path | None = None  # default: state_dir/spool
    spool_max_mb: int = 2048
    pre_roll_seconds: float = 4.0
    post_roll_seconds: float = 5.0
    max_clip_seconds: float = 60.0
    #: An event is sealed in parts this long: what a crash can lose (docs/clip-format.md §8).
    part_seconds: float = 4.0
    heartbeat_seconds: float = 300.0


def parse_storage(path: Path, raw: Any) -> StorageConfig | None:
    """None when there is no [storage] table: the bridge then records nothing (and says so)."""
    if raw is None:
        return None
    r = TableReader(path, "storage", raw)
    bucket = r.get("bucket", str, None)
    if not bucket:
        raise r.fail("bucket", "is required: file:///path or s3://bucket/prefix?endpoint=…")
    try:
        scheme = urlsplit(bucket).scheme
    except ValueError as exc:  # e.g. an unclosed [IPv6 host
        raise r.fail("bucket", f"is not a URL: {exc}") from None
    if scheme not in BUCKET_SCHEMES:
        raise r.fail(
            "bucket", f"unsupported bucket {scheme or bucket!r}: use file://, s3://, az:// or gs://"
        )
    recipients = r.get("recipients", list, [])
    for i, recipient in enumerate(recipients):
        if not isinstance(recipient, str) or not _RECIPIENT.match(recipient.strip()):
            raise ConfigError(
                path, f"storage.recipients[{i}]",
                "must be an age public key (age1…, from `obscura keys generate` or age-keygen)",
            )
    retention = r.get("retention_days", float, 10.0)
    if not 0.01 <= retention <= 3650:
        raise r.fail("retention_days", f"must be between 0.01 and 3650 days, got {retention}")
    creds = config_path(r, "credentials_file")
    if creds is not None and scheme == "file":
        # Said, not ignored: whoever wrote it expects keys to be used (or checked) somewhere.
        raise r.fail(
            "credentials_file", "a file:// bucket takes no credentials: remove this key"
        )
    spool = config_path(r, "spool_dir")
    spool_mb = r.get("spool_max_mb", int, 2048)
    if spool_mb < 16:
        raise r.fail("spool_max_mb", f"must be at least 16, got {spool_mb}")
    config = StorageConfig(
        bucket=bucket,
        recipients=tuple(dict.fromkeys(x.strip() for x in recipients)),
        retention_days=retention,
        credentials_file=creds,
        spool_dir=spool,
        spool_max_mb=spool_mb,
        pre_roll_seconds=_seconds(r, "pre_roll_seconds", 4.0, 0.0, 30.0),
        post_roll_seconds=_seconds(r, "post_roll_seconds", 5.0, 0.0, 60.0),
        max_clip_seconds=_seconds(r, "max_clip_seconds", 60.0, 5.0, 600.0),
        part_seconds=_seconds(r, "part_seconds", 4.0, 1.0, 60.0),
        heartbeat_seconds=_seconds(r, "heartbeat_seconds", 300.0, 5.0, 86400.0),
    )
    r.check_unknown()
    return config


def _seconds(r: TableReader, name: str, default: float, lo: float, hi: float) -> float:
    value = r.get(name, float, default)
    if not lo <= value <= hi:
        raise r.fail(name, f"must be between {lo:g} and {hi:g} seconds, got {value}")
    return value
