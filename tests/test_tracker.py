"""Tracker: one event per visit, blips ignored, parked cars not re-notified, best snapshot."""

from __future__ import annotations

import random

import pytest

from bridge.detect.motion import DetectSchedule, MotionResult
from bridge.detect.settings import SettingsError, TrackerSettings
from bridge.detect.tracker import Tracker
from bridge.detect.types import Box, Sighting, TrackEvent

DT = 0.2  # 5 fps


def person(x: float, y: float = 0.5, score: float = 0.7, w: float = 0.08, h: float = 0.3):
    return Sighting("person", "person", score, Box(x, y, x + w, y + h))


def kinds(events: list[TrackEvent]) -> list[str]:
    return [e.kind for e in events]


def run_quiet(tracker: Tracker, start: float, seconds: float) -> list[TrackEvent]:
    """Frames with nothing detected, then periodic flushes."""
    events = []
    t = start
    while t < start + seconds:
        events += tracker.update([], t)
        t += DT
    return events + tracker.flush(t)


def test_subject_crossing_is_one_event_with_start_updates_end():
    tracker = Tracker(TrackerSettings(hold_seconds=10.0), camera="Yard")
    events: list[TrackEvent] = []
    for i in range(30):
        events += tracker.update([person(0.05 + 0.028 * i)], i * DT, frame_ref=f"f{i}")
    last_seen = 29 * DT
    events += run_quiet(tracker, 30 * DT, 12.0)
    assert kinds(events).count("start") == 1 and kinds(events).count("end") == 1
    assert kinds(events)[0] == "start" and kinds(events)[-1] == "end"
    assert "update" in kinds(events)
    assert len({e.track_id for e in events}) == 1
    start, end = events[0], events[-1]
    assert start.time == pytest.approx(DT)  # after min_hits = 2 frames
    assert start.started_at == 0.0 and start.camera == "Yard" and start.subject == "person"
    assert end.ended_at == pytest.approx(last_seen)
    assert end.time - last_seen == pytest.approx(10.0, abs=DT + 1e-9)
    assert not tracker.active
    # Updates are throttled to about one per second (plus best-score improvements).
    assert kinds(events).count("update") <= 7


def test_fast_mover_without_box_overlap_stays_one_track():
    tracker = Tracker()
    events = []
    for i in range(12):  # moves 1.5 box widths per frame: no IoU between frames
        events += tracker.update([person(0.02 + 0.075 * i, w=0.05)], i * DT)
    events += tracker.flush(100.0)
    assert kinds(events).count("start") == 1 and kinds(events).count("end") == 1


def test_two_people_are_two_tracks():
    tracker = Tracker()
    events = []
    for i in range(25):  # they walk towards each other and pass at different depths
        a = person(0.05 + 0.035 * i, y=0.55, h=0.35)
        b = person(0.85 - 0.035 * i, y=0.35, w=0.05, h=0.2, score=0.6)
        events += tracker.update([a, b], i * DT)
    events += tracker.flush(100.0)
    starts = [e for e in events if e.kind == "start"]
    ends = [e for e in events if e.kind == "end"]
    assert len(starts) == 2 and len(ends) == 2
    assert {e.track_id for e in starts} == {e.track_id for e in ends} == {1, 2}
    for e in events:  # no identity switch when they pass each other
        expected_left = e.track_id == starts[0].track_id
        moving_right = e.box.y0 == pytest.approx(0.55)
        assert moving_right == expected_left


def test_one_frame_blip_raises_nothing():
    tracker = Tracker()
    events = tracker.update([person(0.4)], 0.0)
    events += run_quiet(tracker, DT, 15.0)
    assert events == []


def test_two_hits_in_three_frames_start_a_track():
    tracker = Tracker(TrackerSettings(min_hits=2, hit_window=3))
    assert tracker.update([person(0.4)], 0.0) == []
    assert tracker.update([], 0.2) == []
    assert kinds(tracker.update([person(0.41)], 0.4)) == ["start"]


