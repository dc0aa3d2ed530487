"""ClipVault's concurrent steps: deletions saving their bookkeeping, the head loop against a
commit in the worker thread, the last head at stop, entries the writer refuses, a poster that
cannot be sealed. Each ends with the owner's view of the real file:// bucket (test_vault.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.store.vault import ClipVault
from bridge.store.vault_recovery import unsave_state
from crypto.age_keys import X25519Identity, generate_identity
from crypto.manifest import ManifestState, ManifestVerifier, Report
from tests.test_retention import meta, seal
from tests.test_vault import DAY, config, eventually, owner_view


def owner_view_now(root: Path, head_name: str, identity: X25519Identity) -> Report:
    """`owner_view` without yielding to the loop: the bucket exactly as it is at this point."""
    blobs: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith("."):
                blobs[fn] = (Path(dirpath) / fn).read_bytes()
    return ManifestVerifier(
        [identity], head_id=head_name.rsplit("/", 1)[1], get=blobs.get,
        list=lambda: [(oid, len(b)) for oid, b in blobs.items()],
    ).verify()


async def test_concurrent_saves_of_the_doomed_names(tmp_path: Path) -> None:
    """Regression: every save went through one fixed temp file, unlocked: an owner deletion
    and a retention pass saving at once raised FileNotFoundError (the logged owner deletion
    failed) or left invalid JSON, which stopped the next start. Now saves never collide, and
    the newest snapshot is the one left on disk."""
    identity = generate_identity()
    cfg = config(tmp_path, identity)
    vault = ClipVault(cfg, tmp_path / "state")
    try:
        saves = []
        for i in range(200):
            vault._doomed.add(f"b/{i:03d}")
            saves.append(asyncio.create_task(vault._save_doomed()))
        await asyncio.gather(*saves)
        path = tmp_path / "state/owner-deletions.json"
        assert json.loads(path.read_text()) == sorted(vault._doomed)
        assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    finally:
        await vault.bucket.close()


async def test_owner_deletion_during_a_retention_pass(tmp_path: Path) -> None:
    identity = generate_identity()
    cfg = config(tmp_path, identity, retention_days=1)
    vault = ClipVault(cfg, tmp_path / "state")
    await vault.start()
    try:
        now = time.time()
        for i in range(4):
            await seal(vault, meta(f"Old{i}", now - 2 * DAY, 20_000), bytes([i]) * 20_000)
        await seal(vault, meta("New", now, 20_000), b"n" * 20_000)
        assert await vault.uploader.wait_idle(timeout=5) and await vault.wait_published(5)
        vault.retention.clock = lambda: now
        new = [n for n, live in vault._index.items() if live.hour > now - DAY]
        gone, kept = await asyncio.gather(vault.retention.run_once(), vault.delete_for_owner(new))
        assert len(gone) == 8 and kept == [] and vault._index == {} and vault._doomed == set()
        assert json.loads((tmp_path / "state/owner-deletions.json").read_text()) == []
    finally:
        await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == []
    assert sorted(c.deleted or "" for c in report.clips) == ["owner", *["retention"] * 4]


async def test_unreadable_doomed_names_do_not_stop_the_bridge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    identity = generate_identity()
    cfg = config(tmp_path, identity)
    path = tmp_path / "state/owner-deletions.json"
    path.write_text('["b/one", "b/tw')  # torn by the old shared temp file
    stale = path.with_name(".owner-deletions.json.x1y2.tmp")  # a crash mid-save
    stale.write_text("[]")
    with caplog.at_level(logging.ERROR, logger="bridge.store"):
        vault = ClipVault(cfg, tmp_path / "state")
    assert vault._doomed == set() and "owner-deletions.json is unreadable" in caplog.text
    assert not path.exists() and path.with_name(path.name + ".bad").read_text().startswith("[")
    assert not stale.exists()
    await vault.start()
    await vault.stop(drain_seconds=5)
    assert (await owner_view(cfg.bucket, vault.head_name, identity)).problems == []


async def test_unreadable_retention_index_does_not_stop_recording(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    identity = generate_identity()
    cfg = config(tmp_path, identity)
    path = tmp_path / "state/retention-index.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"b/one": [1700000000, "cl')  # torn (a disk error, a hand edit)
    with caplog.at_level(logging.ERROR, logger="bridge.store"):
        vault = ClipVault(cfg, tmp_path / "state")
    assert "retention-index.json is unreadable" in caplog.text
    assert path.with_name(path.name + ".bad").exists()
    await vault.start()
    await vault.stop(drain_seconds=5)
    assert (await owner_view(cfg.bucket, vault.head_name, identity)).problems == []


async def test_index_and_state_agree_while_a_deletion_waits(tmp_path: Path) -> None:
    """Regression: a deletion dropped its names from the retention index before its append;
    another append in that gap saved the index without them, and a crash then made start-up
    treat them as doomed: deleted from the bucket with no `delete` entry (missing for good)."""
    identity = generate_identity()
    cfg = config(tmp_path, identity)
    vault = ClipVault(cfg, tmp_path / "state")
    await vault.start()
    try:
        await seal(vault, meta("Kept", time.time(), 20_000), b"k" * 20_000)
        assert await vault.uploader.wait_idle(timeout=5)
        real_save, saved, go = vault._save_doomed, asyncio.Event(), asyncio.Event()

        async def slow_save() -> None:  # the deletion, between its doomed save and its append
            await real_save()
            if not go.is_set():
                saved.set()
                await go.wait()

        vault._save_doomed = slow_save  # type: ignore[method-assign]
        deletion = asyncio.create_task(vault.delete_for_owner(list(vault._index)))
        await saved.wait()
        heartbeat = asyncio.ensure_future(vault.heartbeat())  # another append, meanwhile
        await asyncio.wait([heartbeat], timeout=0.5)
        shutil.copytree(tmp_path / "state", tmp_path / "crashed")  # the power goes now
        go.set()
        assert await deletion == [] and (await heartbeat) is None
    finally:
        await vault.stop(drain_seconds=5)
    restarted = ClipVault(cfg, tmp_path / "crashed")
    try:  # nothing logged as deleted in that state: nothing to delete at start-up
        assert restarted._doomed == set() and len(restarted._index) == 2
    finally:
        await restarted.bucket.close()
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == [] and [c.deleted for c in report.clips] == ["owner"]


async def test_head_never_names_a_segment_not_in_the_bucket(tmp_path: Path) -> None:
    """Regression: the head loop checked the spool, then read the head; a commit in the worker
    thread in between released segment N+1 and set its head, which went up before N+1."""
    identity = generate_identity()
    cfg = config(tmp_path, identity)
    vault = ClipVault(cfg, tmp_path / "state")
    spool, real_ready, real_unhold = vault.spool, vault.spool.ready, vault.spool.unhold
    real_put = vault.bucket.put
    pause, paused, go = threading.Event(), threading.Event(), threading.Event()
    views: list[Report] = []

    def unhold(*items: Any) -> None:  # commit N+1 stops before releasing its segment
        if pause.is_set() and threading.current_thread() is not threading.main_thread():
            pause.clear()
            paused.set()
            go.wait(5)
        real_unhold(*items)

    def ready() -> Any:  # and goes on right after the head loop's last look at the spool
        items = real_ready()
        task = asyncio.current_task()
        if paused.is_set() and not go.is_set() and task and task.get_name() == "vault:head" \
                and not any(i.kind == "manifest" for i in items):
            version = vault._head_version
            go.set()
            deadline = time.monotonic() + 5
            while vault._head_version == version and time.monotonic() < deadline:
                time.sleep(0.01)
        return items

    async def put(name: str, data: Any) -> Any:
        if name != vault.head_name:
            await asyncio.sleep(0.3)  # a slow bucket: the head loop waits for segment N
        result = await real_put(name, data)
        if name == vault.head_name:
            views.append(owner_view_now(tmp_path / "bucket", vault.head_name, identity))
        return result

    spool.ready, spool.unhold = ready, unhold  # type: ignore[method-assign]
    vault.bucket.put = put  # type: ignore[method-assign]
    await vault.start()
    try:
        await seal(vault, meta("First", time.time(), 20_000), b"f" * 20_000)  # segment N
        pause.set()
        await seal(vault, meta("Second", time.time(), 20_000), b"s" * 20_000)  # N+1
        assert go.is_set()  # the race was staged
        assert await vault.uploader.wait_idle(timeout=10) and await vault.wait_published(10)
    finally:
        await vault.stop(drain_seconds=5)
    # Objects a head does not log yet are expected (uploaded before their segment: rule 2).
    problems = [p for v in views for p in v.problems if p.kind != "forged"]
    assert len(views) >= 2 and problems == []
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == [] and {c.camera for c in report.clips} == {"First", "Second"}


async def test_last_head_at_stop_is_the_newest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: stop() uploaded the final head while the head loop's upload of an older one
    was still under way; that one could land last (an older head over a newer: rule 3). Also:
    a failed head upload is logged."""
    identity = generate_identity()
    cfg = config(tmp_path, identity)
    vault = ClipVault(cfg, tmp_path / "state")
    bucket, real_put = vault.bucket, vault.bucket.put
    mode = ["ok"]  # how the next head upload goes
    started = threading.Event()

    def slow_put_in_thread(name: str, data: bytes) -> None:  # like the file backend's: the
        started.set()  # thread goes on even if its caller is cancelled
        time.sleep(1.0)
        bucket._put(name, data, True)  # type: ignore[attr-defined]

    async def put(name: str, data: Any) -> Any:
        if name == vault.head_name and mode[0] == "down":
            raise OSError("the bucket is down")
        if name == vault.head_name and mode[0] == "slow":
            mode[0] = "ok"
            return await asyncio.to_thread(slow_put_in_thread, name, data)
        return await real_put(name, data)

    bucket.put = put  # type: ignore[method-assign]
    await vault.start()
    try:
        await seal(vault, meta("Clip", time.time(), 20_000), b"c" * 20_000)
        assert await vault.uploader.wait_idle(timeout=5) and await vault.wait_published(5)
        mode[0] = "down"
        with caplog.at_level(logging.WARNING, logger="bridge.store"):
            await vault.heartbeat()
            await eventually(lambda: "manifest head upload failed" in caplog.text)
        mode[0] = "slow"
        await vault.heartbeat()  # the loop retries after its backoff: the older head, slowly
        await eventually(started.is_set)
        await vault.heartbeat()  # a newer head, while the older one is on its way
    finally:
        await vault.stop(drain_seconds=5)
    await asyncio.sleep(1.2)  # anything still on its way has landed
    assert (tmp_path / "bucket" / vault.head_name).read_bytes() == vault._head
    assert (await owner_view(cfg.bucket, vault.head_name, identity)).problems == []


