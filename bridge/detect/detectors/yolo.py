"""YOLO-family ONNX exports (Ultralytics YOLOv5, YOLOv8, YOLO11 and compatible).

Output layouts, told apart by shape (C = number of classes):
- v5:  [1, N, 5 + C]  rows of cx, cy, w, h, objectness, C class scores (score = obj x class)
- v8/v11: [1, 4 + C, N]  columns of cx, cy, w, h, C class scores (no objectness)
- end-to-end (exported with NMS, e.g. YOLOv10): [1, K, 6]  x0, y0, x1, y1, score, class
Pre-processing is Ultralytics' letterbox: scale to fit, centre, pad with grey 114, RGB / 255.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bridge.detect.detectors._onnx import Candidates, OnnxDetector, resize_rgb
from bridge.detect.detectors.base import ModelError, coco80, labels_from_metadata

PAD_VALUE = 114.0 / 255.0
MAX_CANDIDATES = 3000
_EMPTY: Candidates = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def _layout(shape: tuple[int, int], c: int | None) -> tuple[str, int]:
    """('v5' | 'v8' | 'v8t' | 'e2e', classes) for a [A, B] output; c = known label count.

    Without labels, COCO's 80 classes are tried first; otherwise anchors outnumber classes in
    every real export, which tells rows (v5) from columns (v8)."""
    a, b = shape
    for k in [c] if c is not None else [80]:
        if b == 5 + k:
            return "v5", k
        if a == 4 + k:
            return "v8", k
        if b == 4 + k:
            return "v8t", k  # v8 exported already transposed to [1, N, 4 + C]
    if b == 6:
        return "e2e", c or 0
    if c is None and b < a and b > 5:
        return "v5", b - 5
    if c is None and a < b and a > 4:
        return "v8", a - 4
    raise ValueError


class YoloDetector(OnnxDetector):
    kind = "yolo"
    default_size = (640, 640)
    default_iou = 0.45  # as Ultralytics' own NMS

    def _configure(
        self, outputs: list[Any], labels: tuple[str, ...] | None, meta: dict[str, str]
    ) -> tuple[str, ...]:
        labels = labels or labels_from_metadata(meta)
        shape = tuple(outputs[0].shape)
        found = f"outputs {[list(o.shape) for o in outputs]}"
        if len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
            raise ModelError(f"model {self.path}: expected a [1, A, B] first output, found {found}")
        try:
            self._layout, classes = _layout((shape[1], shape[2]), len(labels) if labels else None)
        except ValueError:
            n = len(labels) if labels else "C"
            raise ModelError(
                f"model {self.path}: unknown YOLO output layout {found}; expected [1, N, 5+{n}]"
                f" (v5), [1, 4+{n}, N] (v8/v11) or [1, K, 6] (exported with NMS)"
            ) from None
        if labels is None:
            if classes not in (0, 80):
                raise ModelError(
                    f"model {self.path} has {classes} classes and no names in its metadata:"
                    " give a labels file"
                )
            labels = coco80()
        self._output_names = self._output_names[:1]
        return labels

    def _preprocess(self, img: np.ndarray) -> tuple[float, float, float]:
        w, h = self.input_size
        ih, iw = img.shape[:2]
        r = min(w / iw, h / ih)
        rw, rh = max(1, round(iw * r)), max(1, round(ih * r))
        # Ultralytics' split of the padding: round(d/2 ∓ 0.1), so odd padding goes bottom/right.
        left, top = round((w - rw) / 2 - 0.1), round((h - rh) / 2 - 0.1)
        resized = resize_rgb(img, rw, rh)
        buf = self._input[0]
        buf.fill(PAD_VALUE)
        for c in range(3):
            plane = buf[c, top : top + rh, left : left + rw]
            np.multiply(resized[:, :, c], 1.0 / 255.0, out=plane, casting="unsafe")
        return r, float(left), float(top)

    def _postprocess(
        self, outputs: list[np.ndarray], ctx: Any, size: tuple[int, int]
    ) -> Candidates:
        r, left, top = ctx
        out = outputs[0][0]
        if self._layout == "e2e":
            keep = out[:, 4] > self.score_threshold
            boxes, scores, classes = out[keep, :4], out[keep, 4], out[keep, 5].astype(np.int64)
            classes = classes.clip(0, len(self.labels) - 1)
        else:
            if self._layout == "v5":
                obj = out[:, 4]
                rows = out[obj > self.score_threshold]
                cls = rows[:, 5:] * rows[:, 4:5]
                geo = rows[:, :4]
            else:
                table = out.T if self._layout == "v8" else out  # → [N, 4 + C]
                cls, geo = table[:, 4:], table[:, :4]
            classes = cls.argmax(axis=1)
            scores = cls[np.arange(len(cls)), classes]
            keep = scores > self.score_threshold
            geo, scores, classes = geo[keep], scores[keep], classes[keep]
            if scores.size > MAX_CANDIDATES:
                top_k = np.argpartition(-scores, MAX_CANDIDATES)[:MAX_CANDIDATES]
                geo, scores, classes = geo[top_k], scores[top_k], classes[top_k]
            half = geo[:, 2:4] / 2
            boxes = np.concatenate([geo[:, :2] - half, geo[:, :2] + half], axis=1)
        if scores.size == 0:
            return _EMPTY
        boxes = (boxes - np.array([left, top, left, top], np.float32)) / r
        return boxes.astype(np.float32), scores.astype(np.float32), classes.astype(np.int64)
