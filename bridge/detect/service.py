"""Detection in the running bridge: one pipeline per camera, events to HomeKit sensors.

The accessory's MotionSensor is on while an event of a chosen subject lasts (or, per camera,
while raw motion lasts); each per-subject OccupancySensor is on while such a subject is
present. A missing or broken model never stops the bridge: cameras keep streaming without
detection and the status API (`obscura doctor`) says why.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from bridge.camera import BridgeCamera
from bridge.config import Config
from bridge.detect.config import CameraDetect
from bridge.detect.detectors.base import ModelError
from bridge.detect.pipeline import (
    CameraPipeline,
    LivePipelineRunner,
    SharedDetector,
    monotonic_to_wall,
)
from bridge.detect.registry import load_model
from bridge.detect.settings import SettingsError
from bridge.detect.types import TrackEvent
from bridge.detect.zones import SubjectMap

log = logging.getLogger(__name__)

LEASE_SECONDS = 10.0  # decoding stays on while detection runs; renewed well before it lapses
RECENT_EVENTS = 100


class SensorState:
    """Which tracks of which subjects are live on one camera, and what HomeKit shows for it."""

    def __init__(self, accessory: Any, config: CameraDetect) -> None:
        self.accessory = accessory
        self.config = config
        self.tracks: dict[int, str] = {}  # live track id -> subject

    def apply(self, event: TrackEvent) -> None:
        if event.kind == "end":
            self.tracks.pop(event.track_id, None)
        elif event.subject in self.config.subjects:
            self.tracks[event.track_id] = event.subject
        present = set(self.tracks.values())
        for subject in self.accessory.occupancy_subjects:
            self.accessory.set_occupancy(subject, subject in present)
        if self.config.motion_sensor == "subjects":
            self.accessory.set_motion(bool(present))

    def raw_motion(self, moving: bool) -> None:
        if self.config.motion_sensor == "motion":
            self.accessory.set_motion(moving)


class DetectionService:
    def __init__(self, config: Config, cameras: list[BridgeCamera], accessories: list[Any]) -> None:
        self.config = config
        self.cameras = cameras
        self.accessories = accessories
        self.detector: SharedDetector | None = None
        self.error: str | None = None
        self.runners: dict[str, LivePipelineRunner] = {}
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)
        self._sensors: dict[str, SensorState] = {}
        self._lease_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[TrackEvent], None]] = []

    @property
    def wanted(self) -> list[tuple[BridgeCamera, Any]]:
        if not self.config.detect.enabled:
            return []
        return [
            (cam, acc)
            for cam, acc in zip(self.cameras, self.accessories, strict=True)
            if cam.config.detect.enabled
        ]

    def add_sensors(self) -> None:
        """Per-subject OccupancySensor services; before the HAP driver starts (stable IIDs)."""
        for camera, accessory in self.wanted:
            for subject in camera.config.detect.occupancy_sensors:
                accessory.add_occupancy_sensor(subject)
            self._sensors[camera.name] = SensorState(accessory, camera.config.detect)

    async def start(self) -> None:
        wanted = self.wanted
        if not wanted:
            return
        detect = self.config.detect
        try:
            detector = await asyncio.to_thread(
                load_model, detect.model, kind=detect.model_type, threads=detect.threads
            )
            SubjectMap(detect.labels).check_labels(detector.labels, detect.model)
        except (ModelError, SettingsError) as exc:
            self.error = str(exc)
            log.error("detection is off, cameras keep streaming: %s", exc)
            return
        self.detector = SharedDetector(detector)
        loop = asyncio.get_running_loop()
        for camera, _ in wanted:
            self._start_camera(camera, loop)
        self._lease_task = asyncio.create_task(self._keep_decoding(), name="detect:lease")
        log.info(
            "detecting %s with %s on %d camera(s)",
            ", ".join(sorted({s for c, _ in wanted for s in c.config.detect.subjects})),
            detect.model,
            len(wanted),
        )

    def _start_camera(self, camera: BridgeCamera, loop: asyncio.AbstractEventLoop) -> None:
        assert self.detector is not None
        sensors = self._sensors[camera.name]
        cfg = camera.config.detect

        def on_event(event: TrackEvent) -> None:
            loop.call_soon_threadsafe(self._on_event, sensors, event, time.time())

        def on_motion(moving: bool) -> None:
            loop.call_soon_threadsafe(sensors.raw_motion, moving)

        pipeline = CameraPipeline(
            camera.name, self.detector, cfg, cfg.fps or self.config.detect.fps, on_event, on_motion,
            to_wall=monotonic_to_wall,
        )
        runner = LivePipelineRunner(pipeline, clock=time.monotonic)
        camera.source.frames.add_listener(runner.on_frame)
        camera.source.frames.lease(LEASE_SECONDS)
        runner.start()
        self.runners[camera.name] = runner

    def _on_event(self, sensors: SensorState, event: TrackEvent, detected_at: float) -> None:
        sensors.apply(event)
        record = event.as_dict()
        record["detected_at"] = detected_at  # wall clock: when the pipeline produced it
        self.recent.append(record)
        if event.kind in ("start", "end"):
            log.info(
                "%s: %s %s (track %d, best score %.2f)",
                event.camera,
                event.subject,
                "arrived" if event.kind == "start" else "left",
                event.track_id,
                event.best_score,
            )
        for listener in self._listeners:
            listener(event)

    def add_listener(self, callback: Callable[[TrackEvent], None]) -> None:
        """callback(event) on the loop for every track event (the recorder of #4)."""
        self._listeners.append(callback)

    async def _keep_decoding(self) -> None:
        while True:
            for camera, _ in self.wanted:
                if camera.name in self.runners:
                    camera.source.frames.lease(LEASE_SECONDS)
            await asyncio.sleep(2.0)

    async def stop(self) -> None:
        if self._lease_task is not None:
            self._lease_task.cancel()
        await asyncio.gather(*(asyncio.to_thread(r.stop) for r in self.runners.values()))
        if self.detector is not None:
            self.detector.close()

    def status(self, camera: str) -> dict[str, Any]:
        runner = self.runners.get(camera)
        if camera not in self._sensors:
            return {"enabled": False}
        out: dict[str, Any] = {
            "enabled": runner is not None,
            "error": self.error or (runner.error if runner else None),
            "model": self.config.detect.model,
            "subjects": list(self._sensors[camera].config.subjects),
        }
        if runner is not None:
            out.update(runner.pipeline.stats())
            out["events_recent"] = [e for e in self.recent if e["camera"] == camera][-10:]
        return out

    def summary(self) -> dict[str, Any]:
        det = self.detector
        average = 1000 * det.seconds / det.calls if det and det.calls else None
        return {
            "enabled": det is not None,
            "error": self.error,
            "model": self.config.detect.model,
            "inference_calls": det.calls if det else 0,
            "inference_ms_avg": None if average is None else round(average, 1),
            "checked_at": time.time(),
        }
