"""Subject detection end to end: a photographed person crosses a yard.

`obscura detect` on the clip (accuracy against the known truth), then the same clip served by
gst-rtsp-server to `obscura run`, with aiohomekit watching the motion and occupancy sensors.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.bridge_process import ROOT, BridgeProcess, CameraSpec
from tests.peers.homekit import EventLog, find_aid, find_characteristics, pair
from tests.peers.rtsp import RtspCamera
from tests.peers.scenes import Truth, write_crossing_clip


@pytest.fixture(scope="module")
def person_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    path = tmp_path_factory.mktemp("clips") / "person.mp4"
    return path, write_crossing_clip(path, kind="person")


def detect(source: Path, *extra: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "detect", str(source), "--json", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_one_visit_is_one_event_with_the_true_start_and_end(
    person_clip: tuple[Path, Truth],
) -> None:
    path, truth = person_clip
    events = detect(path)
    starts = [e for e in events if e["kind"] == "start"]
    ends = [e for e in events if e["kind"] == "end"]
    assert len(starts) == 1 and len(ends) == 1, events
    start, end = starts[0], ends[0]
    assert start["subject"] == "person" and start["label"] == "person"
    assert abs(start["started_at"] - truth.enters) <= 1.0
    assert abs(end["ended_at"] - truth.leaves) <= 1.0
    assert end["best_score"] >= 0.6
    _, y0, _, y1 = end["box"]
    assert abs(y0 - truth.y0) < 0.1 and abs(y1 - truth.y1) < 0.1  # the box is on the person
    assert {e["track_id"] for e in events} == {start["track_id"]}


def test_a_cat_is_an_animal(tmp_path: Path) -> None:
    path = tmp_path / "cat.mp4"
    write_crossing_clip(path, kind="cat", seconds=14, subject_height=0.5)
    starts = [e for e in detect(path) if e["kind"] == "start"]
    assert [e["subject"] for e in starts] == ["animal"]
    assert starts[0]["label"] == "cat"


def _config(tmp_path: Path, **camera: Any) -> Path:
    from tests.peers.bridge_process import write_config

    config = tmp_path / "obscura.toml"
    write_config(config, [CameraSpec("Yard", "demo:", camera)], 0, 0, {})
    return config


def test_outside_the_zone_or_an_unchosen_subject_raises_nothing(
    person_clip: tuple[Path, Truth], tmp_path: Path
) -> None:
    path, _ = person_clip
    # The person walks along the bottom of the frame; this zone is the sky.
    sky = _config(
        tmp_path, zones=[{"name": "Sky", "polygon": [[0, 0], [1, 0], [1, 0.2], [0, 0.2]]}]
    )
    assert detect(path, "--config", str(sky), "--camera", "Yard") == []
    cars_only = _config(tmp_path, subjects=["vehicle"])
    assert detect(path, "--config", str(cars_only), "--camera", "Yard") == []


def shows_a_person(jpeg: bytes) -> bool:
    import io

    import numpy as np
    from PIL import Image

    from bridge.detect.registry import load_model

    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    with load_model("nanodet-m", threads=1) as detector:
        return any(d.label == "person" and d.score > 0.5 for d in detector.detect(rgb))


def occupancy_sensors(accessories: list[dict[str, Any]], aid: int) -> dict[str, tuple[int, int]]:
    """Subject name -> OccupancyDetected key, from each OccupancySensor's Name."""
    found = {}
    for acc in accessories:
        if acc["aid"] != aid:
            continue
        for svc in acc["services"]:
            chars = {c["type"].split("-")[0].lstrip("0"): c for c in svc["characteristics"]}
            if "71" in chars and "23" in chars:  # OccupancyDetected, Name
                found[chars["23"]["value"]] = (aid, chars["71"]["iid"])
    return found


@pytest.fixture
def served_clip(person_clip: tuple[Path, Truth]) -> Iterator[RtspCamera]:
    with RtspCamera(file=person_clip[0], width=640, height=360, fps=15) as camera:
        yield camera


async def test_homekit_sees_motion_and_person_occupancy_come_and_go(
    tmp_path: Path, served_clip: RtspCamera
) -> None:
    bridge = BridgeProcess(
        tmp_path,
        [
            CameraSpec("Front", served_clip.url, {"detect": {"hold_seconds": 2.0}}),
            # Same camera, but the owner only wants vehicles from it: nothing may fire.
            CameraSpec(
                "Side",
                served_clip.url,
                {"subjects": ["vehicle"], "detect": {"hold_seconds": 2.0}},
            ),
        ],
        detect={"enabled": True, "fps": 5},
    )
    bridge.start()
    try:
        bridge.wait_camera("Front")
        paired = await pair(bridge.hap_port, bridge.setup_code)
        log = EventLog(paired.pairing)
        try:
            accessories = await paired.pairing.list_accessories_and_characteristics()
            front, side = find_aid(accessories, "Front"), find_aid(accessories, "Side")
            motion = {
                aid: find_characteristics(accessories, "MotionDetected", aid=aid)[0].key
                for aid in (front, side)
            }
            occupancy = occupancy_sensors(accessories, front)
            assert set(occupancy) == {"person", "vehicle", "animal"}  # the default subjects
            await log.subscribe([*motion.values(), *occupancy.values()])
            await log.wait_for(motion[front], True, timeout_s=60)
            arrived = time.monotonic()
            # The snapshot the iPhone fetches for the notification shows the person.
            jpeg = await paired.pairing.image(front, 640, 360)
            assert jpeg is not None and shows_a_person(jpeg)
            await log.wait_for(occupancy["person"], 1, timeout_s=5)
            await log.wait_for(motion[front], False, timeout_s=30)
            await log.wait_for(occupancy["person"], 0, timeout_s=5)
            assert time.monotonic() - arrived < 15  # one visit, not stuck on
            assert log.values(occupancy["vehicle"]) == log.values(occupancy["animal"]) == []
            assert not any(log.values(motion[side]))  # the vehicle-only camera stayed quiet
            status = bridge.camera_status("Front")["detection"]
            assert status["events"] >= 1 and status["error"] is None
            assert status["events_recent"][0]["subject"] == "person"
        finally:
            await log.close()
            await paired.unpair()
    finally:
        bridge.stop()


