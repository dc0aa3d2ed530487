"""The test hub's own TLV8 for HomeKit Secure Video: 205/206/207 parsers, 209 and 131 builders.

Written for the hub side of the HKSV tests, independently of the product's
accessories/recording_tlv.py (a shared codec would hide a shared bug), from the tag numbers in
docs/hksv-protocol.md (cross-checked with HAP-NodeJS's RecordingManagement and
DataStreamManagement). Parsers take raw bytes: aiohomekit gives TLV8 values as base64 and its
decoded views keep only the last of repeated entries.

TLV8 here (tests/peers/camera_tlv.py's, with the 00 separator): integers little-endian;
items of a list (same type repeated) are separated by an empty item of type 0 (00 00); a value
longer than 255 bytes is split into 255-byte pieces of the same type, and a piece of exactly
255 bytes continues into the next item of its type.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tests.peers.camera_tlv import tlv8_decode, tlv8_encode

TlvValue = bytes | list[tuple[int, "TlvValue"]]

SEPARATOR = 0x00


def u8(v: int) -> bytes:
    return v.to_bytes(1, "little")


def u16(v: int) -> bytes:
    return v.to_bytes(2, "little")


def u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


def u64(v: int) -> bytes:
    return v.to_bytes(8, "little")


def le(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def tlv_encode(items: Iterable[tuple[int, TlvValue]]) -> bytes:
    """(type, value) items in order; a list value is a nested TLV8. Consecutive items of one
    type get a 00 00 separator; values over 255 bytes are split."""
    return tlv8_encode(items, SEPARATOR)


def tlv_decode(data: bytes) -> list[tuple[int, bytes]]:
    """One level of (type, value) items, order and repeats kept, separators dropped."""
    return tlv8_decode(data, SEPARATOR)


def first(items: Sequence[tuple[int, bytes]], tag: int, what: str) -> bytes:
    for t, v in items:
        if t == tag:
            return v
    raise ValueError(f"missing TLV type {tag} ({what})")


def every(items: Sequence[tuple[int, bytes]], tag: int) -> list[bytes]:
    return [v for t, v in items if t == tag]


def maybe(items: Sequence[tuple[int, bytes]], tag: int) -> bytes | None:
    return next((v for t, v in items if t == tag), None)


# --------------------------------------------------------------------------------------------
# Numbers of HKSV's TLVs
# --------------------------------------------------------------------------------------------

TRIGGER_MOTION, TRIGGER_DOORBELL = 1, 2
CONTAINER_FRAGMENTED_MP4 = 0
CODEC_H264 = 0
PROFILE_BASELINE, PROFILE_MAIN, PROFILE_HIGH = 0, 1, 2
LEVEL_3_1, LEVEL_3_2, LEVEL_4_0 = 0, 1, 2
AUDIO_AAC_LC, AUDIO_AAC_ELD = 0, 1
BITRATE_VARIABLE, BITRATE_CONSTANT = 0, 1
SAMPLE_RATES_HZ = {0: 8000, 1: 16000, 2: 24000, 3: 32000, 4: 44100, 5: 48000}
SR_8K, SR_16K, SR_24K, SR_32K, SR_44K, SR_48K = range(6)

# SupportedCameraRecordingConfiguration (205) and the recording part of 209
REC_PREBUFFER, REC_TRIGGERS, REC_CONTAINER = 1, 2, 3
CONTAINER_TYPE, CONTAINER_PARAMS = 1, 2
CONTAINER_FRAGMENT_MS = 1
# video (206 entries and the video part of 209)
VIDEO_CODEC_CONFIG = 1
V_CODEC, V_PARAMS, V_ATTRS = 1, 2, 3
VP_PROFILE, VP_LEVEL, VP_BITRATE, VP_IFRAME_MS = 1, 2, 3, 4
VA_WIDTH, VA_HEIGHT, VA_FPS = 1, 2, 3
# audio (207 entries and the audio part of 209)
AUDIO_CODEC_CONFIG = 1
A_CODEC, A_PARAMS = 1, 2
AP_CHANNELS, AP_BITRATE_MODE, AP_SAMPLE_RATE, AP_MAX_BITRATE = 1, 2, 3, 4
# SelectedCameraRecordingConfiguration (209)
SEL_RECORDING, SEL_VIDEO, SEL_AUDIO = 1, 2, 3
# SetupDataStreamTransport (131) and SupportedDataStreamTransportConfiguration (130)
DS_COMMAND, DS_TRANSPORT, DS_CONTROLLER_SALT = 1, 2, 3
DS_STATUS, DS_SESSION_PARAMS, DS_ACCESSORY_SALT = 1, 2, 3
DS_TCP_PORT = 1
DS_START_SESSION, DS_TRANSPORT_HDS = 0, 0
DS_SUCCESS, DS_GENERIC_ERROR, DS_BUSY = 0, 1, 2
TRANSPORT_CONFIG, TRANSPORT_TYPE = 1, 1


# --------------------------------------------------------------------------------------------
# 205 / 206 / 207
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaContainer:
    type: int
    fragment_ms: int


@dataclass(frozen=True)
class SupportedRecording:
    prebuffer_ms: int
    trigger_options: int
    containers: tuple[MediaContainer, ...]

    @classmethod
    def parse(cls, raw: bytes) -> SupportedRecording:
        t = tlv_decode(raw)
        containers = []
        for c in every(t, REC_CONTAINER):
            ct = tlv_decode(c)
            params = tlv_decode(first(ct, CONTAINER_PARAMS, "container parameters"))
            containers.append(
                MediaContainer(
                    type=le(first(ct, CONTAINER_TYPE, "container type")),
                    fragment_ms=le(first(params, CONTAINER_FRAGMENT_MS, "fragment length")),
                )
            )
        return cls(
            prebuffer_ms=le(first(t, REC_PREBUFFER, "prebuffer length")),
            trigger_options=le(first(t, REC_TRIGGERS, "event trigger options")),
            containers=tuple(containers),
        )


@dataclass(frozen=True)
class VideoRecordingCodec:
    codec: int
    profiles: tuple[int, ...]
    levels: tuple[int, ...]
    resolutions: tuple[tuple[int, int, int], ...]  # (width, height, fps), accessory's order


def parse_supported_video(raw: bytes) -> list[VideoRecordingCodec]:
    out = []
    for cfg in every(tlv_decode(raw), VIDEO_CODEC_CONFIG):
        t = tlv_decode(cfg)
        params = tlv_decode(first(t, V_PARAMS, "video codec parameters"))
        resolutions = []
        for a in every(t, V_ATTRS):
            at = tlv_decode(a)
            resolutions.append(
                (
                    le(first(at, VA_WIDTH, "width")),
                    le(first(at, VA_HEIGHT, "height")),
                    le(first(at, VA_FPS, "fps")),
                )
            )
        out.append(
            VideoRecordingCodec(
                codec=le(first(t, V_CODEC, "video codec")),
                profiles=tuple(le(v) for v in every(params, VP_PROFILE)),
                levels=tuple(le(v) for v in every(params, VP_LEVEL)),
                resolutions=tuple(resolutions),
            )
        )
    return out


@dataclass(frozen=True)
class AudioRecordingCodec:
    codec: int
    channels: int
    bitrate_modes: tuple[int, ...]
    sample_rates: tuple[int, ...]  # enum values (SAMPLE_RATES_HZ)


def parse_supported_audio(raw: bytes) -> list[AudioRecordingCodec]:
    out = []
    for cfg in every(tlv_decode(raw), AUDIO_CODEC_CONFIG):
        t = tlv_decode(cfg)
        params = tlv_decode(first(t, A_PARAMS, "audio codec parameters"))
        out.append(
            AudioRecordingCodec(
                codec=le(first(t, A_CODEC, "audio codec")),
                channels=le(first(params, AP_CHANNELS, "channels")),
                bitrate_modes=tuple(le(v) for v in every(params, AP_BITRATE_MODE)),
                sample_rates=tuple(le(v) for v in every(params, AP_SAMPLE_RATE)),
            )
        )
    return out


def parse_supported_transports(raw: bytes) -> list[int]:
    """SupportedDataStreamTransportConfiguration (130): transport types (0 = HDS over TCP)."""
    return [
        le(first(tlv_decode(cfg), TRANSPORT_TYPE, "transport type"))
        for cfg in every(tlv_decode(raw), TRANSPORT_CONFIG)
    ]


# --------------------------------------------------------------------------------------------
# 209: what the hub selects
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordingSelection:
    """SelectedCameraRecordingConfiguration. Defaults: what a hub chose in HAP-NodeJS's spec
    test, except the resolution (pass one the camera offers, or use `from_supported`)."""

    prebuffer_ms: int = 4000
    fragment_ms: int = 4000
    trigger_options: int = TRIGGER_MOTION
    container: int = CONTAINER_FRAGMENTED_MP4
    video_codec: int = CODEC_H264
    profile: int = PROFILE_MAIN
    level: int = LEVEL_4_0
    bitrate_kbps: int = 2000
    iframe_interval_ms: int = 4000
    width: int = 1920
    height: int = 1080
    fps: int = 24
    audio_codec: int = AUDIO_AAC_LC
    channels: int = 1
    bitrate_mode: int = BITRATE_VARIABLE
    sample_rate: int = SR_32K
    max_audio_bitrate_kbps: int = 64

    def encode(self) -> bytes:
        recording: list[tuple[int, TlvValue]] = [
            (REC_PREBUFFER, u32(self.prebuffer_ms)),
            (REC_TRIGGERS, u64(self.trigger_options)),
            (
                REC_CONTAINER,
                [
                    (CONTAINER_TYPE, u8(self.container)),
                    (CONTAINER_PARAMS, [(CONTAINER_FRAGMENT_MS, u32(self.fragment_ms))]),
                ],
            ),
        ]
        video: list[tuple[int, TlvValue]] = [
            (V_CODEC, u8(self.video_codec)),
            (
                V_PARAMS,
                [
                    (VP_PROFILE, u8(self.profile)),
                    (VP_LEVEL, u8(self.level)),
                    (VP_BITRATE, u32(self.bitrate_kbps)),
                    (VP_IFRAME_MS, u32(self.iframe_interval_ms)),
                ],
            ),
            (V_ATTRS, [(VA_WIDTH, u16(self.width)), (VA_HEIGHT, u16(self.height)),
                       (VA_FPS, u8(self.fps))]),
        ]  # fmt: skip
        audio: list[tuple[int, TlvValue]] = [
            (A_CODEC, u8(self.audio_codec)),
            (
                A_PARAMS,
                [
                    (AP_CHANNELS, u8(self.channels)),
                    (AP_BITRATE_MODE, u8(self.bitrate_mode)),
                    (AP_SAMPLE_RATE, u8(self.sample_rate)),
                    (AP_MAX_BITRATE, u32(self.max_audio_bitrate_kbps)),
                ],
            ),
        ]
        return tlv_encode([(SEL_RECORDING, recording), (SEL_VIDEO, video), (SEL_AUDIO, audio)])

    def b64(self) -> str:
        return b64(self.encode())

    @classmethod
    def parse(cls, raw: bytes) -> RecordingSelection:
        t = tlv_decode(raw)
        rec = tlv_decode(first(t, SEL_RECORDING, "recording"))
        container = tlv_decode(first(rec, REC_CONTAINER, "media container"))
        cparams = tlv_decode(first(container, CONTAINER_PARAMS, "container parameters"))
        video = tlv_decode(first(t, SEL_VIDEO, "video"))
        vparams = tlv_decode(first(video, V_PARAMS, "video parameters"))
        vattrs = tlv_decode(first(video, V_ATTRS, "video attributes"))
        audio = tlv_decode(first(t, SEL_AUDIO, "audio"))
        aparams = tlv_decode(first(audio, A_PARAMS, "audio parameters"))
        return cls(
            prebuffer_ms=le(first(rec, REC_PREBUFFER, "prebuffer")),
            fragment_ms=le(first(cparams, CONTAINER_FRAGMENT_MS, "fragment length")),
            trigger_options=le(first(rec, REC_TRIGGERS, "triggers")),
            container=le(first(container, CONTAINER_TYPE, "container type")),
            video_codec=le(first(video, V_CODEC, "video codec")),
            profile=le(first(vparams, VP_PROFILE, "profile")),
            level=le(first(vparams, VP_LEVEL, "level")),
            bitrate_kbps=le(first(vparams, VP_BITRATE, "bitrate")),
            iframe_interval_ms=le(first(vparams, VP_IFRAME_MS, "I-frame interval")),
            width=le(first(vattrs, VA_WIDTH, "width")),
            height=le(first(vattrs, VA_HEIGHT, "height")),
            fps=le(first(vattrs, VA_FPS, "fps")),
            audio_codec=le(first(audio, A_CODEC, "audio codec")),
            channels=le(first(aparams, AP_CHANNELS, "channels")),
            bitrate_mode=le(first(aparams, AP_BITRATE_MODE, "bit-rate mode")),
            sample_rate=le(first(aparams, AP_SAMPLE_RATE, "sample rate")),
            max_audio_bitrate_kbps=le(first(aparams, AP_MAX_BITRATE, "max bitrate")),
        )

    @classmethod
    def from_supported(
        cls,
        recording: SupportedRecording,
        video: Sequence[VideoRecordingCodec],
        audio: Sequence[AudioRecordingCodec],
        *,
        resolution: tuple[int, int, int] | None = None,
    ) -> RecordingSelection:
        """What a hub would pick: the offered prebuffer and first container, motion (and
        doorbell) triggers that are offered, the first H.264 entry's highest profile and level
        and `resolution` (default: its first), the first AAC-LC entry's first sample rate."""
        if not recording.containers:
            raise ValueError("no media container offered")
        h264 = next(v for v in video if v.codec == CODEC_H264)
        aac = next(a for a in audio if a.codec == AUDIO_AAC_LC)
        width, height, fps = resolution or h264.resolutions[0]
        if (width, height, fps) not in h264.resolutions:
            raise ValueError(f"{width}x{height}@{fps} is not offered: {h264.resolutions}")
        return cls(
            prebuffer_ms=recording.prebuffer_ms,
            fragment_ms=recording.containers[0].fragment_ms,
            trigger_options=recording.trigger_options & (TRIGGER_MOTION | TRIGGER_DOORBELL),
            container=recording.containers[0].type,
            profile=max(h264.profiles),
            level=max(h264.levels),
            width=width,
            height=height,
            fps=fps,
            channels=aac.channels,
            bitrate_mode=aac.bitrate_modes[0] if aac.bitrate_modes else BITRATE_VARIABLE,
            sample_rate=aac.sample_rates[0],
        )


