"""Retention in the bridge's ClipVault: an expired clip and its poster leave the bucket, and
the manifest records the deletion, so the owner's verifier sees it as deleted (not missing).

In process, with a file:// bucket: two clips go through the real recorder-side path
(EncryptedClipSink → spool → uploader), one recorded 2 days ago, one now; retention_days = 1.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

from bridge.record.clip import ClipMeta
from bridge.store.bucket import open_bucket
from bridge.store.config import StorageConfig
from bridge.store.vault import ClipVault
from crypto.age_keys import generate_identity
from crypto.manifest import ManifestVerifier

DAY = 86400.0
POSTER = b"\xff\xd8\xff\xe0" + b"\x00" * 300 + b"\xff\xd9"  # a JPEG's markers, enough for padding


def meta(camera: str, start: float, size: int) -> ClipMeta:
    return ClipMeta(
        camera=camera, event_id=secrets.token_hex(16), part=0, start=start, end=start + 10.0,
        duration=10.0, subjects=("person",), best_score=0.9, poster=POSTER, width=640,
        height=360, frames=150, media_bytes=size, size=size, reason="post_roll",
    )


async def seal(vault: ClipVault, m: ClipMeta, payload: bytes) -> None:
    def record():  # type: ignore[no-untyped-def]
        sink = vault.sink_factory()  # the recorder calls it in the clip's worker thread
        for i in range(0, len(payload), 4096):
            sink.write(payload[i:i + 4096])
        return sink

    sink = await asyncio.to_thread(record)
    await sink.finish(m)


async def test_retention_deletes_old_clip_and_poster_and_records_it(tmp_path: Path) -> None:
    identity = generate_identity()
    state = tmp_path / "state"
    state.mkdir()
    config = StorageConfig(
        bucket=(tmp_path / "bucket").as_uri(),
        recipients=(str(identity.recipient),),
        retention_days=1,
        heartbeat_seconds=300,
    )
    vault = ClipVault(config, state)
    await vault.start()
    try:
        now = time.time()
        await seal(vault, meta("Old", now - 2 * DAY, 20_000), b"o" * 20_000)
        await seal(vault, meta("New", now, 30_000), b"n" * 30_000)
        assert vault.clips_sealed == 2
        assert await vault.uploader.wait_idle(timeout=5)
        before = {n async for n, _ in vault.bucket.list("")}

        # The task's clock is injectable; pin it so the cutoff is exactly now - 1 day.
        vault.retention.clock = lambda: now
        deleted = await vault.retention.run_once()
        assert len(deleted) == 2  # the old clip and its poster, nothing of the new one
        assert await vault.uploader.wait_idle(timeout=5)  # the manifest segment with the deletes
        after = {n async for n, _ in vault.bucket.list("")}
        assert set(deleted) <= before and not set(deleted) & after
        assert await vault.retention.run_once() == []  # already gone from the index
    finally:
        await vault.stop(drain_seconds=5)  # uploads the newest manifest head

    bucket = open_bucket(config.bucket)
    try:
        names = [n async for n, _ in bucket.list("")]
        blobs = {n.rsplit("/", 1)[1]: await bucket.get(n) for n in names}
    finally:
        await bucket.close()
    head = vault.layout.well_known_name("manifest-head").rsplit("/", 1)[1]
    report = ManifestVerifier(
        [identity],
        head_id=head,
        get=blobs.get,
        list=lambda: [(oid, len(b or b"")) for oid, b in blobs.items()],
    ).verify()
    assert report.problems == []
    clips = {c.camera: c for c in report.clips}
    assert set(clips) == {"Old", "New"}
    old, new = clips["Old"], clips["New"]
    assert old.deleted == "retention"
    assert old.id not in blobs and old.thumb is not None and old.thumb not in blobs
    assert {vault.layout.object_id(n) for n in deleted} == {old.id, old.thumb}
    assert new.deleted is None
    assert new.id in blobs and new.thumb in blobs


async def test_owner_deletion_is_recorded_then_carried_out_even_after_a_bucket_outage(
    tmp_path: Path,
) -> None:
    """The bridge logs an owner deletion before deleting (manifest.md §6 rule 4); objects the
    bucket would not delete then are removed by retention, after a restart too, with no second
    `delete` entry."""
    identity = generate_identity()
    state = tmp_path / "state"
    state.mkdir()
    config = StorageConfig(
        bucket=(tmp_path / "bucket").as_uri(),
        recipients=(str(identity.recipient),),
        retention_days=10,
        heartbeat_seconds=300,
    )
    vault = ClipVault(config, state)
    await vault.start()
    try:
        now = time.time()
        await seal(vault, meta("Kept", now, 20_000), b"k" * 20_000)
        kept = set(vault._index)
        await seal(vault, meta("Doomed", now, 20_000), b"d" * 20_000)
        doomed = sorted(set(vault._index) - kept)
        assert len(doomed) == 2 and await vault.uploader.wait_idle(timeout=5)

        async def refuse(name: str) -> None:
            raise OSError("the bucket is down")

        vault.bucket.delete = refuse  # type: ignore[method-assign]
        assert sorted(await vault.delete_for_owner(doomed, timeout=5)) == doomed
        assert not any(vault.is_live(n) for n in doomed)
    finally:
        await vault.stop(drain_seconds=5)

    vault = ClipVault(config, state)  # restarted: the bucket deletes again
    await vault.start()  # its first retention pass runs at once
    try:
        seq = vault.writer.state.seq if vault.writer.state else None
        pending = state / "owner-deletions.json"
        for _ in range(50):
            listed = {n async for n, _ in vault.bucket.list("")}
            if not set(doomed) & listed and pending.read_text() == "[]":
                break
            await asyncio.sleep(0.1)
        assert not set(doomed) & listed and set(kept) <= listed
        assert pending.read_text() == "[]"
        assert (vault.writer.state.seq if vault.writer.state else None) == seq
    finally:
        await vault.stop(drain_seconds=5)

    bucket = open_bucket(config.bucket)
    try:
        blobs = {n.rsplit("/", 1)[1]: await bucket.get(n) async for n, _ in bucket.list("")}
    finally:
        await bucket.close()
    report = ManifestVerifier(
        [identity],
        head_id=vault.layout.well_known_name("manifest-head").rsplit("/", 1)[1],
        get=blobs.get,
        list=lambda: [(oid, len(b or b"")) for oid, b in blobs.items()],
    ).verify()
    assert report.problems == [] and not [n for n in report.notices if "not live" in n]
    clips = {c.camera: c for c in report.clips}
    assert clips["Doomed"].deleted == "owner" and clips["Kept"].deleted is None
