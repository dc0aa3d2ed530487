"""The detector interface every plugin implements, and the factory that loads one.

A detector takes an RGB frame (HxWx3 uint8) and optionally a region of it, and returns
detections in full-frame pixel coordinates. Loading validates the model file up front, so a
missing, corrupt or incompatible model fails at start-up with a ModelError that names the file
and what was expected, never later inside the frame loop.
"""

from __future__ import annotations

import abc
import ast
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Box = tuple[float, float, float, float]
Region = tuple[int, int, int, int]

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"
COCO80_FILE = BUNDLED_DIR / "coco80.txt"


class ModelError(Exception):
    """A model file that cannot be used; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class Detection:
    label: str
    score: float
    box: Box  # x0, y0, x1, y1 in pixels of the frame passed to detect()


class Detector(abc.ABC):
    """One loaded model. detect() may be called from any one thread at a time per instance
    (a lock serialises callers: the input buffer is preallocated and reused)."""

    kind: str
    path: Path
    labels: tuple[str, ...]
    input_size: tuple[int, int]  # (width, height) the network sees

    @abc.abstractmethod
    def detect(self, frame_rgb: np.ndarray, region: Region | None = None) -> list[Detection]:
        """Objects in frame_rgb (or in region = (x0, y0, x1, y1) of it), best first."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the inference session; detect() must not be called afterwards."""

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_labels(path: Path | str) -> tuple[str, ...]:
    """One label per line; blank lines and '#' comments are skipped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ModelError(f"labels file {path}: {exc.strerror or exc}") from exc
    labels = tuple(s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#"))
    if not labels:
        raise ModelError(f"labels file {path} has no labels")
    return labels


def coco80() -> tuple[str, ...]:
    return read_labels(COCO80_FILE)


def labels_from_metadata(meta: dict[str, str]) -> tuple[str, ...] | None:
    """Ultralytics exports store {0: 'person', ...} in the ONNX metadata as 'names'."""
    raw = meta.get("names")
    if not raw:
        return None
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        return tuple(str(names[k]) for k in sorted(names))
    if isinstance(names, list | tuple):
        return tuple(str(n) for n in names)
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    digest = file_sha256(path)
    if digest != expected:
        raise ModelError(f"model file {path} is corrupt: sha256 {digest}, expected {expected}")


def load_detector(
    kind: str,
    path: Path | str,
    threads: int = 2,
    score_threshold: float | None = None,
    labels: Sequence[str] | Path | str | None = None,
    *,
    iou_threshold: float | None = None,
    sha256: str | None = None,
) -> Detector:
    """Load and validate a model: kind 'nanodet' or 'yolo'; labels as a sequence or a file.

    Raises ModelError for a missing, unreadable, corrupt (sha256) or incompatible model.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found")
    if sha256:
        verify_sha256(path, sha256)
    if isinstance(labels, str | Path):
        labels = read_labels(labels)
    label_tuple = tuple(labels) if labels is not None else None
    if threads < 1:
        raise ModelError(f"model {path}: threads must be ≥ 1, got {threads}")
    kw: dict[str, float] = {}
    if score_threshold is not None:
        kw["score_threshold"] = float(score_threshold)
    if iou_threshold is not None:
        kw["iou_threshold"] = float(iou_threshold)
    if kind == "nanodet":
        from bridge.detect.detectors.nanodet import NanoDetDetector

        return NanoDetDetector(path, threads=threads, labels=label_tuple, **kw)
    if kind == "yolo":
        from bridge.detect.detectors.yolo import YoloDetector

        return YoloDetector(path, threads=threads, labels=label_tuple, **kw)
    raise ModelError(f"model {path}: unknown detector kind {kind!r} (expected nanodet or yolo)")


def clip_region(region: Region | None, width: int, height: int) -> Region:
    """The region clamped to the frame; None means the whole frame."""
    if region is None:
        return 0, 0, width, height
    x0, y0, x1, y1 = (round(v) for v in region)
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"region {region} is empty inside a {width}x{height} frame")
    return x0, y0, x1, y1
