"""`obscura init`: a commented configuration with a fresh setup code (mode 0600)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import platformdirs

from accessories.setup_code import generate_setup_code
from bridge.config import ConfigError, load_config, source_problem
from bridge.redact import redact_url

TEMPLATE = """\
# Obscura configuration. Reference: README.md ("Configuration").
# This file holds the HomeKit setup code and camera passwords: keep it private (mode 0600).

[bridge]
name = {name}                 # the bridge's name in the Home app
state_dir = {state_dir}       # pairings and keys (mode 0700)
# log_level = "info"          # debug | info | warning | error

[hap]
address = "0.0.0.0"           # where HomeKit controllers connect (all interfaces)
port = 51826
setup_code = "{setup_code}"    # shown by `obscura pair`; trivial codes are refused
advertise = true              # announce the bridge over mDNS (Bonjour)
# advertised_address = "192.168.1.10"  # when the host has several addresses

[status]
address = "127.0.0.1"         # local status API read by `obscura doctor` (/status, /metrics)
port = 8089

[detect]
enabled = true                # on-device detection: person, vehicle, animal (package: custom model)
fps = 5

# One [[cameras]] block per camera. Sources:
#   rtsp://user:pass@192.168.1.20:554/stream1   IP camera (H.264 is copied, not re-encoded)
#   v4l2:///dev/video0                          USB camera (MJPEG/YUYV are encoded to H.264)
#   file:///path/to/video.mp4                   a file, looped (for trying things out)
#   demo:                                       a synthetic scene with a clock
{cameras}"""

CAMERA = """
[[cameras]]
name = {name}
source = {source}
# subjects = ["person", "vehicle", "animal"]  # what notifies (detected on this box)
# rtsp_transport = "tcp"      # or "udp"
# prebuffer_seconds = 4       # video kept for instant live view and clip pre-roll
# live_mode = "auto"          # auto: copy H.264 when it fits the request, else transcode
"""


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_initial_config(args: argparse.Namespace) -> int:
    path = (
        Path(args.config)
        if args.config
        else Path(platformdirs.user_config_dir("obscura")) / "obscura.toml"
    )
    if path.exists() and not args.force:
        raise ConfigError(path, "", "already exists; use --force to overwrite it")
    cameras = []
    for spec in args.camera or ["Demo camera=demo:"]:
        name, sep, source = spec.partition("=")
        if not sep or not name.strip():
            raise ConfigError(
                path, "cameras", f"--camera takes NAME=SOURCE, got {redact_url(spec)!r}"
            )
        if problem := source_problem(source.strip()):
            raise ConfigError(path, "cameras", problem)
        cameras.append(
            CAMERA.format(name=_toml_string(name.strip()), source=_toml_string(source.strip()))
        )
    state_dir = args.state_dir or platformdirs.user_data_dir("obscura")
    text = TEMPLATE.format(
        name=_toml_string(args.name),
        state_dir=_toml_string(str(Path(state_dir).expanduser().absolute())),
        setup_code=generate_setup_code(),
        cameras="".join(cameras),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)
    load_config(path)  # what we wrote must load
    print(f"Wrote {path} (mode 0600) with a new setup code.")
    print(
        "Recording is off until clips can be encrypted to you: run `obscura keys generate` "
        f"(keep that key off this box), then `obscura keys add-recipient age1… --config {path}`."
    )
    print(
        f"Next: `obscura run --config {path}`, then `obscura pair --config {path}` "
        "to add it in the Home app."
    )
    return 0
