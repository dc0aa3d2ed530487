"""ClipVault's held objects: a clip and its poster reach the bucket only once the segment
logging them is saved, through crashes mid-append, failed appends and a full spool. Each test
ends with the owner's view: the manifest verified with the owner's key against the real file://
bucket (helpers in test_vault.py).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import bridge.store.vault as vault_mod
from bridge.store.spool import SpoolItem
from bridge.store.vault import ClipVault
from crypto.age_keys import generate_identity
from tests.test_retention import meta, seal
from tests.test_vault import config, eventually, listing, owner_view

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stop_mid_retry", [False, True])
async def test_held_clip_evicted_while_its_entry_waits_for_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_mid_retry: bool
) -> None:
    """A held clip counts toward the spool cap: while the state cannot be saved (its entry
    queued), a full spool evicts it with its poster, and the retry logs it as evicted.
    Regression (stop_mid_retry): the retry takes the queued entries before its thread spools
    the segment; a stop in between found the spool idle, put the older head and closed, so the
    owner saw no clip at all (1 run in 10 under load)."""
    identity = generate_identity()
    cfg = config(tmp_path, identity, spool_max_mb=1)
    vault = ClipVault(cfg, tmp_path / "state")
    await vault.start()
    real = vault_mod.write_private
    disk_full = True

    def state_disk_full(path: Path, text: str) -> None:
        if path.name == "manifest-state.json" and disk_full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    try:
        monkeypatch.setattr(vault_mod, "write_private", state_disk_full)
        with pytest.raises(OSError, match="No space"):
            await seal(vault, meta("Waiting", time.time(), 300_000), b"w" * 300_000)
        assert vault.spool.held_count == 2 and vault.spool.pending_bytes > 300_000
        with vault.spool.create() as entry:  # 900 KB from elsewhere: over the 1 MiB cap
            entry.write(b"\0" * 900_000)
            other = entry.commit(vault.layout.clip_name(), "clip", hold=True)
        assert vault.spool.stats.evicted_count == 2 and vault.spool.held_count == 1
        vault.spool.discard(other)  # (it stands for a clip sealed later; not part of this test)
        await eventually(lambda: len(vault.writer.pending) == 3)  # clip entry, two deletes
        version = vault._head_version  # every append failed so far: none committed
        if stop_mid_retry:  # the retry's commit thread starts late (a loaded machine)
            spool_segment = vault._spool_segment

            def late(*args: Any) -> SpoolItem:
                time.sleep(0.5)
                return spool_segment(*args)

            monkeypatch.setattr(vault, "_spool_segment", late)
        disk_full = False
        if stop_mid_retry:  # stopped (finally) with the retry under way
            await eventually(lambda: vault._lock.locked() and not vault.writer.pending)
        else:
            # The retry logs both; its segment is released once the state is saved, then the
            # head naming it goes up. `pending` empties before the segment is spooled: waiting
            # for it and the spool alone left wait_published nothing to wait for yet.
            await eventually(lambda: vault._head_version > version and not vault.writer.pending
                             and vault.spool.held_count == 0)
            assert await vault.uploader.wait_idle(timeout=5)
            assert await vault.wait_published(timeout=10)
    finally:
        await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == []
    assert [(c.camera, c.deleted) for c in report.clips] == [("Waiting", "evicted")]
    assert vault.spool.pending_count == 0  # nothing left behind for the next start


_CRASH_CHILD = r"""
import asyncio, os, signal, sys, time
from pathlib import Path
import bridge.store.vault as vault_mod
from bridge.store.config import StorageConfig
from bridge.store.retention import expired
from bridge.store.vault import ClipVault
from tests.test_retention import meta, seal

tmp, recipient, point = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg = StorageConfig(bucket=(tmp / "bucket").as_uri(), recipients=(recipient,))
(tmp / "state").mkdir()

async def main():
    vault = ClipVault(cfg, tmp / "state")
    await vault.start()
    await seal(vault, meta("Before", time.time(), 20_000), b"a" * 20_000)
    assert await vault.uploader.wait_idle(timeout=5) and await vault.wait_published(5)
    real_write, real_unhold = vault_mod.write_private, vault.spool.unhold
    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)

    async def die_before_append(sealed):  # spooled, not logged: give the uploader its chance
        names = {sealed.clip.object_name, sealed.poster.object_name}
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not names <= {
                n async for n, _ in vault.bucket.list("")}:
            await asyncio.sleep(0.05)
        die()
    if point == "before-append":  # the clip and poster are spooled, their entry not appended
        vault._on_sealed = die_before_append
    elif point == "before-state":  # the segment is in the spool (held), the state not saved
        vault_mod.write_private = (
            lambda p, t: die() if p.name == "manifest-state.json" else real_write(p, t))
    else:  # the state is saved, the segment not yet released for upload
        vault.spool.unhold = die
    if point == "after-state-no-index":  # and the retention index could not be saved
        def no_index(p, t):
            if p.name == "retention-index.json":
                raise OSError(28, "No space left on device")
            real_write(p, t)
        vault_mod.write_private = no_index
    await seal(vault, meta("Crashed", time.time(), 20_000), b"b" * 20_000)

