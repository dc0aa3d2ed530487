"""Clips only the owner can see: a real RTSP camera with a subject → encrypted clips in a bucket.

The stock `age` CLI decrypts them with the owner's identity into MP4s that PyAV decodes; the
bucket's raw bytes hold no plaintext marker; the manifest verifies and lists the clip.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from tests.peers.bridge_process import BridgeProcess, CameraSpec
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
        wait(lambda: (bridge.status()["storage"] or {}).get("clips_sealed", 0) >= 1, 90, "a clip")
        wait(lambda: bridge.status()["storage"]["uploads"]["pending_count"] == 0, 30, "uploads")
        time.sleep(1.0)  # the head follows its segments
    finally:
        assert bridge.stop() == 0, bridge.log_text()
    objects = [p for p in bucket.rglob("*") if p.is_file()]
    assert len(objects) >= 4  # clip, poster, manifest segment(s), head
    markers = [b"Front porch", b"ftyp", b"\xff\xd8\xff", b"person", b"moof"]
    for obj in objects:
        raw = obj.read_bytes()
        assert raw.startswith(b"age-encryption.org/v1\n")
        assert not any(m in raw for m in markers), obj
    mp4s = []
    for obj in objects:
        plain = tmp_path / f"{obj.name}.out"
        subprocess.run(["age", "-d", "-i", str(key_path), "-o", str(plain), str(obj)], check=True)
        if plain.read_bytes()[4:8] == b"ftyp":
            mp4s.append(plain)
    assert mp4s, "no clip among the objects"
    with av.open(str(mp4s[0])) as container:
        frames = [f for f in container.decode(video=0)]
    assert len(frames) >= 15 and (frames[0].width, frames[0].height) == (640, 360)


def test_bad_storage_is_a_clear_error_and_streaming_goes_on(
    tmp_path: Path, owner_key: tuple[Path, str]
) -> None:
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
    bridge.start()
    try:
        bridge.wait_camera("Demo")
        error = bridge.status()["storage"]["error"]
        assert "s3.env" in error and "0644" in error
    finally:
        assert bridge.stop() == 0
    assert "never-logged-7f3a" not in bridge.log_text()
