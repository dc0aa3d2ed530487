"""Obscura's TOML configuration: schema, defaults and validation with clear errors.

Every error names the file, the key and what is wrong; `obscura run` exits with status 2 and
starts nothing when the configuration is invalid.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import platformdirs

from accessories.setup_code import setup_code_problem

if TYPE_CHECKING:
    from bridge.detect.config import CameraDetect, DetectConfig
    from bridge.record.hksv_config import HksvConfig
    from bridge.store.config import StorageConfig


def _camera_detect_default() -> CameraDetect:
    from bridge.detect.config import CameraDetect

    return CameraDetect()


def _hksv_default() -> HksvConfig:
    from bridge.record.hksv_config import HksvConfig

    return HksvConfig()


def _detect_default() -> DetectConfig:
    from bridge.detect.config import DetectConfig

    return DetectConfig()


def default_config_paths() -> tuple[Path | None, ...]:
    """$OBSCURA_CONFIG (None when unset or empty), the user's and the system's file."""
    env = os.environ.get("OBSCURA_CONFIG")
    return (
        Path(env) if env else None,
        Path(platformdirs.user_config_dir("obscura")) / "obscura.toml",
        Path("/etc/obscura/obscura.toml"),
    )


SOURCE_SCHEMES = ("rtsp", "rtsps", "v4l2", "file", "demo")


class ConfigError(Exception):
    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = str(path), key, problem
        where = f" at key '{key}'" if key else ""
        super().__init__(f"{path}: configuration error{where}: {problem}")


class ConfigNotFound(ConfigError):
    """No configuration file: names the paths looked at, so the user knows where to put one."""

    def __init__(self, explicit: str | None, why: str = "") -> None:
        if explicit:
            super().__init__(explicit, "", "no such file (`obscura init --config FILE` writes one)")
            return
        env = os.environ.get("OBSCURA_CONFIG")
        looked = [
            f"$OBSCURA_CONFIG ({env})" if env else "$OBSCURA_CONFIG (not set)",
            *(str(p) for p in default_config_paths()[1:] if p is not None),
        ]
        super().__init__(looked[-1], "", "no configuration file")
        # Not "FILE: configuration error": there is no one file to blame.
        Exception.__init__(self, (
            f"no configuration file (looked for --config, {', '.join(looked)})"
            + (f"; {why}" if why else "")
            + "; run `obscura init` to write one, or pass --config FILE"
        ))


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
    detect: CameraDetect = field(default_factory=_camera_detect_default)
    hksv: HksvConfig = field(default_factory=_hksv_default)


@dataclass(frozen=True, slots=True)
class HapConfig:
    address: str = "0.0.0.0"
    port: int = 51826
    setup_code: str | None = None
    advertise: bool = True
    advertised_address: str | None = None
    standalone: bool = False  # one HAP server per camera instead of one bridge
    max_connections: int = 64  # accessories/hap_connections.py says why
    max_connections_per_address: int = 16


@dataclass(frozen=True, slots=True)
class StatusConfig:
    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = 8089


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    name: str = "Obscura"
    state_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("obscura")))
    log_level: str = "info"
    hap: HapConfig = field(default_factory=HapConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    cameras: tuple[CameraConfig, ...] = ()
    demo: bool = False  # no config file: one demo camera
    detect: DetectConfig = field(default_factory=_detect_default)
    storage: StorageConfig | None = None  # None: no recording


def find_config(explicit: str | None) -> Path | None:
    """The file to load; None (the demo) only when there is none. $OBSCURA_CONFIG naming no
    file is an error: a typo must not start a demo listening on every interface. A directory at
    a default path is no file (Docker mounts one for a missing obscura.toml; deploy/ says so)."""
    if explicit:
        return Path(explicit)
    env, *defaults = default_config_paths()
    if env is not None:
        if not env.exists():
            raise ConfigError(env, "", "no such file (named by $OBSCURA_CONFIG)")
        return env
    for candidate in defaults:
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def demo_config() -> Config:
    """No configuration file: the demo (bridge/demo.py), a camera where a person walks by,
    detected and recorded, encrypted, to a demo key in the state dir (made on first use)."""
    from bridge.demo import demo_camera, demo_listen, demo_paths, demo_storage

    paths = demo_paths()
    hap, status = demo_listen()
    return Config(
        path=None,
        name="Obscura Demo",
        state_dir=paths.state_dir,
        hap=hap,
        status=status,
        cameras=(demo_camera(),),
        demo=True,
        storage=demo_storage(paths),
    )


def load_config(path: Path) -> Config:
    """Parse and check `path` without touching anything else: what may differ between hosts
    (directories, credentials files, addresses) is bridge.preflight's, before `run` starts."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a directory, not a configuration file") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            path, "", f"not valid UTF-8 at line {line}, column {column} "
            f"(byte 0x{data[exc.start]:02x}): save the file as UTF-8"
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(path, "", "not valid TOML: arrays or tables nested too deeply") from None
    return parse_config(raw, path)


class TableReader:
    """Typed access to one TOML table that remembers which keys were used."""

    def __init__(self, path: Path, prefix: str, table: Any) -> None:
        self.path, self.prefix = path, prefix
        if not isinstance(table, dict):
            raise ConfigError(path, prefix, f"must be a table, not {_tname(table)}")
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(self.path, self.key(name), f"must be {_kinds(kinds)}, not a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise ConfigError(
                self.path, self.key(name), f"must be {_kinds(kinds)}, not {_tname(value)}"
            )
        return value

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), problem)

    def check_unknown(self) -> None:
        for name in self.table:
            if name not in self.used:
                known = ", ".join(sorted(self.used))
                raise ConfigError(self.path, self.key(name), f"unknown key (known keys: {known})")


