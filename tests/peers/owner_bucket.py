"""A bucket a real bridge filled, and the owner's CLI run against it as a subprocess: the
shared ground of tests/test_owner_cli.py and tests/test_owner_audit.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.store.bucket import BucketLayout
from tests.peers.bridge_process import ROOT, BridgeProcess, CameraSpec
from tests.peers.rtsp import RtspCamera
from tests.peers.scenes import write_crossing_clip


def obscura(
    *args: str, check: bool | None = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OBSCURA_OWNER_STATE_DIR="/nonexistent/do-not-use", **(env or {})),
    )
    if check is True:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


@dataclass
class Recorded:
    bucket: Path
    bridge_id: str
    key: Path
    recipient: str
    old_head: bytes  # the head as first uploaded (seq 0), before the clip's segment
    clip: dict
    status: dict | None = None  # the bridge's /status just before it stopped

    def head_path(self, bucket: Path) -> Path:
        layout = BucketLayout(self.bridge_id)
        return bucket / layout.well_known_name("manifest-head")

    def obj(self, bucket: Path, oid: str) -> Path:
        return bucket / self.bridge_id / oid


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def recording_bridge(
    work: Path,
    camera_url: str,
    bucket: Path,
    recipients: list[str],
    heartbeat_seconds: float,
    *,
    camera: str = "Front porch",
    **storage: float,
) -> BridgeProcess:
    """`obscura run` with one camera whose person detections record clips into `bucket`
    (short hold and rolls, so a crossing gives one small clip soon after it ends); `storage`:
    more [storage] keys."""
    return BridgeProcess(
        work,
        [CameraSpec(camera, camera_url, {"detect": {"hold_seconds": 1.0}})],
        detect={"enabled": True, "fps": 5},
        storage={
            "bucket": bucket.as_uri(),
            "recipients": recipients,
            "pre_roll_seconds": 1.0,
            "post_roll_seconds": 1.0,
            "heartbeat_seconds": heartbeat_seconds,
            **storage,
        },
    )


def clips_sealed(bridge: BridgeProcess) -> int:
    """Events recorded to their end (each sealed in one or more parts)."""
    return int((bridge.status()["storage"] or {}).get("events_sealed", 0))


def record_bucket(
    work: Path,
    *,
    camera: dict[str, Any] | None = None,
    scene: dict[str, float] | None = None,
    **storage: float,
) -> Recorded:
    """A real bridge records one clip of a person crossing a real RTSP camera into a file://
    bucket under `work`; the tests then work on copies of it (tests/conftest.py: `recorded`).
    `camera`: more RtspCamera options (sound...); `scene`: the crossing's timing
    (write_crossing_clip); `storage`: more [storage] keys."""
    key = work / "owner.key"
    out = obscura("keys", "generate", "-o", str(key))
    recipient = next(w for w in out.stdout.split() if w.startswith("age1"))
    clip = work / "person.mp4"
    timing = scene or {"seconds": 14, "enter_at": 1.0, "cross_seconds": 4.0}
    write_crossing_clip(clip, kind="person", **timing)  # type: ignore[arg-type]
    bucket = work / "bucket"
    with RtspCamera(file=clip, width=640, height=360, fps=15, **(camera or {})) as cam:
        # Long enough that the head is not "frozen" while the tests of every module that
        # shares this recording run after the bridge stopped (2 x period).
        bridge = recording_bridge(
            work, cam.url, bucket, [recipient], heartbeat_seconds=600, **storage
        )
        bridge.start()
        old_head: list[bytes] = []
        try:
            bridge_id = bridge.status()["storage"]["bridge_id"]
            head = bucket / BucketLayout(bridge_id).well_known_name("manifest-head")

            def sealed() -> bool:
                if not old_head and head.exists():
                    old_head.append(head.read_bytes())
                return clips_sealed(bridge) >= 1

            wait(sealed, 90, "a clip")
            wait(lambda: bridge.status()["storage"]["uploads"]["pending_count"] == 0, 30, "uploads")
            wait(lambda: head.read_bytes() != old_head[0], 10, "the head after the clip")
            time.sleep(0.5)
            final = bridge.status()
        finally:
            assert bridge.stop() == 0, bridge.log_text()
    rec = Recorded(bucket, bridge_id, key, recipient, old_head[0], {}, final)
    listing = json.loads(clips(rec, "list", "--json", state=work / "list-state").stdout)
    assert len(listing) >= 1
    rec.clip = listing[0]
    return rec


def config_for(bucket: Path, recipient: str, where: Path) -> Path:
    path = where / "owner.toml"
    path.write_text(
        f'[bridge]\nstate_dir = "{where / "state"}"\n\n[status]\naddress = "127.0.0.1"\n'
        f'port = 1\n\n[storage]\nbucket = "{bucket.as_uri()}"\nrecipients = ["{recipient}"]\n'
    )
    return path


def clips(
    rec: Recorded,
    *args: str,
    bucket: Path | None = None,
    state: Path,
    check: bool | None = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    config = config_for(bucket or rec.bucket, rec.recipient, state.parent)
    return obscura(
        "clips",
        args[0],
        "--config",
        str(config),
        "--identity",
        str(rec.key),
        "--state-dir",
        str(state),
        *args[1:],
        check=check,
        env=env,
    )


def tampered(rec: Recorded, tmp_path: Path) -> Path:
    copy = tmp_path / "bucket"
    shutil.copytree(rec.bucket, copy)
    return copy


def verify_fails(rec: Recorded, bucket: Path, tmp_path: Path, message: str) -> str:
    out = clips(rec, "verify", bucket=bucket, state=tmp_path / "state", check=None)
    assert out.returncode == 1, out.stdout + out.stderr
    assert message in out.stdout, out.stdout + out.stderr
    return out.stdout
