"""Encoded media as it flows from a source to its consumers (prebuffer, live view, recorder)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a source's video stream is; known once the source is connected."""

    codec: str  # always "h264" for now: sources that deliver other codecs are re-encoded
    width: int
    height: int
    fps: float
    # SPS and PPS as Annex B (00 00 00 01 + NAL each); also repeated in front of every keyframe.
    parameter_sets: bytes
    profile: str = "main"  # "baseline" | "main" | "high" (from the SPS profile_idc)
    bitrate_kbps: int | None = None  # when the source knows it


@dataclass(frozen=True, slots=True)
class VideoPacket:
    """One H.264 access unit (one frame) in Annex B form.

    Keyframes always carry SPS and PPS in front of the IDR slice, so any consumer can start at
    any keyframe without out-of-band parameters.
    """

    data: bytes
    pts: float  # seconds on the source's clock (monotonic within one connection)
    keyframe: bool
    # Incremented on every reconnect: consumers that see it change know timestamps jumped.
    epoch: int = 0
