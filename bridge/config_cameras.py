"""A `[[cameras]]` table of the configuration: CameraConfig and its parser, the source URL's
checks, and the camera's sound, talk-back and doorbell keys (README's reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge.config_reader import TableReader, read_choice, read_optional_choice
from bridge.detect.config import CameraDetect, DetectConfig, parse_camera_detect
from bridge.record.hksv_config import HksvConfig, parse_camera_hksv

SOURCE_SCHEMES = ("rtsp", "rtsps", "v4l2", "file", "demo")


@dataclass(frozen=True, slots=True)
class CameraConfig:
    name: str
    source: str
    rtsp_transport: str = "tcp"
    prebuffer_seconds: float = 4.0
    width: int | None = None  # v4l2 / demo capture size
    height: int | None = None
    fps: float | None = None
    input_format: str | None = None  # v4l2: mjpeg | yuyv422 | h264
    live_mode: str = "auto"  # auto | copy | transcode
    # The camera's sound: "auto" (carried when the source has it; a Microphone service when
    # the camera has usable sound at start), "on" (always a Microphone), "off" (video only).
    audio: str = "auto"
    # Sound from an ALSA capture device (a USB camera's microphone, or one beside a camera)
    # in place of the source's own: its PCM name, and the rate and channels asked of it.
    audio_device: str | None = None
    audio_rate: int = 16000
    audio_channels: int = 1
    # Talk-back to the camera's ONVIF RTSP back channel: "auto" (a Speaker when the camera's
    # SDP offers a back channel at start), "on" (always), "off" (never).
    talkback: str = "auto"
    enabled: bool = True
    doorbell: bool = False  # a Video Doorbell: rung by `obscura ring` / POST .../ring
    detect: CameraDetect = field(default_factory=CameraDetect)
    hksv: HksvConfig = field(default_factory=HksvConfig)


def parse_camera(path: Path, index: int, raw: Any, detect_defaults: DetectConfig) -> CameraConfig:
    r = TableReader(path, f"cameras[{index}]", raw)
    name = r.get("name", str, None)
    if name is None:
        raise r.fail("name", "is required (the name shown in the Home app)")
    name = name.strip()
    if not name or len(name) > 64:
        raise r.fail("name", "must be 1 to 64 characters")
    source = r.get("source", str, None)
    if source is None:
        raise r.fail("source", "is required (rtsp://…, v4l2:///dev/video0, file:///…, or demo:)")
    problem = source_problem(source)
    if problem:
        raise r.fail("source", problem)
    prebuffer = r.get("prebuffer_seconds", float, 4.0)
    if not 1.0 <= prebuffer <= 30.0:
        raise r.fail("prebuffer_seconds", f"must be between 1 and 30 seconds, got {prebuffer}")
    width = r.get("width", int, None)
    height = r.get("height", int, None)
    if (width is None) != (height is None):
        raise r.fail("width" if width is None else "height", "width and height go together")
    for key, value in (("width", width), ("height", height)):
        if value is not None and not (16 <= value <= 7680 and value % 2 == 0):
            raise r.fail(key, f"must be an even number of pixels between 16 and 7680, got {value}")
    fps = r.get("fps", float, None)
    if fps is not None and not 1 <= fps <= 120:
        raise r.fail("fps", f"must be between 1 and 120, got {fps}")
    audio = _audio(r)
    audio_device, audio_rate, audio_channels = _audio_device(r, source, audio)
    cam = CameraConfig(
        name=name,
        source=source,
        rtsp_transport=read_choice(r, "rtsp_transport", "tcp", ("tcp", "udp")),
        prebuffer_seconds=prebuffer,
        width=width,
        height=height,
        fps=fps,
        input_format=read_optional_choice(r, "input_format", ("mjpeg", "yuyv422", "h264")),
        live_mode=read_choice(r, "live_mode", "auto", ("auto", "copy", "transcode")),
        audio=audio,
        audio_device=audio_device,
        audio_rate=audio_rate,
        audio_channels=audio_channels,
        talkback=_talkback(r, source),
        enabled=r.get("enabled", bool, True),
        doorbell=r.get("doorbell", bool, False),
        detect=parse_camera_detect(path, r.prefix, r, detect_defaults),
        hksv=parse_camera_hksv(path, r.prefix, r),
    )
    if cam.hksv.trigger is not None:  # HKSV records what MotionDetected follows
        cam = replace(cam, detect=replace(cam.detect, motion_sensor=cam.hksv.trigger))
    r.check_unknown()
    return cam


def _audio(r: TableReader) -> str:
    """`audio = "auto" | true | false` -> "auto" | "on" | "off"."""
    value = r.get("audio", (str, bool), "auto")
    if isinstance(value, bool):
        return "on" if value else "off"
    if value != "auto":
        raise r.fail("audio", f'must be "auto", true or false; got {value!r}')
    return value


AUDIO_RATES = (8000, 16000, 24000, 32000, 44100, 48000)


def _audio_device(r: TableReader, source: str, audio: str) -> tuple[str | None, int, int]:
    """`audio_device` (an ALSA capture PCM) with `audio_rate` and `audio_channels`: sound for a
    source that has none (a USB camera) or in place of its own (a file, the demo). An RTSP
    camera's sound comes in its stream, and `audio = false` says the opposite: both are
    mistakes to point out, not choices to guess at."""
    device = r.get("audio_device", str, None)
    rate = r.get("audio_rate", int, None)
    channels = r.get("audio_channels", int, None)
    if device is None:
        for key, value in (("audio_rate", rate), ("audio_channels", channels)):
            if value is not None:
                raise r.fail(key, "needs audio_device (the ALSA capture device it is asked of)")
        return None, 16000, 1
    device = device.strip()
    if not device or "\0" in device or len(device) > 200:
        raise r.fail(
            "audio_device",
            'must name an ALSA capture device, like "plughw:CARD=C920,DEV=0" (`arecord -L`)',
        )
    if source.split(":", 1)[0].lower() in ("rtsp", "rtsps"):
        raise r.fail(
            "audio_device",
            "is for v4l2://, file:// and demo: sources; an RTSP camera's sound comes in its stream",
        )
    if audio == "off":
        raise r.fail("audio_device", "contradicts audio = false: remove one of the two")
    rate = 16000 if rate is None else rate
    if rate not in AUDIO_RATES:
        raise r.fail("audio_rate", f"must be one of {', '.join(map(str, AUDIO_RATES))}; got {rate}")
    channels = 1 if channels is None else channels
    if channels not in (1, 2):
        raise r.fail("audio_channels", f"must be 1 or 2, got {channels}")
    return device, rate, channels


def _talkback(r: TableReader, source: str) -> str:
    """`talkback = "auto" | true | false` -> "auto" | "on" | "off"; only RTSP cameras have an
    ONVIF back channel."""
    value = r.get("talkback", (str, bool), "auto")
    if isinstance(value, str) and value != "auto":
        raise r.fail("talkback", f'must be "auto", true or false; got {value!r}')
    if value is True and source.split(":", 1)[0].lower() not in ("rtsp", "rtsps"):
        raise r.fail("talkback", "true needs an rtsp:// source (talk-back uses ONVIF over RTSP)")
    return "auto" if value == "auto" else "on" if value else "off"


def source_problem(source: str) -> str | None:
    """Why a camera source URL is unusable, or None. Never echoes credentials."""
    from bridge.redact import redact_url

    scheme = source.split(":", 1)[0].lower() if ":" in source else ""
    if scheme not in SOURCE_SCHEMES:
        return (
            f"unsupported source {redact_url(source)!r}: use rtsp://host/path, "
            "v4l2:///dev/video0, file:///path/video.mp4 or demo:"
        )
    parts = urlsplit(source)
    if scheme in ("rtsp", "rtsps") and not parts.hostname:
        return f"RTSP source {redact_url(source)!r} has no host"
    if scheme in ("v4l2", "file") and not parts.path:
        return f"{scheme} source needs a path, like {scheme}:///dev/video0"
    if scheme == "demo":
        from bridge.demo import demo_person

        try:
            demo_person(source)
        except ValueError as exc:
            return str(exc)
    return None
