"""Motion gate: object-detector calls on a quiet scene, with the gate and without it.

    .venv/bin/python -m bench.motion_gate [--quick] [--seconds S] [--json [FILE]]

Each scenario is a real H.264 clip (1280x720, written with PyAV/libx264 at crf 18 so the
sensor noise survives encoding), decoded with PyAV and fed frame by frame to the bridge's own
`CameraPipeline` (bridge/detect/pipeline.py) at 5 fps on a simulated clock (frame i at
t = i / 5 s), with the real NanoDet-m detector and default camera settings:

- *gated*: the pipeline as the bridge runs it (motion gate + `DetectSchedule`: the detector
  runs on motion, after a background re-learn, while tracking, and every `periodic_seconds`,
  10 s by default);
- *ungated*: the same pipeline whose schedule always says yes (every analysed frame goes to
  the detector), i.e. detection without a gate.

Scenarios: *noise* (a static yard, Gaussian sensor noise sigma 3 grey levels per frame),
*drift* (the same plus a slow auto-exposure drift: brightness x (1 + 0.2 sin(2 pi t / 30 s)),
and, not with --quick: *night* (sensor noise sigma 8), *strong drift* (+-40 % over a 20 s
period: fast enough that the gate re-learns its background, and the detector looks once after
each re-learn) and *visit* (noise; the photographed person crosses once, at t = 20 s for 6 s:
the gate must still let the detector see the visit; both pipelines must raise one event).
Goal (issue #3): gated calls <= 1/10 of ungated calls on a quiet scene.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import (
    Summary,
    add_common_args,
    describe_machine,
    emit_json,
    fmt,
    log,
    machine_info,
    table,
)
from bench._detect import decode_frames, write_crossing_clip, write_quiet_clip
from bridge.detect.config import CameraDetect
from bridge.detect.motion import DetectSchedule, MotionResult
from bridge.detect.pipeline import CameraPipeline, FrameInput, SharedDetector
from bridge.detect.registry import load_model
from bridge.detect.types import TrackEvent

GOAL_RATIO = 0.1
FPS = 5
WIDTH, HEIGHT = 1280, 720


class AlwaysSchedule(DetectSchedule):
    """No gate: every analysed frame goes to the detector."""

    def should_detect(
        self, result: MotionResult | None, now: float, tracking: bool = False
    ) -> bool:
        self.calls += 1
        return True


def run_pipeline(frames: list[Any], shared: SharedDetector, gated: bool) -> dict[str, Any]:
    events: list[TrackEvent] = []
    pipeline = CameraPipeline("Bench", shared, CameraDetect(), FPS, events.append)
    if not gated:
        pipeline.schedule = AlwaysSchedule(pipeline.schedule.periodic_seconds)
    gate_only: list[float] = []
    call_times: list[float] = []
    c0, t0 = time.process_time(), time.perf_counter()
    for i, frame in enumerate(frames):
        calls = pipeline.detector_calls
        now = i / FPS
        pipeline.process(FrameInput(frame, now))
        if pipeline.detector_calls == calls:
            gate_only.append(pipeline.last_seconds)
        else:
            call_times.append(now)
    pipeline.close(len(frames) / FPS)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = pipeline.stats()
    return {
        "frames": len(frames),
        "detector_calls": stats["detector_calls"],
        "motion_frames": stats["motion_frames"],
        "events": sum(e.kind == "start" for e in events),
        "call_times_s": call_times,
        "gate_only_ms": Summary.of(gate_only).as_dict(1000, 3),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
    }


def make_clip(kind: str, path: Path, seconds: float) -> None:
    if kind == "noise":
        write_quiet_clip(path, width=WIDTH, height=HEIGHT, fps=FPS, seconds=seconds, noise=3.0)
    elif kind == "drift":
        write_quiet_clip(
            path,
            width=WIDTH,
            height=HEIGHT,
            fps=FPS,
            seconds=seconds,
            noise=3.0,
            drift=0.2,
            drift_period=30.0,
        )
    elif kind == "night":
        write_quiet_clip(path, width=WIDTH, height=HEIGHT, fps=FPS, seconds=seconds, noise=8.0)
    elif kind == "strong drift":
        write_quiet_clip(
            path,
            width=WIDTH,
            height=HEIGHT,
            fps=FPS,
            seconds=seconds,
            noise=3.0,
            drift=0.4,
            drift_period=20.0,
        )
    elif kind == "visit":
        write_crossing_clip(
            path,
            width=WIDTH,
            height=HEIGHT,
            fps=FPS,
            seconds=seconds,
            enter_at=20.0,
            cross_seconds=6.0,
            noise=3.0,
        )
    else:
        raise ValueError(kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated seconds (60)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (2)")
    args = parser.parse_args()
    info = machine_info()
    log(f"machine: {describe_machine(info)}")
    scenarios = ["noise", "drift"]
    if not args.quick:
        scenarios += ["night", "strong drift", "visit"]

    shared = SharedDetector(load_model("nanodet-m", threads=args.threads))
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="obscura-bench-") as tmp:
            for kind in scenarios:
                clip = Path(tmp) / f"{kind.replace(' ', '-')}.mp4"
                t0 = time.monotonic()
                make_clip(kind, clip, args.seconds)
                frames = decode_frames(clip)
                log(
                    f"{kind}: {len(frames)} frames written and decoded in "
                    f"{time.monotonic() - t0:.1f} s"
                )
                gated = run_pipeline(frames, shared, gated=True)
                ungated = run_pipeline(frames, shared, gated=False)
                ratio = gated["detector_calls"] / max(ungated["detector_calls"], 1)
                results[kind] = {"gated": gated, "ungated": ungated, "ratio": round(ratio, 4)}
                log(
                    f"{kind}: gated {gated['detector_calls']} calls at "
                    f"{[round(t, 1) for t in gated['call_times_s']][:20]}, ungated "
                    f"{ungated['detector_calls']}; ratio {ratio:.3f}"
                )
                del frames
    finally:
        shared.close()

    rows = []
    for kind, r in results.items():
        g, u = r["gated"], r["ungated"]
        rows.append(
            [
                kind,
                f"{args.seconds:.0f} s @ {FPS} fps",
                g["frames"],
                u["detector_calls"],
                g["detector_calls"],
                f"**{r['ratio']:.3f}** (1/{1 / r['ratio']:.0f})" if r["ratio"] else "0",
                g["motion_frames"],
                f"{g['events']} / {u['events']}",
                fmt(g["gate_only_ms"]["p50"], 2),
                f"{g['cpu_s']:.1f} / {u['cpu_s']:.1f}",
            ]
        )
    print()
    print(f"NanoDet-m, {args.threads} threads; {describe_machine(info)}")
    print(
        table(
            [
                "scene",
                "simulated",
                "frames analysed",
                "calls ungated",
                "calls gated",
                "gated / ungated",
                "motion frames (gated)",
                "events gated / ungated",
                "gate-only frame p50 ms",
                "CPU s gated / ungated",
            ],
            rows,
        )
    )
    print(f"goal on a quiet scene: gated / ungated <= {GOAL_RATIO} (1/10)")
    emit_json(
        args,
        {
            "benchmark": "motion_gate",
            "machine": info,
            "fps": FPS,
            "seconds": args.seconds,
            "scenarios": results,
        },
    )


if __name__ == "__main__":
    main()
