"""Shared value types of the detection pipeline's pure-logic stages (motion, zones, tracker).

Every box here is in normalised frame coordinates (0..1, origin top-left), so motion frames,
detector input and the source frame can all have different sizes. Detector plugins report
pixel boxes (`bridge.detect.detectors.base.Detection`); the pipeline converts them into
`Sighting`s with `Box.from_pixels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Point = tuple[float, float]
Polygon = tuple[Point, ...]
EventKind = Literal["start", "update", "end"]


@dataclass(frozen=True, slots=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def from_pixels(
        cls, x0: float, y0: float, x1: float, y1: float, width: int, height: int
    ) -> Box:
        return cls(x0 / width, y0 / height, x1 / width, y1 / height).clipped()

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        return (
            round(self.x0 * width),
            round(self.y0 * height),
            round(self.x1 * width),
            round(self.y1 * height),
        )

    @property
    def width(self) -> float:
        return max(0.0, self.x1 - self.x0)

    @property
    def height(self) -> float:
        return max(0.0, self.y1 - self.y0)

    @property
    def area(self) -> float:
        """Fraction of the frame the box covers (for a clipped box)."""
        return self.width * self.height

    @property
    def centre(self) -> Point:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)

    @property
    def bottom_centre(self) -> Point:
        """Where a standing person or a parked car touches the ground (zone anchor)."""
        return ((self.x0 + self.x1) / 2, self.y1)

    @property
    def diagonal(self) -> float:
        return math.hypot(self.width, self.height)

    def intersection(self, other: Box) -> float:
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return w * h if w > 0 and h > 0 else 0.0

    def iou(self, other: Box) -> float:
        inter = self.intersection(other)
        if inter <= 0.0:
            return 0.0
        return inter / (self.area + other.area - inter)

    def centre_distance(self, other: Box) -> float:
        (ax, ay), (bx, by) = self.centre, other.centre
        return math.hypot(ax - bx, ay - by)

    def union(self, other: Box) -> Box:
        return Box(
            min(self.x0, other.x0),
            min(self.y0, other.y0),
            max(self.x1, other.x1),
            max(self.y1, other.y1),
        )

    def contains(self, other: Box) -> bool:
        return (
            self.x0 <= other.x0
            and self.y0 <= other.y0
            and self.x1 >= other.x1
            and self.y1 >= other.y1
        )

    def shifted(self, dx: float, dy: float) -> Box:
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def clipped(self) -> Box:
        return Box(
            min(max(self.x0, 0.0), 1.0),
            min(max(self.y0, 0.0), 1.0),
            min(max(self.x1, 0.0), 1.0),
            min(max(self.y1, 0.0), 1.0),
        )

    def as_list(self, digits: int = 4) -> list[float]:
        return [round(v, digits) for v in (self.x0, self.y0, self.x1, self.y1)]


@dataclass(frozen=True, slots=True)
class Sighting:
    """One detected object in one analysed frame, box normalised.

    `subject` is the label mapped through the camera's label map (None: the label matters to
    no subject, and the filter drops it).
    """

    label: str
    subject: str | None
    score: float
    box: Box


@dataclass(frozen=True, slots=True)
class TrackEvent:
    """A tracked object's life: one "start", some "update"s, one "end".

    `time` is when the tracker emitted the event (the `now` it was given); `started_at` is
    when the object was first seen and `ended_at` (end events only) when it was last seen,
    so they are accurate even though the start waits for `min_hits` frames and the end for
    the hold time. `best_frame` is the opaque frame reference given with the best-scoring
    sighting (the snapshot to show).
    """

    kind: EventKind
    camera: str
    track_id: int
    label: str
    subject: str
    score: float
    best_score: float
    box: Box
    time: float
    started_at: float
    ended_at: float | None = None
    best_box: Box | None = None
    stationary: bool = False  # end events: the object stopped moving (e.g. a parked car)
    best_frame: Any = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (no frame), e.g. for `obscura detect --json`."""
        return {
            "kind": self.kind,
            "time": round(self.time, 3),
            "camera": self.camera,
            "track_id": self.track_id,
            "label": self.label,
            "subject": self.subject,
            "score": round(self.score, 3),
            "best_score": round(self.best_score, 3),
            "box": self.box.as_list(),
            "started_at": round(self.started_at, 3),
            "ended_at": None if self.ended_at is None else round(self.ended_at, 3),
            "stationary": self.stationary,
        }
