"""Per camera: decoded frames → motion gate → object detector → filters → tracker → events.

Runs in one worker thread per camera (decode, inference and tracking are CPU work that must
stay off the event loop); events are handed to the loop with call_soon_threadsafe. The
detector is shared by every camera and serialised: on a small box, concurrent inference only
makes every camera slower.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import av.video.frame
import numpy as np

from bridge.detect.config import CameraDetect
from bridge.detect.detectors.base import Detector
from bridge.detect.motion import DetectSchedule, MotionGate, MotionResult, detection_region
from bridge.detect.tracker import Tracker
from bridge.detect.types import Box, Sighting, TrackEvent
from bridge.detect.zones import SightingFilter

log = logging.getLogger(__name__)

MOTION_WIDTH = 320  # the gate works on a small grey image: cheap and noise-tolerant


class SharedDetector:
    """One loaded model for every camera, one inference at a time."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self._lock = threading.Lock()
        self.calls = 0
        self.seconds = 0.0

    @property
    def name(self) -> str:
        return self.detector.path.name

    @property
    def input_side(self) -> int:
        return max(self.detector.input_size)

    def detect(self, rgb: np.ndarray, region: tuple[int, int, int, int] | None) -> list[Any]:
        with self._lock:
            started = time.perf_counter()
            try:
                return self.detector.detect(rgb, region)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

    def close(self) -> None:
        self.detector.close()


@dataclass
class FrameInput:
    frame: av.video.frame.VideoFrame
    time: float  # seconds on the pipeline's clock (monotonic when live)


def monotonic_to_wall(t: float) -> float:
    """A time.monotonic() reading as wall-clock time, with today's offset between the two."""
    return t + (time.time() - time.monotonic())


