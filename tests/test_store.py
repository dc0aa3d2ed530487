"""Buckets (file:// and a real SeaweedFS over S3), credentials, layout, spool, retention."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bridge.store.bucket import (
    Bucket,
    BucketConfigError,
    BucketError,
    BucketLayout,
    load_bridge_id,
    open_bucket,
)
from bridge.store.credentials import CredentialsError
from bridge.store.retention import Recorded, RetentionTask, delete_expired, expired
from bridge.store.spool import Spool, SpoolFull
from tests.peers.seaweed import SeaweedFS

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedFS]:
    with SeaweedFS(buckets=("obscura", "other")) as server:
        yield server


@pytest.fixture(params=["file", "s3"])
async def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Bucket]:
    if request.param == "file":
        b = open_bucket(f"file://{tmp_path}/bucket")
    else:
        server: SeaweedFS = request.getfixturevalue("s3")
        b = open_bucket(server.url(prefix=secrets.token_hex(6)), environ=server.env)
    yield b
    await b.close()


async def listing(b: Bucket, prefix: str = "") -> dict[str, int]:
    return {name: size async for name, size in b.list(prefix)}


# ------------------------------------------------------------------------------------------
# The Bucket contract: both backends
# ------------------------------------------------------------------------------------------


async def test_put_get_head_delete(bucket: Bucket, tmp_path: Path) -> None:
    assert await bucket.get("a/missing") is None
    assert await bucket.head("a/missing") is None
    await bucket.delete("a/missing")  # not an error

    await bucket.put("a/one", b"hello")
    assert await bucket.get("a/one") == b"hello"
    info = await bucket.head("a/one")
    assert info is not None and info.size == 5
    if bucket.md5_etags:
        assert info.etag == hashlib.md5(b"hello").hexdigest()

    await bucket.put("a/one", b"replaced")  # put replaces
    assert await bucket.get("a/one") == b"replaced"

    src = tmp_path / "src.bin"
    data = os.urandom(300_000)
    src.write_bytes(data)
    await bucket.put("a/two", src)
    assert await bucket.get("a/two") == data
    assert await bucket.get_range("a/two", 1000, 1010) == data[1000:1010]
    assert await bucket.get_range("a/two", len(data) - 5, len(data) + 100) == data[-5:]
    assert await bucket.get_range("a/two", len(data), len(data) + 10) == b""
    assert await bucket.get_range("a/missing", 0, 10) is None

    await bucket.delete("a/one")
    assert await bucket.head("a/one") is None
    assert await listing(bucket) == {"a/two": len(data)}


async def test_large_file_put_is_multipart_and_intact(bucket: Bucket, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = os.urandom(9 * MiB + 12345)  # > 8 MiB parts: streamed as a multipart upload on S3
    src.write_bytes(data)
    await bucket.put("big", src)
    got = await bucket.get("big")
    assert got is not None and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    info = await bucket.head("big")
    assert info is not None and info.size == len(data)
    if bucket.md5_etags:
        assert info.etag is not None and info.etag.endswith("-2")


async def test_put_if_absent(bucket: Bucket, tmp_path: Path) -> None:
    assert await bucket.put_if_absent("m/head", b"first") is True
    assert await bucket.put_if_absent("m/head", b"second") is False
    assert await bucket.get("m/head") == b"first"
    src = tmp_path / "p"
    src.write_bytes(b"from a file")
    assert await bucket.put_if_absent("m/file", src) is True
    assert await bucket.put_if_absent("m/file", src) is False
    assert await bucket.get("m/file") == b"from a file"


async def test_list_pages_through_everything(bucket: Bucket) -> None:
    # 1100 objects: more than one ListObjectsV2 page (1000) on S3.
    names = {f"p/{i:05d}": i % 7 for i in range(1100)}
    gate = asyncio.Semaphore(32)

    async def put(name: str, size: int) -> None:
        async with gate:
            await bucket.put(name, b"x" * size)

    await asyncio.gather(*(put(n, s) for n, s in names.items()))
    await bucket.put("q/other", b"zz")
    await bucket.put("pp/not-under-p", b"z")
    assert await listing(bucket, "p") == names
    assert await listing(bucket, "p/") == names
    everything = await listing(bucket)
    assert len(everything) == 1102 and everything["q/other"] == 2


async def test_invalid_names_rejected(bucket: Bucket) -> None:
    for bad in ("../x", "/abs", "a//b", ".tmp/x", "a/../b", "", "a/.hidden", "sp ace"):
        with pytest.raises(BucketError):
            await bucket.put(bad, b"x")


async def test_file_bucket_leaves_no_temp_files(tmp_path: Path) -> None:
    b = open_bucket(f"file://{tmp_path}/bk")
    for i in range(5):
        await b.put(f"d/{i}", b"x" * i)
    assert await b.put_if_absent("d/1", b"y") is False
    assert list((tmp_path / "bk" / ".tmp").iterdir()) == []
    assert (tmp_path / "bk" / "d" / "1").read_bytes() == b"x"


# ------------------------------------------------------------------------------------------
# URLs and credentials
# ------------------------------------------------------------------------------------------


def write_creds(path: Path, s3: SeaweedFS, mode: int) -> Path:
    path.write_text(
        "# test keys\n"
        f"AWS_ACCESS_KEY_ID={s3.access_key}\n"
        f'export AWS_SECRET_ACCESS_KEY="{s3.secret_key}"\n'
    )
    path.chmod(mode)
    return path


def test_world_readable_credentials_file_refused(tmp_path: Path, s3: SeaweedFS) -> None:
    creds = write_creds(tmp_path / "s3.env", s3, 0o644)
    with pytest.raises(CredentialsError, match=r"mode 0644.*chmod 600"):
        open_bucket(s3.url(), creds, environ={})
    creds.chmod(0o640)
    with pytest.raises(CredentialsError, match="group or others"):
        open_bucket(s3.url(), creds, environ={})


async def test_private_credentials_file_works(tmp_path: Path, s3: SeaweedFS) -> None:
    creds = write_creds(tmp_path / "s3.env", s3, 0o600)
    # The file wins over (wrong) keys in the environment.
    b = open_bucket(s3.url(prefix="credfile"), creds, environ={
        "AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong",
    })
    await b.put("x", b"1")
    assert await b.get("x") == b"1"
    assert s3.secret_key not in repr(b.__dict__)


async def test_wrong_secret_fails_cleanly_without_leaking_it(s3: SeaweedFS) -> None:
    secret = "not-the-secret-" + secrets.token_hex(8)
    b = open_bucket(s3.url(), environ={"AWS_ACCESS_KEY_ID": s3.access_key,
                                       "AWS_SECRET_ACCESS_KEY": secret})
    with pytest.raises(BucketError) as info:
        await b.put("x", b"1")
    assert secret not in str(info.value) and "403" in str(info.value)


def test_missing_credentials_and_bad_urls() -> None:
    with pytest.raises(CredentialsError, match="AWS_ACCESS_KEY_ID"):
        open_bucket("s3://b/p?endpoint=http://127.0.0.1:9&region=us-east-1", environ={})
    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    # No endpoint: AWS itself, virtual-hosted, spelled out (no I/O here: it is never contacted).
    aws = open_bucket("s3://b/p?region=eu-west-1", environ=env)
    assert aws.describe() == "s3://b/p"
    with pytest.raises(BucketConfigError, match="must not carry credentials"):
        open_bucket("s3://key:secret@b/p", environ=env)
    with pytest.raises(BucketConfigError, match="unknown option"):
        open_bucket("s3://b/p?endpont=http://127.0.0.1:9", environ=env)
    with pytest.raises(BucketConfigError, match="endpoint must be"):
        open_bucket("s3://b/p?endpoint=127.0.0.1:9", environ=env)
    with pytest.raises(BucketConfigError, match="unsupported"):
        open_bucket("ftp://host/x", environ=env)
    with pytest.raises(BucketConfigError, match="file:///absolute"):
        open_bucket("file://host/x")
    # GCS and Azure: explicit credentials are required (no metadata service fallback).
    with pytest.raises(CredentialsError, match="service-account"):
        open_bucket("gs://bucket/prefix", environ={})
    with pytest.raises(CredentialsError, match="account"):
        open_bucket("az://container/prefix", environ={})


async def test_no_metadata_service_probe(s3: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every credential-discovery endpoint object_store knows at a loopback listener:
    with our explicit credentials it must never be contacted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    for var in ("AWS_METADATA_ENDPOINT", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}/")
    try:
        b = open_bucket(s3.url(prefix="probe"), environ=s3.env)
        await b.put("x", b"1")
        assert await b.head("x") is not None
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


# ------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------


def test_layout_names_are_opaque(tmp_path: Path) -> None:
    bid = load_bridge_id(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{16}", bid) and load_bridge_id(tmp_path) == bid
    assert (tmp_path / "bridge_id").stat().st_mode & 0o077 == 0
    for prefix in ("", "clips/"):
        layout = BucketLayout(bid, prefix)
        names = {layout.clip_name() for _ in range(200)} | {layout.thumbnail_name()}
        names.add(layout.manifest_name())
        assert len(names) == 202
        assert all(re.fullmatch(rf"{prefix}{bid}/[0-9a-f]{{32}}", n) for n in names)
        head = layout.well_known_name("manifest-head")
        assert head == BucketLayout(bid, prefix).well_known_name("manifest-head")
        assert re.fullmatch(rf"{prefix}{bid}/[0-9a-f]{{32}}", head)
        assert layout.object_id(head) == head[-32:]
        assert layout.object_id(f"{prefix}{'0' * 16}/{'a' * 32}") is None
        assert BucketLayout.bridge_ids(sorted(names), prefix) == {bid}
    with pytest.raises(BucketConfigError):
        BucketLayout("Garage-Cam")
    with pytest.raises(BucketConfigError):
        BucketLayout(bid, "clips")


# ------------------------------------------------------------------------------------------
# Spool
# ------------------------------------------------------------------------------------------


def spool_put(spool: Spool, data: bytes, name: str, kind: str = "clip") -> None:
    with spool.create() as entry:
        for i in range(0, len(data), 65536):
            entry.write(data[i:i + 65536])
        entry.commit(name, kind, {"n": name})


def test_spool_commit_and_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 64 * MiB)
    data = os.urandom(200_000)
    entry = spool.create()
    assert entry.path.parent.name == "incoming" and entry.path.stat().st_mode & 0o777 == 0o600
    entry.write(data)
    item = entry.commit("b/" + "1" * 32, "clip", {"seq": 3})
    assert item.sha256 == hashlib.sha256(data).hexdigest() and item.size == len(data)
    assert item.data_path.read_bytes() == data
    sidecar = json.loads((tmp_path / "spool/ready" / f"{item.id}.json").read_text())
    assert sidecar["object"] == "b/" + "1" * 32 and sidecar["kind"] == "clip"
    assert sidecar["sha256"] == item.sha256 and sidecar["attempts"] == 0
    assert list((tmp_path / "spool/incoming").iterdir()) == []
    spool.record_attempt(item, "boom")

    again = Spool(tmp_path / "spool", 64 * MiB)
    (reloaded,) = again.ready()
    assert reloaded.object_name == item.object_name and reloaded.attempts == 1
    assert reloaded.meta == {"seq": 3} and reloaded.last_error == "boom"
    again.remove(reloaded)
    assert again.ready() == [] and list((tmp_path / "spool/ready").iterdir()) == []


def test_spool_abort_and_bad_kind(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 64 * MiB)
    entry = spool.create()
    entry.write(b"x" * 10)
    with pytest.raises(ValueError):
        entry.commit("n", "video")
    entry.abort()
    entry.abort()
    assert list((tmp_path / "incoming").iterdir()) == []
    with spool.create() as e2:  # leaving the block without commit aborts
        e2.write(b"y")
    spool_put(spool, b"z", "o/once")
    with spool.create() as e3, pytest.raises(ValueError, match="already waiting"):
        e3.commit("o/once", "clip")  # a second object under the same name: refused
    with spool.create() as e4, pytest.raises(BucketError):
        e4.commit("../escape", "clip")
    spool.remove(spool.ready()[0])
    assert list((tmp_path / "incoming").iterdir()) == [] and spool.pending_count == 0


_CRASH_CHILD = r"""
import os, sys, signal, time, hashlib
from pathlib import Path
from bridge.store.spool import Spool
spool = Spool(Path(sys.argv[1]), 1 << 30)
mode = sys.argv[2]
for i in range(3):
    data = os.urandom(100_000 + i)
    e = spool.create(); e.write(data); e.commit(f"obj/{i}", "clip")
    print("COMMITTED", f"obj/{i}", hashlib.sha256(data).hexdigest(), flush=True)
