"""Motion gate on real-ish frames: FFmpeg's testsrc2 picture as a static scene, sensor noise,
exposure drift, a textured moving subject, lights switching on, masks."""

from __future__ import annotations

import time

import av
import numpy as np
import pytest

from bridge.detect.motion import DetectSchedule, MotionGate, detection_region
from bridge.detect.settings import MotionSettings, SettingsError
from bridge.detect.types import Box

W, H, FPS = 320, 180, 5


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """One testsrc2 frame (colour bars, gradients, text), as the detector's gray input."""
    with av.open(f"testsrc2=size={W}x{H}:rate={FPS}", format="lavfi") as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="gray").astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def noisy(base: np.ndarray, rng: np.random.Generator, sigma: float = 3.0) -> np.ndarray:
    return np.clip(base + rng.normal(0.0, sigma, base.shape), 0, 255).astype(np.uint8)


def with_subject(base: np.ndarray, x: int, y: int, w: int = 24, h: int = 56) -> np.ndarray:
    """A dark, striped (clothing-like) upright subject pasted at (x, y)."""
    out = base.copy()
    stripes = 40.0 + 25.0 * (np.arange(h)[:, None] // 6 % 2) + np.zeros((h, w))
    out[y : y + h, x : x + w] = stripes[: H - y, : W - x]
    return out


def test_static_scene_runs_detector_at_periodic_rate_only(scene, rng):
    gate = MotionGate(MotionSettings(periodic_seconds=10.0))
    gated, ungated = DetectSchedule(10.0), 0
    moving_frames = 0
    for i in range(60 * FPS):
        now = i / FPS
        drift = 0.1 * i  # slow auto-exposure drift: +30 levels over the minute
        result = gate.update(noisy(scene + drift, rng), now)
        moving_frames += result.moving
        gated.should_detect(result, now)
        ungated += 1
    assert moving_frames == 0
    assert gated.calls == 6  # t = 0, 10, ..., 50 s
    assert gated.calls <= ungated / 10


def test_moving_subject_gives_a_box_around_it(scene, rng):
    gate = MotionGate()
    for i in range(10):  # learn the empty scene
        assert not gate.update(noisy(scene, rng), i / FPS).moving
    y = 100
    for step in range(30):
        x = 20 + 8 * step
        now = (10 + step) / FPS
        result = gate.update(noisy(with_subject(scene, x, y), rng), now)
        assert result.moving, step
        truth = Box.from_pixels(x, y, x + 24, y + 56, W, H)
        hits = [b for b in result.boxes if b.intersection(truth) > 0]
        assert len(hits) == 1, result.boxes
        box = hits[0]
        # The box holds the subject (to one grid cell) and is not much wider than subject +
        # the fading trail behind it.
        cell = 16 / W
        assert box.x0 <= truth.x0 + cell and box.x1 >= truth.x1 - cell
        assert box.y0 <= truth.y0 + 16 / H and box.y1 >= truth.y1 - 16 / H
        assert box.width < 0.35 and 0.001 < result.area < 0.1


def test_small_motion_gets_a_square_region(scene, rng):
    gate = MotionGate()
    for i in range(10):
        gate.update(noisy(scene, rng), i / FPS)
    for step in range(5):  # a far-away subject: 10x24 px
        x, y = 150 + 3 * step, 60
        result = gate.update(noisy(with_subject(scene, x, y, 10, 24), rng), (10 + step) / FPS)
    truth = Box.from_pixels(x, y, x + 10, y + 24, W, H)
    region = gate.region(result)
    assert region is not None and region.contains(truth)
    assert region.width * W == pytest.approx(region.height * H)  # square in pixels
    assert region.area < 0.25


def test_global_brightness_jump_relearns_instead_of_motion(scene, rng):
    gate = MotionGate()
    t = 0.0
    for _ in range(10):
        gate.update(noisy(scene, rng), t)
        t += 1 / FPS
    lit = np.clip(scene * 1.5 + 40, 0, 255)  # lights switched on
    results = []
    for k in range(10):  # auto-exposure then settles over a few frames
        exposure = lit - 30 + min(k, 4) * 7.5
        results.append(gate.update(noisy(exposure, rng), t))
        t += 1 / FPS
    assert not any(r.moving for r in results)
    assert results[0].relearned
    # After settling, a subject is seen again.
    for step in range(5):
        result = gate.update(noisy(with_subject(lit, 100 + 8 * step, 60), rng), t)
        t += 1 / FPS
    assert result.moving


def test_masked_region_ignores_motion(scene, rng):
    tree = ((0.0, 0.3), (0.5, 0.3), (0.5, 1.0), (0.0, 1.0))  # left half, lower part
    gate = MotionGate(MotionSettings(masks=(tree,)))
    for i in range(10):
        gate.update(noisy(scene, rng), i / FPS)
    t = 10 / FPS
    for step in range(10):  # a subject moving inside the masked area
        result = gate.update(noisy(with_subject(scene, 20 + 8 * step, 100), rng), t)
        t += 1 / FPS
        assert not result.moving and result.boxes == []
    for step in range(10):  # the same subject outside it
        result = gate.update(noisy(with_subject(scene, 200 + 8 * step, 100), rng), t)
        t += 1 / FPS
    assert result.moving and all(b.x1 > 0.5 for b in result.boxes)


def test_detection_region_square_small_motion_else_whole_frame():
    aspect = 16 / 9
    small = [Box(0.40, 0.40, 0.45, 0.55), Box(0.46, 0.42, 0.50, 0.50)]
    region = detection_region(small, aspect, max_area=0.25, margin=0.2)
    assert region is not None
    assert region.contains(Box(0.40, 0.40, 0.50, 0.55))
    assert abs(region.width * aspect - region.height) < 1e-9
    # Near an edge the square is shifted inside the frame, not cut.
    edge = detection_region([Box(0.0, 0.9, 0.05, 1.0)], aspect)
    assert edge is not None and edge.y1 == pytest.approx(1.0) and edge.x0 == 0.0
    assert detection_region([Box(0.1, 0.1, 0.7, 0.8)], aspect) is None
    assert detection_region([], aspect) is None


def test_gate_keeps_detecting_while_tracking():
    schedule = DetectSchedule(10.0)
    assert schedule.should_detect(None, 0.0)
    assert not schedule.should_detect(None, 1.0)
    assert schedule.should_detect(None, 1.2, tracking=True)
    assert not schedule.should_detect(None, 5.0)
    assert schedule.should_detect(None, 11.2)


def test_motion_settings_errors_name_the_key():
    with pytest.raises(SettingsError, match=r"^threshold: must be from 1 to 255, got 300"):
        MotionSettings(threshold=300).validate()
    with pytest.raises(SettingsError, match=r"^masks\[0\]\[1\]: coordinates are fractions"):
        MotionSettings(masks=(((0, 0), (1.5, 0), (1, 1)),)).validate()
    with pytest.raises(SettingsError, match=r"^masks\[0\]: the polygon has no area"):
        MotionSettings(masks=(((0, 0), (0.5, 0.5), (1, 1)),)).validate()
    MotionSettings().validate()


def test_motion_gate_is_cheap(scene, rng):
    gate = MotionGate()
    frames = [noisy(with_subject(scene, 10 + 6 * i, 90), rng) for i in range(40)]
    for i in range(5):
        gate.update(frames[0], i / FPS)
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        gate.update(frame, 1 + i / FPS)
    per_frame = (time.perf_counter() - start) / len(frames)
    assert per_frame < 0.005, f"{per_frame * 1000:.2f} ms per 320x180 frame"
