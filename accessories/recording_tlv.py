"""TLV8 payloads of HomeKit Secure Video (CameraRecordingManagement, DataStreamTransportManagement).

What the hub does with each characteristic:
- 205 SupportedCameraRecordingConfiguration: how much we keep before a trigger (prebuffer), which
  triggers we raise (motion, doorbell) and the container (fragmented MP4, 4 s fragments).
- 206 / 207 SupportedVideo/AudioRecordingConfiguration: H.264 sizes and the AAC format we can
  produce. The hub picks exactly one of each and writes the choice to
- 209 SelectedCameraRecordingConfiguration (admin write; persisted): the recording's parameters.
  Reads of 209 return exactly the bytes written (``SelectedRecordingConfig.raw``); reading it
  before any write must fail (HAP-NodeJS answers "service communication failure"), never return
  empty bytes, or the hub believes a configuration exists.
- 130 / 131 DataStreamTransport: the hub asks for an HDS session over TCP with its key salt; we
  answer with a port and our salt (keys and frames live in accessories/hds/).

Traps: the Home app shows a generic error when too many configurations are offered, so we offer
few: at most two sizes at one frame rate, one audio format (AAC-LC mono 32 kHz, what the real hub
selection recorded by HAP-NodeJS's tests uses). When what we advertise changes, the stored 209
must be dropped (the hub then selects again).

Parsers follow camera_tlv.py: strict about what the recording uses, tolerant of what it ignores;
malformed input raises TLVError naming the field. ``parse_selected_recording_config`` checks
shape and enumerations; ``check_selected`` then checks the choice against what we advertised.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from fractions import Fraction
from typing import TypeVar

from .backend import RecordingRequest, VideoCapabilities
from .camera_tlv import H264_CODEC, LEVELS, PROFILES
from .tlv8 import TLV, TLVError, encode, u8, u16, u32

_T = TypeVar("_T")


class EventTrigger(IntFlag):
    MOTION = 1
    DOORBELL = 2


class AudioCodec(IntEnum):
    AAC_LC = 0
    AAC_ELD = 1


class BitrateMode(IntEnum):
    VARIABLE = 0
    CONSTANT = 1


class SetupDataStreamStatus(IntEnum):
    SUCCESS = 0
    GENERIC_ERROR = 1
    BUSY = 2


SAMPLE_RATES = {0: 8000, 1: 16000, 2: 24000, 3: 32000, 4: 44100, 5: 48000}
_SAMPLE_RATE_CODES = {hz: code for code, hz in SAMPLE_RATES.items()}
_AUDIO_CODECS = {codec.value: codec for codec in AudioCodec}
_BITRATE_MODES = {mode.value: mode for mode in BitrateMode}
MEDIA_CONTAINER_FMP4 = 0
DEFAULT_PREBUFFER_MS = 4000  # the HAP minimum (HAP-NodeJS refuses less)
DEFAULT_FRAGMENT_MS = 4000  # the hub expects an IDR (a fragment boundary) every 4 s
MAX_FRAGMENT_MS = 10_000  # a fragment is held whole before it is sent: bound it
# Every H.264 profile and level HAP defines, as HAP-NodeJS's camera examples advertise them
# (and as our live view does): these are lists, not combinations, so they do not multiply the
# configurations the Home app counts, and they let a copied camera stream (often High) fit.
RECORDING_PROFILES = tuple(PROFILES.values())  # baseline, main, high
RECORDING_LEVELS = tuple(LEVELS.values())  # 3.1, 3.2, 4.0
AUDIO_CHANNELS = 1
AUDIO_SAMPLE_RATES: tuple[int, ...] = (32000,)  # Hz; one rate: fewer is safer
_MAX_LONG, _MAX_SHORT = 1920, 1080  # 1080p (portrait or landscape) at most: level 4.0
_SMALL_LINES = 720
_MAX_FPS = 30
_SELECTED = "SelectedCameraRecordingConfiguration"

SUPPORTED_DATA_STREAM_CONFIG = bytes.fromhex("0103010100")  # 130: { 01 { 01 transport TCP } }


# ---- what we advertise (205, 206, 207) ----


def supported_camera_recording_config(
    *,
    prebuffer_ms: int = DEFAULT_PREBUFFER_MS,
    fragment_ms: int = DEFAULT_FRAGMENT_MS,
    triggers: EventTrigger = EventTrigger.MOTION,
) -> bytes:
    """205: prebuffer length, trigger bitmask (u64), one fragmented-MP4 container."""
    if prebuffer_ms < DEFAULT_PREBUFFER_MS:
        raise ValueError(
            f"prebuffer must be at least {DEFAULT_PREBUFFER_MS} ms, got {prebuffer_ms}"
        )
    if not 0 < fragment_ms <= MAX_FRAGMENT_MS:
        raise ValueError(f"fragment length must be 1..{MAX_FRAGMENT_MS} ms, got {fragment_ms}")
    container = encode([(1, u8(MEDIA_CONTAINER_FMP4)), (2, encode([(1, u32(fragment_ms))]))])
    return encode(
        [(1, u32(prebuffer_ms)), (2, int(triggers).to_bytes(8, "little")), (3, container)]
    )


def _even_floor(value: Fraction) -> int:
    return max(2, int(value) // 2 * 2)


def recording_resolutions(caps: VideoCapabilities) -> list[tuple[int, int, int]]:
    """The sizes we offer for recordings, largest first: at most two, at one frame rate.

    The native size scaled down (aspect kept) to fit 1920x1080, turned with the camera if it is
    portrait, then the same aspect at 720 lines when that is smaller. Sizes are even (4:2:0)
    and never larger than the camera's; fps is the camera's, 30 at most.
    """
    width, height, native_fps = caps.native_width, caps.native_height, caps.native_fps
    if width < 2 or height < 2 or native_fps <= 0:
        raise ValueError(f"invalid camera capabilities: {caps}")
    fps = min(native_fps, _MAX_FPS)
    portrait = height > width
    long, short = (height, width) if portrait else (width, height)
    scale = min(Fraction(1), Fraction(_MAX_LONG, long), Fraction(_MAX_SHORT, short))
    sizes = [(_even_floor(long * scale), _even_floor(short * scale))]
    main_long, main_short = sizes[0]
    if main_short > _SMALL_LINES:
        sizes.append((_even_floor(Fraction(_SMALL_LINES * main_long, main_short)), _SMALL_LINES))
    return [((s, lg, fps) if portrait else (lg, s, fps)) for lg, s in sizes]


def supported_video_recording_config(caps: VideoCapabilities) -> bytes:
    """206: H.264 with every profile and level, our few sizes (separated by 00 00)."""
    params = encode(
        [
            (1, [u8(code) for code, name in PROFILES.items() if name in RECORDING_PROFILES]),
            (2, [u8(code) for code, name in LEVELS.items() if name in RECORDING_LEVELS]),
        ]
    )
    attributes = [
        encode([(1, u16(w)), (2, u16(h)), (3, u8(fps))])
        for w, h, fps in recording_resolutions(caps)
    ]
    codec = encode([(1, u8(H264_CODEC)), (2, params), (3, attributes)])
    return encode([(1, codec)])


def supported_audio_recording_config() -> bytes:
    """207: AAC-LC, mono, variable bit rate, at AUDIO_SAMPLE_RATES (32 kHz).

    A camera without a microphone still offers (and sends) an AAC track: silence.
    """
    rates = [u8(_SAMPLE_RATE_CODES[hz]) for hz in AUDIO_SAMPLE_RATES]
    params = encode([(1, u8(AUDIO_CHANNELS)), (2, u8(BitrateMode.VARIABLE)), (3, rates)])
    return encode([(1, encode([(1, u8(AudioCodec.AAC_LC)), (2, params)]))])


# ---- SelectedCameraRecordingConfiguration (209) ----


@dataclass(frozen=True, slots=True)
class SelectedRecordingConfig:
    """The hub's choice, as parsed; ``raw`` is exactly what it wrote (reads of 209 return it)."""

    prebuffer_ms: int
    fragment_ms: int
    triggers: EventTrigger
    video_codec: int  # 0 = H.264
    profile: str  # "baseline" | "main" | "high"
    level: str  # "3.1" | "3.2" | "4.0"
    bitrate_kbps: int
    iframe_interval_ms: int
    width: int
    height: int
    fps: int
    audio_codec: AudioCodec
    audio_channels: int
    audio_bitrate_mode: BitrateMode
    audio_sample_rate: int  # Hz
    audio_max_bitrate_kbps: int
    raw: bytes

    def to_request(self, audio_active: bool) -> RecordingRequest:
        """What the media side needs (RecordingAudioActive decides whether audio is silence)."""
        return RecordingRequest(
            width=self.width,
            height=self.height,
            fps=self.fps,
            bitrate_kbps=self.bitrate_kbps,
            iframe_interval_ms=self.iframe_interval_ms,
            fragment_ms=self.fragment_ms,
            prebuffer_ms=self.prebuffer_ms,
            profile=self.profile,
            level=self.level,
            audio_sample_rate=self.audio_sample_rate,
            audio_channels=self.audio_channels,
            audio_bitrate_kbps=self.audio_max_bitrate_kbps,
            audio_active=audio_active,
        )


