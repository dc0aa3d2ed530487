"""Settings of the motion gate, zones/filters and tracker, with defaults and validation.

`validate()` raises `SettingsError` (a `ValueError`) whose `key` is the dotted path inside
a camera's detection settings (e.g. "zones[1].polygon[2]") and whose `problem` says what is
wrong, so the TOML loader can name the exact key in its own error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridge.detect.types import Polygon

SUBJECTS = ("person", "vehicle", "animal", "package")

# COCO-80 labels that matter to a subject; COCO has no "package" (custom models map to it).
COCO_SUBJECTS: Mapping[str, str] = {
    "person": "person",
    **dict.fromkeys(("car", "truck", "bus", "motorcycle", "bicycle"), "vehicle"),
    **dict.fromkeys(("dog", "cat", "bird", "horse", "sheep", "cow", "bear"), "animal"),
}


class SettingsError(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


@dataclass(frozen=True, slots=True)
class MotionSettings:
    threshold: int = 20  # grey-level change (0..255, after a 3x3 blur) that counts as changed
    min_area: float = 0.002  # changed fraction of the unmasked frame that counts as motion
    learn_seconds: float = 3.0  # background time constant: how fast still things fade into it
    cell: int = 16  # grid cell size in pixels for grouping changed pixels into boxes
    cell_fill: float = 0.05  # fraction of a cell's pixels that must change to activate it
    relearn_area: float = 0.5  # more than this changed at once: lighting change, relearn
    settle_seconds: float = 1.0  # after a relearn, keep relearning while exposure settles
    masks: tuple[Polygon, ...] = ()  # normalised polygons where motion is ignored
    periodic_seconds: float = 10.0  # detector interval when nothing moves
    region_max_area: float = 0.25  # motion union (as a square) larger than this: whole frame
    region_margin: float = 0.2  # square region side grows by this fraction on each side
    region_min_side: float = 0.0  # smallest region side, fraction of the frame's short side

    def validate(self) -> None:
        _int_range("threshold", self.threshold, 1, 255)
        _range("min_area", self.min_area, 0.0, 1.0)
        _range("learn_seconds", self.learn_seconds, 0.01, 3600.0)
        _int_range("cell", self.cell, 2, 128)
        _range("cell_fill", self.cell_fill, 0.0, 1.0)
        _range("relearn_area", self.relearn_area, 0.05, 1.0)
        _range("settle_seconds", self.settle_seconds, 0.0, 60.0)
        _polygons("masks", self.masks)
        _range("periodic_seconds", self.periodic_seconds, 0.1, 86400.0)
        _range("region_max_area", self.region_max_area, 0.0, 1.0)
        _range("region_margin", self.region_margin, 0.0, 2.0)
        _range("region_min_side", self.region_min_side, 0.0, 1.0)


@dataclass(frozen=True, slots=True)
class ZoneSettings:
    name: str
    polygon: Polygon
    subjects: tuple[str, ...] = ()  # empty: every chosen subject counts in this zone


@dataclass(frozen=True, slots=True)
class SubjectLimits:
    """Per-subject overrides of the camera-wide filter; None inherits."""

    min_score: float | None = None
    min_area: float | None = None
    max_area: float | None = None


@dataclass(frozen=True, slots=True)
class FilterSettings:
    subjects: tuple[str, ...] = SUBJECTS  # subjects the owner chose for this camera
    min_score: float = 0.5
    min_area: float = 0.0005  # box area, fraction of the frame
    max_area: float = 1.0
    limits: Mapping[str, SubjectLimits] = field(default_factory=dict)  # per subject
    zones: tuple[ZoneSettings, ...] = ()  # none: the whole frame
    labels: Mapping[str, str] = field(default_factory=lambda: dict(COCO_SUBJECTS))

    def validate(self) -> None:
        _subjects("subjects", self.subjects)
        _range("min_score", self.min_score, 0.0, 1.0)
        _range("min_area", self.min_area, 0.0, 1.0)
        _range("max_area", self.max_area, 0.0, 1.0)
        if self.min_area > self.max_area:
            raise SettingsError(
                "min_area", f"{self.min_area} is larger than max_area {self.max_area}"
            )
        for subject, lim in self.limits.items():
            key = f"limits.{subject}"
            if subject not in SUBJECTS:
                raise SettingsError(key, f"unknown subject {subject!r}; known: {_known()}")
            for name in ("min_score", "min_area", "max_area"):
                value = getattr(lim, name)
                if value is not None:
                    _range(f"{key}.{name}", value, 0.0, 1.0)
            lo = self.min_area if lim.min_area is None else lim.min_area
            hi = self.max_area if lim.max_area is None else lim.max_area
            if lo > hi:
                raise SettingsError(key, f"min_area {lo} is larger than max_area {hi}")
        names: set[str] = set()
        for i, zone in enumerate(self.zones):
            key = f"zones[{i}]"
            if not isinstance(zone.name, str) or not zone.name.strip():
                raise SettingsError(f"{key}.name", "a zone needs a non-empty name")
            if zone.name in names:
                raise SettingsError(f"{key}.name", f"zone name {zone.name!r} is used twice")
            names.add(zone.name)
            _polygon(f"{key}.polygon", zone.polygon)
            _subjects(f"{key}.subjects", zone.subjects)
        if not self.labels:
            raise SettingsError("labels", "the label map is empty: nothing would be detected")
        for label, subject in self.labels.items():
            if not isinstance(label, str) or not label:
                raise SettingsError("labels", f"label {label!r} must be a non-empty string")
            if subject not in SUBJECTS:
                raise SettingsError(
                    f"labels.{label}", f"maps to {subject!r}, which is not a subject ({_known()})"
                )


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    hold_seconds: float = 10.0  # a track unseen this long has ended
    min_hits: int = 2  # seen in this many of the last `hit_window` analysed frames to start
    hit_window: int = 3
    iou_match: float = 0.3  # IoU with the (predicted) track box that continues a track
    centroid_match: float = 1.0  # else: centre jump up to this many box diagonals (fast movers)
    update_seconds: float = 1.0  # updates at most this often (and whenever the best improves)
    stationary_seconds: float = 60.0  # box barely moved this long: the track ends, remembered
    stationary_iou: float = 0.7  # "barely moved": IoU with where it stopped at least this
    forget_seconds: float = 60.0  # a remembered still object unseen this long has moved away

    def validate(self) -> None:
        _range("hold_seconds", self.hold_seconds, 0.1, 3600.0)
        _int_range("hit_window", self.hit_window, 1, 100)
        _int_range("min_hits", self.min_hits, 1, self.hit_window)
        _range("iou_match", self.iou_match, 0.01, 1.0)
        _range("centroid_match", self.centroid_match, 0.0, 10.0)
        _range("update_seconds", self.update_seconds, 0.0, 3600.0)
        _range("stationary_seconds", self.stationary_seconds, 1.0, 86400.0)
        _range("stationary_iou", self.stationary_iou, 0.1, 1.0)
        _range("forget_seconds", self.forget_seconds, 1.0, 86400.0)


@dataclass(frozen=True, slots=True)
class DetectSettings:
    motion: MotionSettings = field(default_factory=MotionSettings)
    filters: FilterSettings = field(default_factory=FilterSettings)
    tracker: TrackerSettings = field(default_factory=TrackerSettings)

    def validate(self) -> None:
        for name in ("motion", "filters", "tracker"):
            try:
                getattr(self, name).validate()
            except SettingsError as e:
                raise SettingsError(f"{name}.{e.key}", e.problem) from None


def _known() -> str:
    return ", ".join(SUBJECTS)


def _range(key: str, value: object, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SettingsError(key, f"must be a number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise SettingsError(key, f"must be from {lo} to {hi}, got {value}")


def _int_range(key: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(key, f"must be a whole number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise SettingsError(key, f"must be from {lo} to {hi}, got {value}")


def _subjects(key: str, subjects: Iterable[str]) -> None:
    for subject in subjects:
        if subject not in SUBJECTS:
            raise SettingsError(key, f"unknown subject {subject!r}; known: {_known()}")


def _polygons(key: str, polygons: Iterable[Polygon]) -> None:
    for i, polygon in enumerate(polygons):
        _polygon(f"{key}[{i}]", polygon)


def _polygon(key: str, polygon: Polygon) -> None:
    if len(polygon) < 3:
        raise SettingsError(key, f"a polygon needs at least 3 points, got {len(polygon)}")
    for i, point in enumerate(polygon):
        if len(point) != 2:
            raise SettingsError(f"{key}[{i}]", f"a point is [x, y], got {list(point)!r}")
        for v in point:
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise SettingsError(
                    f"{key}[{i}]",
                    f"coordinates are fractions of the frame from 0 to 1, got {list(point)!r}",
                )
    # Shoelace area: a zero-area polygon (collinear or repeated points) can contain nothing.
    twice_area = sum(
        x0 * y1 - x1 * y0
        for (x0, y0), (x1, y1) in zip(polygon, (*polygon[1:], polygon[0]), strict=True)
    )
    if abs(twice_area) < 1e-9:
        raise SettingsError(key, "the polygon has no area (its points are on one line)")
