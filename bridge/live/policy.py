"""Copy or transcode? And if transcoding, with which encoder settings. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from accessories.backend import VideoRequest
from bridge.media.packet import StreamInfo

Mode = Literal["copy", "transcode"]
ModeSetting = Literal["auto", "copy", "transcode"]

MODE_SETTINGS: tuple[ModeSetting, ...] = ("auto", "copy", "transcode")


def choose_mode(
    request: VideoRequest,
    source: StreamInfo | None,
    setting: ModeSetting = "auto",
    *,
    fps_tolerance: float = 0.1,
    bitrate_headroom: float = 4.0,
) -> Mode:
    """Copy the camera's H.264 when it already satisfies the request, else transcode.

    - size must match exactly: HomeKit lays out the view for the negotiated size;
    - the controller must accept at least the source's frame rate (minus fps_tolerance, so a
      29.97 fps camera fits a 30 fps request); copy can't drop frames without re-encoding;
    - a known source bitrate may exceed the requested maximum by bitrate_headroom at most
      (iOS asks conservatively even on Wi-Fi, often a few hundred kbit/s: more is better than
      re-encoding's CPU, quality and latency cost; many times more stalls a slow link);
    - an unknown source (no StreamInfo yet) is transcoded: that output surely fits.

    The requested profile is not checked: Apple's decoders take baseline, main and high alike.
    """
    if setting not in MODE_SETTINGS:
        raise ValueError(f"mode must be one of {MODE_SETTINGS}, not {setting!r}")
    if setting != "auto":
        return setting
    if source is None or source.codec != "h264":
        return "transcode"
    if (request.width, request.height) != (source.width, source.height):
        return "transcode"
    if request.fps < source.fps * (1.0 - fps_tolerance):
        return "transcode"
    if (
        source.bitrate_kbps is not None
        and source.bitrate_kbps > request.max_bitrate_kbps * bitrate_headroom
    ):
        return "transcode"
    return "copy"


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    """What libx264 is asked for; derived from a VideoRequest."""

    width: int
    height: int
    fps: int
    bitrate_kbps: int
    profile: str = "main"
    level: str = "4.0"
    gop_seconds: float = 1.0
    preset: str = "veryfast"

    @property
    def gop_frames(self) -> int:
        return max(1, round(self.fps * self.gop_seconds))


_PROFILES = {"baseline": "baseline", "main": "main", "high": "high"}


def encoder_settings(
    request: VideoRequest, *, gop_seconds: float = 1.0, preset: str = "veryfast"
) -> EncoderSettings:
    """Encoder settings for a request: its size (even, as 4:2:0 needs), fps, bitrate, profile."""
    return EncoderSettings(
        width=max(2, request.width - request.width % 2),
        height=max(2, request.height - request.height % 2),
        fps=max(1, request.fps),
        bitrate_kbps=max(16, request.max_bitrate_kbps),
        profile=_PROFILES.get(request.profile, "main"),
        level=request.level,
        gop_seconds=gop_seconds,
        preset=preset,
    )