asyncio.run(main())
"""


@pytest.mark.parametrize(
    "point", ["before-append", "before-state", "after-state", "after-state-no-index"]
)
async def test_crash_mid_append_neither_forks_nor_dangles(
    tmp_path: Path, point: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (before-append, before-state): a clip and its poster were spooled for upload
    before their entry was logged; a crash in between left them in the bucket unlogged, and
    `clips verify` called them forged for good. Now they are held until the segment logging
    them is saved; a restart drops the ones it cannot account for."""
    identity = generate_identity()
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _CRASH_CHILD, str(tmp_path), str(identity.recipient), point],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    cfg = config(tmp_path, identity)
    with caplog.at_level(logging.WARNING, logger="bridge.store"):
        vault = ClipVault(cfg, tmp_path / "state")  # a restart after the power cut
    await vault.start()
    try:
        await seal(vault, meta("After", time.time(), 20_000), b"c" * 20_000)
        assert await vault.uploader.wait_idle(timeout=5)
    finally:
        await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == [], report.problems
    cameras = {c.camera for c in report.clips}
    if point.startswith("after-state"):  # the state logs it: released at start-up, uploaded
        assert cameras == {"Before", "Crashed", "After"} and "dropping" not in caplog.text
    else:
        # Sealed, never logged: dropped at start-up (never uploaded), with its segment if any
        # (an orphan segment N beside the new N would be a fork).
        assert cameras == {"Before", "After"}
        assert caplog.text.count("sealed just before a crash") == 2  # the clip and its poster
        assert len(await listing(cfg.bucket)) == 2 * 2 + (vault.writer.state.seq + 1) + 1
        leftovers = [p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file()]
        assert not any(b"Crashed" in b for b in leftovers)  # its metadata lived in memory only


async def test_held_clip_whose_segment_went_first_is_kept(tmp_path: Path) -> None:
    """The spool uploads oldest first, by ids taken from the wall clock: a clock stepped back
    while a clip was recorded sends its segment first. A crash then leaves the clip held with
    no segment in the spool to vouch for it; the saved retention index does, so start-up
    uploads it rather than dropping a logged clip (which verify would call missing)."""
    identity = generate_identity()
    cfg = config(tmp_path, identity)
    vault = ClipVault(cfg, tmp_path / "state")  # never started: nothing uploads by itself
    await vault.heartbeat()
    await seal(vault, meta("Stepped", time.time(), 20_000), b"s" * 20_000)
    for item in vault.spool.ready():  # the segments go first, then the power
        if item.kind == "manifest":
            await vault.bucket.put(item.object_name, item.data_path.read_bytes())
            vault.spool.remove(item)
    assert vault._head is not None
    await vault.bucket.put(vault.head_name, vault._head)
    await vault.bucket.close()

    vault = ClipVault(cfg, tmp_path / "state")
    assert vault.spool.held_count == 0 and len(vault.spool.ready()) == 2  # clip and poster
    await vault.start()
    try:
        assert await vault.uploader.wait_idle(timeout=5)
    finally:
        await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == [] and [c.camera for c in report.clips] == ["Stepped"]


async def test_index_names_a_clip_only_once_its_entry_is_in_the_writer(tmp_path: Path) -> None:
    """Start-up trusts the saved retention index (above): an append that runs while a sealed
    clip waits for the lock must not save an index naming that clip, not logged yet."""
    identity = generate_identity()
    vault = ClipVault(config(tmp_path, identity), tmp_path / "state")
    await vault.heartbeat()
    try:
        async with vault._lock:  # another append is under way
            task = asyncio.create_task(seal(vault, meta("Waiting", time.time(), 20_000),
                                            b"w" * 20_000))
            await eventually(lambda: vault.spool.held_count == 2)
            await asyncio.sleep(0.1)
            assert vault._index == {}
        await task
        assert len(vault._index) == 2 and vault.spool.held_count == 0
    finally:
        await vault.bucket.close()