def _lookup(record: TLV, tag: int, name: str, table: Mapping[int, _T]) -> _T:
    """A one-byte code from ``table``; an unknown code is a TLVError naming the field."""
    code = record.uint(tag, name, 1)
    try:
        return table[code]
    except KeyError:
        raise TLVError(f"{record.what}: unknown {name} {code}") from None


def parse_selected_recording_config(data: bytes) -> SelectedRecordingConfig:
    """The hub's 209 write. Shape and enumerations only: follow with ``check_selected``."""
    root = TLV.parse(data, _SELECTED)
    recording = root.nested(1, "recording")
    container = recording.nested(3, "media container")
    kind = container.uint(1, "type", 1)
    if kind != MEDIA_CONTAINER_FMP4:
        raise TLVError(f"{container.what}: unsupported type {kind} (fragmented MP4 is 0)")
    fragment_ms = container.nested(2, "parameters").uint(1, "fragment length", 4)

    video = root.nested(2, "video")
    video_params = video.nested(2, "parameters")
    attributes = video.nested(3, "attributes")

    audio = root.nested(3, "audio")
    audio_params = audio.nested(2, "parameters")
    return SelectedRecordingConfig(
        prebuffer_ms=recording.uint(1, "prebuffer length", 4),
        fragment_ms=fragment_ms,
        triggers=EventTrigger(recording.uint(2, "event triggers", 8)),
        video_codec=video.uint(1, "codec", 1),
        profile=_lookup(video_params, 1, "profile", PROFILES),
        level=_lookup(video_params, 2, "level", LEVELS),
        bitrate_kbps=video_params.uint(3, "bitrate", 4),
        iframe_interval_ms=video_params.uint(4, "I-frame interval", 4),
        width=attributes.uint(1, "width", 2),
        height=attributes.uint(2, "height", 2),
        fps=attributes.uint(3, "fps", 1),
        audio_codec=_lookup(audio, 1, "codec", _AUDIO_CODECS),
        audio_channels=audio_params.uint(1, "channels", 1),
        audio_bitrate_mode=_lookup(audio_params, 2, "bit-rate mode", _BITRATE_MODES),
        audio_sample_rate=_lookup(audio_params, 3, "sample rate", SAMPLE_RATES),
        audio_max_bitrate_kbps=audio_params.uint(4, "max bitrate", 4),
        raw=bytes(data),
    )


