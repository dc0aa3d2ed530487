"""The detection part of the TOML configuration: [detect] and each camera's detection keys.

```toml
[detect]                      # defaults for every camera
enabled = true
model = "nanodet-m"           # a bundled model, or a path to an .onnx file
model_type = "nanodet"        # for a path: nanodet | yolo
threads = 2                   # onnxruntime threads
fps = 5                       # analysed frames per second per camera
labels = { parcel = "package" }  # label -> subject entries, over the COCO defaults

[[cameras]]
subjects = ["person", "vehicle"]        # what notifies (default: person, vehicle, animal)
motion_sensor = "subjects"              # subjects | motion | off: what drives MotionDetected
occupancy_sensors = ["person"]          # one OccupancySensor per subject (default: subjects)
[cameras.detect]                        # tuning; `detect = false` turns detection off
min_score = 0.5
[[cameras.zones]]
name = "Path"
polygon = [[0.0, 0.6], [1.0, 0.6], [1.0, 1.0], [0.0, 1.0]]
subjects = ["person"]
```
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bridge.config_reader import ConfigError, TableReader
from bridge.detect.settings import (
    COCO_SUBJECTS,
    SUBJECTS,
    DetectSettings,
    FilterSettings,
    SettingsError,
    ZoneSettings,
)

DEFAULT_SUBJECTS = ("person", "vehicle", "animal")
MOTION_SENSOR_MODES = ("subjects", "motion", "off")


@dataclass(frozen=True, slots=True)
class DetectConfig:
    """[detect]: the model and defaults shared by every camera."""

    enabled: bool = True
    model: str = "nanodet-m"
    model_type: str | None = None
    threads: int = 2
    fps: float = 5.0
    labels: dict[str, str] = field(default_factory=lambda: dict(COCO_SUBJECTS))


@dataclass(frozen=True, slots=True)
class CameraDetect:
    """One camera's detection: what notifies, how, and the tuned pipeline settings."""

    enabled: bool = True
    subjects: tuple[str, ...] = DEFAULT_SUBJECTS
    motion_sensor: str = "subjects"
    occupancy_sensors: tuple[str, ...] = DEFAULT_SUBJECTS
    fps: float | None = None  # None: [detect].fps
    settings: DetectSettings = field(default_factory=DetectSettings)


def parse_detect(path: Path, raw: Any) -> DetectConfig:
    r = TableReader(path, "detect", raw)
    model_type = r.get("model_type", str, None)
    if model_type is not None and model_type not in ("nanodet", "yolo"):
        raise r.fail("model_type", f"must be nanodet or yolo, got {model_type!r}")
    threads = r.get("threads", int, 2)
    if not 1 <= threads <= 64:
        raise r.fail("threads", f"must be between 1 and 64, got {threads}")
    labels = dict(COCO_SUBJECTS)
    for label, subject in r.get("labels", dict, {}).items():
        if subject not in SUBJECTS:
            raise ConfigError(
                path,
                f"detect.labels.{label}",
                f"maps to {subject!r}, which is not a subject ({', '.join(SUBJECTS)})",
            )
        labels[label] = subject
    config = DetectConfig(
        enabled=r.get("enabled", bool, True),
        model=r.get("model", str, "nanodet-m"),
        model_type=model_type,
        threads=threads,
        fps=_fps(r, "fps", 5.0),
        labels=labels,
    )
    r.check_unknown()
    return config


def _fps(r: TableReader, name: str, default: float | None) -> Any:
    value = r.get(name, float, default)
    if value is not None and not 0.1 <= value <= 30:
        raise r.fail(name, f"must be between 0.1 and 30, got {value}")
    return value


