"""The owner's CLI (`obscura keys …`, `obscura clips …`) against a bucket a real bridge filled.

One bridge run records a clip of a person crossing in front of a real RTSP camera; every test
then runs the CLI as a subprocess against a copy of that bucket, untouched or tampered with
(tests/peers/owner_bucket.py; the `recorded` fixture is in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import av

from bridge.store.vault import ClipVault
from crypto.age import encrypt
from tests.peers.owner_bucket import (
    Recorded,
    clips,
    config_for,
    obscura,
    tampered,
    verify_fails,
    wait,
)


def test_keys_generate_is_private_and_works_with_stock_age(
    recorded: Recorded, tmp_path: Path
) -> None:
    assert stat.S_IMODE(recorded.key.stat().st_mode) == 0o600
    again = obscura("keys", "generate", "-o", str(recorded.key), check=False)
    assert again.returncode == 1 and "not overwriting" in again.stderr
    obj = recorded.obj(recorded.bucket, recorded.clip["id"])
    plain = tmp_path / "clip.mp4"
    subprocess.run(["age", "-d", "-i", str(recorded.key), "-o", str(plain), str(obj)], check=True)
    assert plain.read_bytes()[4:8] == b"ftyp"


def test_keys_add_list_remove(recorded: Recorded, tmp_path: Path) -> None:
    config = config_for(recorded.bucket, recorded.recipient, tmp_path)
    other = tmp_path / "other.key"
    other_r = (
        obscura("keys", "generate", "-o", str(other)).stdout.split("recipient): ")[1].split()[0]
    )
    out = obscura("keys", "add-recipient", other_r, "--config", str(config))
    assert "restart" in out.stdout.lower()
    listed = obscura("keys", "list", "--config", str(config)).stdout
    assert recorded.recipient in listed and other_r in listed
    out = obscura("keys", "remove", other_r, "--config", str(config))
    assert "prospective" in out.stdout and "stay readable" in out.stdout
    assert other_r not in obscura("keys", "list", "--config", str(config)).stdout
    last = obscura("keys", "remove", recorded.recipient, "--config", str(config), check=False)
    assert last.returncode == 1 and "last recipient" in last.stderr


def test_verify_untouched_bucket_then_rollback_is_detected(
    recorded: Recorded, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    out = clips(recorded, "verify", state=state)
    assert "OK (1 clips" in out.stdout and "trust on first use" in out.stderr
    assert (state / f"{recorded.bridge_id}.json").exists()
    out = clips(recorded, "verify", state=state)  # pinned now: no TOFU notice
    assert "trust on first use" not in out.stderr
    bucket = tampered(recorded, tmp_path)
    recorded.head_path(bucket).write_bytes(recorded.old_head)
    out = clips(recorded, "verify", bucket=bucket, state=state, check=None)
    assert out.returncode == 1
    assert "manifest rolled back: head seq 0 < last verified" in out.stdout, out.stdout


def test_list_shows_the_clip(recorded: Recorded, tmp_path: Path) -> None:
    c = recorded.clip
    assert c["camera"] == "Front porch" and "person" in c["subjects"]
    assert 1000 < c["end_ms"] - c["start_ms"] < 60_000 and c["poster"] and c["shares"] == []
    out = clips(recorded, "list", "--subject", "person", "--since", "1h", state=tmp_path / "s")
    assert c["id"] in out.stdout and "'Front porch'" in out.stdout and "person" in out.stdout
    none = clips(recorded, "list", "--camera", "Garage", state=tmp_path / "s").stdout
    assert c["id"] not in none


def test_get_gives_a_decodable_mp4_and_poster(recorded: Recorded, tmp_path: Path) -> None:
    mp4, jpg = tmp_path / "clip.mp4", tmp_path / "poster.jpg"
    clips(
        recorded,
        "get",
        recorded.clip["id"][:10],
        "-o",
        str(mp4),
        "--poster",
        str(jpg),
        state=tmp_path / "s",
    )
    with av.open(str(mp4)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) >= 15 and (frames[0].width, frames[0].height) == (640, 360)
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_get_refuses_an_altered_clip(recorded: Recorded, tmp_path: Path) -> None:
    bucket = tampered(recorded, tmp_path)
    obj = recorded.obj(bucket, recorded.clip["id"])
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    obj.write_bytes(bytes(data))
    out = clips(
        recorded,
        "get",
        recorded.clip["id"],
        "-o",
        str(tmp_path / "x.mp4"),
        bucket=bucket,
        state=tmp_path / "s",
        check=None,
    )
    assert out.returncode == 1 and "SHA-256 mismatch" in out.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_flipped_byte(recorded: Recorded, tmp_path: Path) -> None:
    bucket = tampered(recorded, tmp_path)
    obj = recorded.obj(bucket, recorded.clip["id"])
    data = bytearray(obj.read_bytes())
    data[-100] ^= 0x40
    obj.write_bytes(bytes(data))
    verify_fails(
        recorded,
        bucket,
        tmp_path,
        f"object {recorded.clip['id']}: SHA-256 mismatch (swapped or altered)",
    )


def test_truncated_clip(recorded: Recorded, tmp_path: Path) -> None:
    bucket = tampered(recorded, tmp_path)
    obj = recorded.obj(bucket, recorded.clip["id"])
    obj.write_bytes(obj.read_bytes()[: obj.stat().st_size // 2])
    verify_fails(recorded, bucket, tmp_path, f"object {recorded.clip['id']} is truncated")


def test_swapped_objects(recorded: Recorded, tmp_path: Path) -> None:
    bucket = tampered(recorded, tmp_path)
    a, b = recorded.clip["id"], recorded.clip["poster"]
    pa, pb = recorded.obj(bucket, a), recorded.obj(bucket, b)
    da, db = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(db)
    pb.write_bytes(da)
    out = verify_fails(
        recorded,
        bucket,
        tmp_path,
        f"object {a}: SHA-256 mismatch (swapped or altered); it holds object {b}",
    )
    assert f"object {b}: SHA-256 mismatch (swapped or altered); it holds object {a}" in out


def test_deleted_object(recorded: Recorded, tmp_path: Path) -> None:
    bucket = tampered(recorded, tmp_path)
    recorded.obj(bucket, recorded.clip["id"]).unlink()
    verify_fails(
        recorded,
        bucket,
        tmp_path,
        f"object {recorded.clip['id']} listed in the manifest is missing from the bucket (deleted)",
    )


def test_forged_clip(recorded: Recorded, tmp_path: Path) -> None:
    bucket = tampered(recorded, tmp_path)
    forged = os.urandom(16).hex()
    recorded.obj(bucket, forged).write_bytes(encrypt([recorded.recipient], b"\0\0\0\x18ftypisom"))
    verify_fails(recorded, bucket, tmp_path, f"forged object {forged}: not in the manifest")


@dataclass
class Served:
    bucket: Path
    config: Path  # the owner's, pointing at the bridge's status port
    vault: ClipVault


@contextmanager
def serving_bridge(recorded: Recorded, tmp_path: Path) -> Iterator[Served]:
    """The recorded bridge, back up on a copy of its bucket: the real ClipVault (its own state)
    with bridge/owner/owner_api.py mounted on a status app, as the service mounts it (the CLI
    proves the owner's identity; tests/test_owner_requests.py does this against `obscura run`)."""
    from aiohttp import web

    from bridge.owner.owner_api import add_owner_routes
    from bridge.store.config import StorageConfig
    from tests.peers.rtsp import free_port

    bucket = tampered(recorded, tmp_path)
    state_dir = tmp_path / "bridge-state"
    shutil.copytree(recorded.bucket.parent / "state", state_dir)
    port = free_port()
    loop = asyncio.new_event_loop()
    ready, box = threading.Event(), {}

    async def serve() -> None:
        vault = ClipVault(
            StorageConfig(bucket.as_uri(), (recorded.recipient,), heartbeat_seconds=60), state_dir
        )
        await vault.start()
        app = web.Application()

        async def status(_: web.Request) -> web.Response:
            return web.json_response({"storage": vault.status()})

        app.router.add_get("/status", status)
        add_owner_routes(app, lambda: vault)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        box["vault"] = vault
        box["stop"] = stop = asyncio.Event()
        ready.set()
        await stop.wait()
        for _ in range(100):  # let the last segment and head reach the bucket
            if not vault.spool.ready():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        await runner.cleanup()
        await vault.stop()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert ready.wait(20)
    config = config_for(bucket, recorded.recipient, tmp_path)
    config.write_text(config.read_text().replace("port = 1\n", f"port = {port}\n"))
    try:
        yield Served(bucket, config, box["vault"])  # type: ignore[arg-type]
    finally:
        loop.call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
        thread.join(30)


def test_share_is_recorded_by_the_bridge_and_listed(recorded: Recorded, tmp_path: Path) -> None:
    engineer = tmp_path / "engineer.key"
    to = obscura("keys", "generate", "-o", str(engineer)).stdout.split("recipient): ")[1].split()[0]
    state = ("--identity", str(recorded.key), "--state-dir", str(tmp_path / "s"))
    with serving_bridge(recorded, tmp_path) as bridge:
        config = ("--config", str(bridge.config))
        out = obscura("clips", "share", recorded.clip["id"], "--to", to, *config, *state)
        bucket = bridge.bucket
    copy_id = out.stdout.split("object ")[1].split()[0].rsplit("/", 1)[1]
    listed = obscura("clips", "list", *config, *state).stdout
    assert f"shared with {to} as {copy_id}" in listed
    plain = tmp_path / "shared.mp4"
    subprocess.run(
        ["age", "-d", "-i", str(engineer), "-o", str(plain), str(recorded.obj(bucket, copy_id))],
        check=True,
    )
    assert plain.read_bytes()[4:8] == b"ftyp"
    out = obscura("clips", "verify", *config, *state)
    assert "OK (1 clips" in out.stdout


def test_a_clip_whose_poster_was_evicted_is_listed_fetched_and_deleted(
    recorded: Recorded, tmp_path: Path
) -> None:
    """Regression: the clip uploaded, then a long outage filled the spool and it evicted the
    poster alone (logged: `delete`, reason "evicted"). `clips delete` still named the poster,
    and the bridge refused the whole request (404, not a live object): the clip could never be
    deleted. Now the poster shows as never uploaded, and the deletion names the clip alone."""
    clip_id, poster = recorded.clip["id"], recorded.clip["poster"]
    state = ("--identity", str(recorded.key), "--state-dir", str(tmp_path / "s"))
    with serving_bridge(recorded, tmp_path) as bridge:
        config = ("--config", str(bridge.config))
        recorded.obj(bridge.bucket, poster).unlink()  # it never reached the bucket
        # What the spool calls, from its committing thread, when it evicts the poster.
        bridge.vault._evicted([SimpleNamespace(  # type: ignore[list-item]
            object_name=f"{bridge.vault.layout.root}/{poster}", kind="thumbnail"
        )])

        def logged() -> bool:
            [clip] = json.loads(obscura("clips", "list", "--json", *config, *state).stdout)
            return bool(clip["poster_deleted"] == "evicted")

        wait(logged, 20, "the poster's eviction in the manifest")
        listed = obscura("clips", "list", *config, *state).stdout
        assert clip_id in listed and "poster never uploaded (spool full)" in listed
        assert obscura("clips", "verify", *config, *state).returncode == 0
        mp4, jpg = tmp_path / "clip.mp4", tmp_path / "poster.jpg"
        got = obscura("clips", "get", clip_id, "-o", str(mp4), "--poster", str(jpg),
                      *config, *state)
        assert "no poster saved: poster never uploaded (spool full)" in got.stderr
        assert mp4.stat().st_size > 0 and not jpg.exists()

        out = obscura("clips", "delete", clip_id, "--yes", *config, *state, check=None)
        assert out.returncode == 0, out.stdout + out.stderr
        parts = [p["id"] for p in recorded.clip["parts"]]
        named = f" in {len(parts)} parts" if len(parts) > 1 else ""
        assert f"Deleted clip {clip_id} ('Front porch'){named}: " in out.stdout
        for part in parts:  # every part of the event went, not only the one named
            assert not recorded.obj(bridge.bucket, part).exists()
    out = obscura("clips", "verify", *config, *state)
    assert "OK (0 clips" in out.stdout and "deleted by the owner" in out.stdout


def test_share_without_the_bridge_shares_nothing(recorded: Recorded, tmp_path: Path) -> None:
    bucket = tampered(recorded, tmp_path)
    before = sorted(p.name for p in bucket.rglob("*"))
    out = clips(
        recorded,
        "share",
        recorded.clip["id"],
        "--to",
        recorded.recipient,
        bucket=bucket,
        state=tmp_path / "s",
        check=None,
    )
    assert out.returncode == 1 and "not reachable" in out.stderr, out.stderr
    assert sorted(p.name for p in bucket.rglob("*")) == before
