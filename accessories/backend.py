"""What a camera accessory needs from the bridge, as small interfaces.

accessories/ knows HAP-python and these protocols only; bridge/ implements them on top of its
sources, snapshots and live-view sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class CameraUnavailable(Exception):
    """The camera is down (or not yet connected): snapshots and live view cannot be served."""


@dataclass(frozen=True, slots=True)
class VideoCapabilities:
    """What we advertise to HomeKit in SupportedVideoStreamConfiguration."""

    native_width: int
    native_height: int
    native_fps: int
    max_streams: int = 2
    has_audio: bool = False


@dataclass(frozen=True, slots=True)
class StreamEndpoints:
    """The result of SetupEndpoints: where to send, with which keys, from which local port."""

    session_id: bytes  # 16-byte UUID chosen by the controller
    controller_address: str  # IPv4 or IPv6 literal
    controller_video_port: int
    controller_audio_port: int
    srtp_key: bytes  # 16-byte master key (AES_CM_128_HMAC_SHA1_80); used for what we send
    srtp_salt: bytes  # 14-byte master salt
    video_ssrc: int  # our SSRC for the video stream, reported back to the controller
    local_address: str  # the address the controller's packets arrive on (ours)


@dataclass(frozen=True, slots=True)
class VideoRequest:
    """The negotiated video parameters of SelectedRTPStreamConfiguration (start or reconfigure)."""

    width: int
    height: int
    fps: int
    max_bitrate_kbps: int
    payload_type: int = 99
    max_mtu: int = 1378  # HAP default for IPv4 when the controller sends none
    rtcp_interval: float = 0.5  # minimum RTCP interval in seconds
    profile: str = "main"  # requested H.264 profile: "baseline" | "main" | "high"
    level: str = "4.0"


class LiveSession(Protocol):
    """One live-view stream to one controller; created by a LiveSessionFactory."""

    endpoints: StreamEndpoints

    @property
    def local_video_port(self) -> int:  # UDP port we send from / receive RTCP on
        ...

    async def start(self, request: VideoRequest) -> None: ...

    async def reconfigure(self, request: VideoRequest) -> None: ...

    async def stop(self) -> None:
        """Stop sending and release every resource (sockets, decoder, encoder, tasks)."""


class CameraBackend(Protocol):
    """The bridge side of one camera."""

    name: str

    def capabilities(self) -> VideoCapabilities: ...

    async def snapshot(self, width: int, height: int) -> bytes:
        """A JPEG of the latest frame scaled to fit width x height; raises CameraUnavailable."""

    def open_live_session(
        self, endpoints: StreamEndpoints, on_end: Callable[[], None]
    ) -> LiveSession:
        """Reserve a session (binds its UDP socket at once so the local port is known).

        on_end is called (from the event loop) when the stream ends by itself, e.g. because the
        camera went away, so the accessory can set StreamingStatus back to available.
        """
