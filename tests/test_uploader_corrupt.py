"""The uploader and a corrupted spool entry: a clip or poster is quarantined and its upload
deleted (test_uploader.py), a manifest segment never is: dropping it would leave the head
naming a missing segment, breaking the owner's chain for good."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import pytest

from bridge.store.bucket import BucketLayout, open_bucket
from bridge.store.spool import Spool
from bridge.store.uploader import Uploader
from tests.test_uploader import MiB, eventually, fill_spool


def flip_a_bit(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))


async def test_corrupt_manifest_segment_is_kept_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a segment damaged on the bridge's disk was quarantined like a clip; the
    head then went up naming it, and verify reported it missing for good."""
    bucket = open_bucket(f"file://{tmp_path}/bucket")
    spool = Spool(tmp_path / "spool", 64 * MiB)
    layout = BucketLayout(secrets.token_hex(8))
    with spool.create() as entry:
        entry.write(secrets.token_bytes(5000))
        segment = entry.commit(f"{layout.root}/{secrets.token_hex(16)}", "manifest", {"seq": 0})
    flip_a_bit(segment.data_path)
    up = Uploader(spool, bucket, min_backoff=0.05, max_backoff=0.1)
    with caplog.at_level(logging.WARNING, logger="bridge.store"):
        up.start()
        await eventually(lambda: up.failures >= 3, 10)
        await up.stop()
    (kept,) = Spool(tmp_path / "spool", 64 * MiB).ready()  # still there, attempts counted
    assert kept.id == segment.id and kept.attempts >= 3 and "damaged" in (kept.last_error or "")
    assert up.status().quarantined == 0 and not (tmp_path / "spool/quarantine").exists()
    assert [n async for n, _ in bucket.list("")] == []  # its bad upload deleted each time
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "damaged in the spool" in errors[0].getMessage()  # once a minute
    segment.data_path.unlink()  # gone altogether: still kept, never quarantined
    up = Uploader(spool, bucket, min_backoff=0.05, max_backoff=0.1)
    up.start()
    await eventually(lambda: up.failures >= 2, 10)
    await up.stop()
    assert spool.pending_count == 1 and up.status().quarantined == 0


async def test_failed_delete_of_a_corrupt_upload_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = open_bucket(f"file://{tmp_path}/bucket")

    async def delete(name: str) -> None:
        raise OSError("the bucket refuses deletes")

    bucket.delete = delete  # type: ignore[method-assign]
    spool = Spool(tmp_path / "spool", 64 * MiB)
    fill_spool(spool, BucketLayout(secrets.token_hex(8)), [10_000])
    flip_a_bit(spool.ready()[0].data_path)
    up = Uploader(spool, bucket)
    with caplog.at_level(logging.ERROR, logger="bridge.store"):
        up.start()
        assert await up.wait_idle(10)
        await up.stop()
    assert up.status().quarantined == 1
    assert "cannot delete the corrupt upload" in caplog.text and "refuses deletes" in caplog.text
