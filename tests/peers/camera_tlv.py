"""The controller side of HomeKit's camera characteristics: our own TLV8 and camera messages.

Tests play Apple's Home app against the bridge, so everything a controller writes is built here,
independently of the bridge's own codec (a shared codec would hide a shared bug). Tag numbers
are the HAP spec's (cross-checked with HAP-NodeJS's RTPStreamManagement and HAP-python's
camera); parsers work on raw bytes because aiohomekit's decoded TLV views keep only the last of
repeated entries.
"""

from __future__ import annotations

import base64
import os
import struct
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohomekit.controller.ip import IpPairing

from tests.peers.homekit import StreamManagement, read_value, write_with_response

# --------------------------------------------------------------------------------------------
# TLV8: our own few lines (the peer must not share the bridge's codec)
# --------------------------------------------------------------------------------------------

TlvValue = bytes | int | str | list[tuple[int, "TlvValue"]]

SEPARATOR = 0xFF


def u8(v: int) -> bytes:
    return struct.pack("<B", v)


def u16(v: int) -> bytes:
    return struct.pack("<H", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def f32(v: float) -> bytes:
    return struct.pack("<f", v)


def tlv8_encode(items: Iterable[tuple[int, TlvValue]], separator: int = SEPARATOR) -> bytes:
    """Encode (type, value) items in order. bytes as is, int as one byte, str as UTF-8, a list
    as a nested TLV8. Values over 255 bytes are fragmented; consecutive items of the same type
    get a separator so that readers do not merge them (0xFF in the camera TLVs, 0x00 in the
    recording ones)."""
    out = bytearray()
    prev: int | None = None
    for tag, value in items:
        if isinstance(value, list):
            data = tlv8_encode(value, separator)
        elif isinstance(value, str):
            data = value.encode()
        elif isinstance(value, int):
            data = u8(value)
        else:
            data = bytes(value)
        if tag == prev:
            out += bytes((separator, 0))
        chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        for chunk in chunks:
            out += bytes((tag, len(chunk))) + chunk
        prev = tag
    return bytes(out)


def tlv8_decode(data: bytes | str, separator: int = SEPARATOR) -> list[tuple[int, bytes]]:
    """Decode one level into (type, value) items, order and repeats kept. A fragment of exactly
    255 bytes continues into the next item of the same type; separators are dropped."""
    if isinstance(data, str):
        data = from_b64(data)
    items: list[tuple[int, bytes]] = []
    i = 0
    continues = False
    while i < len(data):
        if i + 2 > len(data):
            raise ValueError(f"truncated TLV8 header at byte {i}")
        tag, length = data[i], data[i + 1]
        value = data[i + 2 : i + 2 + length]
        if len(value) != length:
            raise ValueError(f"truncated TLV8 value for type {tag} at byte {i}")
        i += 2 + length
        if continues and items and items[-1][0] == tag:
            items[-1] = (tag, items[-1][1] + value)
        elif tag == separator and length == 0:
            pass
        else:
            items.append((tag, value))
        continues = length == 255
    return items


def tlv_first(items: list[tuple[int, bytes]], tag: int) -> bytes | None:
    return next((v for t, v in items if t == tag), None)


def tlv_all(items: list[tuple[int, bytes]], tag: int) -> list[bytes]:
    return [v for t, v in items if t == tag]


def tlv_req(items: list[tuple[int, bytes]], tag: int, what: str) -> bytes:
    v = tlv_first(items, tag)
    if v is None:
        raise ValueError(f"missing TLV type {tag} ({what})")
    return v


def le_int(b: bytes) -> int:
    """Little-endian integer of any width (HAP-python sends some 1-byte fields as 2 bytes)."""
    return int.from_bytes(b, "little")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def from_b64(value: str | bytes) -> bytes:
    return base64.b64decode(value) if isinstance(value, str) else bytes(value)


# --------------------------------------------------------------------------------------------
# Camera TLVs: tag numbers from the HAP spec
# --------------------------------------------------------------------------------------------

# SetupEndpoints (request and response)
SE_SESSION_ID, SE_STATUS, SE_ADDRESS, SE_VIDEO_SRTP, SE_AUDIO_SRTP = 1, 2, 3, 4, 5
SE_VIDEO_SSRC, SE_AUDIO_SSRC = 6, 7
ADDR_VERSION, ADDR_ADDRESS, ADDR_VIDEO_PORT, ADDR_AUDIO_PORT = 1, 2, 3, 4
SRTP_SUITE, SRTP_KEY, SRTP_SALT = 1, 2, 3
SRTP_AES_CM_128_HMAC_SHA1_80, SRTP_AES_256_CM_HMAC_SHA1_80, SRTP_NONE = 0, 1, 2
SETUP_SUCCESS, SETUP_BUSY, SETUP_ERROR = 0, 1, 2

# SelectedRTPStreamConfiguration
SEL_SESSION_CONTROL, SEL_VIDEO, SEL_AUDIO = 1, 2, 3
CTRL_SESSION_ID, CTRL_COMMAND = 1, 2
CMD_END, CMD_START, CMD_SUSPEND, CMD_RESUME, CMD_RECONFIGURE = 0, 1, 2, 3, 4
COMMANDS = {
    "stop": CMD_END,
    "end": CMD_END,
    "start": CMD_START,
    "suspend": CMD_SUSPEND,
    "resume": CMD_RESUME,
    "reconfigure": CMD_RECONFIGURE,
}
# video parameters (selected and supported)
V_CODEC_TYPE, V_CODEC_PARAMS, V_ATTRIBUTES, V_RTP_PARAMS = 1, 2, 3, 4
VP_PROFILE, VP_LEVEL, VP_PACKETIZATION, VP_CVO_ENABLED, VP_CVO_ID = 1, 2, 3, 4, 5
VA_WIDTH, VA_HEIGHT, VA_FPS = 1, 2, 3
RTP_PAYLOAD_TYPE, RTP_SSRC, RTP_MAX_BITRATE, RTP_MIN_RTCP_INTERVAL, RTP_MAX_MTU = 1, 2, 3, 4, 5
RTP_COMFORT_NOISE_PT = 6
CODEC_H264 = 0
PROFILES = {"baseline": 0, "main": 1, "high": 2}
LEVELS = {"3.1": 0, "3.2": 1, "4.0": 2}
# audio parameters
A_CODEC_TYPE, A_CODEC_PARAMS, A_RTP_PARAMS, A_COMFORT_NOISE = 1, 2, 3, 4
AP_CHANNELS, AP_BITRATE_MODE, AP_SAMPLE_RATE, AP_PACKET_TIME = 1, 2, 3, 4
AUDIO_CODECS = {"pcmu": 0, "pcma": 1, "aac-eld": 2, "opus": 3, "msbc": 4, "amr": 5, "amr-wb": 6}
SAMPLE_RATES = {8: 0, 16: 1, 24: 2}
# Supported*Configuration
SUP_VIDEO_CODEC_CONFIG = 1
SUP_AUDIO_CODEC_CONFIG, SUP_AUDIO_COMFORT_NOISE = 1, 2
SUP_RTP_CRYPTO_SUITE = 2
# StreamingStatus
STREAMING_STATUS = 1
STATUS_AVAILABLE, STATUS_IN_USE, STATUS_UNAVAILABLE = 0, 1, 2


@dataclass(frozen=True)
class SrtpParams:
    suite: int = SRTP_AES_CM_128_HMAC_SHA1_80
    master_key: bytes = b""
    master_salt: bytes = b""

    @classmethod
    def random(cls) -> SrtpParams:
        """AES_CM_128_HMAC_SHA1_80: a 16-byte master key and a 14-byte master salt."""
        return cls(SRTP_AES_CM_128_HMAC_SHA1_80, os.urandom(16), os.urandom(14))

    def items(self) -> list[tuple[int, TlvValue]]:
        return [
            (SRTP_SUITE, self.suite),
            (SRTP_KEY, self.master_key),
            (SRTP_SALT, self.master_salt),
        ]

    @classmethod
    def parse(cls, raw: bytes) -> SrtpParams:
        t = tlv8_decode(raw)
        return cls(
            suite=le_int(tlv_req(t, SRTP_SUITE, "crypto suite")),
            master_key=tlv_first(t, SRTP_KEY) or b"",
            master_salt=tlv_first(t, SRTP_SALT) or b"",
        )


@dataclass(frozen=True)
class Endpoint:
    address: str
    video_port: int
    audio_port: int
    ipv6: bool = False

    def items(self) -> list[tuple[int, TlvValue]]:
        return [
            (ADDR_VERSION, int(self.ipv6)),
            (ADDR_ADDRESS, self.address),
            (ADDR_VIDEO_PORT, u16(self.video_port)),
            (ADDR_AUDIO_PORT, u16(self.audio_port)),
        ]

    @classmethod
    def parse(cls, raw: bytes) -> Endpoint:
        t = tlv8_decode(raw)
        return cls(
            address=tlv_req(t, ADDR_ADDRESS, "address").decode(),
            video_port=le_int(tlv_req(t, ADDR_VIDEO_PORT, "video port")),
            audio_port=le_int(tlv_req(t, ADDR_AUDIO_PORT, "audio port")),
            ipv6=bool(le_int(tlv_req(t, ADDR_VERSION, "address version"))),
        )


@dataclass(frozen=True)
class SetupEndpointsRequest:
    """What the controller writes: where it listens and the keys it wants used."""

    session_id: bytes
    controller: Endpoint
    video_srtp: SrtpParams
    audio_srtp: SrtpParams

    @classmethod
    def new(
        cls,
        video_port: int,
        audio_port: int,
        *,
        address: str = "127.0.0.1",
        session_id: bytes | None = None,
    ) -> SetupEndpointsRequest:
        """A fresh session id and fresh SRTP keys for both streams (iOS always sends both)."""
        return cls(
            session_id=session_id or uuid.uuid4().bytes,
            controller=Endpoint(address, video_port, audio_port, ipv6=":" in address),
            video_srtp=SrtpParams.random(),
            audio_srtp=SrtpParams.random(),
        )

    def encode(self) -> bytes:
        return tlv8_encode(
            [
                (SE_SESSION_ID, self.session_id),
                (SE_ADDRESS, self.controller.items()),
                (SE_VIDEO_SRTP, self.video_srtp.items()),
                (SE_AUDIO_SRTP, self.audio_srtp.items()),
            ]
        )

    def b64(self) -> str:
        return b64(self.encode())


@dataclass(frozen=True)
class SetupEndpointsResponse:
    """What the accessory answers: its own address/ports, its keys and SSRCs."""

    session_id: bytes
    status: int
    accessory: Endpoint | None
    video_srtp: SrtpParams | None
    audio_srtp: SrtpParams | None
    video_ssrc: int | None
    audio_ssrc: int | None

    @classmethod
    def parse(cls, raw: bytes | str) -> SetupEndpointsResponse:
        t = tlv8_decode(raw)

        def opt(tag: int, conv: Callable[[bytes], Any]) -> Any:
            v = tlv_first(t, tag)
            return conv(v) if v is not None else None

        return cls(
            session_id=tlv_req(t, SE_SESSION_ID, "session id"),
            status=le_int(tlv_req(t, SE_STATUS, "status")),
            accessory=opt(SE_ADDRESS, Endpoint.parse),
            video_srtp=opt(SE_VIDEO_SRTP, SrtpParams.parse),
            audio_srtp=opt(SE_AUDIO_SRTP, SrtpParams.parse),
            video_ssrc=opt(SE_VIDEO_SSRC, le_int),
            audio_ssrc=opt(SE_AUDIO_SSRC, le_int),
        )


@dataclass(frozen=True)
class AudioSelection:
    """Selected audio parameters. Defaults are what iOS asks of a camera that offers Opus."""

    codec: str = "opus"
    channels: int = 1
    variable_bitrate: bool = True
    sample_rate_khz: int = 16
    packet_time_ms: int = 20
    payload_type: int = 110
    ssrc: int = 0x0A0B0C0D
    max_bitrate_kbps: int = 24
    rtcp_interval: float = 5.0
    comfort_noise_payload_type: int = 13
    comfort_noise: bool = False

    def items(self) -> list[tuple[int, TlvValue]]:
        return [
            (A_CODEC_TYPE, AUDIO_CODECS[self.codec.lower()]),
            (
                A_CODEC_PARAMS,
                [
                    (AP_CHANNELS, self.channels),
                    (AP_BITRATE_MODE, 0 if self.variable_bitrate else 1),
                    (AP_SAMPLE_RATE, SAMPLE_RATES[self.sample_rate_khz]),
                    (AP_PACKET_TIME, self.packet_time_ms),
                ],
            ),
            (
                A_RTP_PARAMS,
                [
                    (RTP_PAYLOAD_TYPE, self.payload_type),
                    (RTP_SSRC, u32(self.ssrc)),
                    (RTP_MAX_BITRATE, u16(self.max_bitrate_kbps)),
                    (RTP_MIN_RTCP_INTERVAL, f32(self.rtcp_interval)),
                    (RTP_COMFORT_NOISE_PT, self.comfort_noise_payload_type),
                ],
            ),
            (A_COMFORT_NOISE, int(self.comfort_noise)),
        ]


@dataclass(frozen=True)
class VideoSelection:
    """Selected video parameters (start and reconfigure). Defaults resemble an iPhone on Wi-Fi."""

    width: int = 1280
    height: int = 720
    fps: int = 30
    payload_type: int = 99
    ssrc: int = 0x01020304
    max_bitrate_kbps: int = 299
    rtcp_interval: float = 0.5
    max_mtu: int | None = 1378
    profile: str = "main"
    level: str = "4.0"
    cvo: bool = False

    def items(self) -> list[tuple[int, TlvValue]]:
        params: list[tuple[int, TlvValue]] = [
            (VP_PROFILE, PROFILES[self.profile]),
            (VP_LEVEL, LEVELS[self.level]),
            (VP_PACKETIZATION, 0),  # non-interleaved, the only mode HAP has
            (VP_CVO_ENABLED, int(self.cvo)),
        ]
        rtp: list[tuple[int, TlvValue]] = [
            (RTP_PAYLOAD_TYPE, self.payload_type),
            (RTP_SSRC, u32(self.ssrc)),
            (RTP_MAX_BITRATE, u16(self.max_bitrate_kbps)),
            (RTP_MIN_RTCP_INTERVAL, f32(self.rtcp_interval)),
        ]
        if self.max_mtu is not None:
            rtp.append((RTP_MAX_MTU, u16(self.max_mtu)))
        return [
            (V_CODEC_TYPE, CODEC_H264),
            (V_CODEC_PARAMS, params),
            (
                V_ATTRIBUTES,
                [(VA_WIDTH, u16(self.width)), (VA_HEIGHT, u16(self.height)), (VA_FPS, self.fps)],
            ),
            (V_RTP_PARAMS, rtp),
        ]


def selected_stream_config(
    command: int | str,
    session_id: bytes,
    video: VideoSelection | None = None,
    audio: AudioSelection | None = None,
) -> bytes:
    """SelectedRTPStreamConfiguration: session control, then video/audio when given."""
    cmd = COMMANDS[command] if isinstance(command, str) else command
    items: list[tuple[int, TlvValue]] = [
        (SEL_SESSION_CONTROL, [(CTRL_SESSION_ID, session_id), (CTRL_COMMAND, cmd)]),
    ]
    if video is not None:
        items.append((SEL_VIDEO, video.items()))
    if audio is not None:
        items.append((SEL_AUDIO, audio.items()))
    return tlv8_encode(items)


def start_stream_config(
    session_id: bytes, video: VideoSelection | None = None, audio: AudioSelection | None = None
) -> bytes:
    """START as iOS sends it: video and audio parameters both present."""
    return selected_stream_config(
        CMD_START, session_id, video or VideoSelection(), audio or AudioSelection()
    )


def reconfigure_stream_config(session_id: bytes, video: VideoSelection) -> bytes:
    """RECONFIGURE: new video attributes/bitrate for a running session (no audio)."""
    return selected_stream_config(CMD_RECONFIGURE, session_id, video)


def stop_stream_config(session_id: bytes) -> bytes:
    """END: session control only."""
    return selected_stream_config(CMD_END, session_id)


@dataclass(frozen=True)
class SelectedStreamConfig:
    """A parsed SelectedRTPStreamConfiguration (reading back what the accessory holds)."""

    session_id: bytes
    command: int
    video: VideoSelection | None

    @classmethod
    def parse(cls, raw: bytes | str) -> SelectedStreamConfig:
        t = tlv8_decode(raw)
        ctrl = tlv8_decode(tlv_req(t, SEL_SESSION_CONTROL, "session control"))
        video = None
        if (vraw := tlv_first(t, SEL_VIDEO)) is not None:
            v = tlv8_decode(vraw)
            params = tlv8_decode(tlv_first(v, V_CODEC_PARAMS) or b"")
            attrs = tlv8_decode(tlv_req(v, V_ATTRIBUTES, "video attributes"))
            rtp = tlv8_decode(tlv_first(v, V_RTP_PARAMS) or b"")
            profile_id = le_int(tlv_first(params, VP_PROFILE) or b"\x01")
            level_id = le_int(tlv_first(params, VP_LEVEL) or b"\x02")
            rtcp = tlv_first(rtp, RTP_MIN_RTCP_INTERVAL) or f32(0)
            mtu = tlv_first(rtp, RTP_MAX_MTU)
            video = VideoSelection(
                width=le_int(tlv_req(attrs, VA_WIDTH, "width")),
                height=le_int(tlv_req(attrs, VA_HEIGHT, "height")),
                fps=le_int(tlv_req(attrs, VA_FPS, "fps")),
                payload_type=le_int(tlv_first(rtp, RTP_PAYLOAD_TYPE) or b"\x00"),
                ssrc=le_int(tlv_first(rtp, RTP_SSRC) or b"\x00"),
                max_bitrate_kbps=le_int(tlv_first(rtp, RTP_MAX_BITRATE) or b"\x00"),
                rtcp_interval=struct.unpack("<f", rtcp)[0],
                max_mtu=le_int(mtu) if mtu is not None else None,
                profile={n: k for k, n in PROFILES.items()}.get(profile_id, str(profile_id)),
                level={n: k for k, n in LEVELS.items()}.get(level_id, str(level_id)),
            )
        return cls(
            session_id=tlv_first(ctrl, CTRL_SESSION_ID) or b"",
            command=le_int(tlv_req(ctrl, CTRL_COMMAND, "command")),
            video=video,
        )


@dataclass(frozen=True)
class VideoCodecConfig:
    """One entry of SupportedVideoStreamConfiguration."""

    codec_type: int
    profiles: list[int]
    levels: list[int]
    packetization_modes: list[int]
    resolutions: list[tuple[int, int, int]]  # (width, height, fps), in the accessory's order


def parse_supported_video(raw: bytes | str) -> list[VideoCodecConfig]:
    out = []
    for cfg in tlv_all(tlv8_decode(raw), SUP_VIDEO_CODEC_CONFIG):
        t = tlv8_decode(cfg)
        params = tlv8_decode(tlv_first(t, V_CODEC_PARAMS) or b"")
        res = []
        for a in tlv_all(t, V_ATTRIBUTES):
            at = tlv8_decode(a)
            res.append(
                (
                    le_int(tlv_req(at, VA_WIDTH, "width")),
                    le_int(tlv_req(at, VA_HEIGHT, "height")),
                    le_int(tlv_req(at, VA_FPS, "fps")),
                )
            )
        out.append(
            VideoCodecConfig(
                codec_type=le_int(tlv_req(t, V_CODEC_TYPE, "codec type")),
                profiles=[le_int(v) for v in tlv_all(params, VP_PROFILE)],
                levels=[le_int(v) for v in tlv_all(params, VP_LEVEL)],
                packetization_modes=[le_int(v) for v in tlv_all(params, VP_PACKETIZATION)],
                resolutions=res,
            )
        )
    return out


@dataclass(frozen=True)
class AudioCodecConfig:
    codec_type: int
    channels: int | None
    bitrate_modes: list[int]
    sample_rates: list[int]  # HAP enum values: 0 = 8 kHz, 1 = 16 kHz, 2 = 24 kHz


@dataclass(frozen=True)
class SupportedAudio:
    codecs: list[AudioCodecConfig]
    comfort_noise: bool


def parse_supported_audio(raw: bytes | str) -> SupportedAudio:
    t = tlv8_decode(raw)
    codecs = []
    for cfg in tlv_all(t, SUP_AUDIO_CODEC_CONFIG):
        c = tlv8_decode(cfg)
        p = tlv8_decode(tlv_first(c, A_CODEC_PARAMS) or b"")
        ch = tlv_first(p, AP_CHANNELS)
        codecs.append(
            AudioCodecConfig(
                codec_type=le_int(tlv_req(c, A_CODEC_TYPE, "audio codec")),
                channels=le_int(ch) if ch is not None else None,
                bitrate_modes=[le_int(v) for v in tlv_all(p, AP_BITRATE_MODE)],
                sample_rates=[le_int(v) for v in tlv_all(p, AP_SAMPLE_RATE)],
            )
        )
    cn = tlv_first(t, SUP_AUDIO_COMFORT_NOISE)
    return SupportedAudio(codecs, bool(le_int(cn)) if cn is not None else False)


def parse_supported_rtp(raw: bytes | str) -> list[int]:
    """The SRTP crypto suites offered (0 = AES_CM_128_HMAC_SHA1_80, 2 = none)."""
    return [le_int(v) for v in tlv_all(tlv8_decode(raw), SUP_RTP_CRYPTO_SUITE)]


def parse_streaming_status(raw: bytes | str) -> int:
    return le_int(tlv_req(tlv8_decode(raw), STREAMING_STATUS, "streaming status"))


# --------------------------------------------------------------------------------------------
# The camera conversation, end to end
# --------------------------------------------------------------------------------------------


async def setup_endpoints(
    pairing: IpPairing,
    sm: StreamManagement,
    request: SetupEndpointsRequest,
    *,
    require_write_response: bool = False,
) -> SetupEndpointsResponse:
    """Write SetupEndpoints as iOS does ("r": true) and parse the accessory's answer, taken from
    the write response or, when the accessory gave none, from a read of the characteristic."""
    value = await write_with_response(pairing, sm.setup_endpoints.key, request.b64())
    if value is None:
        if require_write_response:
            raise AssertionError("SetupEndpoints write returned no value in its write response")
        value = await read_value(pairing, sm.setup_endpoints.key)
    return SetupEndpointsResponse.parse(value)


async def select_stream(pairing: IpPairing, sm: StreamManagement, config: bytes) -> Any:
    """Write SelectedRTPStreamConfiguration (iOS asks for a write response here too); returns the
    response value, normally None."""
    return await write_with_response(pairing, sm.selected_config.key, b64(config))
