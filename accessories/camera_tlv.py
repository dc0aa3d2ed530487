"""TLV8 payloads of the CameraRTPStreamManagement service (HAP spec, "IP Cameras").

Builders for what we advertise and answer, parsers for what a controller writes. Parsers are
strict about what the bridge uses (session id, address, ports, SRTP, video parameters) and
tolerant about what it ignores: malformed input raises TLVError (a ValueError) with a message
naming the field. Audio is parsed in full (a camera with a Microphone sends Opus as selected),
but an audio selection we cannot serve (`audio_request`) costs the stream its sound, not its
picture. The controller address in SetupEndpoints must
be one host's unicast address (not broadcast, multicast, unspecified or link-local): the
bridge sends SRTP there.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from enum import IntEnum

from .backend import AudioRequest, VideoCapabilities, VideoRequest
from .tlv8 import TLV, TLVError, encode, read_f32, u8, u16, u32


class StreamingStatus(IntEnum):
    AVAILABLE = 0
    IN_USE = 1
    UNAVAILABLE = 2


class SetupStatus(IntEnum):
    SUCCESS = 0
    BUSY = 1
    ERROR = 2


class SessionCommand(IntEnum):
    END = 0
    START = 1
    SUSPEND = 2
    RESUME = 3
    RECONFIGURE = 4


class SRTPSuite(IntEnum):
    AES_CM_128_HMAC_SHA1_80 = 0
    AES_256_CM_HMAC_SHA1_80 = 1
    NONE = 2


H264_CODEC = 0
PACKETIZATION_NON_INTERLEAVED = 0
PROFILES = {0: "baseline", 1: "main", 2: "high"}
LEVELS = {0: "3.1", 1: "3.2", 2: "4.0"}
OPUS_CODEC = 3
_SAMPLE_RATE_16K, _SAMPLE_RATE_24K = 1, 2
SAMPLE_RATES = {0: 8000, _SAMPLE_RATE_16K: 16000, _SAMPLE_RATE_24K: 24000}
# Opus packet durations libopus can produce in one packet (30 ms is not one of them).
OPUS_PACKET_TIMES_MS = (10, 20, 40, 60, 80, 100, 120)
_SRTP_KEY_SIZES = {
    SRTPSuite.AES_CM_128_HMAC_SHA1_80: (16, 14),
    SRTPSuite.AES_256_CM_HMAC_SHA1_80: (32, 14),
    SRTPSuite.NONE: (0, 0),
}
DEFAULT_MTU_IPV4 = 1378
DEFAULT_MTU_IPV6 = 1228

# Sizes iOS picks from (as HAP-NodeJS camera plugins advertise them), largest first.
STANDARD_RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (1920, 1080), (1600, 1200), (1280, 960), (1280, 720), (1024, 768), (640, 480),
    (640, 360), (480, 360), (480, 270), (320, 240), (320, 180),
)  # fmt: skip
APPLE_WATCH_RESOLUTION = (320, 240, 15)  # Apple Watch only asks for this one
_MAX_FPS = 30
_MAX_NATIVE = (1920, 1200)  # larger native sizes are left out: iOS asks for standard ones


# ---- what we advertise ----


def video_resolutions(caps: VideoCapabilities) -> list[tuple[int, int, int]]:
    """Native size (when iOS can ask for it) plus every standard size that fits inside it."""
    if caps.native_width <= 0 or caps.native_height <= 0 or caps.native_fps <= 0:
        raise ValueError(f"invalid camera capabilities: {caps}")
    fps = min(caps.native_fps, _MAX_FPS)
    sizes = [
        (w, h)
        for w, h in STANDARD_RESOLUTIONS
        if w <= caps.native_width and h <= caps.native_height
    ]
    native = (caps.native_width, caps.native_height)
    if native not in sizes and native[0] <= _MAX_NATIVE[0] and native[1] <= _MAX_NATIVE[1]:
        sizes.append(native)
    if not sizes:  # a tiny camera: offer its own size and let iOS scale
        sizes.append(native)
    sizes.sort(key=lambda s: s[0] * s[1], reverse=True)
    result = [(w, h, fps) for w, h in sizes]
    if APPLE_WATCH_RESOLUTION not in result:
        result.append(APPLE_WATCH_RESOLUTION)  # scaled down by the live session if needed
    return result


def supported_video_config(caps: VideoCapabilities) -> bytes:
    """SupportedVideoStreamConfiguration: H.264, all profiles and levels, our sizes."""
    codec_params = encode(
        [
            (1, [u8(p) for p in PROFILES]),
            (2, [u8(level) for level in LEVELS]),
            (3, u8(PACKETIZATION_NON_INTERLEAVED)),
        ]
    )
    attributes = [
        encode([(1, u16(w)), (2, u16(h)), (3, u8(fps))]) for w, h, fps in video_resolutions(caps)
    ]
    codec_config = encode([(1, u8(H264_CODEC)), (2, codec_params), (3, attributes)])
    return encode([(1, codec_config)])


def supported_rtp_config() -> bytes:
    """SupportedRTPConfiguration: SRTP with AES_CM_128_HMAC_SHA1_80 only."""
    return encode([(2, u8(SRTPSuite.AES_CM_128_HMAC_SHA1_80))])


def supported_audio_config() -> bytes:
    """SupportedAudioStreamConfiguration.

    Opus, mono, variable bitrate, 16 and 24 kHz, no comfort noise: what a camera with a
    Microphone sends (bridge/live/audio.py). iOS refuses to start a stream unless it finds an
    audio codec it knows, even for a camera without a microphone, so a camera without audio
    advertises the same (as HAP-NodeJS does for video-only cameras; the Apple Watch wants Opus
    at 16 kHz); without a Microphone service the audio the controller selects is ignored.
    """
    params = encode([(1, u8(1)), (2, u8(0)), (3, [u8(_SAMPLE_RATE_16K), u8(_SAMPLE_RATE_24K)])])
    codec = encode([(1, u8(OPUS_CODEC)), (2, params)])
    return encode([(1, codec), (2, u8(0))])


def streaming_status(status: StreamingStatus) -> bytes:
    return encode([(1, u8(status))])


# ---- SetupEndpoints ----


@dataclass(frozen=True, slots=True)
class SRTPParams:
    suite: SRTPSuite
    key: bytes
    salt: bytes

    def to_tlv(self) -> bytes:
        return encode([(1, u8(self.suite)), (2, self.key), (3, self.salt)])


NO_SRTP = SRTPParams(SRTPSuite.NONE, b"", b"")


@dataclass(frozen=True, slots=True)
class SetupEndpointsRequest:
    session_id: bytes
    ipv6: bool
    controller_address: str
    video_port: int
    audio_port: int
    video_srtp: SRTPParams
    audio_srtp: SRTPParams


def _parse_srtp(record: TLV) -> SRTPParams:
    raw_suite = record.uint(1, "crypto suite", 1)
    try:
        suite = SRTPSuite(raw_suite)
    except ValueError:
        raise TLVError(f"{record.what}: unknown SRTP crypto suite {raw_suite}") from None
    key = record.first(2) or b""
    salt = record.first(3) or b""
    want_key, want_salt = _SRTP_KEY_SIZES[suite]
    if len(key) != want_key or len(salt) != want_salt:
        raise TLVError(
            f"{record.what}: {suite.name} needs a {want_key}-byte key and {want_salt}-byte salt, "
            f"got {len(key)} and {len(salt)}"
        )
    return SRTPParams(suite, key, salt)


def _port(record: TLV, tag: int, name: str) -> int:
    port = record.uint(tag, name, 2)
    if port == 0:
        raise TLVError(f"{record.what}: {name} is 0")
    return port


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host on this network": a source only


def _check_unicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, what: str) -> None:
    """The controller address receives our SRTP: it must name one host we may send to.

    A paired controller could otherwise point a camera's stream at a broadcast or multicast
    group (every host on the LAN receives it), at 0.0.0.0 / :: (the bridge itself, on some
    systems) or at a link-local address. Loopback stays allowed (a controller on this host)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip in _THIS_NETWORK:
        kind = "unspecified"
    elif ip.is_multicast:
        kind = "multicast"
    elif isinstance(ip, ipaddress.IPv4Address) and ip.is_reserved:  # 240/4, 255.255.255.255
        kind = "broadcast or reserved"
    elif ip.is_link_local:
        kind = "link-local"
    else:
        return
    raise TLVError(f"{what}: {ip} is not one host's unicast address ({kind})")


