"""SIGKILL during an event loses at most the last few seconds of it (docs/clip-format.md §8).

A real `obscura run` records a real RTSP camera on which a person is in view almost all the
time; it is killed with SIGKILL at seeded random moments while it records, and restarted each
time. Afterwards the manifest must hold every event that was being recorded up to at most 5 s
before its kill, `clips verify` must pass, every part must decrypt (stock `age`) and decode,
and each cut-short event must come back from `clips get` as one playable MP4.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import av
import pytest

from tests.peers.bridge_process import BridgeProcess
from tests.peers.owner_bucket import obscura, recording_bridge, wait
from tests.peers.rtsp import RtspCamera, gst_rtsp_available
from tests.peers.scenes import write_crossing_clip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not gst_rtsp_available(), reason="gst-rtsp-server is not installed"),
]

CAMERA = "Hall"
KILLS = 10
LOSS_BOUND = 5.0  # seconds: what a SIGKILL may lose of the event it interrupts


def _state(bridge: BridgeProcess) -> tuple[bool, int] | None:
    """From one status read: whether the camera records, and how many events ended (their
    last part sealed) since the start; None when the bridge does not answer."""
    try:
        status = bridge.status()
    except OSError:
        return None
    camera = next((c for c in status["cameras"] if c["name"] == CAMERA), {})
    recording = bool((camera.get("recording") or {}).get("recording"))
    return recording, int((status.get("storage") or {}).get("events_sealed", 0))


def _kill_mid_event(bridge: BridgeProcess, hold: float) -> tuple[float, float]:
    """SIGKILL once one event has been recorded for `hold` s; (recording seen since, killed
    at). The event is watched all along and re-checked right before the kill: one that ended
    meanwhile (the person left, then another event began) would make the kill test nothing,
    so the count starts again with the next event."""
    assert bridge.proc is not None
    for _ in range(5):
        deadline = time.monotonic() + 60
        while (state := _state(bridge)) is None or not state[0]:
            assert time.monotonic() < deadline, "no event being recorded"
            time.sleep(0.1)
        since, ended = time.time(), state[1]
        while _state(bridge) == (True, ended):  # still recording, and no event has ended
            if (killed := time.time()) - since >= hold:
                bridge.proc.send_signal(signal.SIGKILL)
                bridge.proc.wait(10)
                return since, killed
            time.sleep(0.2)
    raise AssertionError(f"no event lasted {hold:.1f} s in 5 tries")


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_sigkill_during_events_loses_at_most_the_last_seconds(tmp_path: Path) -> None:
    rng = random.Random(8)
    key = tmp_path / "owner.key"
    recipient = next(
        w for w in obscura("keys", "generate", "-o", str(key)).stdout.split()
        if w.startswith("age1")
    )
    clip = tmp_path / "hall.mp4"
    # In view for ~28 s of every 30 s loop: events last long enough to be killed mid-way.
    write_crossing_clip(clip, kind="person", seconds=30, enter_at=0.5, cross_seconds=28.0)
    bucket = tmp_path / "bucket"
    kills: list[tuple[float, float]] = []  # (recording seen since, killed at), wall clock
    with RtspCamera(file=clip, width=640, height=360, fps=15) as cam:
        bridge = recording_bridge(
            tmp_path, cam.url, bucket, [recipient], heartbeat_seconds=600, camera=CAMERA,
            part_seconds=3.0,
        )
        try:
            for _ in range(KILLS):
                bridge.start()
                # Mostly well into an event; now and then just after it started.
                hold = rng.uniform(5.5, 9.0) if rng.random() < 0.8 else rng.uniform(0.2, 3)
                kills.append(_kill_mid_event(bridge, hold))
            bridge.start()  # recovers, uploads what was sealed before the last kill
            wait(lambda: bridge.status()["storage"]["uploads"]["pending_count"] == 0, 60,
                 "uploads after the last restart")
            time.sleep(1.0)
        finally:
            code = bridge.stop()
        assert code == 0, bridge.log_text()[-4000:]
    log = bridge.log_text()
    assert "Traceback" not in log, log[-4000:]

    state = ("--identity", str(key), "--state-dir", str(tmp_path / "owner-state"),
             "--config", str(bridge.config))
    verify = obscura("clips", "verify", *state, check=None)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    events = json.loads(obscura("clips", "list", "--json", *state).stdout)
    assert events, "nothing recorded"

    for since, killed in kills:
        # The event the kill interrupted: being recorded since `since` (minus its pre-roll).
        hit = [e for e in events if e["start_ms"] <= since * 1000 + 1500
               and e["end_ms"] >= since * 1000 - 1000 and e["state"] != "complete"]
        if killed - since < LOSS_BOUND:
            continue  # nothing older than the bound to keep yet (but verify and decode hold)
        assert hit, f"no cut-short event for the kill at {killed:.1f} (recording since {since:.1f})"
        event = max(hit, key=lambda e: e["end_ms"])
        lost = killed - event["end_ms"] / 1000
        assert lost <= LOSS_BOUND, f"the kill at {killed:.1f} lost {lost:.1f} s of its event"
        assert not event["missing_parts"], event

    # Every part decrypts with stock age and decodes; a cut-short event joins into one MP4.
    # The bridge's folder; ".tmp" holds the file bucket's atomic writes.
    root = next(p for p in bucket.iterdir() if p.is_dir() and not p.name.startswith("."))
    for event in events:
        for part in event["parts"]:
            plain = tmp_path / f"{part['id']}.mp4"
            subprocess.run(["age", "-d", "-i", str(key), "-o", str(plain),
                            str(root / part["id"])], check=True)
            assert _frames(plain) > 0, part
            plain.unlink()
    cut = [e for e in events if e["state"] != "complete" and len(e["parts"]) > 1]
    assert cut, "no cut-short event had more than one part"
    joined = tmp_path / "joined.mp4"
    obscura("clips", "get", cut[0]["id"], "-o", str(joined), *state)
    seconds = sum(p["end_ms"] - p["start_ms"] for p in cut[0]["parts"]) / 1000
    frames = _frames(joined)
    assert frames >= int(seconds * 15 * 0.9), f"{frames} frames in {seconds:.1f} s: {cut[0]}"
    incoming = os.listdir(tmp_path / "state" / "spool" / "incoming")
    assert not any(name.endswith(".part") for name in incoming), incoming
