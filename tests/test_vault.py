"""ClipVault under faults: a full spool (cap and disk), a failed append, retention's order, and
what it leaves on the bridge's disk (crashes mid-append and held clips: test_vault_holds.py).
Each test ends with the owner's view: the manifest verified with the owner's key against the
real file:// bucket.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import bridge.store.spool_entry as spool_entry
import bridge.store.vault as vault_mod
from bridge.store.bucket import open_bucket
from bridge.store.config import StorageConfig
from bridge.store.retention import expired
from bridge.store.spool import SpoolFull
from bridge.store.vault import ClipVault
from crypto.age_keys import X25519Identity, generate_identity
from crypto.manifest import ManifestVerifier, Report
from tests.test_retention import meta, seal

DAY = 86400.0


def config(tmp_path: Path, identity: X25519Identity, **kw: Any) -> StorageConfig:
    (tmp_path / "state").mkdir(exist_ok=True)
    return StorageConfig(
        bucket=(tmp_path / "bucket").as_uri(),
        recipients=(str(identity.recipient),),
        heartbeat_seconds=300,
        **kw,
    )


async def owner_view(url: str, head_name: str, identity: X25519Identity) -> Report:
    """What the owner's `clips verify` says about the bucket right now."""
    bucket = open_bucket(url)
    try:
        blobs = {n.rsplit("/", 1)[1]: await bucket.get(n) async for n, _ in bucket.list("")}
    finally:
        await bucket.close()
    return ManifestVerifier(
        [identity],
        head_id=head_name.rsplit("/", 1)[1],
        get=blobs.get,
        list=lambda: [(oid, len(b or b"")) for oid, b in blobs.items() if b is not None],
    ).verify()


async def listing(url: str) -> list[str]:
    bucket = open_bucket(url)
    try:
        return [n async for n, _ in bucket.list("")]
    finally:
        await bucket.close()


