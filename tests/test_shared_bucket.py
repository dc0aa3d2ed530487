"""Two bridges share one bucket: each writes under its own random prefix, with its own key and
manifest, and the owner's `obscura clips` sees and verifies both."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from bridge.record.clip import ClipMeta
from bridge.store.config import StorageConfig
from bridge.store.vault import ClipVault
from crypto.age_keys import generate_identity
from crypto.padding import mp4_free_box, mp4_padding
from tests.peers.bridge_process import ROOT


def tiny_mp4() -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


async def record_one(state_dir: Path, bucket: Path, recipient: str, camera: str) -> None:
    vault = ClipVault(
        StorageConfig(bucket=bucket.as_uri(), recipients=(recipient,), heartbeat_seconds=600),
        state_dir,
    )
    await vault.start()
    mp4 = tiny_mp4()
    sink = await asyncio.to_thread(vault.sink_factory)
    await asyncio.to_thread(sink.write, mp4 + mp4_free_box(mp4_padding(len(mp4))))
    now = time.time()
    await sink.finish(
        ClipMeta(
            camera=camera,
            event_id=secrets.token_hex(16),
            part=0,
            start=now - 1,
            end=now,
            duration=1.0,
            subjects=("person",),
            best_score=0.9,
            poster=None,
            width=64,
            height=48,
            frames=10,
            media_bytes=len(mp4),
            size=len(mp4),
            reason="post_roll",
        )
    )
    await vault.stop()


def test_two_bridges_one_bucket(tmp_path: Path) -> None:
    owner = generate_identity()
    key = tmp_path / "owner.key"
    key.write_text(f"{owner}\n")
    key.chmod(0o600)
    bucket = tmp_path / "bucket"
    for name in ("Garage", "Porch"):
        (tmp_path / f"bridge-{name}").mkdir(mode=0o700)
        asyncio.run(record_one(tmp_path / f"bridge-{name}", bucket, str(owner.recipient), name))
    roots = {p.name for p in bucket.iterdir() if not p.name.startswith(".")}  # .tmp: atomic writes
    assert len(roots) == 2  # one random prefix per bridge, nothing else at the top
    config = tmp_path / "owner.toml"
    config.write_text(
        f'[storage]\nbucket = "{bucket.as_uri()}"\nrecipients = ["{owner.recipient}"]\n'
    )
    env_args = ["--config", str(config), "--identity", str(key), "--state-dir", str(tmp_path / "o")]

    def obscura(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge", *args, *env_args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    verify = obscura("clips", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.count(": OK (1 clips") == 2
    listed = obscura("clips", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    clips = json.loads(listed.stdout)
    cameras = sorted(c["camera"] for c in clips)
    assert len({c["bridge"] for c in clips}) == 2
    assert cameras == ["Garage", "Porch"]
