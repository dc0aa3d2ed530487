"""NanoDet (GFL head) on onnxruntime: the default detector.

Contract (see the bundled model's NOTICE.md and the docs): input [1, 3, H, W]; per stride s
a scores output [1, N, C] (sigmoid applied) and a box output [1, N, 4·(R+1)] holding, for each
side, a distribution over R+1 distance bins ("distribution focal loss"). Official NanoDet-Plus
exports concatenate everything into one [1, ΣN, C + 4·(R+1)] output; both layouts load.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bridge.detect.detectors._onnx import Candidates, OnnxDetector, resize_rgb
from bridge.detect.detectors.base import ModelError, coco80

MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)
STRIDE_SETS = ((8, 16, 32), (8, 16, 32, 64))
MAX_CANDIDATES = 1000


class NanoDetDetector(OnnxDetector):
    kind = "nanodet"
    default_size = (416, 416)

    # ---- layout ------------------------------------------------------------------------------

    def _grid(self, stride: int) -> tuple[int, int]:
        w, h = self.input_size
        return math.ceil(w / stride), math.ceil(h / stride)

    def _stride_of(self, n: int) -> int | None:
        for s in (8, 16, 32, 64, 128):
            gw, gh = self._grid(s)
            if gw * gh == n:
                return s
        return None

    def _configure(
        self, outputs: list[Any], labels: tuple[str, ...] | None, meta: dict[str, str]
    ) -> tuple[str, ...]:
        labels = labels or coco80()
        c = len(labels)
        shapes = [tuple(o.shape) for o in outputs]
        found = f"outputs {[list(s) for s in shapes]}"
        if any(len(s) != 3 or not all(isinstance(d, int) for d in s[1:]) for s in shapes):
            raise ModelError(f"model {self.path}: expected [1, N, K] outputs, found {found}")
        if len(shapes) == 1:
            self._split = True
            n, k = shapes[0][1:]
            strides = next(
                (ss for ss in STRIDE_SETS if sum(math.prod(self._grid(s)) for s in ss) == n), None
            )
            bins, rem = divmod(k - c, 4)
            if strides is None or rem or bins < 2:
                raise ModelError(
                    f"model {self.path}: unknown NanoDet output layout {found} for {c} labels and"
                    f" input {self.input_size}: expected [1, ΣN, {c} + 4·bins]"
                )
            self._order = [0]
        else:
            # Pair outputs by anchor count: the one with C columns holds scores, the other boxes.
            by_n: dict[int, list[int]] = {}
            for i, s in enumerate(shapes):
                by_n.setdefault(s[1], []).append(i)
            levels = []
            for n, idx in sorted(by_n.items(), reverse=True):
                stride = self._stride_of(n)
                score = [i for i in idx if shapes[i][2] == c]
                box = [i for i in idx if shapes[i][2] != c and shapes[i][2] % 4 == 0]
                if stride is None or len(idx) != 2 or len(score) != 1 or len(box) != 1:
                    raise ModelError(
                        f"model {self.path}: unknown NanoDet output layout {found}: expected per"
                        f" stride a [1, N, {c}] scores and a [1, N, 4·bins] boxes output, N ="
                        f" grid cells of a {self.input_size[0]}x{self.input_size[1]} input"
                    )
                levels.append((stride, score[0], box[0]))
            bin_counts = {shapes[b][2] // 4 for _, _, b in levels}
            if len(bin_counts) != 1:
                raise ModelError(f"model {self.path}: box outputs disagree on bins: {found}")
            bins = bin_counts.pop()
            strides = tuple(s for s, _, _ in levels)
            self._split = False
            self._order = [i for _, sc, bx in levels for i in (sc, bx)]
        self._output_names = [self._output_names[i] for i in self._order]
        self._bins = bins
        self._project = np.arange(bins, dtype=np.float32)
        self._centres, self._strides = self._anchor_grid(strides)
        return labels

    def _anchor_grid(self, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        centres, per_anchor = [], []
        for s in strides:
            gw, gh = self._grid(s)
            ys, xs = np.mgrid[0:gh, 0:gw]
            centres.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], axis=1))
            per_anchor.append(np.full(gw * gh, s, dtype=np.float32))
        return np.concatenate(centres).astype(np.float32), np.concatenate(per_anchor)

    # ---- pre / post --------------------------------------------------------------------------

    def _preprocess(self, img: np.ndarray) -> float:
        """Letterbox into the top-left corner, BGR, (x - mean) / std, NCHW; returns the scale."""
        w, h = self.input_size
        scale = min(w / img.shape[1], h / img.shape[0])
        rw, rh = max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))
        resized = resize_rgb(img, rw, rh)
        buf = self._input[0]
        for c in range(3):  # buffer channel c is BGR channel c, i.e. RGB channel 2 - c
            plane = buf[c]
            np.subtract(resized[:, :, 2 - c], MEAN_BGR[c], out=plane[:rh, :rw], casting="unsafe")
            plane[:rh, :rw] *= 1.0 / STD_BGR[c]
            plane[rh:, :] = -MEAN_BGR[c] / STD_BGR[c]  # black padding, normalised
            plane[:rh, rw:] = -MEAN_BGR[c] / STD_BGR[c]
        return scale

    def _postprocess(
        self, outputs: list[np.ndarray], ctx: Any, size: tuple[int, int]
    ) -> Candidates:
        c = len(self.labels)
        if self._split:
            flat = outputs[0][0]
            scores, dist = flat[:, :c], flat[:, c:]
        else:
            scores = np.concatenate([o[0] for o in outputs[0::2]])
            dist = np.concatenate([o[0] for o in outputs[1::2]])
        anchors, classes = np.nonzero(scores > self.score_threshold)
        if anchors.size == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        conf = scores[anchors, classes]
        if conf.size > MAX_CANDIDATES:
            top = np.argpartition(-conf, MAX_CANDIDATES)[:MAX_CANDIDATES]
            anchors, classes, conf = anchors[top], classes[top], conf[top]
        # Expected distance per side: softmax over the bins, dotted with bin indices, x stride.
        logits = dist[anchors].reshape(-1, 4, self._bins)
        e = np.exp(logits - logits.max(axis=2, keepdims=True))
        d = (e @ self._project) / e.sum(axis=2) * self._strides[anchors, None]
        ctr = self._centres[anchors]
        boxes = np.concatenate([ctr - d[:, :2], ctr + d[:, 2:]], axis=1) / ctx
        return boxes.astype(np.float32), conf.astype(np.float32), classes