def check_selected(
    selected: SelectedRecordingConfig,
    caps: VideoCapabilities,
    *,
    prebuffer_ms: int = DEFAULT_PREBUFFER_MS,
) -> None:
    """Raise TLVError unless ``selected`` is something we advertised (``prebuffer_ms``: our 205).

    Strict where the media side depends on it: H.264 at one of our sizes, AAC-LC mono at one
    of our rates, a prebuffer we keep. Tolerant where a hub may differ harmlessly: a lower
    frame rate, any bitrate and I-frame interval above 0, either bit-rate mode, any trigger
    bits (we raise only what we offered).
    """

    def fail(message: str) -> TLVError:
        return TLVError(f"{_SELECTED}: {message}")

    if selected.video_codec != H264_CODEC:
        raise fail(f"video codec {selected.video_codec} is not H.264 ({H264_CODEC})")
    if selected.profile not in RECORDING_PROFILES or selected.level not in RECORDING_LEVELS:
        raise fail(f"H.264 {selected.profile} {selected.level} was not offered")
    offered = {(w, h): fps for w, h, fps in recording_resolutions(caps)}
    size = (selected.width, selected.height)
    if size not in offered:
        sizes = ", ".join(f"{w}x{h}" for w, h in offered)
        raise fail(f"video size {size[0]}x{size[1]} was not offered ({sizes})")
    if not 0 < selected.fps <= offered[size]:
        raise fail(f"video fps {selected.fps} is not in 1..{offered[size]}")
    if selected.bitrate_kbps <= 0:
        raise fail("video bitrate is 0")
    if selected.iframe_interval_ms <= 0:
        raise fail("video I-frame interval is 0")
    if not 0 < selected.fragment_ms <= MAX_FRAGMENT_MS:
        raise fail(f"fragment length {selected.fragment_ms} ms is not in 1..{MAX_FRAGMENT_MS}")
    if selected.prebuffer_ms > prebuffer_ms:
        raise fail(f"prebuffer {selected.prebuffer_ms} ms is more than the {prebuffer_ms} offered")
    if selected.audio_codec != AudioCodec.AAC_LC:
        raise fail(f"audio codec {selected.audio_codec.name} is not AAC-LC")
    if selected.audio_channels != AUDIO_CHANNELS:
        raise fail(f"audio channels {selected.audio_channels}, offered {AUDIO_CHANNELS}")
    if selected.audio_sample_rate not in AUDIO_SAMPLE_RATES:
        raise fail(f"audio sample rate {selected.audio_sample_rate} Hz was not offered")
    if selected.audio_max_bitrate_kbps <= 0:
        raise fail("audio max bitrate is 0")