def _subject_list(r: TableReader, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = r.get(name, list, None)
    if value is None:
        return default
    for item in value:
        if item not in SUBJECTS:
            raise r.fail(name, f"unknown subject {item!r}; choose from {', '.join(SUBJECTS)}")
    return tuple(dict.fromkeys(value))


def _polygon(r: TableReader, name: str, value: Any) -> tuple[tuple[float, float], ...]:
    try:
        points = tuple((float(x), float(y)) for x, y in value)
    except (TypeError, ValueError):
        raise r.fail(name, "must be a list of [x, y] points (0..1 of the frame)") from None
    return points


def parse_camera_detect(
    path: Path, prefix: str, cam: TableReader, defaults: DetectConfig
) -> CameraDetect:
    """The detection keys of one [[cameras]] table (read through the camera's reader)."""
    subjects = _subject_list(cam, "subjects", DEFAULT_SUBJECTS)
    motion_sensor = cam.get("motion_sensor", str, "subjects")
    if motion_sensor not in MOTION_SENSOR_MODES:
        raise cam.fail("motion_sensor", f"must be one of {', '.join(MOTION_SENSOR_MODES)}")
    occupancy = _subject_list(cam, "occupancy_sensors", subjects)
    zones_raw = cam.get("zones", list, [])
    detect_raw = cam.get("detect", (bool, dict), True)
    enabled = detect_raw if isinstance(detect_raw, bool) else True
    table = TableReader(
        path, f"{prefix}.detect", detect_raw if isinstance(detect_raw, dict) else {}
    )

    zones = []
    for i, zone_raw in enumerate(zones_raw):
        z = TableReader(path, f"{prefix}.zones[{i}]", zone_raw)
        name = z.get("name", str, None)
        polygon = z.get("polygon", list, None)
        if name is None or polygon is None:
            raise z.fail("name" if name is None else "polygon", "is required")
        zones.append(
            ZoneSettings(name, _polygon(z, "polygon", polygon), _subject_list(z, "subjects", ()))
        )
        z.check_unknown()
    masks = tuple(_polygon(table, "motion_masks", m) for m in table.get("motion_masks", list, []))

    base = DetectSettings()
    motion = replace(
        base.motion,
        threshold=table.get("motion_threshold", int, base.motion.threshold),
        min_area=table.get("motion_min_area", float, base.motion.min_area),
        periodic_seconds=table.get("periodic_seconds", float, base.motion.periodic_seconds),
        masks=masks,
    )
    filters = FilterSettings(
        subjects=subjects,
        min_score=table.get("min_score", float, base.filters.min_score),
        min_area=table.get("min_area", float, base.filters.min_area),
        max_area=table.get("max_area", float, base.filters.max_area),
        zones=tuple(zones),
        labels=dict(defaults.labels),
    )
    tracker = replace(
        base.tracker,
        hold_seconds=table.get("hold_seconds", float, base.tracker.hold_seconds),
        min_hits=table.get("min_hits", int, base.tracker.min_hits),
        stationary_seconds=table.get("stationary_seconds", float, base.tracker.stationary_seconds),
    )
    fps = _fps(table, "fps", None)
    table.check_unknown()
    settings = DetectSettings(motion=motion, filters=filters, tracker=tracker)
    try:
        settings.validate()
    except SettingsError as exc:
        raise ConfigError(path, _settings_key(prefix, exc.key), exc.problem) from None
    return CameraDetect(enabled, subjects, motion_sensor, occupancy, fps, settings)


# Where each settings field lives in the TOML (settings key -> key under the camera).
_TOML_KEYS = {
    "motion.threshold": "detect.motion_threshold",
    "motion.min_area": "detect.motion_min_area",
    "motion.periodic_seconds": "detect.periodic_seconds",
    "motion.masks": "detect.motion_masks",
    "filters.subjects": "subjects",
    "filters.zones": "zones",
    "filters.labels": "detect.labels",
}


def _settings_key(prefix: str, key: str) -> str:
    for inner, toml in sorted(_TOML_KEYS.items(), key=lambda kv: -len(kv[0])):
        if key == inner or key.startswith(inner + ".") or key.startswith(inner + "["):
            return f"{prefix}.{toml}{key[len(inner) :]}"
    section, _, rest = key.partition(".")
    return f"{prefix}.detect.{rest or section}"