async def test_entry_the_writer_refuses_leaves_nothing_to_release(tmp_path: Path) -> None:
    """Regression: the writer's append ran after `_admit` had indexed the clip and poster and
    queued them for release, outside the try: when it raised, the next append released them
    with no entry (verify: forged). Now they are neither indexed nor uploaded."""
    identity = generate_identity()
    cfg = config(tmp_path, identity)
    vault = ClipVault(cfg, tmp_path / "state")
    await vault.start()
    real_append = vault.writer.append

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("cannot encode this entry")

    try:
        vault.writer.append = refuse  # type: ignore[method-assign]
        with pytest.raises(ValueError, match="cannot encode"):
            await seal(vault, meta("Refused", time.time(), 20_000), b"r" * 20_000)
        vault.writer.append = real_append  # type: ignore[method-assign]
        assert vault._index == {} and vault._unlogged == {} and vault.spool.held_count == 0
        await seal(vault, meta("After", time.time(), 20_000), b"a" * 20_000)
        assert await vault.uploader.wait_idle(timeout=5)
    finally:
        await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == [] and [c.camera for c in report.clips] == ["After"]


async def test_clip_whose_poster_cannot_be_sealed_is_logged_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: only SpoolFull/OSError were caught around the poster; anything else (a
    poster that is no JPEG) skipped `on_sealed`, and the clip stayed held, then was dropped."""
    identity = generate_identity()
    cfg = config(tmp_path, identity)
    vault = ClipVault(cfg, tmp_path / "state")
    await vault.start()
    try:
        with caplog.at_level(logging.ERROR, logger="bridge.store"):
            bad = dataclasses.replace(meta("NoPoster", time.time(), 20_000), poster=b"no jpeg")
            await seal(vault, bad, b"p" * 20_000)
        assert "poster could not be sealed" in caplog.text and vault.spool.held_count == 0
        assert await vault.uploader.wait_idle(timeout=5)
    finally:
        await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == []
    assert [(c.camera, c.thumb) for c in report.clips] == [("NoPoster", None)]


def test_failed_unsave_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = ManifestState(3, b"\0" * 32, "x" * 26, 1, 300, ("age1x",))
    (tmp_path / "state.json").mkdir()  # unreadable as a file: the undo cannot run
    with caplog.at_level(logging.ERROR, logger="bridge.store"):
        unsave_state(tmp_path / "state.json", state, None)
    assert "cannot put the manifest state back" in caplog.text
    caplog.clear()
    unsave_state(tmp_path / "never-saved.json", state, None)  # nothing to undo: no error
    assert caplog.text == ""
