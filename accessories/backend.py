"""What a camera accessory needs from the bridge, as small interfaces.

accessories/ knows HAP-python and these protocols only; bridge/ implements them on top of its
sources, snapshots and live-view sessions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
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
    has_audio: bool = False  # a Microphone service: the camera's sound in live view
    has_speaker: bool = False  # a Speaker service: the controller's voice to the camera


@dataclass(slots=True)
class SoundLevel:
    """A Microphone's or Speaker's Mute and Volume as the Home app last set them.

    The accessory writes it, the bridge's sound paths read it for every packet, so a change
    takes effect at once in streams already running."""

    muted: bool = False
    volume: int = 100  # percent

    @property
    def gain(self) -> float:
        return 0.0 if self.muted else max(0, min(self.volume, 100)) / 100.0


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
    # Audio (only for a camera with a Microphone and AES_CM_128 audio SRTP; empty key: none).
    # HomeKit keys audio apart from video: its own master key, port and SSRC.
    audio_srtp_key: bytes = b""
    audio_srtp_salt: bytes = b""
    audio_ssrc: int = 0  # our SSRC for the audio stream, reported back to the controller


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


@dataclass(frozen=True, slots=True)
class AudioRequest:
    """The negotiated audio of SelectedRTPStreamConfiguration: Opus, as the controller wants it.

    RTP time runs at `sample_rate` (HomeKit's clock for Opus, not RFC 7587's 48 kHz) and every
    packet carries exactly `packet_time_ms` of sound (20 ms on Wi-Fi, 60 ms on cellular).
    """

    sample_rate: int  # 8000 | 16000 | 24000
    packet_time_ms: int  # rtp_time: 10, 20, 40, 60...
    channels: int = 1
    payload_type: int = 110
    max_bitrate_kbps: int = 24
    variable_bitrate: bool = True
    rtcp_interval: float = 5.0  # minimum RTCP interval in seconds
    comfort_noise: bool = False

    @property
    def frame_samples(self) -> int:
        """Samples (per channel) in one packet: the RTP timestamp step."""
        return self.sample_rate * self.packet_time_ms // 1000


class LiveSession(Protocol):
    """One live-view stream to one controller; created by a LiveSessionFactory."""

    endpoints: StreamEndpoints

    @property
    def local_video_port(self) -> int:  # UDP port we send from / receive RTCP on
        ...

    @property
    def local_audio_port(self) -> int | None:
        """Our audio UDP port, or None without audio (the response then echoes the
        controller's own audio port, as HAP-NodeJS does for cameras without a microphone)."""

    async def start(self, request: VideoRequest, audio: AudioRequest | None = None) -> None:
        """Start streaming; `audio` is None when no sound is to be sent."""

    async def reconfigure(self, request: VideoRequest) -> None: ...

    async def stop(self) -> None:
        """Stop sending and release every resource (sockets, decoder, encoder, tasks)."""


class CameraBackend(Protocol):
    """The bridge side of one camera."""

    name: str
    microphone: SoundLevel  # read by live view's sound (only with has_audio)
    speaker: SoundLevel  # read by talk-back (only with has_speaker)

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


# ---- HomeKit Secure Video recording (issue #9) ----


@dataclass(frozen=True, slots=True)
class RecordingRequest:
    """What the hub selected (SelectedCameraRecordingConfiguration), as the media side needs it.

    Built by accessories/recording_tlv.py from the hub's TLV; consumed by the bridge's
    recording producer (bridge/record/hksv.py), which knows nothing of TLVs.
    """

    width: int
    height: int
    fps: int
    bitrate_kbps: int
    iframe_interval_ms: int  # the hub wants an IDR at least this often (4000 in practice)
    fragment_ms: int  # each mediaFragment lasts about this long and starts with an IDR
    prebuffer_ms: int  # how much before the trigger the recording starts (>= 4000)
    profile: str = "main"  # "baseline" | "main" | "high"
    level: str = "4.0"  # "3.1" | "3.2" | "4.0"
    audio_sample_rate: int = 32000  # Hz
    audio_channels: int = 1
    audio_bitrate_kbps: int = 64
    audio_active: bool = True  # RecordingAudioActive: False -> the AAC track carries silence


@dataclass(frozen=True, slots=True)
class RecordingChunk:
    """One piece of a recording for dataSend/data: the init segment or one fragment."""

    kind: str  # "init" (ftyp+moov, HDS mediaInitialization) | "fragment" (moof+mdat...)
    data: bytes
    sequence: int  # dataSequenceNumber: 1 for the init segment, then 2, 3, ...
    duration: float = 0.0  # seconds of media in a fragment (0 for the init segment)


class RecordingStream(Protocol):
    """The media of one HKSV recording: the init segment, then fragments, oldest first.

    Starts with the prebuffer (fragments already recorded are available at once), then follows
    the camera live. Never drops a fragment: a consumer that does not keep up simply iterates
    later (the producer bounds what it holds and ends the stream with RecordingFailed).
    """

    mode: str  # "copy" | "transcode"

    def __aiter__(self) -> AsyncIterator[RecordingChunk]: ...

    def finish(self) -> None:
        """End after the fragment in progress: it is flushed, then iteration stops."""

    async def close(self) -> None:
        """Stop at once and release everything (threads, codecs, subscription); idempotent."""


class RecordingFailed(Exception):
    """The recording's media cannot continue (camera gone, encoder failure, consumer too slow)."""


class RecordingBackend(Protocol):
    """The bridge side of one camera's HKSV recordings."""

    def open_recording(self, request: RecordingRequest) -> RecordingStream:
        """Start producing a recording; raises CameraUnavailable when the camera is down."""
