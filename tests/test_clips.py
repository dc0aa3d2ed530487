"""Clips only the owner can see: a real RTSP camera with a subject → encrypted clips in a bucket.

The stock `age` CLI decrypts them with the owner's identity into MP4s that PyAV decodes; the
bucket's raw bytes hold no plaintext marker; the manifest verifies and lists the clip.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from tests.peers.bridge_process import ROOT, BridgeProcess, CameraSpec
from tests.peers.rtsp import RtspCamera
from tests.peers.scenes import write_crossing_clip


@pytest.fixture(scope="module")
def owner_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("owner") / "owner.key"
    out = subprocess.run(
        ["age-keygen", "-o", str(path)], capture_output=True, text=True, check=True
    )
    recipient = out.stderr.strip().split()[-1]
    assert recipient.startswith("age1")
    return path, recipient


@pytest.fixture(scope="module")
def camera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtspCamera]:
    clip = tmp_path_factory.mktemp("clip") / "person.mp4"
    write_crossing_clip(clip, kind="person", seconds=14, enter_at=1.0, cross_seconds=4.0)
    with RtspCamera(file=clip, width=640, height=360, fps=15) as cam:
        yield cam


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_clips_are_encrypted_to_the_owner_and_decrypt_with_stock_age(
    tmp_path: Path, owner_key: tuple[Path, str], camera: RtspCamera
) -> None:
    key_path, recipient = owner_key
    bucket = tmp_path / "bucket"
    bridge = BridgeProcess(
        tmp_path,
        [CameraSpec("Front porch", camera.url, {"detect": {"hold_seconds": 1.0}})],
        detect={"enabled": True, "fps": 5},
        storage={
            "bucket": bucket.as_uri(),
            "recipients": [recipient],
            "pre_roll_seconds": 1.0,
            "post_roll_seconds": 1.0,
            "heartbeat_seconds": 5,
        },
    )
    bridge.start()
    try:
        wait(lambda: (bridge.status()["storage"] or {}).get("events_sealed", 0) >= 1, 90,
             "an event")
        wait(lambda: bridge.status()["storage"]["uploads"]["pending_count"] == 0, 30, "uploads")
        time.sleep(1.0)  # the head follows its segments
    finally:
        assert bridge.stop() == 0, bridge.log_text()
    objects = [p for p in bucket.rglob("*") if p.is_file()]
    assert len(objects) >= 4  # clip (in parts), poster, manifest segment(s), head
    mp4s, plains = [], []
    for obj in objects:
        plain = tmp_path / f"{obj.name}.out"
        subprocess.run(["age", "-d", "-i", str(key_path), "-o", str(plain), str(obj)], check=True)
        plains.append(plain.read_bytes())
        if plains[-1][4:8] == b"ftyp":
            mp4s.append(plain)
    assert mp4s, "no clip among the objects"
    # No plaintext in the bucket. Only markers of 6+ bytes: a short one (the JPEG SOI
    # ff d8 ff) turns up by chance in ~5% of 0.8 MB of random ciphertext. Each marker is
    # taken from, or found in, a real plaintext, so the check cannot pass vacuously.
    jpeg = next(p for p in plains if p.startswith(b"\xff\xd8\xff"))
    mp4 = mp4s[0].read_bytes()
    moof = mp4.index(b"moof")
    markers = [
        b"Front porch", b"person",  # in the manifest
        mp4[4:12],  # "ftyp" and the brand
        mp4[moof - 4:moof + 12],  # the first fragment's header
        jpeg[:16],  # SOI and the padding comment segment
        *(p[:16] for p in plains),
    ]
    for marker in markers[:2]:
        assert any(marker in p for p in plains), marker
    for obj in objects:
        raw = obj.read_bytes()
        assert raw.startswith(b"age-encryption.org/v1\n")
        # The header is text up to the MAC line: not even a short binary marker fits there.
        header = raw[: raw.index(b"\n", raw.index(b"\n--- ") + 1)]
        assert b"\xff\xd8\xff" not in header and b"ftyp" not in header, obj
        assert not [m for m in markers if m in raw], obj
    frames = []
    for part in mp4s:  # each part of the event plays alone
        with av.open(str(part)) as container:
            decoded = list(container.decode(video=0))
        assert decoded and (decoded[0].width, decoded[0].height) == (640, 360)
        frames += decoded
    assert len(frames) >= 15


def test_a_world_readable_credentials_file_is_a_config_error(
    tmp_path: Path, owner_key: tuple[Path, str]
) -> None:
    """Bucket keys others can read: `obscura run` refuses to start (exit 2, naming the file and
    the key) rather than record to a bucket with leaked keys; the secret is never printed."""
    creds = tmp_path / "s3.env"
    creds.write_text("AWS_ACCESS_KEY_ID=AK\nAWS_SECRET_ACCESS_KEY=never-logged-7f3a\n")
    creds.chmod(0o644)  # readable by others: refused
    bridge = BridgeProcess(
        tmp_path,
        [CameraSpec("Demo", "demo:", {"width": 320, "height": 240})],
        storage={
            "bucket": "s3://clips/home?endpoint=http://127.0.0.1:9&region=us-east-1",
            "recipients": [owner_key[1]],
            "credentials_file": str(creds),
        },
    )
    out = obscura("run", "--config", str(bridge.config))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "credentials_file" in out.stderr and "s3.env" in out.stderr
    assert "0644" in out.stderr and "Traceback" not in out.stderr
    assert "never-logged-7f3a" not in out.stdout + out.stderr


def obscura(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )


def test_no_recipient_turns_recording_off_not_the_bridge(
    tmp_path: Path, owner_key: tuple[Path, str]
) -> None:
    """`keys remove --force` of the last key: the bridge still runs (live view), says why
    nothing is recorded, and `keys add-recipient` recovers without editing the file by hand."""
    recipient = owner_key[1]
    bridge = BridgeProcess(
        tmp_path,
        [CameraSpec("Demo", "demo:", {"width": 320, "height": 240})],
        storage={"bucket": (tmp_path / "bucket").as_uri(), "recipients": [recipient]},
    )
    config = str(bridge.config)
    out = obscura("keys", "remove", recipient, "--force", "--config", config)
    assert out.returncode == 0 and "No recipient is left" in out.stdout, out.stdout + out.stderr
    out = obscura("keys", "list", "--config", config)
    assert out.returncode == 0, out.stderr
    assert "No recipients" in out.stdout and "obscura keys add-recipient" in out.stdout
    bridge.start()
    try:
        bridge.wait_camera("Demo")
        assert "no recipients in [storage]" in bridge.status()["storage"]["error"]
        doctor = obscura("doctor", "--config", config)
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        assert "clips     NOT recorded: no recipients in [storage]" in doctor.stdout
        assert "keys add-recipient" in doctor.stdout
        assert "camera    'Demo' (demo:): 320x240" in doctor.stdout
    finally:
        assert bridge.stop() == 0, bridge.log_text()
    assert "recording is off, cameras keep streaming: no recipients" in bridge.log_text()

    out = obscura("keys", "add-recipient", recipient, "--config", config)
    assert out.returncode == 0 and "Added" in out.stdout, out.stdout + out.stderr
    assert recipient in obscura("keys", "list", "--config", config).stdout
    bridge.start()
    try:
        storage = bridge.status()["storage"]
        assert storage["recipients"] == [recipient] and "error" not in storage
    finally:
        assert bridge.stop() == 0, bridge.log_text()
