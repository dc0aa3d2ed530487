"""The uploader against a real SeaweedFS: outages, SIGKILLs, verification, status.

"Exactly once" is checked on the bucket itself: after the faults, listing the prefix gives exactly
the committed names, and every object's size and SHA-256 match what was spooled.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.store.bucket import Bucket, BucketError, BucketLayout, ObjectInfo, open_bucket
from bridge.store.digests import Hasher, file_digests
from bridge.store.spool import Spool, SpoolItem
from bridge.store.uploader import Uploader
from tests.peers.seaweed import SeaweedFS, free_ports

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedFS]:
    with SeaweedFS() as server:
        yield server


@pytest.fixture
def s3_bucket(s3: SeaweedFS) -> Bucket:
    return open_bucket(s3.url(prefix=secrets.token_hex(6)), environ=s3.env)


def fill_spool(spool: Spool, layout: BucketLayout, sizes: list[int]) -> dict[str, tuple[int, str]]:
    """Commit random ciphertext-like entries; returns name -> (size, sha256)."""
    expected: dict[str, tuple[int, str]] = {}
    for size in sizes:
        data = os.urandom(size)
        name = layout.clip_name()
        with spool.create() as entry:
            for i in range(0, size, 65536):
                entry.write(data[i:i + 65536])
            entry.commit(name, "clip", {"size": size})
        expected[name] = (size, hashlib.sha256(data).hexdigest())
    return expected


async def bucket_contents(bucket: Bucket, prefix: str) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    async for name, size in bucket.list(prefix):
        data = await bucket.get(name)
        assert data is not None and len(data) == size
        out[name] = (size, hashlib.sha256(data).hexdigest())
    return out


async def eventually(cond: Callable[[], bool], timeout: float, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s")
        await asyncio.sleep(step)


class LoopLag:
    """Worst delay of a 20 ms ticker: proves the event loop kept running (live view would)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.02)
            self.worst = max(self.worst, time.monotonic() - t - 0.02)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.mark.parametrize("backend", ["file", "s3"])
