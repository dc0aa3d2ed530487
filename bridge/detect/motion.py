"""Motion gate: decides, from cheap downscaled grayscale frames, when the object detector runs.

Per frame (uint8, about 320 px wide; ~0.3 ms at 320x180): a 3x3 box blur against sensor
noise, the absolute difference to a running-average background (minus the frame's mean
shift, so auto-exposure drift is not motion), a threshold, masks, then changed pixels are
counted per grid cell and adjacent active cells merged into boxes with a small union-find
(connected-component labelling in numpy is slow; a 16-pixel grid is plenty for regions).
When most of the frame changes at once (lights switched, IR mode, exposure jump) the
background is re-learnt instead of reporting motion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bridge.detect.settings import MotionSettings
from bridge.detect.types import Box
from bridge.detect.zones import polygon_mask

_NINE = 9.0  # the blur sums 9 pixels; thresholds are scaled instead of dividing every pixel


@dataclass(slots=True)
class MotionResult:
    moving: bool
    boxes: list[Box] = field(default_factory=list)  # merged motion regions, normalised
    area: float = 0.0  # changed fraction of the unmasked frame
    # The background was replaced (first frame, lighting change): whatever is in view now
    # was not checked for motion, so the detector should look once.
    relearned: bool = False


class MotionGate:
    def __init__(self, settings: MotionSettings | None = None) -> None:
        self.settings = settings or MotionSettings()
        self._shape: tuple[int, int] | None = None
        self._bg: np.ndarray | None = None
        self._last_now = 0.0
        self._settle_until = -math.inf
        # Per frame size (see _setup).
        self._grid = (0, 0)
        self._cellbuf = np.zeros((0, 0), dtype=np.uint8)
        self._mask: np.ndarray | None = None  # True where motion counts
        self._valid = 1
        self._cell_need = np.zeros((0, 0), dtype=np.int32)

    @property
    def aspect(self) -> float:
        """Width / height of the frames seen so far (1.0 before the first frame)."""
        return self._shape[1] / self._shape[0] if self._shape else 1.0

    def reset(self) -> None:
        """Forget the background (e.g. after a camera reconnects)."""
        self._bg = None
        self._settle_until = -math.inf

    def update(self, gray: np.ndarray, now: float) -> MotionResult:
        if gray.ndim != 2 or gray.dtype != np.uint8 or min(gray.shape) < 8:
            raise ValueError(
                f"motion gate needs a 2-D uint8 grayscale frame, got {gray.dtype} {gray.shape}"
            )
        if gray.shape != self._shape:
            self._setup(gray.shape[0], gray.shape[1])
        s = self.settings
        # 3x3 box blur as sums of shifted views; the result drops a 1-pixel border.
        g = gray.astype(np.uint16)
        rows = g[:, :-2] + g[:, 1:-1] + g[:, 2:]
        blurred = (rows[:-2] + rows[1:-1] + rows[2:]).astype(np.float32)
        bg = self._bg
        if bg is None:
            return self._relearn(blurred, now, settle=False)
        if now < self._settle_until:  # exposure still settling after a lighting change
            self._bg, self._last_now = blurred, now
            return MotionResult(False)

        diff = blurred - bg
        # Background follows slow change (clouds, exposure drift) with time constant learn_s.
        dt = min(max(now - self._last_now, 0.0), s.learn_seconds)
        self._last_now = now
        bg += diff * (1.0 - math.exp(-dt / s.learn_seconds))
        thr = s.threshold * _NINE
        raw = np.abs(diff) > thr
        diff -= float(diff.mean())  # a uniform brightness shift is not motion
        np.abs(diff, out=diff)
        changed = diff > thr
        if self._mask is not None:
            raw &= self._mask
            changed &= self._mask
        area = np.count_nonzero(changed) / self._valid
        # Most of the frame changed at once, before or after removing the mean shift (a gain
        # change is not a shift): lights, IR switch, exposure jump. Re-learn, report no motion.
        if max(area, np.count_nonzero(raw) / self._valid) > s.relearn_area:
            return self._relearn(blurred, now, settle=True)
        if area < s.min_area:
            return MotionResult(False, [], area)
        boxes = self._boxes(changed)
        return MotionResult(bool(boxes), boxes, area)

    def region(self, result: MotionResult) -> Box | None:
        """Square detection region around the motion, or None for the whole frame."""
        s = self.settings
        return detection_region(
            result.boxes, self.aspect, s.region_max_area, s.region_margin, s.region_min_side
        )

    def _relearn(self, blurred: np.ndarray, now: float, settle: bool) -> MotionResult:
        self._bg, self._last_now = blurred, now
        if settle:
            self._settle_until = now + self.settings.settle_seconds
        return MotionResult(False, [], 0.0, relearned=True)

    def _setup(self, height: int, width: int) -> None:
        """Per frame size, once: mask raster, grid buffer and per-cell thresholds."""
        s = self.settings
        self._shape = (height, width)
        self._bg = None
        h, w = height - 2, width - 2  # blurred interior
        c = s.cell
        self._grid = (-(-h // c), -(-w // c))
        self._cellbuf = np.zeros((self._grid[0] * c, self._grid[1] * c), dtype=np.uint8)
        valid = np.ones((h, w), dtype=bool)
        self._mask = None
        if s.masks:
            valid = ~polygon_mask(s.masks, width, height)[1:-1, 1:-1]
            self._mask = valid
        self._valid = max(int(np.count_nonzero(valid)), 1)
        # A cell activates when cell_fill of its *unmasked* pixels changed; edge cells are
        # partial, fully masked cells never activate.
        self._cellbuf[:h, :w] = valid
        per_cell = self._cell_sums()
        self._cell_need = np.where(
            per_cell > 0, np.maximum(np.ceil(per_cell * s.cell_fill), 1), np.iinfo(np.int32).max
        )

    def _cell_sums(self) -> np.ndarray:
        c = self.settings.cell
        gh, gw = self._grid
        return self._cellbuf.reshape(gh, c, gw, c).sum(axis=(1, 3), dtype=np.int32)

    def _boxes(self, changed: np.ndarray) -> list[Box]:
        h, w = changed.shape
        self._cellbuf[:h, :w] = changed
        active = self._cell_sums() >= self._cell_need
        cells = [(int(r), int(q)) for r, q in np.argwhere(active)]
        if not cells:
            return []
        # Union-find over 8-connected active cells.
        parent = {cell: cell for cell in cells}

        def find(a: tuple[int, int]) -> tuple[int, int]:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for r, q in cells:
            for nb in ((r, q + 1), (r + 1, q - 1), (r + 1, q), (r + 1, q + 1)):
                if nb in parent:
                    parent[find(nb)] = find((r, q))
        extents: dict[tuple[int, int], list[int]] = {}
        for r, q in cells:
            e = extents.setdefault(find((r, q)), [r, q, r, q])
            e[0], e[1], e[2], e[3] = min(e[0], r), min(e[1], q), max(e[2], r), max(e[3], q)
        c = self.settings.cell
        height, width = self._shape or (h + 2, w + 2)
        boxes = [
            Box(
                (q0 * c + 1) / width,
                (r0 * c + 1) / height,
                (min((q1 + 1) * c, w) + 1) / width,
                (min((r1 + 1) * c, h) + 1) / height,
            )
            for r0, q0, r1, q1 in extents.values()
        ]
        return merge_boxes(boxes)


def merge_boxes(boxes: Sequence[Box]) -> list[Box]:
    """Merge boxes that overlap (components' bounding boxes can) until none do."""
    merged = list(boxes)
    changed = True
    while changed and len(merged) > 1:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                if merged[i].intersection(merged[j]) > 0.0:
                    merged[i] = merged[i].union(merged.pop(j))
                    changed = True
                    break
            if changed:
                break
    return merged


def detection_region(
    boxes: Sequence[Box],
    aspect: float,
    max_area: float = 0.25,
    margin: float = 0.2,
    min_side: float = 0.0,
) -> Box | None:
    """The square (in pixels) around the union of `boxes`, grown by `margin` per side.

    `aspect` is the frame's width / height. Returns None (analyse the whole frame) when there
    is nothing to frame or the square would cover more than `max_area` of the frame; a small
    subject in a region is upscaled to the model's input, a large one gains nothing from it.
    `min_side` (fraction of the frame's short side) avoids absurd upscaling of a tiny region.
    """
    if not boxes or aspect <= 0:
        return None
    u = boxes[0]
    for b in boxes[1:]:
        u = u.union(b)
    # Work in units of the frame height: the frame is aspect x 1.
    short = min(aspect, 1.0)
    side = max(u.width * aspect, u.height) * (1.0 + 2.0 * margin)
    side = max(side, min_side * short)
    if side >= short or side * side / aspect > max_area:
        return None
    cx, cy = u.centre
    x0 = min(max(cx * aspect - side / 2, 0.0), aspect - side)
    y0 = min(max(cy - side / 2, 0.0), 1.0 - side)
    return Box(x0 / aspect, y0, (x0 + side) / aspect, y0 + side)


class DetectSchedule:
    """When to run the object detector: on motion, after a background re-learn, while
    tracking, and otherwise every `periodic_seconds`.

    The periodic run catches objects that arrived without visible motion (or during a
    background re-learn) and keeps stationary-object memories fresh.
    """

    def __init__(self, periodic_seconds: float = 10.0) -> None:
        self.periodic_seconds = periodic_seconds
        self._last = -math.inf
        self.calls = 0

    def should_detect(
        self, result: MotionResult | None, now: float, tracking: bool = False
    ) -> bool:
        """True if the detector should run now (the call counts as a run).

        Pass `tracking=True` while the tracker has live tracks, so a subject that stopped
        moving is still seen and its track is not ended by the hold time.
        """
        due = now - self._last >= self.periodic_seconds
        looked = result is not None and (result.moving or result.relearned)
        if due or tracking or looked:
            self._last = now
            self.calls += 1
            return True
        return False