def gray_thumbnail(frame: av.video.frame.VideoFrame, width: int = MOTION_WIDTH) -> np.ndarray:
    """A small grey image from the luma plane: striding beats a scaler here, the gate blurs."""
    if frame.format.name in ("yuv420p", "yuvj420p", "nv12", "yuv422p", "yuvj422p", "gray"):
        plane = frame.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        luma = rows[:, : frame.width]
        step = max(1, frame.width // width)
        return np.ascontiguousarray(luma[::step, ::step])
    return frame.reformat(width, max(8, frame.height * width // frame.width), "gray").to_ndarray()


class CameraPipeline:
    """The analysis of one camera; `process` is synchronous so `obscura detect` reuses it."""

    def __init__(
        self,
        camera: str,
        detector: SharedDetector,
        config: CameraDetect,
        fps: float,
        on_event: Callable[[TrackEvent], None],
        on_motion: Callable[[bool], None] | None = None,
        to_wall: Callable[[float], float] | None = None,
    ) -> None:
        """`to_wall` maps the pipeline's clock to wall-clock times for the events it emits:
        the pipeline runs on a monotonic clock so that an NTP step (large on a board with no
        RTC) cannot end a live event early or hold one open, while clips and the manifest
        still get wall-clock times."""
        self.camera = camera
        self.to_wall = to_wall
        self.detector = detector
        self.config = config
        self.interval = 1.0 / fps
        self.gate = MotionGate(config.settings.motion)
        self.schedule = DetectSchedule(config.settings.motion.periodic_seconds)
        self.filter = SightingFilter(config.settings.filters)
        self.tracker = Tracker(config.settings.tracker, camera=camera)
        self.on_event = on_event
        self.on_motion = on_motion
        self.moving = False
        self.frames_analysed = 0
        self.detector_calls = 0
        self.motion_frames = 0
        self.events = 0
        self.last_seconds = 0.0  # analysis time of the last frame (motion + detection)
        self._last_analysed = -1e9

    def due(self, now: float) -> bool:
        return now - self._last_analysed >= self.interval * 0.98

    def process(self, item: FrameInput) -> list[TrackEvent]:
        started = time.perf_counter()
        now = item.time
        self._last_analysed = now
        self.frames_analysed += 1
        motion = self.gate.update(gray_thumbnail(item.frame), now)
        if motion.moving:
            self.motion_frames += 1
        self._report_motion(motion)
        if self.schedule.should_detect(motion, now, tracking=self.tracker.active):
            events = self._detect(item, motion, now)
        else:
            events = self.tracker.flush(now)
        self.last_seconds = time.perf_counter() - started
        self._emit(events)
        return events

    def _detect(self, item: FrameInput, motion: MotionResult, now: float) -> list[TrackEvent]:
        frame = item.frame
        width, height = frame.width, frame.height
        s = self.config.settings.motion
        # Never smaller than the model's input: a region is a crop at native resolution.
        min_side = max(s.region_min_side, self.detector.input_side / min(width, height))
        region = detection_region(
            [*motion.boxes, *self.tracker.boxes()],
            width / height,
            s.region_max_area,
            s.region_margin,
            min(1.0, min_side),
        )
        pixels = region.to_pixels(width, height) if region is not None else None
        # One scaler thread: PyAV would otherwise start a thread pool per converted frame,
        # kept alive as long as the frame (a track's best frame can live for minutes).
        rgb = frame.reformat(format="rgb24", threads=1).to_ndarray()
        found = self.detector.detect(rgb, pixels)
        self.detector_calls += 1
        sightings = [
            Sighting(
                d.label,
                self.filter.subject_for(d.label),
                d.score,
                Box.from_pixels(*d.box, width, height),
            )
            for d in found
        ]
        return self.tracker.update(self.filter.select(sightings), now, frame, region=region)

    def _report_motion(self, motion: MotionResult) -> None:
        if self.on_motion is not None and motion.moving != self.moving:
            self.on_motion(motion.moving)
        self.moving = motion.moving

    def flush(self, now: float) -> list[TrackEvent]:
        events = self.tracker.flush(now)
        self._emit(events)
        return events

    def close(self, now: float) -> list[TrackEvent]:
        events = self.tracker.close(now)
        self._emit(events)
        return events

    def _emit(self, events: list[TrackEvent]) -> None:
        for event in events:
            self.events += event.kind == "start"
            self.on_event(self._walled(event) if self.to_wall is not None else event)

    def _walled(self, event: TrackEvent) -> TrackEvent:
        assert self.to_wall is not None
        wall = self.to_wall
        return replace(
            event,
            time=wall(event.time),
            started_at=wall(event.started_at),
            ended_at=None if event.ended_at is None else wall(event.ended_at),
        )

    def stats(self) -> dict[str, Any]:
        return {
            "frames_analysed": self.frames_analysed,
            "detector_calls": self.detector_calls,
            "motion_frames": self.motion_frames,
            "events": self.events,
            "active_tracks": len(self.tracker.boxes()),
            "last_analysis_ms": round(self.last_seconds * 1000, 1),
        }


class LivePipelineRunner:
    """Feeds a camera's newest decoded frames to its pipeline at the configured rate."""

    def __init__(
        self, pipeline: CameraPipeline, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pipeline = pipeline
        self.clock = clock
        self._latest: av.video.frame.VideoFrame | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"detect:{pipeline.camera}", daemon=True
        )
        self.error: str | None = None

    def on_frame(self, frame: av.video.frame.VideoFrame, pts: float) -> None:
        """FrameTap listener (decoder thread): keep only the newest frame."""
        self._latest = frame
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def _run(self) -> None:
        pipeline = self.pipeline
        while not self._stopping:
            if not self._wake.wait(1.0):
                pipeline.flush(self.clock())  # no frames (camera down): tracks still end
                continue
            self._wake.clear()
            frame, self._latest = self._latest, None
            if frame is None:
                continue
            started = self.clock()
            paced_from = time.monotonic()
            try:
                pipeline.process(FrameInput(frame, started))
                self.error = None
            except Exception as exc:  # a bad frame must not end detection for good
                if self.error != str(exc):
                    log.exception("camera %r: detection failed", pipeline.camera)
                self.error = str(exc)
            # Pace to the configured rate; frames arriving meanwhile replace each other.
            rest = pipeline.interval - (time.monotonic() - paced_from)
            if rest > 0:
                self._stop.wait(rest)
        pipeline.close(self.clock())
