"""A full spool disk, for real: a small tmpfs mounted by the test, filled by another file.

What must hold (issue #8): entries that find no room fail at once with SpoolFull, said loudly
once (not per entry); what is already spooled stays intact and still uploads; manifest segments
get through the reserve; no partial file is left behind; and the first clip written after the
space comes back is recorded (no state remembered from the full disk). The mount needs root, or
an unprivileged user and mount namespace (`unshare -rm`): the test then runs itself again in
one; where neither works it is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.record.clip import ClipMeta
from bridge.store.config import StorageConfig
from bridge.store.spool import Spool, SpoolFull
from bridge.store.vault import ClipVault
from crypto.age_keys import generate_identity
from tests.test_retention import meta as retention_meta
from tests.test_retention import seal
from tests.test_vault import owner_view

ROOT = Path(__file__).resolve().parents[1]
KiB, MiB = 1 << 10, 1 << 20
_IN_NAMESPACE = "OBSCURA_TEST_IN_USERNS"


def ran_in_namespace(request: pytest.FixtureRequest) -> bool:
    """False if this process may mount a tmpfs (run the test here). Else run this test again
    inside `unshare -rm` (a user and mount namespace, where we are root) and return True once
    it passed there, or skip with the reason."""
    if os.geteuid() == 0:
        return False
    if os.environ.get(_IN_NAMESPACE):
        pytest.skip("inside unshare -rm but still not root")
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("not root and no unshare(1): cannot mount a tmpfs for the spool")
    check = subprocess.run([unshare, "-rm", "true"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip(f"not root and unshare -rm refused ({check.stderr.strip()}): "
                    "cannot mount a tmpfs for the spool")
    with tempfile.TemporaryDirectory(prefix="spool-full-") as base:
        run = subprocess.run(
            [unshare, "-rm", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"--basetemp={base}/t", request.node.nodeid],
            cwd=ROOT, env={**os.environ, _IN_NAMESPACE: "1"}, capture_output=True, text=True,
            timeout=180,
        )
    tail = (run.stdout + run.stderr)[-4000:]
    if run.returncode == 0 and " passed" not in run.stdout:
        pytest.skip(f"skipped inside unshare -rm: {tail[-300:]}")
    assert run.returncode == 0, tail
    return True


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                            str(path)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> int:
    """Write `path` until the disk is full; its size."""
    block = b"\xa5" * (64 * KiB)
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == 28, e  # ENOSPC
        f.flush()
    return path.stat().st_size


def leave_free(filler: Path, free: int) -> None:
    """Shrink the filler (the disk is full) so that about `free` bytes are free."""
    os.truncate(filler, filler.stat().st_size - free)


def full_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and "SPOOL DISK FULL" in r.getMessage()]


def room_again(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "has room again" in r.getMessage()]


def put(spool: Spool, data: bytes, name: str, kind: str = "clip") -> None:
    with spool.create(use_reserve=kind == "manifest") as entry:
        for i in range(0, len(data), 64 * KiB):
            entry.write(data[i:i + 64 * KiB])
        entry.commit(name, kind)


def test_spool_refuses_at_once_keeps_segments_going_and_takes_the_first_entry_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    if ran_in_namespace(request):
        return
    rng = random.Random(85)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        spool = Spool(disk / "spool", 64 * MiB, reserve_bytes=MiB)
        kept = rng.randbytes(700 * KiB)
        put(spool, kept, "c/kept")
        filler = disk / "filler"
        fill(filler)
        leave_free(filler, MiB // 2)  # below the reserve: clips are refused, segments are not
        with caplog.at_level(logging.WARNING, logger="bridge.store"):
            for _ in range(20):
                with pytest.raises(SpoolFull, match=r"no room for a new entry.*MiB free"):
                    spool.create()
            put(spool, rng.randbytes(20 * KiB), "m/0", "manifest")  # through the reserve
            status = spool.status()
            assert status["disk_full"] and status["dropped_disk_full"] == 20
            assert status["disk_free_bytes"] < MiB and status["disk_reserve_bytes"] == MiB
            leave_free(filler, 2 * MiB)  # room to start, not to finish
            with pytest.raises(SpoolFull, match=r"after \d+ bytes of this entry"):
                put(spool, rng.randbytes(3 * MiB), "c/too-big")
            assert list((disk / "spool/incoming").iterdir()) == []  # no partial file left
            assert len(full_errors(caplog)) == 1 and room_again(caplog) == []  # said once
            assert "New clips and posters are DROPPED" in full_errors(caplog)[0]

            filler.unlink()  # space is back: the very next entry is taken, nothing remembered
            start = time.monotonic()
            put(spool, rng.randbytes(3 * MiB), "c/after")
            assert time.monotonic() - start < 1.0
            assert len(room_again(caplog)) == 1 and "21 new entries were dropped" in \
                room_again(caplog)[0]
        assert not spool.status()["disk_full"] and spool.status()["dropped_disk_full"] == 21
        assert [i.object_name for i in spool.ready()] == ["c/kept", "m/0", "c/after"]
        assert spool.ready()[0].data_path.read_bytes() == kept  # untouched by the full disk


def test_entry_dropped_without_commit_or_abort_leaves_no_partial_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, 64 * MiB)
    entry = spool.create()
    entry.write(b"x" * 100_000)
    assert len(list((tmp_path / "incoming").iterdir())) == 1
    with caplog.at_level(logging.WARNING, logger="bridge.store"):
        del entry
    assert list((tmp_path / "incoming").iterdir()) == []
    assert "dropped without commit or abort" in caplog.text


async def wait_for(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"condition not met in {timeout} s"
        await asyncio.sleep(0.05)


def event_meta(rng: random.Random, camera: str, size: int) -> ClipMeta:
    return dataclasses.replace(
        retention_meta(camera, time.time(), size), event_id=rng.randbytes(16).hex()
    )


async def test_vault_on_a_full_disk_records_again_as_soon_as_space_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """The bridge's own layout (spool inside state_dir, on one small disk), a file:// bucket
    that is down while the disk fills (a regular file where its parent directory should be),
    the real vault, EncryptedClipSink and uploader."""
    if ran_in_namespace(request):
        return
    rng = random.Random(86)
    identity = generate_identity()
    gate = tmp_path / "nas"
    gate.write_text("not mounted")  # the bucket's parent is a file: every upload fails
    with tmpfs(tmp_path / "disk", "8m") as disk:
        state = disk / "state"
        state.mkdir()
        cfg = StorageConfig(bucket=(gate / "bucket").as_uri(),
                            recipients=(str(identity.recipient),), heartbeat_seconds=300)
        vault = ClipVault(cfg, state)
        vault.uploader.min_backoff = 60.0  # only the probe can bring uploads back in time
        await vault.start()
        try:
            await seal(vault, event_meta(rng, "Kept", 300_000), rng.randbytes(300_000))
            (clip,) = [i for i in vault.spool.ready() if i.kind == "clip"]
            kept_sha = hashlib.sha256(clip.data_path.read_bytes()).hexdigest()
            filler = disk / "filler"
            with caplog.at_level(logging.INFO, logger="bridge.store"):
                await asyncio.to_thread(fill, filler)
                for name in ("Lost1", "Lost2"):
                    with pytest.raises(SpoolFull):
                        await seal(vault, event_meta(rng, name, 300_000), rng.randbytes(300_000))
                await asyncio.to_thread(leave_free, filler, vault.spool.space.reserve + 200_000)
                with pytest.raises(SpoolFull, match="after"):  # fails while it is written
                    await seal(vault, event_meta(rng, "Lost3", 300_000), rng.randbytes(300_000))
                assert list((state / "spool/incoming").iterdir()) == []
                await vault.heartbeat()  # the manifest still advances: segments use the reserve
                status = vault.status()["spool"]
                assert status["disk_full"] and status["dropped_disk_full"] == 3
                assert len(full_errors(caplog)) == 1

                filler.unlink()
                await seal(vault, event_meta(rng, "After", 300_000), rng.randbytes(300_000))
                assert len(room_again(caplog)) == 1 and not vault.status()["spool"]["disk_full"]
                assert hashlib.sha256(clip.data_path.read_bytes()).hexdigest() == kept_sha

                await wait_for(lambda: vault.uploader.unreachable_since is not None, 10)
                gate.unlink()  # the bucket comes back: the uploader's probe notices
                gate.mkdir()
                back = time.monotonic()
                assert await vault.uploader.wait_idle(timeout=15)
                resumed = time.monotonic() - back
                assert resumed < 10, f"uploads resumed {resumed:.1f} s after the bucket returned"
                assert await vault.wait_published(timeout=10)
            assert [r for r in caplog.records if "answers again" in r.getMessage()]
        finally:
            await vault.stop(drain_seconds=5)
    report = await owner_view(cfg.bucket, vault.head_name, identity)
    assert report.problems == []
    assert sorted(c.camera for c in report.clips if c.deleted is None) == ["After", "Kept"]