async def test_uploads_verified_and_reported(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "file":
        bucket = open_bucket(f"file://{tmp_path}/bucket")
    else:
        bucket = request.getfixturevalue("s3_bucket")
    # As the vault does: on S3 the ETag is hashed while spooling and the upload is verified
    # against it with no second read; the file bucket re-hashes the local copy instead.
    spool = Spool(tmp_path / "spool", 256 * MiB, etag_md5=bucket.md5_etags,
                  etag_part_size=bucket.part_size)
    layout = BucketLayout(secrets.token_hex(8))
    # 9 MiB: a two-part multipart upload on S3, whose ETag is the MD5 of the parts' MD5s.
    expected = fill_spool(spool, layout, [1, 65536, 300_000, 9 * MiB + 7, 2 * MiB])
    uploaded: list[SpoolItem] = []

    async def on_uploaded(item: SpoolItem) -> None:
        assert spool.pending_count >= 1  # called before the spool copy goes
        uploaded.append(item)

    up = Uploader(spool, bucket, on_uploaded=on_uploaded, min_backoff=0.1, max_backoff=0.5)
    up.start()
    try:
        assert await up.wait_idle(60)
        # Commits made while the uploader runs wake it up.
        expected |= await asyncio.to_thread(fill_spool, spool, layout, [4096, 5000])
        assert await up.wait_idle(60)
    finally:
        await up.stop()
    assert [i.object_name for i in uploaded] == list(expected)  # oldest first, once each
    assert await bucket_contents(bucket, layout.root) == expected
    assert spool.ready() == [] and list((tmp_path / "spool/ready").iterdir()) == []
    st = up.status().as_dict()
    assert st["uploaded_count"] == 7 and st["pending_count"] == 0 and st["last_error"] is None
    assert st["uploaded_bytes"] == sum(s for s, _ in expected.values())
    if backend == "s3":
        big = next(n for n, (s, _) in expected.items() if s > 9 * MiB)
        info = await bucket.head(big)
        assert info is not None and info.etag is not None and info.etag.endswith("-2")
        assert all(i.etag is not None for i in uploaded)
        assert next(i.etag for i in uploaded if i.object_name == big) == info.etag


async def test_corrupt_entry_caught_by_the_etag_is_quarantined_and_its_upload_deleted(
    tmp_path: Path, s3_bucket: Bucket
) -> None:
    """With the ETag hashed at write time nothing re-reads before the PUT: a bit flipped on the
    bridge's disk shows as an ETag mismatch, the local re-hash blames the disk, not the network."""
    bucket = s3_bucket
    spool = Spool(tmp_path / "spool", 64 * MiB, etag_md5=True, etag_part_size=bucket.part_size)
    layout = BucketLayout(secrets.token_hex(8))
    expected = fill_spool(spool, layout, [10_000, 9 * MiB + 3])
    for bad in spool.ready():
        with bad.data_path.open("r+b") as f:
            f.seek(bad.size - 7)
            byte = f.read(1)
            f.seek(bad.size - 7)
            f.write(bytes([byte[0] ^ 1]))
    up = Uploader(spool, bucket, min_backoff=0.05)
    up.start()
    assert await up.wait_idle(30)
    await up.stop()
    assert up.status().quarantined == 2 and up.status().uploaded_count == 0
    assert await bucket_contents(bucket, layout.root) == {}
    assert len(expected) == 2


@pytest.mark.parametrize("outage", ["kill", "stop"])
async def test_s3_outage_then_every_entry_arrives_once(tmp_path: Path, outage: str) -> None:
    # Its own server: this test stops it.
    with SeaweedFS() as server:
        bucket = open_bucket(server.url(prefix="outage"), environ=server.env)
        spool = Spool(tmp_path / "spool", 512 * MiB)
        layout = BucketLayout(secrets.token_hex(8))
        expected = fill_spool(spool, layout, [MiB * (1 + i % 3) for i in range(10)])
        calls: Counter[str] = Counter()
        up = Uploader(spool, bucket, on_uploaded=lambda i: calls.update([i.object_name]),
                      min_backoff=0.2, max_backoff=1.0)
        with LoopLag() as lag:
            up.start()
            await eventually(lambda: up.uploaded_count >= 3, 30, step=0.005)
            # SIGKILL: dies mid-run, likely mid-PUT; SIGTERM: a clean shutdown (takes ~2 s).
            await asyncio.to_thread(server.kill if outage == "kill" else server.stop)
            # Recording goes on during the outage.
            expected |= await asyncio.to_thread(fill_spool, spool, layout, [MiB] * 5)
            await eventually(lambda: up.failures >= 3, 30)
            st = up.status()
            assert st.consecutive_failures >= 3 and st.last_error and st.pending_count > 0
            assert spool.pending_count > 0
            # Between attempts a retry is scheduled (during an attempt there is none).
            await eventually(lambda: up.status().next_retry_at is not None, 10, step=0.005)
            await asyncio.to_thread(server.start)
            assert await up.wait_idle(60), up.status()
            await up.stop()
        assert lag.worst < 0.25, f"event loop stalled {lag.worst:.3f} s"
        assert await bucket_contents(bucket, layout.root) == expected
        assert set(calls) == set(expected) and max(calls.values()) == 1
        attempts_seen = up.status()
        assert attempts_seen.consecutive_failures == 0 and attempts_seen.last_success_at


async def test_probe_asks_whether_the_server_is_there(s3: SeaweedFS, tmp_path: Path) -> None:
    """A missing object or keys the server refuses are answers (S3 says 403 for a missing
    object to keys without s3:ListBucket); a dead port, or a file:// root that cannot be a
    directory, is not."""
    name = f"{secrets.token_hex(8)}/{secrets.token_hex(16)}"
    await open_bucket(s3.url(), environ=s3.env).probe(name)
    wrong = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    await open_bucket(s3.url(), environ=wrong).probe(name)
    (port,) = free_ports(1)
    dead = open_bucket(f"s3://obscura/?endpoint=http://127.0.0.1:{port}", environ=s3.env)
    with pytest.raises(BucketError, match="probe"):
        await dead.probe(name)
    await open_bucket(f"file://{tmp_path}/not-yet").probe(name)  # the first put creates it
    (tmp_path / "nas").write_text("not mounted")
    with pytest.raises(BucketError, match="Not a directory"):
        await open_bucket(f"file://{tmp_path}/nas/bucket").probe(name)


async def test_uploads_resume_within_seconds_of_seaweedfs_returning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: after an S3 outage the uploader noticed S3 was back only 63 s later (its
    capped exponential backoff). Now a probe every 2 s notices within seconds, whatever the
    backoff has grown to: here the backoff alone would wait 15-30 s."""
    with SeaweedFS() as server:
        bucket = open_bucket(server.url(prefix="resume"), environ=server.env)
        spool = Spool(tmp_path / "spool", 512 * MiB, etag_md5=True,
                      etag_part_size=bucket.part_size)
        layout = BucketLayout(secrets.token_hex(8))
        expected = fill_spool(spool, layout, [200_000] * 2)
        probes = 0
        real_probe = bucket.probe

        async def counted_probe(name: str) -> None:
            nonlocal probes
            probes += 1
            await real_probe(name)

        bucket.probe = counted_probe  # type: ignore[method-assign]
        up = Uploader(spool, bucket, min_backoff=30.0)
        with caplog.at_level(logging.INFO, logger="bridge.store"):
            up.start()
            assert await up.wait_idle(30)
            await asyncio.to_thread(server.stop)
            expected |= await asyncio.to_thread(fill_spool, spool, layout, [200_000] * 3)
            await eventually(lambda: up.unreachable_since is not None, 15)
            seen = probes
            await eventually(lambda: probes >= seen + 2, 10)  # still down: no log per probe
            assert up.status().next_retry_at is not None and up.failures >= 1
            await asyncio.to_thread(server.start)  # returns once S3 answers (bucket listable)
            # Back means writable: after a restart SeaweedFS holds writes for 0-20 s more
            # (its master waits for the volume server), whoever sends them.
            other = open_bucket(server.url(prefix="other"), environ=server.env)
            await other.put("writable", b"?")
            back = time.monotonic()
            await eventually(lambda: up.uploaded_count > 2, 15, step=0.01)
            resumed = time.monotonic() - back
            assert await up.wait_idle(30)
            await up.stop()
        assert resumed < 10, f"uploads resumed {resumed:.1f} s after S3 was back (writable)"
        assert await bucket_contents(bucket, layout.root) == expected
        text = [r.getMessage() for r in caplog.records]
        assert sum("does not answer" in t for t in text) == 1
        assert sum("answers again" in t for t in text) == 1
        assert up.status().unreachable_since is None and up.failures == 0


# The uploader as a separate process, to SIGKILL it in the middle of its work.
_CHILD = r"""
import asyncio, json, os, sys
from pathlib import Path
from bridge.store.bucket import open_bucket
from bridge.store.spool import Spool
from bridge.store.uploader import Uploader

async def main():
    url, spool_dir = sys.argv[1], Path(sys.argv[2])
    bucket = open_bucket(url)
    inner_put = bucket.put
    async def put(name, data):
        print("PUT", name, flush=True)
        await inner_put(name, data)
    bucket.put = put
    def on_uploaded(item):
        print("UPLOADED", item.object_name, flush=True)
    up = Uploader(Spool(spool_dir, 1 << 30), bucket, on_uploaded=on_uploaded, min_backoff=0.1)
    up.start()
    await up.wait_idle()
    print("IDLE", flush=True)

asyncio.run(main())
"""


def run_child(url: str, spool_dir: Path, env: dict[str, str], kill_on: tuple[str, int] | None,
              log: list[tuple[str, str]]) -> bool:
    """Run the uploader process; SIGKILL it at the n-th line starting with kill_on[0].
    Returns True if it was killed, False if it finished."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, str(spool_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, **env},
    )
    assert proc.stdout is not None
    seen = 0
    try:
        for line in proc.stdout:
            word, _, name = line.strip().partition(" ")
            log.append((word, name))
            if kill_on and word == kill_on[0]:
                seen += 1
                if seen == kill_on[1]:
                    time.sleep(0.03)  # into the transfer (9 MiB take ~50-90 ms on loopback)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                    for rest in proc.stdout:  # what it printed before dying
                        word, _, name = rest.strip().partition(" ")
                        log.append((word, name))
                    return True
            if word == "IDLE":
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    return False


