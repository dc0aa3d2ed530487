"""Tracker: turns per-frame sightings into events, one per visit.

Matching is per subject and greedy: first by IoU with each track's box moved by its
velocity, then, for fast movers whose boxes no longer overlap, by centre distance (up to
`centroid_match` box diagonals, with similar size). A track starts only after `min_hits` of
the last `hit_window` analysed frames (one-frame false positives never notify), updates at
most every `update_seconds` or when its best score improves, and ends when unseen for
`hold_seconds` or when it has not moved for `stationary_seconds`. A stationary object is
remembered (subject + box) and sightings of it are ignored until it moves away, so a parked
car does not start an event every few minutes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bridge.detect.settings import TrackerSettings
from bridge.detect.types import Box, EventKind, Sighting, TrackEvent

_DUPLICATE_IOU = 0.7  # same subject, different labels (car + truck on one vehicle)
_MAX_PREDICT_S = 1.0  # extrapolate velocity at most this far
_COVERED = 0.9  # region must hold this much of a remembered box to say it was looked at


@dataclass(slots=True)
class _Track:
    subject: str
    label: str
    box: Box
    score: float
    first_seen: float
    last_seen: float
    best_score: float
    best_box: Box
    best_frame: Any
    still_box: Box  # where it stopped moving; still_since resets whenever it leaves it
    still_since: float
    hits: deque[int] = field(default_factory=deque)  # indices of analysed frames seen in
    track_id: int = 0  # assigned when confirmed, so public ids have no gaps
    vx: float = 0.0
    vy: float = 0.0
    last_emit: float = -math.inf
    emitted_best: float = 0.0

    def predicted(self, now: float) -> Box:
        dt = min(max(now - self.last_seen, 0.0), _MAX_PREDICT_S)
        return self.box.shifted(self.vx * dt, self.vy * dt)


@dataclass(slots=True)
class _Still:
    subject: str
    box: Box
    last_seen: float


class Tracker:
    def __init__(self, settings: TrackerSettings | None = None, camera: str = "") -> None:
        self.settings = settings or TrackerSettings()
        self.camera = camera
        self._tracks: list[_Track] = []
        self._still: list[_Still] = []
        self._frame = 0
        self._next_id = 1

    @property
    def active(self) -> bool:
        """Any live track, confirmed or not (the detector should keep running)."""
        return bool(self._tracks)

    def boxes(self) -> list[Box]:
        """Boxes of live tracks, to include in the detection region."""
        return [t.box for t in self._tracks]

    def stationary(self) -> list[tuple[str, Box]]:
        """Remembered still objects (subject, box)."""
        return [(m.subject, m.box) for m in self._still]

    def update(
        self,
        sightings: Iterable[Sighting],
        now: float,
        frame_ref: Any = None,
        region: Box | None = None,
    ) -> list[TrackEvent]:
        """Feed one analysed frame's (filtered) sightings; returns the events it caused.

        `frame_ref` is kept as a track's best snapshot when it gives the best score.
        `region` is the part of the frame that was analysed (None: all of it); remembered
        still objects outside it are not counted as gone.
        """
        s = self.settings
        self._frame += 1
        events: list[TrackEvent] = []
        todo = _dedupe(list(sightings))
        seen: set[int] = set()
        for track, sighting in self._match(todo, now):
            seen.add(id(track))
            todo.remove(sighting)
            self._observe(track, sighting, now, frame_ref)
            events.extend(self._after_hit(track, now))

        refreshed: set[int] = set()
        for sighting in todo:
            still = self._remembered(sighting)
            if still is not None:
                still.last_seen = now
                refreshed.add(id(still))
                continue
            track = self._new_track(sighting, now, frame_ref)
            events.extend(self._after_hit(track, now))
            seen.add(id(track))

        self._still = [
            m
            for m in self._still
            if id(m) in refreshed
            or now - m.last_seen < s.forget_seconds
            or not _covered(region, m.box)
        ]
        # Tentative tracks that can no longer reach min_hits in any window are blips.
        keep = []
        for t in self._tracks:
            if t.track_id or id(t) in seen:
                keep.append(t)
                continue
            recent = sum(1 for h in t.hits if h > self._frame - s.hit_window + 1)
            if recent + 1 >= s.min_hits:
                keep.append(t)
        self._tracks = keep
        events.extend(self.flush(now))
        return events

    def flush(self, now: float) -> list[TrackEvent]:
        """End tracks unseen for longer than the hold; call also when no frames are analysed."""
        hold = self.settings.hold_seconds
        events: list[TrackEvent] = []
        live = []
        for t in self._tracks:
            if now - t.last_seen <= hold:
                live.append(t)
            elif t.track_id:
                events.append(self._event("end", t, now, ended_at=t.last_seen))
        self._tracks = live
        return events

    def close(self, now: float) -> list[TrackEvent]:
        """End every confirmed track now (camera stopped or reconfigured)."""
        events = [
            self._event("end", t, now, ended_at=t.last_seen) for t in self._tracks if t.track_id
        ]
        self._tracks = []
        return events

    # -- internals ---------------------------------------------------------------------

    def _match(self, sightings: list[Sighting], now: float) -> list[tuple[_Track, Sighting]]:
        s = self.settings
        predicted = [(t, t.predicted(now)) for t in self._tracks]
        by_iou: list[tuple[float, int, int]] = []
        by_dist: list[tuple[float, int, int]] = []
        for ti, (t, box) in enumerate(predicted):
            for si, sg in enumerate(sightings):
                if _subject(sg) != t.subject:
                    continue
                iou = box.iou(sg.box)
                if iou >= s.iou_match:
                    by_iou.append((-iou, ti, si))
                    continue
                limit = s.centroid_match * max(box.diagonal, sg.box.diagonal)
                dist = box.centre_distance(sg.box)
                ratio = (sg.box.area + 1e-9) / (box.area + 1e-9)
                if dist <= limit and 0.25 <= ratio <= 4.0:
                    by_dist.append((dist / max(limit, 1e-9), ti, si))
        pairs: list[tuple[_Track, Sighting]] = []
        used_t: set[int] = set()
        used_s: set[int] = set()
        for candidates in (sorted(by_iou), sorted(by_dist)):
            for _, ti, si in candidates:
                if ti not in used_t and si not in used_s:
                    used_t.add(ti)
                    used_s.add(si)
                    pairs.append((predicted[ti][0], sightings[si]))
        return pairs

    def _observe(self, t: _Track, sg: Sighting, now: float, frame_ref: Any) -> None:
        dt = now - t.last_seen
        if dt > 0:
            (ax, ay), (bx, by) = t.box.centre, sg.box.centre
            # Smoothed velocity: detector jitter must not throw the prediction around.
            t.vx = 0.5 * t.vx + 0.5 * (bx - ax) / dt
            t.vy = 0.5 * t.vy + 0.5 * (by - ay) / dt
        t.box, t.score, t.last_seen = sg.box, sg.score, now
        t.hits.append(self._frame)
        while len(t.hits) > self.settings.hit_window:
            t.hits.popleft()
        if sg.score > t.best_score:
            t.best_score, t.best_box, t.best_frame, t.label = sg.score, sg.box, frame_ref, sg.label
        if sg.box.iou(t.still_box) < self.settings.stationary_iou:
            t.still_box, t.still_since = sg.box, now

    def _new_track(self, sg: Sighting, now: float, frame_ref: Any) -> _Track:
        t = _Track(
            subject=_subject(sg),
            label=sg.label,
            box=sg.box,
            score=sg.score,
            first_seen=now,
            last_seen=now,
            best_score=sg.score,
            best_box=sg.box,
            best_frame=frame_ref,
            still_box=sg.box,
            still_since=now,
        )
        t.hits.append(self._frame)
        self._tracks.append(t)
        return t

    def _after_hit(self, t: _Track, now: float) -> list[TrackEvent]:
        s = self.settings
        if not t.track_id:
            if sum(1 for h in t.hits if h > self._frame - s.hit_window) < s.min_hits:
                return []
            t.track_id, self._next_id = self._next_id, self._next_id + 1
            return [self._event("start", t, now)]
        if now - t.still_since >= s.stationary_seconds:
            self._tracks.remove(t)
            self._still.append(_Still(t.subject, t.box, now))
            return [self._event("end", t, now, ended_at=now, stationary=True)]
        if t.best_score > t.emitted_best or now - t.last_emit >= s.update_seconds:
            return [self._event("update", t, now)]
        return []

    def _remembered(self, sg: Sighting) -> _Still | None:
        subject = _subject(sg)
        for m in self._still:
            if m.subject == subject and m.box.iou(sg.box) >= self.settings.stationary_iou:
                return m
        return None

    def _event(
        self,
        kind: EventKind,
        t: _Track,
        now: float,
        ended_at: float | None = None,
        stationary: bool = False,
    ) -> TrackEvent:
        t.last_emit, t.emitted_best = now, t.best_score
        return TrackEvent(
            kind=kind,
            camera=self.camera,
            track_id=t.track_id,
            label=t.label,
            subject=t.subject,
            score=t.score,
            best_score=t.best_score,
            box=t.box,
            time=now,
            started_at=t.first_seen,
            ended_at=ended_at,
            best_box=t.best_box,
            stationary=stationary,
            best_frame=t.best_frame,
        )


def _subject(sg: Sighting) -> str:
    return sg.subject or sg.label


def _dedupe(sightings: list[Sighting]) -> list[Sighting]:
    """Per-class NMS leaves one object as "car" and "truck": keep the best per subject."""
    kept: list[Sighting] = []
    for sg in sorted(sightings, key=lambda x: -x.score):
        subject = _subject(sg)
        if all(_subject(k) != subject or k.box.iou(sg.box) < _DUPLICATE_IOU for k in kept):
            kept.append(sg)
    return kept


def _covered(region: Box | None, box: Box) -> bool:
    return region is None or region.intersection(box) >= _COVERED * box.area