if mode == "write":
    e = spool.create()
    print("WRITING", flush=True)
    while True:
        e.write(os.urandom(4096)); time.sleep(0.001)
def die(point):
    if point == mode:
        os.kill(os.getpid(), signal.SIGKILL)
spool._test_hook = die
e = spool.create(); e.write(os.urandom(50_000)); e.commit("obj/doomed", "clip")
print("SURVIVED", flush=True)
"""


@pytest.mark.parametrize("mode", ["write", "before-data-rename", "before-sidecar-rename"])
def test_spool_survives_sigkill(tmp_path: Path, mode: str) -> None:
    spool_dir = tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, str(spool_dir), mode],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    committed: dict[str, str] = {}
    for line in proc.stdout:
        words = line.split()
        if words[0] == "COMMITTED":
            committed[words[1]] = words[2]
        elif words[0] == "WRITING":
            time.sleep(0.2)  # let it write a while, then kill it mid-write
            proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert len(committed) == 3
    leftovers = list((spool_dir / "incoming").iterdir())
    assert leftovers, "the crash should leave a partial file behind"

    spool = Spool(spool_dir, 1 << 30)
    assert list((spool_dir / "incoming").iterdir()) == []
    assert spool.stats.recovered_partials == len(leftovers)
    items = spool.ready()
    assert {i.object_name: i.sha256 for i in items} == committed
    for item in items:
        assert hashlib.sha256(item.data_path.read_bytes()).hexdigest() == item.sha256
    ready_files = sorted(p.name for p in (spool_dir / "ready").iterdir())
    assert ready_files == sorted(f"{i.id}.{ext}" for i in items for ext in ("data", "json"))


def test_spool_cap_evicts_oldest_first_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    evicted: list[str] = []
    spool = Spool(tmp_path, 3 * MiB, on_evict=lambda items: evicted.extend(
        i.object_name for i in items))
    for i in range(3):
        spool_put(spool, os.urandom(MiB), f"o/{i}")
    assert evicted == []
    claimed = spool.ready()[0]
    assert spool.claim(claimed)  # being uploaded: never evicted
    with caplog.at_level(logging.WARNING, logger="bridge.store.spool"):
        spool_put(spool, os.urandom(MiB), "o/3")
        spool_put(spool, os.urandom(MiB), "o/4")
    assert evicted == ["o/1", "o/2"]
    assert [i.object_name for i in spool.ready()] == ["o/0", "o/3", "o/4"]
    assert spool.stats.evicted_count == 2 and spool.stats.evicted_bytes == 2 * MiB
    assert "SPOOL FULL" in caplog.text and "o/1" in caplog.text
    assert len(list(tmp_path.joinpath("ready").iterdir())) == 6


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount(8) here")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); see the injected test")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_raises_spool_full_real_tmpfs(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    with tiny_tmpfs(mnt, "2m"):
        spool = Spool(mnt / "spool", 64 * MiB)
        keep = os.urandom(500_000)
        spool_put(spool, keep, "o/kept")
        entry = spool.create()
        with pytest.raises(SpoolFull, match=r"spool disk full at .*spool_max_mb"):
            for _ in range(100):
                entry.write(os.urandom(65536))
        assert list((mnt / "spool/incoming").iterdir()) == []  # the partial entry is gone
        (item,) = spool.ready()
        assert item.data_path.read_bytes() == keep
        spool_put(spool, b"small again", "o/after")  # space was given back: it works again
        assert [i.object_name for i in spool.ready()] == ["o/kept", "o/after"]


def test_full_disk_during_commit_injected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.store.spool_entry as spool_mod

    spool = Spool(tmp_path, 64 * MiB)
    spool_put(spool, b"first", "o/first")

    def no_space(path: Path, obj: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_mod, "write_json", no_space)
    entry = spool.create()
    entry.write(b"second")
    with pytest.raises(SpoolFull, match="while committing"):
        entry.commit("o/second", "clip")
    monkeypatch.undo()
    assert list((tmp_path / "incoming").iterdir()) == []
    assert [i.object_name for i in Spool(tmp_path, 64 * MiB).ready()] == ["o/first"]


def test_spool_commit_is_thread_safe(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 30)
    threads = [threading.Thread(target=spool_put, args=(spool, os.urandom(5000), f"t/{i}"))
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i.object_name for i in spool.ready()) == sorted(f"t/{i}" for i in range(16))


# ------------------------------------------------------------------------------------------
# Retention
# ------------------------------------------------------------------------------------------


def test_expired() -> None:
    now = 1_000_000_000.0
    day = 86400
    entries: list[Recorded] = [
        ("a", now - 11 * day),
        ("b", now - 9 * day),
        ("c", datetime.fromtimestamp(now, UTC) - timedelta(days=12)),
        ("d", now),
    ]
    assert expired(entries, now, 10) == ["c", "a"]
    assert expired(entries, now, 0.5) == ["c", "a", "b"]
    with pytest.raises(ValueError):
        expired([("x", datetime(2020, 1, 1))], now, 10)


async def test_retention_deletes_expired_and_reports(tmp_path: Path) -> None:
    b = open_bucket(f"file://{tmp_path}/bk")
    now = time.time()
    recorded = [(f"r/{i}", now - i * 86400) for i in range(15)]
    for name, _ in recorded:
        await b.put(name, b"x")
    deleted = await delete_expired(b, [*recorded, ("r/never-uploaded", now - 30 * 86400)], now, 10)
    assert deleted == ["r/never-uploaded"] + [f"r/{i}" for i in range(14, 10, -1)]
    assert set(await listing(b)) == {f"r/{i}" for i in range(11)}

    reported: list[list[str]] = []
    remaining = [r for r in recorded if r[0] not in deleted]  # the caller's manifest state
    task = RetentionTask(b, 5, lambda: remaining, reported.append, clock=lambda: now)
    assert await task.run_once() == [f"r/{i}" for i in range(10, 5, -1)]
    assert reported == [[f"r/{i}" for i in range(10, 5, -1)]] and task.deleted_total == 5


async def test_retention_keeps_failed_deletes_for_next_round(tmp_path: Path) -> None:
    class Flaky(Bucket):
        def __init__(self, inner: Bucket) -> None:
            self.inner = inner

        async def delete(self, name: str) -> None:
            if name.endswith("1"):
                raise BucketError("down")
            await self.inner.delete(name)

        put = put_if_absent = get = get_range = head = list = None  # type: ignore[assignment]

        def describe(self) -> str:
            return "flaky"

    now = time.time()
    deleted = await delete_expired(
        Flaky(open_bucket(f"file://{tmp_path}")), [("x/0", 0.0), ("x/1", 0.0)], now, 1
    )
    assert deleted == ["x/0"]
