"""Detector plugins (NanoDet, YOLO-family) behind one interface; see base.py."""

from bridge.detect.detectors.base import (
    Detection,
    Detector,
    ModelError,
    load_detector,
)

__all__ = ["Detection", "Detector", "ModelError", "load_detector"]