def test_best_score_and_snapshot_are_kept():
    tracker = Tracker()
    events = []
    scores = [0.5, 0.55, 0.6, 0.9, 0.7, 0.65, 0.6, 0.55]
    for i, score in enumerate(scores):
        events += tracker.update([person(0.1 + 0.03 * i, score=score)], i * DT, f"frame{i}")
    end = tracker.flush(100.0)[0]
    assert end.kind == "end" and end.best_score == 0.9 and end.best_frame == "frame3"
    assert end.best_box == person(0.1 + 0.03 * 3).box
    assert end.score == 0.55
    # The improvement to 0.9 was announced at once (a better snapshot for the controller).
    assert any(e.kind == "update" and e.best_frame == "frame3" for e in events)


def test_person_and_car_at_one_place_are_separate_tracks():
    tracker = Tracker()
    box = Box(0.4, 0.4, 0.6, 0.7)
    events = []
    for i in range(3):
        events += tracker.update(
            [Sighting("person", "person", 0.8, box), Sighting("car", "vehicle", 0.7, box)],
            i * DT,
        )
    assert sorted(e.subject for e in events if e.kind == "start") == ["person", "vehicle"]


def test_car_and_truck_labels_on_one_vehicle_are_one_track():
    tracker = Tracker()
    events = []
    for i in range(5):
        box = Box(0.1 + 0.02 * i, 0.5, 0.4 + 0.02 * i, 0.8)
        events += tracker.update(
            [Sighting("car", "vehicle", 0.7, box), Sighting("truck", "vehicle", 0.5, box)],
            i * DT,
        )
    assert kinds(events).count("start") == 1 and events[0].label == "car"


def test_parked_car_is_one_event_over_ten_minutes():
    rng = random.Random(3)
    tracker = Tracker(TrackerSettings(stationary_seconds=60.0), camera="Drive")
    schedule = DetectSchedule(periodic_seconds=10.0)
    events: list[TrackEvent] = []
    detected_at: list[float] = []
    parked = Box(0.55, 0.45, 0.85, 0.75)
    t = 0.0
    while t < 600.0:
        driving = t < 5.0
        if driving:  # drives in from the left, then parks
            box = parked.shifted(-0.5 * (5.0 - t) / 5.0, 0.0)
        else:  # detector jitter on a still car
            j = [rng.uniform(-0.004, 0.004) for _ in range(4)]
            box = Box(parked.x0 + j[0], parked.y0 + j[1], parked.x1 + j[2], parked.y1 + j[3])
        motion = MotionResult(moving=driving)
        if schedule.should_detect(motion, t, tracking=tracker.active):
            detected_at.append(t)
            seen = rng.random() > 0.2  # the detector misses it now and then
            score = rng.uniform(0.5, 0.8)
            sightings = [Sighting("car", "vehicle", score, box)] if seen else []
            events += tracker.update(sightings, t, frame_ref=t)
        else:
            events += tracker.flush(t)
        t = round(t + DT, 6)
    assert kinds(events).count("start") == 1, kinds(events)
    ends = [e for e in events if e.kind == "end"]
    assert len(ends) == 1 and ends[0].stationary
    assert 60.0 <= ends[0].time <= 70.0
    assert tracker.stationary() and tracker.stationary()[0][0] == "vehicle"
    # The gate fell back to its periodic rate once the car was remembered.
    after = [d for d in detected_at if d > ends[0].time]
    assert len(after) <= (600.0 - ends[0].time) / 10.0 + 1

    # It drives away: that is a new (departure) event, and the memory fades.
    events = []
    for i in range(15):
        leaving = Sighting("car", "vehicle", 0.7, parked.shifted(0.0, -0.05 * i))
        events += tracker.update([leaving], t)
        t += DT
    assert kinds(events).count("start") == 1
    events += run_quiet(tracker, t, 70.0)
    assert tracker.stationary() == []


def test_tracker_settings_errors_name_the_key():
    with pytest.raises(SettingsError, match=r"^min_hits: must be from 1 to 3, got 4"):
        TrackerSettings(min_hits=4, hit_window=3).validate()
    with pytest.raises(SettingsError, match=r"^hold_seconds: must be a number"):
        TrackerSettings(hold_seconds="10").validate()  # type: ignore[arg-type]
    TrackerSettings().validate()
