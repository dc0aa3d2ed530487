"""Zones, filters and the label → subject map of one camera.

Zone membership is decided by a box's **bottom-centre**, the point where a standing person
or a car touches the ground: zones are drawn on the ground (path, driveway, yard), and a
tall person whose head overlaps a zone while they stand outside it must not count.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from bridge.detect.settings import COCO_SUBJECTS, FilterSettings, SettingsError, ZoneSettings
from bridge.detect.types import Point, Polygon, Sighting


class UnknownLabelError(SettingsError):
    """The label map names labels the model does not have (usually a typo).

    A `SettingsError` (so a `ValueError`) with key "labels" or "labels.<label>".
    """

    def __init__(self, unknown: Sequence[str], model_labels: Sequence[str], model: str) -> None:
        self.unknown = list(unknown)
        hints = []
        for label in self.unknown:
            close = difflib.get_close_matches(label, model_labels, n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            hints.append(f"{label!r}{hint}")
        shown = ", ".join(model_labels[:12]) + (", …" if len(model_labels) > 12 else "")
        one = len(hints) == 1
        super().__init__(
            f"labels.{self.unknown[0]}" if one else "labels",
            f"{', '.join(hints)} {'is not a label' if one else 'are not labels'} of {model} "
            f"({len(model_labels)} labels: {shown})",
        )


class SubjectMap:
    """Model label → subject ("person", "vehicle", "animal", "package")."""

    def __init__(self, labels: Mapping[str, str] = COCO_SUBJECTS) -> None:
        self._labels = dict(labels)

    def subject_for(self, label: str) -> str | None:
        """The subject a label counts as, or None when it matters to none."""
        return self._labels.get(label)

    @property
    def subjects(self) -> frozenset[str]:
        """Subjects this map can produce at all (COCO alone never yields "package")."""
        return frozenset(self._labels.values())

    def check_labels(self, model_labels: Iterable[str], model: str = "the model") -> None:
        """Raise UnknownLabelError if the map names a label the model cannot output."""
        known = list(model_labels)
        unknown = sorted(set(self._labels) - set(known))
        if unknown:
            raise UnknownLabelError(unknown, known, model)


def point_in_polygon(point: Point, polygon: Polygon) -> bool:
    """Even-odd rule; a point exactly on an edge may fall either way."""
    x, y = point
    inside = False
    n = len(polygon)
    for i in range(n):
        (ax, ay), (bx, by) = polygon[i], polygon[i - 1]
        if (ay > y) != (by > y) and x < ax + (y - ay) * (bx - ax) / (by - ay):
            inside = not inside
    return inside


def polygon_mask(polygons: Iterable[Polygon], width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of pixels whose centre lies in any polygon."""
    xs = (np.arange(width, dtype=np.float64) + 0.5) / width
    ys = (np.arange(height, dtype=np.float64) + 0.5) / height
    gx, gy = np.meshgrid(xs, ys)
    mask = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        inside = np.zeros_like(mask)
        n = len(polygon)
        for i in range(n):
            (ax, ay), (bx, by) = polygon[i], polygon[i - 1]
            if ay == by:
                continue  # horizontal edges never cross a horizontal ray
            crosses = (ay > gy) != (by > gy)
            x_cross = ax + (gy - ay) * (bx - ax) / (by - ay)
            inside ^= crosses & (gx < x_cross)
        mask |= inside
    return mask


class SightingFilter:
    """Decides whether a sighting matters: chosen subject, score, size and zones."""

    def __init__(self, settings: FilterSettings | None = None) -> None:
        self.settings = settings or FilterSettings()
        self.labels = SubjectMap(self.settings.labels)
        self._chosen = frozenset(self.settings.subjects)

    def subject_for(self, label: str) -> str | None:
        return self.labels.subject_for(label)

    def zones_of(self, sighting: Sighting) -> list[str]:
        """Names of the zones whose polygon holds the sighting and that allow its subject."""
        anchor = sighting.box.bottom_centre
        return [z.name for z in self.settings.zones if _zone_takes(z, sighting.subject, anchor)]

    def rejection(self, sighting: Sighting) -> str | None:
        """Why a sighting is dropped (for `obscura detect` tuning output), None if accepted."""
        s = self.settings
        subject = sighting.subject
        if subject is None:
            return f"label {sighting.label!r} maps to no subject"
        if subject not in self._chosen:
            return f"subject {subject!r} is not chosen for this camera"
        lim = s.limits.get(subject)
        min_score = s.min_score if lim is None or lim.min_score is None else lim.min_score
        min_area = s.min_area if lim is None or lim.min_area is None else lim.min_area
        max_area = s.max_area if lim is None or lim.max_area is None else lim.max_area
        if sighting.score < min_score:
            return f"score {sighting.score:.2f} < min_score {min_score}"
        area = sighting.box.area
        if area < min_area:
            return f"box area {area:.4f} < min_area {min_area}"
        if area > max_area:
            return f"box area {area:.4f} > max_area {max_area}"
        if s.zones and not self.zones_of(sighting):
            return "outside every zone that takes this subject"
        return None

    def accept(self, sighting: Sighting) -> bool:
        return self.rejection(sighting) is None

    def select(self, sightings: Iterable[Sighting]) -> list[Sighting]:
        return [s for s in sightings if self.rejection(s) is None]


def _zone_takes(zone: ZoneSettings, subject: str | None, anchor: Point) -> bool:
    if zone.subjects and subject not in zone.subjects:
        return False
    return point_in_polygon(anchor, zone.polygon)
