"""The demo camera's visitor: a photographed person who walks across the yard now and then.

Without someone to detect, the demo would show live view and nothing else: no event, no clip.
So the demo pastes a real photograph of a person (assets/person.jpg, NASA, public domain; see
assets/NOTICE.md) on a path across the frame, on a fixed schedule of its own clock: the first
walk soon after the camera opens, so a newcomer sees an event within a minute, then one every
`every` seconds, left to right and back again. The bundled detector finds a person in it as
it would in a camera's picture (tests/test_demo_mission.py checks that, end to end).

The cut-out is decoded and resized once, when the demo opens; each frame then costs one slice
copy of the columns in view (~0.1 ms at 720p), nothing per pixel in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
from PIL import Image

PHOTO = "person.jpg"


@dataclass(frozen=True, slots=True)
class Visits:
    """When the person is in the picture, on the demo's clock (seconds since it opened)."""

    first: float = 8.0  # the first walk starts (its first column comes into view)
    every: float = 45.0  # from one walk's start to the next
    walk: float = 7.0  # from the first column in view to the last one out

    def walk_at(self, t: float) -> tuple[int, float] | None:
        """(which walk, how far along it 0..1) at `t`, or None between walks."""
        if t < self.first:
            return None
        index = math.floor((t - self.first) / self.every)
        progress = (t - self.first - index * self.every) / self.walk
        return (index, progress) if progress < 1.0 else None

    def walking(self, t: float) -> bool:
        """A walk is under way (at its very start and end no column of the photo shows)."""
        return self.walk_at(t) is not None

    def start(self, index: int) -> float:
        return self.first + index * self.every


class Visitor:
    """The person, sized for a `width` x `height` demo, pasted into frames by `draw`."""

    def __init__(
        self,
        width: int,
        height: int,
        visits: Visits | None = None,
        *,
        size: float = 0.55,  # of the frame's height
        feet: float = 0.95,  # where the bottom of the photo stands, fraction of the height
    ) -> None:
        self.width, self.height = width, height
        self.visits = visits or Visits()
        with resources.files("bridge.sources.assets").joinpath(PHOTO).open("rb") as f:
            photo = Image.open(f).convert("RGB")
        ph = max(16, round(height * size))
        pw = max(8, round(photo.width * ph / photo.height))
        self.cutout = np.ascontiguousarray(
            np.asarray(photo.resize((pw, ph), Image.Resampling.LANCZOS), dtype=np.uint8)
        )
        self.top = min(height - ph, round(height * feet) - ph)

    def left_edge(self, t: float) -> int | None:
        """x of the photo's left column at `t` (may be off the frame), None between walks."""
        at = self.visits.walk_at(t)
        if at is None:
            return None
        index, progress = at
        pw = self.cutout.shape[1]
        travel = progress * (self.width + pw)
        # Even walks go left to right, odd ones back: the yard is crossed both ways.
        return round(-pw + travel) if index % 2 == 0 else round(self.width - travel)

    def box(self, t: float) -> tuple[int, int, int, int] | None:
        """The part of the frame the person covers at `t` (x0, y0, x1, y1), None if none."""
        left = self.left_edge(t)
        return None if left is None else self._span(left)

    def draw(self, img: np.ndarray, t: float) -> None:
        """Paste the person into `img` (height x width x 3 uint8, in place) if they are in view."""
        left = self.left_edge(t)
        box = None if left is None else self._span(left)
        if box is None or left is None:
            return
        x0, y0, x1, y1 = box
        img[y0:y1, x0:x1] = self.cutout[:, x0 - left : x1 - left]

    def _span(self, left: int) -> tuple[int, int, int, int] | None:
        ph, pw = self.cutout.shape[:2]
        x0, x1 = max(0, left), min(self.width, left + pw)
        return (x0, self.top, x1, self.top + ph) if x1 > x0 else None