def parse_setup_endpoints(data: bytes) -> SetupEndpointsRequest:
    """A controller's SetupEndpoints write (raw TLV bytes, not base64)."""
    root = TLV.parse(data, "SetupEndpoints")
    session_id = root.require(1, "session id")
    if len(session_id) != 16:
        raise TLVError(f"SetupEndpoints: session id must be 16 bytes, got {len(session_id)}")
    addr = root.nested(3, "controller address")
    version = addr.uint(1, "ip version", 1)
    if version not in (0, 1):
        raise TLVError(f"{addr.what}: unknown ip version {version}")
    raw_ip = addr.require(2, "address")
    try:
        ip = ipaddress.ip_address(raw_ip.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise TLVError(f"{addr.what}: not an IP address: {raw_ip[:64]!r}") from None
    if ip.version != (6 if version else 4):
        raise TLVError(f"{addr.what}: {ip} does not match ip version {version}")
    _check_unicast(ip, addr.what)
    video_port = _port(addr, 3, "video port")
    audio_port = addr.optional_uint(4, "audio port", 2) or video_port
    video_srtp = _parse_srtp(root.nested(4, "video srtp"))
    # Echoed in any case; used only by a camera with a Microphone. Absent means none.
    audio = root.optional_nested(5, "audio srtp")
    audio_srtp = _parse_srtp(audio) if audio is not None else NO_SRTP
    return SetupEndpointsRequest(
        session_id=session_id,
        ipv6=bool(version),
        controller_address=str(ip),
        video_port=video_port,
        audio_port=audio_port,
        video_srtp=video_srtp,
        audio_srtp=audio_srtp,
    )


def setup_endpoints_response(
    request: SetupEndpointsRequest,
    *,
    local_address: str,
    video_port: int,
    audio_port: int,
    video_ssrc: int,
    audio_ssrc: int,
) -> bytes:
    """Successful SetupEndpoints answer: our address and ports, echoed SRTP, our SSRCs."""
    address = encode(
        [
            (1, u8(1 if request.ipv6 else 0)),
            (2, local_address.encode("ascii")),
            (3, u16(video_port)),
            (4, u16(audio_port)),
        ]
    )
    return encode(
        [
            (1, request.session_id),
            (2, u8(SetupStatus.SUCCESS)),
            (3, address),
            (4, request.video_srtp.to_tlv()),
            (5, request.audio_srtp.to_tlv()),
            (6, u32(video_ssrc)),
            (7, u32(audio_ssrc)),
        ]
    )


def setup_endpoints_status(status: SetupStatus, session_id: bytes | None = None) -> bytes:
    """A SetupEndpoints answer carrying only a status (busy / error)."""
    items: list[tuple[int, bytes]] = [] if session_id is None else [(1, session_id)]
    items.append((2, u8(status)))
    return encode(items)


# ---- SelectedRTPStreamConfiguration ----


@dataclass(frozen=True, slots=True)
class SelectedVideo:
    """Selected video parameters; fields are None where the write left them out."""

    codec: int | None = None
    profile: int | None = None
    level: int | None = None
    packetization_mode: int | None = None
    width: int | None = None
    height: int | None = None
    fps: int | None = None
    payload_type: int | None = None
    ssrc: int | None = None
    max_bitrate_kbps: int | None = None
    rtcp_interval: float | None = None
    max_mtu: int | None = None


@dataclass(frozen=True, slots=True)
class SelectedAudio:
    """Selected audio parameters; fields are None where the write left them out."""

    codec: int | None = None
    channels: int | None = None
    bitrate_mode: int | None = None  # 0 variable, 1 constant
    sample_rate: int | None = None  # HAP code: 0 8 kHz, 1 16 kHz, 2 24 kHz
    packet_time_ms: int | None = None  # rtp_time
    payload_type: int | None = None
    ssrc: int | None = None  # the controller's
    max_bitrate_kbps: int | None = None
    rtcp_interval: float | None = None
    comfort_noise_payload_type: int | None = None
    comfort_noise: bool | None = None


@dataclass(frozen=True, slots=True)
class SelectedStreamConfig:
    session_id: bytes
    command: SessionCommand
    video: SelectedVideo | None
    audio: SelectedAudio | None = None

    @property
    def audio_present(self) -> bool:
        return self.audio is not None


def parse_selected_stream_config(data: bytes) -> SelectedStreamConfig:
    """A controller's SelectedRTPStreamConfiguration write (raw TLV bytes)."""
    root = TLV.parse(data, "SelectedRTPStreamConfiguration")
    control = root.nested(1, "session control")
    session_id = control.require(1, "session id")
    if len(session_id) != 16:
        raise TLVError(f"{control.what}: session id must be 16 bytes, got {len(session_id)}")
    raw_command = control.uint(2, "command", 1)
    try:
        command = SessionCommand(raw_command)
    except ValueError:
        raise TLVError(f"{control.what}: unknown command {raw_command}") from None
    video_tlv = root.optional_nested(2, "video")
    video = _parse_selected_video(video_tlv) if video_tlv is not None else None
    audio_tlv = root.optional_nested(3, "audio")
    audio = _parse_selected_audio(audio_tlv) if audio_tlv is not None else None
    return SelectedStreamConfig(session_id, command, video, audio)


def _parse_selected_audio(audio: TLV) -> SelectedAudio:
    params = audio.optional_nested(2, "codec parameters")
    rtp = audio.optional_nested(3, "rtp parameters")
    interval = None
    if rtp is not None and (raw := rtp.first(4)) is not None:
        interval = read_f32(raw, f"{rtp.what}.min rtcp interval")
    noise = audio.optional_uint(4, "comfort noise", 1)
    return SelectedAudio(
        codec=audio.optional_uint(1, "codec", 1),
        channels=params.optional_uint(1, "channels", 1) if params else None,
        bitrate_mode=params.optional_uint(2, "bitrate mode", 1) if params else None,
        sample_rate=params.optional_uint(3, "sample rate", 1) if params else None,
        packet_time_ms=params.optional_uint(4, "rtp time", 1) if params else None,
        payload_type=rtp.optional_uint(1, "payload type", 1) if rtp else None,
        ssrc=rtp.optional_uint(2, "ssrc", 4) if rtp else None,
        max_bitrate_kbps=rtp.optional_uint(3, "max bitrate", 2) if rtp else None,
        rtcp_interval=interval,
        comfort_noise_payload_type=rtp.optional_uint(6, "comfort noise payload type", 1)
        if rtp
        else None,
        comfort_noise=bool(noise) if noise is not None else None,
    )


def audio_request(audio: SelectedAudio | None) -> AudioRequest | None:
    """The Opus stream to send for a START (None: the controller selected no audio).

    Raises TLVError naming the field when the selection is not one we can serve (another
    codec, an unknown sample rate, a packet time Opus cannot have, more than two channels):
    the caller then streams the picture alone.
    """
    if audio is None:
        return None
    what = "SelectedRTPStreamConfiguration.audio"
    if audio.codec != OPUS_CODEC:
        raise TLVError(f"{what}: codec {audio.codec} is not Opus ({OPUS_CODEC})")
    rate = SAMPLE_RATES.get(audio.sample_rate if audio.sample_rate is not None else -1)
    if rate is None:
        raise TLVError(f"{what}: unknown sample rate {audio.sample_rate}")
    ptime = audio.packet_time_ms or 20  # HAP's default when left out
    if ptime not in OPUS_PACKET_TIMES_MS:
        raise TLVError(f"{what}: rtp time {ptime} ms is not an Opus packet duration")
    channels = audio.channels or 1
    if channels not in (1, 2):
        raise TLVError(f"{what}: {channels} channels (1 or 2)")
    interval = audio.rtcp_interval
    if interval is None or not 0 < interval < 3600:
        interval = 5.0
    return AudioRequest(
        sample_rate=rate,
        packet_time_ms=ptime,
        channels=channels,
        payload_type=audio.payload_type or 110,
        max_bitrate_kbps=audio.max_bitrate_kbps or 24,
        variable_bitrate=audio.bitrate_mode != 1,
        rtcp_interval=interval,
        comfort_noise=bool(audio.comfort_noise),
    )


def _parse_selected_video(video: TLV) -> SelectedVideo:
    params = video.optional_nested(2, "codec parameters")
    attrs = video.optional_nested(3, "attributes")
    rtp = video.optional_nested(4, "rtp parameters")
    interval = None
    if rtp is not None and (raw := rtp.first(4)) is not None:
        interval = read_f32(raw, f"{rtp.what}.min rtcp interval")
    return SelectedVideo(
        codec=video.optional_uint(1, "codec", 1),
        profile=params.optional_uint(1, "profile", 1) if params else None,
        level=params.optional_uint(2, "level", 1) if params else None,
        packetization_mode=params.optional_uint(3, "packetization mode", 1) if params else None,
        width=attrs.optional_uint(1, "width", 2) if attrs else None,
        height=attrs.optional_uint(2, "height", 2) if attrs else None,
        fps=attrs.optional_uint(3, "fps", 1) if attrs else None,
        payload_type=rtp.optional_uint(1, "payload type", 1) if rtp else None,
        ssrc=rtp.optional_uint(2, "ssrc", 4) if rtp else None,
        max_bitrate_kbps=rtp.optional_uint(3, "max bitrate", 2) if rtp else None,
        rtcp_interval=interval,
        max_mtu=rtp.optional_uint(5, "max mtu", 2) if rtp else None,
    )


def video_request(
    video: SelectedVideo | None, *, ipv6: bool, base: VideoRequest | None = None
) -> VideoRequest:
    """Turn selected parameters into a VideoRequest.

    For a start (``base`` None) size, fps and bitrate are required and the codec must be H.264
    in non-interleaved mode; a reconfigure (``base`` given) changes only what it carries. No
    size beyond the largest we advertise; frame rates above ours are capped to it.
    """
    if video is None:
        raise TLVError("SelectedRTPStreamConfiguration: missing video parameters")
    if video.codec not in (None, H264_CODEC):
        raise TLVError(f"SelectedRTPStreamConfiguration: unsupported video codec {video.codec}")
    if video.packetization_mode not in (None, PACKETIZATION_NON_INTERLEAVED):
        raise TLVError(
            f"SelectedRTPStreamConfiguration: unsupported packetization {video.packetization_mode}"
        )
    profile = _lookup(PROFILES, video.profile, "profile")
    level = _lookup(LEVELS, video.level, "level")
    required = ("width", "height", "fps", "max_bitrate_kbps")
    if base is None and any(not getattr(video, name) for name in required):
        missing = [name for name in required if not getattr(video, name)]
        raise TLVError(f"SelectedRTPStreamConfiguration: missing or zero video {missing}")
    # Sizes come from what we advertise (never above _MAX_NATIVE); a larger one would have the
    # transcoder allocate frames of up to 65535x65535. A higher frame rate is served at ours.
    if (video.width or 0) > _MAX_NATIVE[0] or (video.height or 0) > _MAX_NATIVE[1]:
        raise TLVError(
            f"SelectedRTPStreamConfiguration: {video.width}x{video.height} is larger than "
            f"any size offered ({_MAX_NATIVE[0]}x{_MAX_NATIVE[1]} at most)"
        )
    interval = video.rtcp_interval
    if interval is not None and not 0 < interval < 3600:  # reconfigures often send 0
        interval = None
    changes = {
        "width": video.width,
        "height": video.height,
        "fps": min(video.fps, _MAX_FPS) if video.fps else None,
        "max_bitrate_kbps": video.max_bitrate_kbps,
        "payload_type": video.payload_type,
        "max_mtu": video.max_mtu,
        "rtcp_interval": interval,
        "profile": profile,
        "level": level,
    }
    given = {k: v for k, v in changes.items() if v}  # None or 0: not given
    if base is not None:
        return replace(base, **given)
    given.setdefault("max_mtu", DEFAULT_MTU_IPV6 if ipv6 else DEFAULT_MTU_IPV4)
    return VideoRequest(**given)


def _lookup(table: dict[int, str], key: int | None, name: str) -> str | None:
    if key is None:
        return None
    try:
        return table[key]
    except KeyError:
        raise TLVError(f"SelectedRTPStreamConfiguration: unknown H.264 {name} {key}") from None
