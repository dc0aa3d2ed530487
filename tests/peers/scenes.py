"""Synthetic but photographic test clips: a real photographed subject crosses a background.

The subject is the astronaut photo bundled with scikit-image (a person) or its cat, pasted on
a yard-like background and moved across the frame, so the ground truth (when the subject is in
view, and where) is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Truth:
    enters: float  # the subject's centre crosses into the frame
    leaves: float  # …and out of it
    y0: float  # normalised vertical extent of the subject
    y1: float


def _subject(kind: str, height: int) -> np.ndarray:
    from skimage import data

    if kind == "person":
        photo = data.astronaut()[:, 30:400]  # the astronaut, most of the flag and shuttle cut
    elif kind == "cat":
        photo = data.chelsea()
    else:
        raise ValueError(kind)
    img = Image.fromarray(photo)
    width = round(img.width * height / img.height)
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR))


def _background(width: int, height: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    sky = np.array([150, 180, 215], np.float32) * (1 - 0.3 * y)
    img = np.broadcast_to(sky, (height, width, 3)).copy()
    ground = int(height * 0.55)
    img[ground:] = (70, 105, 55)
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # texture, so it is not flat
    return np.clip(img, 0, 255).astype(np.uint8)


def write_crossing_clip(
    path: Path,
    *,
    kind: str = "person",
    width: int = 640,
    height: int = 360,
    fps: int = 15,
    seconds: float = 20.0,
    enter_at: float = 3.0,
    cross_seconds: float = 6.0,
    subject_height: float = 0.7,
    noise: float = 2.0,
) -> Truth:
    """An H.264 MP4 in which the subject walks left to right; returns the ground truth."""
    subject = _subject(kind, round(height * subject_height))
    sh, sw = subject.shape[:2]
    background = _background(width, height)
    top = height - sh - height // 20
    # The left edge travels from -sw to width: the centre is in the frame for width px of it.
    speed = (width + sw) / cross_seconds
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(fps), "bf": "0"}
        for i in range(int(seconds * fps)):
            t = i / fps
            frame = background.astype(np.int16)
            frame += rng.normal(0, noise, frame.shape).astype(np.int16)  # sensor noise
            left = round(-sw + (t - enter_at) * speed)
            x0, x1 = max(0, left), min(width, left + sw)
            if x1 > x0:
                frame[top : top + sh, x0:x1] = subject[:, x0 - left : x1 - left]
            vf = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), "rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    half = sw / 2 / speed
    return Truth(
        enters=enter_at + half,
        leaves=enter_at + cross_seconds - half,
        y0=top / height,
        y1=(top + sh) / height,
    )
