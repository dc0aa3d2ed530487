"""The `obscura` command: init, run, pair, doctor, ring, camera probe."""

from __future__ import annotations

import argparse
import sys

from bridge.config import (
    Config,
    ConfigError,
    ConfigNotFound,
    demo_config,
    find_config,
    load_config,
)

EXIT_CONFIG = 2


def _load(args: argparse.Namespace, allow_demo: bool) -> Config:
    path = find_config(args.config)
    if path is None:
        if allow_demo:
            return demo_config()
        raise ConfigNotFound(args.config)
    return load_config(path)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args, allow_demo=True)
    from bridge.preflight import check_runnable

    check_runnable(config)  # ConfigError (exit 2) before anything starts
    from bridge.logs import setup_logging
    from bridge.service import run_forever

    setup_logging(args.log_level or config.log_level)
    from bridge.debug_memory import install_from_env

    install_from_env()  # OBSCURA_TRACEMALLOC: a debugging aid, off by default
    return run_forever(config)


def cmd_init(args: argparse.Namespace) -> int:
    from bridge.init import write_initial_config

    return write_initial_config(args)


def cmd_pair(args: argparse.Namespace) -> int:
    from bridge.pairing import print_pairing

    return print_pairing(_load(args, allow_demo=True))


def cmd_doctor(args: argparse.Namespace) -> int:
    from bridge.doctor import doctor

    return doctor(_load(args, allow_demo=True), args.url)


def cmd_ring(args: argparse.Namespace) -> int:
    from bridge.doorbell_api import ring_camera

    return ring_camera(_load(args, allow_demo=False), args.camera, args.url)


def cmd_camera(args: argparse.Namespace) -> int:
    from bridge.probe import probe_camera

    return probe_camera(args.source, args.snapshot, args.seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obscura",
        description="HomeKit camera bridge with on-device detection and owner-only clips.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            "-c",
            metavar="FILE",
            help="configuration file (default: $OBSCURA_CONFIG, ~/.config/obscura/obscura.toml, "
            "/etc/obscura/obscura.toml; none found: a demo camera)",
        )
        return p

    run = with_config(sub.add_parser("run", help="run the bridge"))
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    run.set_defaults(func=cmd_run)

    init = sub.add_parser("init", help="write a commented configuration with a fresh setup code")
    init.add_argument("--config", "-c", metavar="FILE", help="where to write it")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.add_argument("--name", default="Obscura", help="the bridge's name in the Home app")
    init.add_argument(
        "--camera",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="add a camera, e.g. 'Front door=rtsp://user:pass@192.168.1.20/stream1' (repeatable)",
    )
    init.add_argument("--state-dir", metavar="DIR", help="where pairings and keys live")
    init.set_defaults(func=cmd_init)

    pair = with_config(
        sub.add_parser("pair", help="show the setup code and QR code for the Home app")
    )
    pair.set_defaults(func=cmd_pair)

    doc = with_config(
        sub.add_parser("doctor", help="check the configuration and the running bridge")
    )
    doc.add_argument("--url", help="status API address (default: from the configuration)")
    doc.set_defaults(func=cmd_doctor)

    ring = with_config(
        sub.add_parser("ring", help="ring a doorbell camera on the running bridge")
    )
    ring.add_argument("camera", metavar="CAMERA", help="the camera's name (`doorbell = true`)")
    ring.add_argument("--url", help="status API address (default: from the configuration)")
    ring.set_defaults(func=cmd_ring)

    cam = sub.add_parser("camera", help="camera tools")
    cam_sub = cam.add_subparsers(dest="camera_command", required=True, metavar="ACTION")
    probe = cam_sub.add_parser("probe", help="connect to a source and print what it delivers")
    probe.add_argument("source", help="rtsp://…, v4l2:///dev/video0, file:///…, demo:")
    probe.add_argument("--snapshot", metavar="FILE.jpg", help="also save a snapshot")
    probe.add_argument("--seconds", type=float, default=3.0, help="how long to watch (default 3)")
    probe.set_defaults(func=cmd_camera)

    from bridge.detect.cli import add_commands

    add_commands(sub)
    from bridge.owner.cli import add_commands as add_owner_commands

    add_owner_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"obscura: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
