"""Zones, filters and the label map."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.detect.settings import (
    COCO_SUBJECTS,
    DetectSettings,
    FilterSettings,
    SettingsError,
    SubjectLimits,
    ZoneSettings,
)
from bridge.detect.types import Box, Sighting
from bridge.detect.zones import (
    SightingFilter,
    SubjectMap,
    UnknownLabelError,
    point_in_polygon,
    polygon_mask,
)

# A concave (L-shaped) path and a driveway on the right.
PATH = ((0.1, 0.5), (0.5, 0.5), (0.5, 0.7), (0.3, 0.7), (0.3, 1.0), (0.1, 1.0))
DRIVEWAY = ((0.6, 0.4), (1.0, 0.4), (1.0, 1.0), (0.6, 1.0))
ZONES = (ZoneSettings("path", PATH), ZoneSettings("driveway", DRIVEWAY, ("vehicle",)))

COCO_LABELS = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck"]
COCO_LABELS += ["boat", "bird", "cat", "dog", "horse", "sheep", "cow", "bear", "backpack"]


def standing(label: str, subject: str | None, feet: tuple[float, float], score=0.8, h=0.3):
    """A box whose bottom-centre (the feet) is at `feet`."""
    x, y = feet
    return Sighting(label, subject, score, Box(x - 0.04, y - h, x + 0.04, y))


def test_point_in_polygon_concave():
    assert point_in_polygon((0.2, 0.9), PATH)
    assert point_in_polygon((0.45, 0.6), PATH)
    assert not point_in_polygon((0.45, 0.9), PATH)  # the L's notch
    assert not point_in_polygon((0.05, 0.6), PATH)


def test_polygon_mask_matches_point_test():
    mask = polygon_mask([PATH], 64, 36)
    for row in range(0, 36, 3):
        for col in range(0, 64, 3):
            centre = ((col + 0.5) / 64, (row + 0.5) / 36)
            assert mask[row, col] == point_in_polygon(centre, PATH)
    assert np.count_nonzero(mask) / mask.size == pytest.approx(0.14, abs=0.02)


def test_zone_uses_the_feet_not_the_box():
    f = SightingFilter(FilterSettings(zones=ZONES))
    inside = standing("person", "person", (0.2, 0.9))
    assert f.accept(inside) and f.zones_of(inside) == ["path"]
    # A tall person outside whose head reaches into the path does not count.
    outside = standing("person", "person", (0.4, 0.95), h=0.5)
    assert outside.box.intersection(Box(0.3, 0.5, 0.5, 0.7)) > 0
    assert not f.accept(outside)
    assert f.rejection(outside) == "outside every zone that takes this subject"


def test_zone_subjects():
    f = SightingFilter(FilterSettings(zones=ZONES))
    assert f.accept(standing("car", "vehicle", (0.8, 0.9)))
    assert not f.accept(standing("person", "person", (0.8, 0.9)))  # driveway: vehicles only
    assert f.accept(standing("car", "vehicle", (0.2, 0.9)))  # the path takes any subject
    assert f.zones_of(standing("car", "vehicle", (0.8, 0.9))) == ["driveway"]


def test_no_zones_means_whole_frame_and_chosen_subjects():
    f = SightingFilter(FilterSettings(subjects=("person",)))
    assert f.accept(standing("person", "person", (0.9, 0.2)))
    assert f.rejection(standing("dog", "animal", (0.5, 0.5))) == (
        "subject 'animal' is not chosen for this camera"
    )
    assert not f.accept(standing("chair", None, (0.5, 0.5)))


def test_score_and_area_filters_with_per_subject_limits():
    settings = FilterSettings(
        min_score=0.5,
        min_area=0.001,
        max_area=0.5,
        limits={"animal": SubjectLimits(min_score=0.4), "vehicle": SubjectLimits(min_area=0.02)},
    )
    f = SightingFilter(settings)
    assert not f.accept(Sighting("person", "person", 0.45, Box(0.1, 0.1, 0.2, 0.4)))
    assert f.accept(Sighting("cat", "animal", 0.45, Box(0.1, 0.1, 0.2, 0.2)))
    assert "min_area" in (f.rejection(Sighting("person", "person", 0.9, Box(0, 0, 0.02, 0.02))))
    assert "max_area" in (f.rejection(Sighting("person", "person", 0.9, Box(0, 0, 0.9, 0.9))))
    small_car = Sighting("car", "vehicle", 0.9, Box(0.1, 0.1, 0.2, 0.15))  # area 0.005
    assert "min_area 0.02" in f.rejection(small_car)
    assert f.accept(Sighting("person", "person", 0.9, Box(0.1, 0.1, 0.2, 0.15)))


def test_label_map_defaults_and_custom_package():
    coco = SubjectMap()
    assert coco.subject_for("person") == "person"
    assert {coco.subject_for(x) for x in ("car", "truck", "bus", "motorcycle", "bicycle")} == {
        "vehicle"
    }
    assert coco.subject_for("bear") == "animal" and coco.subject_for("chair") is None
    assert "package" not in coco.subjects
    coco.check_labels([*COCO_LABELS, "chair"], "nanodet-m")

    custom = SubjectMap({"parcel": "package", "human": "person"})
    assert custom.subject_for("parcel") == "package"
    custom.check_labels(["human", "parcel", "van"])


def test_unknown_label_in_the_map_is_a_clear_error():
    labels = dict(COCO_SUBJECTS, persn="person")
    with pytest.raises(UnknownLabelError) as info:
        SubjectMap(labels).check_labels(COCO_LABELS, "nanodet-m")
    err = info.value
    assert isinstance(err, ValueError) and err.key == "labels.persn"
    assert "'persn' (did you mean 'person'?) is not a label of nanodet-m" in str(err)
    with pytest.raises(UnknownLabelError, match=r"'box', 'parcel' are not labels of yolo"):
        SubjectMap({"parcel": "package", "box": "package"}).check_labels(COCO_LABELS, "yolo")


def test_filter_settings_errors_name_the_key():
    cases = [
        (FilterSettings(labels={"cat": "pet"}), r"^labels\.cat: maps to 'pet', which is not"),
        (FilterSettings(min_area=0.5, max_area=0.1), r"^min_area: 0.5 is larger than max_area"),
        (FilterSettings(subjects=("people",)), r"^subjects: unknown subject 'people'"),
        (
            FilterSettings(zones=(ZoneSettings("a", PATH), ZoneSettings("a", DRIVEWAY))),
            r"^zones\[1\]\.name: zone name 'a' is used twice",
        ),
        (
            FilterSettings(zones=(ZoneSettings("a", ((0, 0), (1, 1))),)),
            r"^zones\[0\]\.polygon: a polygon needs at least 3 points, got 2",
        ),
        (
            FilterSettings(zones=(ZoneSettings("a", PATH, ("ghost",)),)),
            r"^zones\[0\]\.subjects: unknown subject 'ghost'",
        ),
        (
            FilterSettings(limits={"vehicle": SubjectLimits(min_score=1.5)}),
            r"^limits\.vehicle\.min_score: must be from 0.0 to 1.0, got 1.5",
        ),
    ]
    for settings, message in cases:
        with pytest.raises(SettingsError, match=message):
            settings.validate()
    with pytest.raises(SettingsError, match=r"^filters\.min_score: must be from"):
        DetectSettings(filters=FilterSettings(min_score=2)).validate()
    DetectSettings().validate()