# ---- SetupDataStreamTransport (131) ----


@dataclass(frozen=True, slots=True)
class SetupDataStreamRequest:
    command: int  # 0 = start session
    transport: int  # 0 = HomeKit Data Stream over TCP
    controller_salt: bytes  # 32 bytes; HDS keys use controller salt || accessory salt


SALT_SIZE = 32


def parse_setup_data_stream(data: bytes) -> SetupDataStreamRequest:
    """The hub's 131 write (write-response): start an HDS session over TCP."""
    root = TLV.parse(data, "SetupDataStreamTransport")
    command = root.uint(1, "session command", 1)
    if command != 0:
        raise TLVError(f"{root.what}: unknown session command {command} (start is 0)")
    transport = root.uint(2, "transport type", 1)
    if transport != 0:
        raise TLVError(f"{root.what}: unsupported transport type {transport} (TCP is 0)")
    salt = root.require(3, "controller key salt")
    if len(salt) != SALT_SIZE:
        raise TLVError(
            f"{root.what}: controller key salt must be {SALT_SIZE} bytes, got {len(salt)}"
        )
    return SetupDataStreamRequest(command, transport, salt)


def setup_data_stream_response(
    status: SetupDataStreamStatus, port: int | None = None, accessory_salt: bytes | None = None
) -> bytes:
    """131's answer: { 01 status, 02 { 01 TCP port }, 03 accessory salt }; only the status
    when it is not a success (port and salt are then left out)."""
    if status != SetupDataStreamStatus.SUCCESS:
        return encode([(1, u8(status))])
    if port is None or not 0 < port < 65536:
        raise ValueError(f"a successful answer needs a TCP port 1..65535, got {port}")
    if accessory_salt is None or len(accessory_salt) != SALT_SIZE:
        raise ValueError(f"a successful answer needs a {SALT_SIZE}-byte accessory salt")
    return encode([(1, u8(status)), (2, encode([(1, u16(port))])), (3, accessory_salt)])