async def test_uploader_sigkilled_and_restarted(s3: SeaweedFS, tmp_path: Path) -> None:
    prefix = secrets.token_hex(6)
    url = s3.url(prefix=prefix)
    bucket = open_bucket(url, environ=s3.env)
    spool_dir = tmp_path / "spool"
    layout = BucketLayout(secrets.token_hex(8))
    sizes = [(i % 4 + 1) * 400_000 for i in range(16)]
    sizes[5] = sizes[11] = 24 * MiB  # multipart uploads in flight when killed
    expected = fill_spool(Spool(spool_dir, 1 << 30), layout, sizes)
    log: list[tuple[str, str]] = []
    # 1. killed as it starts the 6th PUT (a multipart one); 2. killed right after the callback of
    # the 10th upload, before the spool copy is removed (the at-least-once window); 3. finishes.
    assert await asyncio.to_thread(run_child, url, spool_dir, s3.env, ("PUT", 6), log)
    assert await asyncio.to_thread(run_child, url, spool_dir, s3.env, ("UPLOADED", 4), log)
    assert not await asyncio.to_thread(run_child, url, spool_dir, s3.env, None, log)

    assert await bucket_contents(bucket, layout.root) == expected
    async for name, _ in bucket.list(prefix=""):
        assert name.startswith(layout.root + "/"), name  # no stray names
    assert Spool(spool_dir, 1 << 30).ready() == []
    callbacks = Counter(name for word, name in log if word == "UPLOADED")
    assert set(callbacks) == set(expected)
    assert sum(callbacks.values()) - len(expected) <= 1  # only the second kill's window
    puts = Counter(name for word, name in log if word == "PUT")
    assert set(puts) == set(expected)  # every PUT went to a committed name