def _bad_models(tmp_path: Path) -> dict[str, tuple[dict[str, Any], str]]:
    import numpy as np

    from tests.test_detector import write_model, yolo_graph

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 100)
    wrong_shape = tmp_path / "nhwc.onnx"
    write_model(wrong_shape, yolo_graph(np.zeros((1, 84, 10), np.float32), [1, 64, 64, 3]))
    return {
        "corrupt": ({"model": str(corrupt), "model_type": "nanodet"}, "corrupt.onnx"),
        "wrong input shape": ({"model": str(wrong_shape), "model_type": "yolo"}, "expected"),
        "missing": ({"model": str(tmp_path / "gone.onnx"), "model_type": "yolo"}, "not found"),
        "unknown label": ({"labels": {"parcel": "package"}}, "'parcel'"),
    }


@pytest.mark.parametrize("problem", ["corrupt", "wrong input shape", "missing", "unknown label"])
async def test_a_bad_model_is_a_clear_error_and_cameras_keep_streaming(
    tmp_path: Path, problem: str
) -> None:
    detect_config, expected = _bad_models(tmp_path)[problem]
    bridge = BridgeProcess(
        tmp_path,
        [CameraSpec("Demo", "demo:", {"width": 320, "height": 240, "fps": 10})],
        detect={"enabled": True, **detect_config},
    )
    bridge.start()
    try:
        bridge.wait_camera("Demo")
        error = bridge.status()["detection"]["error"]
        assert error and expected in error
        doctor = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bridge", "doctor", "--config", str(bridge.config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "detection OFF" in doctor.stdout and expected in doctor.stdout
        paired = await pair(bridge.hap_port, bridge.setup_code)
        try:
            accessories = await paired.pairing.list_accessories_and_characteristics()
            jpeg = await paired.pairing.image(find_aid(accessories, "Demo"), 320, 240)
            assert jpeg is not None and jpeg[:2] == b"\xff\xd8"  # streaming unaffected
        finally:
            await paired.unpair()
    finally:
        assert bridge.stop() == 0
    assert expected in bridge.log_text()


def test_a_wall_clock_step_during_a_visit_neither_ends_nor_splits_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NTP can step the wall clock by hours (a board with no RTC syncs after boot). The live
    pipeline runs on the monotonic clock and only stamps events with wall time, so a step
    while a person is in view leaves one visit with its true length."""
    from av import open as av_open

    from bridge.detect.config import CameraDetect
    from bridge.detect.pipeline import (
        CameraPipeline,
        LivePipelineRunner,
        SharedDetector,
        monotonic_to_wall,
    )
    from bridge.detect.registry import load_model
    from bridge.detect.types import TrackEvent

    path = tmp_path / "short.mp4"
    truth = write_crossing_clip(path, seconds=8.0, enter_at=1.0, cross_seconds=4.0)
    events: list[TrackEvent] = []
    shared = SharedDetector(load_model("nanodet-m", threads=2))
    pipeline = CameraPipeline(
        "Yard", shared, CameraDetect(), 5.0, events.append, to_wall=monotonic_to_wall
    )
    runner = LivePipelineRunner(pipeline)
    runner.start()
    real_time, step = time.time, 3600.0
    try:
        with av_open(str(path)) as clip:
            t0 = time.monotonic()
            for frame in clip.decode(video=0):
                assert frame.time is not None
                if frame.time >= truth.enters + 1.0:  # the person is in view: step
                    monkeypatch.setattr(time, "time", lambda: real_time() + step)
                time.sleep(max(0.0, t0 + frame.time - time.monotonic()))
                runner.on_frame(frame, frame.time)
    finally:
        runner.stop()
        shared.close()
    starts = [e for e in events if e.kind == "start"]
    ends = [e for e in events if e.kind == "end"]
    assert len(starts) == 1 and len(ends) == 1, events
    assert ends[0].ended_at is not None
    seen_for = ends[0].ended_at - starts[0].started_at - step  # the end is stamped after it
    assert abs(seen_for - (truth.leaves - truth.enters)) <= 1.5, (seen_for, truth)