async def eventually(cond: Callable[[], bool | Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_spool_cap_with_bucket_down_keeps_the_manifest_chain(tmp_path: Path) -> None:
    """Regression: with the bucket down and a small cap, eviction took segment 0 and verify
    said "segment 0 is missing" for good. Now segments stay; clips go with their posters and
    are logged as evicted."""
    identity = generate_identity()
    cfg = config(tmp_path, identity, spool_max_mb=1)
    vault = ClipVault(cfg, tmp_path / "state")
    vault.uploader.max_backoff = 0.2
    real_put = vault.bucket.put
    down = True

    async def put(name: str, data: Any) -> Any:
        if down:
            raise OSError("the bucket is down")
        return await real_put(name, data)

    vault.bucket.put = put  # type: ignore[method-assign]
    await vault.start()
    try:
        now = time.time()
        for i in range(6):
            await seal(vault, meta(f"Cam{i}", now + i, 300_000), bytes([i]) * 300_000)
        assert vault.spool.stats.evicted_count >= 4  # at least two clips with their posters
        kinds = [i.kind for i in vault.spool.ready()]
        assert vault.writer.state is not None  # every segment since 0 waits in the spool
        assert kinds.count("manifest") == vault.writer.state.seq + 1
        down = False
        assert await vault.uploader.wait_idle(timeout=10)
        assert await vault.wait_published(timeout=10)
    finally:
        await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == []
    evicted = [c for c in report.clips if c.deleted == "evicted"]
    assert len(report.clips) == 6 and len(evicted) >= 2
    assert {c.camera for c in evicted} == {f"Cam{i}" for i in range(len(evicted))}  # oldest
    listed = {n.rsplit("/", 1)[1] for n in await listing(cfg.bucket)}
    for c in report.clips:  # a clip and its poster share their fate
        assert (c.id in listed) == (c.thumb in listed) == (c.deleted is None)


async def test_clip_evicted_before_its_entry_is_logged(tmp_path: Path) -> None:
    """Another camera's commit can evict a sealed clip before its `clip` entry is appended: the
    `delete` must follow the entry (in the same segment), or the verifier calls it missing."""
    identity = generate_identity()
    cfg = config(tmp_path, identity, spool_max_mb=1)
    vault = ClipVault(cfg, tmp_path / "state")
    real_on_sealed = vault._on_sealed
    other = vault.layout.clip_name()

    async def late(sealed: Any) -> None:
        with vault.spool.create() as entry:  # 900 KB from elsewhere: the cap evicts the clip
            entry.write(b"\0" * 900_000)
            item = entry.commit(other, "clip")
        await asyncio.sleep(0.05)  # the eviction is recorded first
        vault.spool.discard(item)  # (it stands for a clip sealed later; not part of this test)
        await real_on_sealed(sealed)

    vault._on_sealed = late  # type: ignore[method-assign]
    await vault.heartbeat()
    await seal(vault, meta("Early", time.time(), 300_000), b"e" * 300_000)
    await vault.start()
    try:
        assert await vault.uploader.wait_idle(timeout=5)
    finally:
        await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == []
    assert [(c.camera, c.deleted) for c in report.clips] == [("Early", "evicted")]


async def test_full_spool_disk_during_append_does_not_break_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the state was saved before the segment reached the spool; when the spool's
    disk was full, that segment was lost and the next one chained to it. Now the writer rolls
    back, and the clip's entry goes out with the next append (a retry soon after)."""
    identity = generate_identity()
    cfg = config(tmp_path, identity)
    vault = ClipVault(cfg, tmp_path / "state")
    await vault.start()
    real_write_json = spool_entry.write_json
    failures: list[str] = []

    def full_for_segments(path: Path, obj: dict[str, Any]) -> None:
        if obj["kind"] == "manifest" and not failures:
            failures.append(obj["object"])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_json(path, obj)

    try:
        now = time.time()
        await seal(vault, meta("Before", now, 20_000), b"a" * 20_000)
        # Everything logged so far is uploaded: what the spool offers below is new.
        assert await vault.uploader.wait_idle(timeout=5)
        seq = vault.writer.state.seq if vault.writer.state else -1
        monkeypatch.setattr(spool_entry, "write_json", full_for_segments)
        with pytest.raises(SpoolFull):
            await seal(vault, meta("During", now + 1, 20_000), b"b" * 20_000)
        assert failures and vault.writer.state and vault.writer.state.seq == seq
        assert len(vault.writer.pending) == 1  # the clip entry, queued again
        # Its clip and poster stay held (not uploaded unlogged) until the retry logs them.
        assert vault.status()["uploads"]["held_count"] == 2 and not vault.spool.ready()
        # Retried within seconds; the entry leaves the writer's queue before the saved state
        # releases its clip and poster, so wait for both.
        await eventually(lambda: not vault.writer.pending and vault.spool.held_count == 0)
        await seal(vault, meta("After", now + 2, 20_000), b"c" * 20_000)
        assert await vault.uploader.wait_idle(timeout=5)
    finally:
        await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == []
    assert {c.camera for c in report.clips if c.deleted is None} == {"Before", "During", "After"}


async def test_state_that_cannot_be_saved_leaves_no_segment_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The segment is spooled (held back from upload) before the state is saved: when the save
    fails, the segment is dropped and the writer rolls back, so nothing forks or dangles."""
    identity = generate_identity()
    cfg = config(tmp_path, identity)
    vault = ClipVault(cfg, tmp_path / "state")
    await vault.start()
    real = vault_mod.write_private
    failed: list[Path] = []

    def state_disk_full(path: Path, text: str) -> None:
        if path.name == "manifest-state.json" and not failed:
            failed.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    try:
        now = time.time()
        await seal(vault, meta("Before", now, 20_000), b"a" * 20_000)
        # Its segment uploaded: a manifest item in the spool below can only be the failed one's
        # (under load the earlier segment was sometimes still waiting there).
        assert await vault.uploader.wait_idle(timeout=10)
        monkeypatch.setattr(vault_mod, "write_private", state_disk_full)
        with pytest.raises(OSError, match="No space"):
            await seal(vault, meta("During", now + 1, 20_000), b"b" * 20_000)
        assert failed and not any(i.kind == "manifest" for i in vault.spool.ready())
        await seal(vault, meta("After", now + 2, 20_000), b"c" * 20_000)
        assert await vault.uploader.wait_idle(timeout=5)
    finally:
        await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == []
    assert {c.camera for c in report.clips} == {"Before", "During", "After"}


async def test_retention_publishes_deletions_before_deleting(tmp_path: Path) -> None:
    """Regression: retention deleted objects, then logged it; a verify in between saw live
    objects missing. Now a verify at any point of a pass finds nothing wrong, and while the
    log cannot be published nothing is deleted."""
    identity = generate_identity()
    cfg = config(tmp_path, identity, retention_days=1)
    vault = ClipVault(cfg, tmp_path / "state")
    vault.uploader.max_backoff = 0.2
    vault.publish_timeout = 1.0
    await vault.start()
    real_put, real_delete = vault.bucket.put, vault.bucket.delete
    puts_down = False
    views: list[Report] = []

    async def put(name: str, data: Any) -> Any:
        if puts_down:
            raise OSError("the bucket is down")
        return await real_put(name, data)

    async def delete(name: str) -> None:
        views.append(await owner_view(cfg.bucket, vault.head_name, identity))
        await real_delete(name)
        views.append(await owner_view(cfg.bucket, vault.head_name, identity))

    vault.bucket.put = put  # type: ignore[method-assign]
    vault.bucket.delete = delete  # type: ignore[method-assign]
    try:
        now = time.time()
        await seal(vault, meta("Old", now - 2 * DAY, 20_000), b"o" * 20_000)
        await seal(vault, meta("New", now, 20_000), b"n" * 20_000)
        assert await vault.uploader.wait_idle(timeout=5) and await vault.wait_published(5)
        vault.retention.clock = lambda: now

        puts_down = True  # the deletions are logged but cannot be published: keep the objects
        assert await vault.retention.run_once() == [] and views == []
        assert len(vault._doomed) == 2

        puts_down = False
        deleted = await vault.retention.run_once()
        assert len(deleted) == 2 and len(views) == 4
        assert all(v.problems == [] for v in views), [v.problems for v in views]
        assert vault._doomed == set()
    finally:
        await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == []
    assert {c.camera: c.deleted for c in report.clips} == {"Old": "retention", "New": None}


async def test_bridge_disk_holds_no_timeline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: retention-index.json kept each clip's exact start time, and the vault logged
    camera and subjects. Now the index holds the hour (rounded up) and kind, and the log an
    object id; an index written the old ways (exact times, bare hours) is converted at start
    and still works."""
    identity = generate_identity()
    cfg = config(tmp_path, identity, retention_days=1)
    state = tmp_path / "state"
    old_start = 1_700_000_123.456
    (state / "retention-index.json").write_text(
        json.dumps({"b/old": old_start, "b/hour": 1_700_002_800}))
    vault = ClipVault(cfg, state)
    assert json.loads((state / "retention-index.json").read_text()) == {
        "b/old": [1_700_002_800, None], "b/hour": [1_700_002_800, None]}
    assert vault.is_clip("b/old")  # kind unknown: shareable, as before kinds were kept
    await vault.start()
    try:
        start = time.time()
        with caplog.at_level(logging.DEBUG, logger="bridge.store"):
            await seal(vault, meta("Front Door", start, 20_000), b"x" * 20_000)
        assert await vault.uploader.wait_idle(timeout=5)
        index = json.loads((state / "retention-index.json").read_text())
        assert len(index) == 4  # the old entries, the clip and its poster
        kinds = sorted(str(kind) for _, kind in index.values())
        assert kinds == ["None", "None", "clip", "poster"]
        for name, (when, kind) in index.items():
            assert isinstance(when, int) and when % 3600 == 0
            assert name.startswith("b/") or start <= when < start + 3600
            assert vault.is_clip(name) == (kind in ("clip", None))
        assert "Front Door" not in caplog.text and "person" not in caplog.text
        assert "sealed" in caplog.text
        # Retention reads old and new entries alike: the old one expires a day after its hour.
        assert expired(vault._retention_entries(), 1_700_002_800 + DAY + 1, 1) == [
            "b/hour", "b/old"]
        assert expired(vault._retention_entries(), 1_700_002_800 + DAY - 1, 1) == []
    finally:
        await vault.stop(drain_seconds=5)