async def test_corrupt_spool_entry_is_quarantined_not_uploaded(tmp_path: Path) -> None:
    bucket = open_bucket(f"file://{tmp_path}/bucket")
    spool = Spool(tmp_path / "spool", 64 * MiB)
    layout = BucketLayout(secrets.token_hex(8))
    expected = fill_spool(spool, layout, [10_000, 20_000])
    bad = spool.ready()[0]
    with bad.data_path.open("r+b") as f:  # a bit flip on the bridge's disk
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    up = Uploader(spool, bucket)
    up.start()
    assert await up.wait_idle(10)
    await up.stop()
    del expected[bad.object_name]
    assert await bucket_contents(bucket, layout.root) == expected
    assert up.status().quarantined == 1
    assert sorted(p.suffix for p in (tmp_path / "spool/quarantine").iterdir()) == [".data", ".json"]


class LyingBucket(Bucket):
    """Wraps a bucket and misreports HEAD, like a server that stored something else."""

    md5_etags = True
    part_size = None

    def __init__(self, inner: Bucket, lie: str) -> None:
        self.inner = inner
        self.lie = lie
        self.heads = 0

    async def put(self, name: str, data: bytes | bytearray | memoryview | Path) -> None:
        await self.inner.put(name, data)

    async def head(self, name: str) -> ObjectInfo | None:
        self.heads += 1
        info = await self.inner.head(name)
        assert info is not None
        if self.lie == "size":
            return ObjectInfo(info.size - 1, None)
        return ObjectInfo(info.size, "0" * 32)

    put_if_absent = get = get_range = list = delete = None  # type: ignore[assignment]

    def describe(self) -> str:
        return "lying"


@pytest.mark.parametrize("hashed_at_write", [False, True])
@pytest.mark.parametrize("lie", ["size", "etag"])
async def test_unverified_upload_keeps_the_spool_copy(
    tmp_path: Path, lie: str, hashed_at_write: bool
) -> None:
    bucket = LyingBucket(open_bucket(f"file://{tmp_path}/bucket"), lie)
    spool = Spool(tmp_path / "spool", 64 * MiB, etag_md5=hashed_at_write)
    fill_spool(spool, BucketLayout(secrets.token_hex(8)), [1000])
    up = Uploader(spool, bucket, min_backoff=0.05, max_backoff=0.1)
    up.start()
    await eventually(lambda: bucket.heads >= 3, 10)
    await up.stop()
    st = up.status()
    assert st.pending_count == 1 and st.uploaded_count == 0
    assert st.last_error and ("bytes in the bucket" in st.last_error or "ETag" in st.last_error)
    (item,) = Spool(tmp_path / "spool", 64 * MiB).ready()
    assert item.attempts >= 2 and item.last_error == st.last_error


def test_expected_etags(tmp_path: Path) -> None:
    p = tmp_path / "f"
    data = os.urandom(2 * MiB + 5)
    p.write_bytes(data)
    d = file_digests(p, MiB, True)
    parts = [hashlib.md5(data[i:i + MiB]).digest() for i in range(0, len(data), MiB)]
    assert d.etag == hashlib.md5(b"".join(parts)).hexdigest() + "-3"
    assert d.sha256 == hashlib.sha256(data).hexdigest()
    assert file_digests(p, 4 * MiB, True).etag == hashlib.md5(data).hexdigest()
    assert file_digests(p, None, True).etag == hashlib.md5(data).hexdigest()
    assert file_digests(p, MiB, False).etag is None
    exact = tmp_path / "g"
    exact.write_bytes(data[: 2 * MiB])  # exactly two parts' worth: still one PUT in obstore
    assert file_digests(exact, 2 * MiB, True).etag == hashlib.md5(data[: 2 * MiB]).hexdigest()
    assert file_digests(tmp_path / "g", MiB, True).etag.endswith("-2")  # type: ignore[union-attr]
    # Hashing as bytes go by, in writes that straddle part boundaries, gives the same answer.
    for part in (None, MiB, 4 * MiB):
        hasher = Hasher(part, with_md5=True)
        for i in range(0, len(data), 300_001):
            hasher.update(data[i:i + 300_001])
        assert hasher.digests() == file_digests(p, part, True)
    empty = Hasher(MiB)
    assert empty.digests().etag == hashlib.md5(b"").hexdigest()


def test_status_is_json_ready(tmp_path: Path) -> None:
    up = Uploader(Spool(tmp_path, MiB), open_bucket(f"file://{tmp_path}/b"))
    status = up.status().as_dict()
    json.dumps(status)
    assert status["bucket"] == f"file://{tmp_path}/b" and status["pending_count"] == 0