def _tname(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _kinds(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "an array",
        dict: "a table",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def config_path(r: TableReader, name: str) -> Path | None:
    """A path key: `~` expanded, relative to the configuration file's directory; None when
    missing or empty."""
    value = r.get(name, str, None)
    if not value:
        return None
    if "\0" in value:
        raise r.fail(name, "must not contain a NUL character")
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user of no such user
        raise r.fail(name, f"cannot expand {value.split('/', 1)[0]!r}: no such user") from None
    # abspath, not resolve(): a symbolic link stays one (credentials files refuse them)
    return p if p.is_absolute() else Path(os.path.abspath(r.path.parent / p))


def _port(r: TableReader, name: str, default: int) -> int:
    value = r.get(name, int, default)
    if not 0 <= value <= 65535:
        raise r.fail(name, f"must be a port number 0-65535, got {value}")
    return value


def _address(r: TableReader, name: str, default: str) -> str:
    value = r.get(name, str, default)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise r.fail(
            name, f"must be an IP address like 0.0.0.0 or 127.0.0.1, got {value!r}"
        ) from None
    return value


def _choice(r: TableReader, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = r.get(name, str, default)
    if value not in choices:
        raise r.fail(name, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def _hap_connection_caps(r: TableReader) -> dict[str, int]:
    total = r.get("max_connections", int, 64)
    if not 8 <= total <= 1024:  # fewer starves a home; more would eat the descriptors
        raise r.fail("max_connections", f"must be between 8 and 1024, got {total}")
    per_address = r.get("max_connections_per_address", int, 16)
    if not 1 <= per_address <= total:
        problem = f"must be between 1 and max_connections ({total}), got {per_address}"
        raise r.fail("max_connections_per_address", problem)
    return {"max_connections": total, "max_connections_per_address": per_address}


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    top = TableReader(path, "", raw)
    bridge = TableReader(path, "bridge", top.get("bridge", dict, {}))
    name = bridge.get("name", str, "Obscura").strip()
    if not name or len(name) > 64:
        raise bridge.fail("name", "must be 1 to 64 characters")
    state_dir = config_path(bridge, "state_dir") or Path(platformdirs.user_data_dir("obscura"))
    log_level = _choice(bridge, "log_level", "info", ("debug", "info", "warning", "error"))
    bridge.check_unknown()

    hap_r = TableReader(path, "hap", top.get("hap", dict, {}))
    setup_code = hap_r.get("setup_code", str, None)
    if setup_code is not None and (problem := setup_code_problem(setup_code)):
        raise hap_r.fail("setup_code", problem)
    advertised = hap_r.get("advertised_address", str, None)
    if advertised is not None:
        try:
            ipaddress.ip_address(advertised)
        except ValueError:
            raise hap_r.fail(
                "advertised_address", f"must be an IP address, got {advertised!r}"
            ) from None
    hap = HapConfig(
        address=_address(hap_r, "address", "0.0.0.0"),
        port=_port(hap_r, "port", 51826),
        setup_code=setup_code,
        advertise=hap_r.get("advertise", bool, True),
        advertised_address=advertised,
        standalone=hap_r.get("standalone", bool, False),
        **_hap_connection_caps(hap_r),
    )
    hap_r.check_unknown()

    status_r = TableReader(path, "status", top.get("status", dict, {}))
    status = StatusConfig(
        enabled=status_r.get("enabled", bool, True),
        address=_address(status_r, "address", "127.0.0.1"),
        port=_port(status_r, "port", 8089),
    )
    status_r.check_unknown()

    from bridge.detect.config import parse_detect

    detect = parse_detect(path, top.get("detect", dict, {}))
    cams_raw = top.get("cameras", list, [])
    cameras = tuple(_camera(path, i, c, detect) for i, c in enumerate(cams_raw))
    seen: dict[str, int] = {}
    for i, cam in enumerate(cameras):
        folded = cam.name.casefold()
        if folded in seen:
            raise ConfigError(
                path,
                f"cameras[{i}].name",
                f"duplicate camera name {cam.name!r} (also cameras[{seen[folded]}])",
            )
        seen[folded] = i
    from bridge.store.config import parse_storage

    storage = parse_storage(path, top.get("storage", dict, None))
    top.check_unknown()
    return Config(
        path=path,
        name=name,
        state_dir=state_dir,
        log_level=log_level,
        hap=hap,
        status=status,
        cameras=cameras,
        detect=detect,
        storage=storage,
    )


def _camera(path: Path, index: int, raw: Any, detect_defaults: DetectConfig) -> CameraConfig:
    from dataclasses import replace

    from bridge.detect.config import parse_camera_detect
    from bridge.record.hksv_config import parse_camera_hksv

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
        rtsp_transport=_choice(r, "rtsp_transport", "tcp", ("tcp", "udp")),
        prebuffer_seconds=prebuffer,
        width=width,
        height=height,
        fps=fps,
        input_format=_choice_opt(r, "input_format", ("mjpeg", "yuyv422", "h264")),
        live_mode=_choice(r, "live_mode", "auto", ("auto", "copy", "transcode")),
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


def _choice_opt(r: TableReader, name: str, choices: tuple[str, ...]) -> str | None:
    if name not in r.table:
        r.used.add(name)
        return None
    return _choice(r, name, choices[0], choices)


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
