"""Detector overhead: NanoDet `detector.detect(rgb)` end to end vs its raw `session.run`.

    .venv/bin/python -m bench.detector_overhead [--quick] [-n N] [--threads T] [--json [FILE]]

The frames are real: tests/peers/scenes.py's photographed person crossing a yard, written as a
1280x720 H.264 clip and decoded with PyAV (yuv420p, as the bridge's decoder delivers them).
Each iteration takes the next of the clip's frames in which the person is in view and times,
back to back (interleaved, so drifting load on the shared box hits both alike):

- *end to end*: `detector.detect(rgb)`: crop, letterbox resize, normalise into the input
  tensor, `session.run`, decode the GFL head, clip, NMS, Detection objects;
- *raw*: `session.run` on the input tensor detect() has just filled (the same pre-processed
  input, the same session, the same output names);
- the pre-processing (`_preprocess`) and post-processing (`_postprocess` + NMS) alone.

The same is measured on a 416x416 region crop around the person (what the pipeline analyses
when motion is small: the region is never smaller than the model's 416-px input, so it is not
resized). One more row adds the YUV->RGB conversion the pipeline does before each call
(`frame.to_ndarray(format="rgb24")` of the whole 720p frame). Goal (issue #3): end to end /
raw <= 1.3.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

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
from bench._detect import decode_frames, write_crossing_clip
from bridge.detect.detectors._onnx import nms
from bridge.detect.registry import load_model

GOAL_RATIO = 1.3
WIDTH, HEIGHT = 1280, 720


def measure(
    detector: Any, frames: list[Any], regions: list[tuple[int, int, int, int] | None], n: int
) -> dict[str, list[float]]:
    """Interleaved timings (seconds) over n iterations; frame i % len(frames)."""
    session = detector._session
    names, input_name, tensor = detector._output_names, detector._input_name, detector._input
    out: dict[str, list[float]] = {
        k: [] for k in ("e2e", "raw", "pre", "post", "yuv_e2e", "e2e_cpu", "raw_cpu")
    }
    for i in range(n):
        frame, rgb, region = frames[i % len(frames)], None, regions[i % len(regions)]
        # The pipeline's own conversion + detect, on a frame not converted before.
        t0 = time.perf_counter()
        rgb = frame.to_ndarray(format="rgb24")
        detector.detect(rgb, region)
        out["yuv_e2e"].append(time.perf_counter() - t0)
        # End to end on an RGB frame (the brief's definition), with its CPU time.
        c0, t0 = time.process_time(), time.perf_counter()
        detector.detect(rgb, region)
        out["e2e"].append(time.perf_counter() - t0)
        out["e2e_cpu"].append(time.process_time() - c0)
        # Raw inference on the tensor detect() has just filled from this frame.
        c0, t0 = time.process_time(), time.perf_counter()
        outputs = session.run(names, {input_name: tensor})
        out["raw"].append(time.perf_counter() - t0)
        out["raw_cpu"].append(time.process_time() - c0)
        # The two halves around it, alone.
        x0, y0, x1, y1 = region if region is not None else (0, 0, rgb.shape[1], rgb.shape[0])
        t0 = time.perf_counter()
        img = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        ctx = detector._preprocess(img)
        out["pre"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        boxes, scores, classes = detector._postprocess(outputs, ctx, (x1 - x0, y1 - y0))
        if len(scores):
            nms(boxes, scores, classes, detector.iou_threshold)
        out["post"].append(time.perf_counter() - t0)
    return out


def person_frames(
    frames: list[Any], detector: Any, fps: int
) -> tuple[list[Any], list[tuple[int, int, int, int]]]:
    """Frames with a person well inside, and a 416x416 crop centred on the person in each."""
    chosen, crops = [], []
    side = max(detector.input_size)
    for frame in frames:
        found = [
            d
            for d in detector.detect(frame.to_ndarray(format="rgb24"))
            if d.label == "person" and d.score > 0.5
        ]
        if not found:
            continue
        x0, y0, x1, y1 = found[0].box
        if x0 < 20 or x1 > WIDTH - 20:
            continue  # half out of the frame: keep the frames comparable
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left = int(min(max(cx - side / 2, 0), WIDTH - side))
        top = int(min(max(cy - side / 2, 0), HEIGHT - side))
        chosen.append(frame)
        crops.append((left, top, left + side, top + side))
    return chosen, crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("-n", type=int, default=None, help="iterations per case (default 200)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (2)")
    args = parser.parse_args()
    n = args.n or (60 if args.quick else 200)
    info = machine_info()
    log(f"machine: {describe_machine(info)}")

    with tempfile.TemporaryDirectory(prefix="obscura-bench-") as tmp:
        clip = Path(tmp) / "crossing.mp4"
        write_crossing_clip(
            clip, width=WIDTH, height=HEIGHT, fps=15, seconds=4.0, enter_at=0.0, cross_seconds=4.0
        )
        frames = decode_frames(clip)
    detector = load_model("nanodet-m", threads=args.threads)
    try:
        chosen, crops = person_frames(frames, detector, 15)
        log(f"{len(chosen)} of {len(frames)} frames show the whole person; {n} iterations each")
        if not chosen:
            raise SystemExit("no frame with a person found: the detector or the clip is broken")
        warm = min(10, n)
        measure(detector, chosen, [None], warm)
        measure(detector, chosen, crops, warm)
        cases = {
            "full 1280x720 frame": measure(detector, chosen, [None], n),
            "416x416 region crop": measure(detector, chosen, crops, n),
        }
        if not detector.detect(chosen[0].to_ndarray(format="rgb24"), crops[0]):
            log("warning: nothing detected in the crop")
    finally:
        detector.close()

    rows, results = [], {}
    for name, t in cases.items():
        s = {k: Summary.of(v) for k, v in t.items()}
        ratio = s["e2e"].p50 / s["raw"].p50
        ratio_yuv = s["yuv_e2e"].p50 / s["raw"].p50
        results[name] = {
            **{k: v.as_dict(1000, 2) for k, v in s.items()},
            "ratio_e2e_over_raw": round(ratio, 3),
            "ratio_with_yuv_over_raw": round(ratio_yuv, 3),
            "goal_ratio": GOAL_RATIO,
        }
        rows.append(
            [
                name,
                s["e2e"].n,
                fmt(s["raw"].p50 * 1000, 2),
                fmt(s["e2e"].p50 * 1000, 2),
                fmt(s["pre"].p50 * 1000, 2),
                fmt(s["post"].p50 * 1000, 2),
                f"**{ratio:.2f}**",
                fmt(s["yuv_e2e"].p50 * 1000, 2),
                f"{ratio_yuv:.2f}",
                fmt(s["e2e_cpu"].p50 * 1000, 1),
                fmt(s["raw"].p90 * 1000, 1) + " / " + fmt(s["e2e"].p90 * 1000, 1),
            ]
        )
    print()
    print(f"NanoDet-m, onnxruntime CPU, {args.threads} threads; {describe_machine(info)}")
    print(
        table(
            [
                "input",
                "n",
                "raw session.run p50 ms",
                "detect() p50 ms",
                "pre p50 ms",
                "post+NMS p50 ms",
                "detect / raw",
                "+YUV->RGB p50 ms",
                "(+YUV) / raw",
                "detect() CPU ms p50",
                "p90 raw / detect ms",
            ],
            rows,
        )
    )
    print(f"goal: detect / raw <= {GOAL_RATIO}")
    emit_json(
        args,
        {
            "benchmark": "detector_overhead",
            "machine": info,
            "threads": args.threads,
            "iterations": n,
            "frames_with_person": len(chosen),
            "cases": results,
        },
    )


if __name__ == "__main__":
    main()
