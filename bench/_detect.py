"""Detection benchmark helpers (issue #3): test clips, decoded frames, process CPU sampling.

The clips are real H.264 files written with PyAV (libx264), decoded back with PyAV, so the
pipeline sees the same yuv420p VideoFrames the bridge's decoder hands it. The crossing clip is
tests/peers/scenes.py's photographed person walking across a yard; the quiet clip is the same
yard with sensor noise and, optionally, a slow auto-exposure drift and nobody in it.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import av.video.frame
import numpy as np

from tests.peers.scenes import Truth, _background, write_crossing_clip

__all__ = [
    "Truth",
    "decode_frames",
    "write_crossing_clip",
    "write_quiet_clip",
]


def write_quiet_clip(
    path: Path,
    *,
    width: int = 1280,
    height: int = 720,
    fps: int = 5,
    seconds: float = 60.0,
    noise: float = 3.0,
    drift: float = 0.0,
    drift_period: float = 60.0,
    crf: int = 18,
) -> None:
    """A static yard (no subject) with per-frame Gaussian sensor noise (sigma `noise` grey
    levels) and an exposure drift: brightness x (1 + drift * sin(2 pi t / drift_period)).

    crf 18 (not x264's default 23) so that most of the sensor noise survives the encoder, as on
    a real camera at a normal bitrate; a smoother clip would make the gate's job easier.
    """
    background = _background(width, height).astype(np.float32)
    rng = np.random.default_rng(3)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(fps), "bf": "0", "crf": str(crf)}
        for i in range(round(seconds * fps)):
            t = i / fps
            gain = 1.0 + drift * math.sin(2 * math.pi * t / drift_period)
            img = background * gain
            img += rng.standard_normal(img.shape, dtype=np.float32) * noise
            vf = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), "rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def decode_frames(path: Path) -> list[av.video.frame.VideoFrame]:
    """Every frame of `path`, decoded (yuv420p, as the bridge's decoder delivers them)."""
    with av.open(str(path)) as container:
        return list(container.decode(video=0))