# --------------------------------------------------------------------------------------------
# 131: setting up a data stream
# --------------------------------------------------------------------------------------------


def new_salt() -> bytes:
    return os.urandom(32)


def setup_data_stream_request(
    controller_salt: bytes, *, command: int = DS_START_SESSION, transport: int = DS_TRANSPORT_HDS
) -> bytes:
    """The hub's write to SetupDataStreamTransport (sent with "r": true)."""
    return tlv_encode(
        [
            (DS_COMMAND, u8(command)),
            (DS_TRANSPORT, u8(transport)),
            (DS_CONTROLLER_SALT, controller_salt),
        ]
    )


@dataclass(frozen=True)
class DataStreamSetup:
    """The accessory's write response: status, TCP port and its key salt (absent on failure)."""

    status: int
    tcp_port: int | None
    accessory_salt: bytes | None

    @classmethod
    def parse(cls, raw: bytes) -> DataStreamSetup:
        t = tlv_decode(raw)
        params = maybe(t, DS_SESSION_PARAMS)
        port = maybe(tlv_decode(params), DS_TCP_PORT) if params is not None else None
        return cls(
            status=le(first(t, DS_STATUS, "status")),
            tcp_port=le(port) if port is not None else None,
            accessory_salt=maybe(t, DS_ACCESSORY_SALT),
        )
