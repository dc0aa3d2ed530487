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


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What a source's audio stream is: enough to build a decoder for its packets.

    Sources copy the camera's encoded audio (no decode); whoever consumes it (HKSV's AAC track,
    later live Opus and clip AAC) decodes it with these parameters, only while it is consumed.
    """

    codec: str  # FFmpeg decoder name: "aac", "pcm_alaw", "pcm_mulaw", "opus", "mp3", ...
    sample_rate: int  # Hz
    channels: int
    # Codec configuration (AAC's AudioSpecificConfig, Opus's OpusHead); b"" when none.
    extradata: bytes = b""
    bitrate_kbps: int | None = None  # when the source knows it

    def describe(self) -> str:
        """One line for logs, `camera probe` and doctor: "aac 16000 Hz mono"."""
        layout = {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels} ch")
        return f"{self.codec} {self.sample_rate} Hz {layout}"


@dataclass(frozen=True, slots=True)
class AudioPacket:
    """One encoded audio packet (an AAC access unit, 20 ms of G.711, an Opus packet...).

    `pts` is on the SAME clock as the camera's VideoPacket.pts (both rebased together), so a
    consumer lines sound up with pictures by comparing timestamps, never by arrival order.
    """

    data: bytes
    pts: float  # seconds, the source's video clock
    duration: float  # seconds; 0.0 when the codec does not say
    epoch: int = 0  # as VideoPacket.epoch: changes on every reconnect
