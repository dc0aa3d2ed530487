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
from typing import Any

import platformdirs

from accessories.setup_code import setup_code_problem
from bridge.config_cameras import SOURCE_SCHEMES, CameraConfig, parse_camera, source_problem
from bridge.config_reader import (
    ConfigError,
    TableReader,
    config_path,
    read_address,
    read_choice,
    read_port,
)
from bridge.detect.config import DetectConfig, parse_detect
from bridge.store.config import StorageConfig, parse_storage

# Re-exported: the rest of Obscura imports the configuration's names from here.
__all__ = [
    "SOURCE_SCHEMES", "CameraConfig", "Config", "ConfigError", "ConfigNotFound", "HapConfig",
    "StatusConfig", "TableReader", "config_path", "default_config_paths", "demo_config",
    "find_config", "load_config", "parse_config", "source_problem",
]


def default_config_paths() -> tuple[Path | None, ...]:
    """$OBSCURA_CONFIG (None when unset or empty), the user's and the system's file."""
    env = os.environ.get("OBSCURA_CONFIG")
    return (
        Path(env) if env else None,
        Path(platformdirs.user_config_dir("obscura")) / "obscura.toml",
        Path("/etc/obscura/obscura.toml"),
    )


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
    detect: DetectConfig = field(default_factory=DetectConfig)
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
    log_level = read_choice(bridge, "log_level", "info", ("debug", "info", "warning", "error"))
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
        address=read_address(hap_r, "address", "0.0.0.0"),
        port=read_port(hap_r, "port", 51826),
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
        address=read_address(status_r, "address", "127.0.0.1"),
        port=read_port(status_r, "port", 8089),
    )
    status_r.check_unknown()

    detect = parse_detect(path, top.get("detect", dict, {}))
    cams_raw = top.get("cameras", list, [])
    cameras = tuple(parse_camera(path, i, c, detect) for i, c in enumerate(cams_raw))
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


