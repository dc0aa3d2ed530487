"""Notification latency: detection result -> HomeKit EVENT at an aiohomekit controller.

    .venv/bin/python -m bench.notify_latency [--quick] [--visits N] [--extra-cameras K]
                                             [--json [FILE]]

A gst-rtsp-server camera (1280x720@15, GOP 15) serves a looping 8 s clip: the photographed
person of tests/peers/scenes.py walks across the yard (in view ~0.3-3.8 s), then the yard is
empty until the loop starts again. `obscura run` analyses it at 5 fps (`[detect] enabled`,
camera `detect = {hold_seconds = 1.0}`, so each visit ends ~1 s after the person left). An
aiohomekit controller paired with the bridge subscribes to the camera's MotionDetected and
to the person OccupancySensor's OccupancyDetected and timestamps every EVENT with time.time()
as it arrives (the hook on `pairing.event_received`, after aiohomekit decrypted and parsed it).

The bridge records, for each track event, `detected_at`: the wall-clock time at which the
pipeline thread produced it (before it is handed to the event loop). The benchmark polls the
status API's `events_recent` and replays the records the way the bridge's SensorState does
(the sensor is on while any track of a chosen subject is live), which gives the expected
on/off transitions and their `detected_at`. Each transition is matched with the first unused
client EVENT of the same value that arrived after it: latency = arrival - detected_at. It
includes the hand-off to the event loop, HAP-python's immediate publish, encryption, loopback
TCP and the controller's decryption and parsing. Bridge, camera and controller share the box's
clock. `--extra-cameras K` adds K more analysed cameras on the same clip (their events happen
at the same moments: the bridge's event loop and GIL are at their busiest). Goal (issue #3):
p50 <= 0.1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
    rtsp_camera,
    running_bridge,
    table,
)
from bench._detect import write_crossing_clip
from tests.peers.bridge_process import CameraSpec
from tests.peers.homekit import EventLog, find_characteristics

CAMERA = "Yard"
GOAL_P50_S = 0.1
SUBJECTS = ("person", "vehicle", "animal")  # the camera's default subjects


class WallEventLog(EventLog):
    """EventLog whose timestamps are time.time() (comparable with the bridge's detected_at)."""

    def _on_event(self, event: dict[str, Any]) -> None:
        now = time.time()
        for row in event.get("characteristics", []):
            if isinstance(row, dict) and "aid" in row and "iid" in row:
                self.events.append((now, (row["aid"], row["iid"]), row.get("value")))
        assert self._orig is not None
        self._orig(event)


def occupancy_key(accessories: list[dict[str, Any]], aid: int, subject: str) -> tuple[int, int]:
    """The OccupancyDetected of the OccupancySensor named `subject`."""
    for acc in accessories:
        if acc["aid"] != aid:
            continue
        for svc in acc["services"]:
            chars = {c["type"].split("-")[0].lstrip("0"): c for c in svc["characteristics"]}
            if "71" in chars and chars.get("23", {}).get("value") == subject:
                return aid, chars["71"]["iid"]
    raise LookupError(f"no OccupancySensor named {subject!r}")


def transitions(
    records: list[dict[str, Any]], subjects: tuple[str, ...]
) -> list[tuple[float, bool]]:
    """(detected_at, on) whenever "any live track of these subjects" changes, as SensorState
    computes it from the track events."""
    live: dict[int, str] = {}
    out: list[tuple[float, bool]] = []
    present = False
    for r in sorted(records, key=lambda r: (r["detected_at"], r["kind"] != "start")):
        if r["kind"] == "end":
            live.pop(r["track_id"], None)
        elif r["subject"] in subjects:
            live[r["track_id"]] = r["subject"]
        now = bool(live)
        if now != present:
            out.append((r["detected_at"], now))
            present = now
    return out


def match(
    expected: list[tuple[float, bool]],
    arrivals: list[tuple[float, Any]],
    since: float,
    window: float = 3.0,
) -> tuple[list[tuple[float, bool, float]], int]:
    """Pair each expected transition (after `since`) with the first unused arrival of the same
    value at or after it, within `window` s. Returns (detected_at, on, latency) and the number
    of expected transitions nothing arrived for."""
    used: set[int] = set()
    out, missing = [], 0
    for t, on in expected:
        if t < since:
            continue
        hit = next(
            (
                i
                for i, (a, v) in enumerate(arrivals)
                if i not in used and bool(v) == on and t <= a <= t + window
            ),
            None,
        )
        if hit is None:
            missing += 1
            continue
        used.add(hit)
        out.append((t, on, arrivals[hit][0] - t))
    return out, missing


async def poll_records(env: Any, into: dict[tuple[Any, ...], dict[str, Any]]) -> dict[str, Any]:
    """Add the camera's events_recent to `into` (keyed so repeats collapse); returns the
    camera's detection status."""
    status = (await env.camera_status(CAMERA))["detection"]
    for r in status.get("events_recent", []):
        into[(r["track_id"], r["kind"], r["detected_at"])] = r
    return status


async def run(args: argparse.Namespace, clip: Path) -> dict[str, Any]:
    cam = rtsp_camera(mount="/yard")
    cam.file = clip
    spec = CameraSpec(CAMERA, "rtsp:#0", {"detect": {"hold_seconds": 1.0}})
    # Load: more cameras on the same shared RTSP media, analysed too (same clip, same visits).
    extra = [
        CameraSpec(f"Load {i + 1}", "rtsp:#0", {"detect": {"hold_seconds": 1.0}})
        for i in range(args.extra_cameras)
    ]
    detect = {"enabled": True, "fps": 5}
    records: dict[tuple[Any, ...], dict[str, Any]] = {}
    async with running_bridge([spec, *extra], [cam], keep=args.keep, detect=detect) as env:
        aid = env.aid(CAMERA)
        motion = find_characteristics(env.accessories, "MotionDetected", aid=aid)[0].key
        person = occupancy_key(env.accessories, aid, "person")
        events = WallEventLog(env.paired.pairing)
        await events.subscribe([motion, person])
        since = time.time()
        log(f"subscribed; waiting for {args.visits} visits (8 s loop each)")
        deadline = time.monotonic() + args.visits * 8.0 + 40.0
        status: dict[str, Any] = {}
        try:
            while time.monotonic() < deadline:
                status = await poll_records(env, records)
                ends = [
                    t
                    for t, on in transitions(list(records.values()), SUBJECTS)
                    if not on and t >= since
                ]
                if len(ends) >= args.visits:
                    break
                await asyncio.sleep(1.0)
            await asyncio.sleep(1.0)  # let the last EVENTs arrive
            status = await poll_records(env, records)
            summary = (await env.status())["detection"]
        finally:
            await events.close()
    recs = list(records.values())
    arrivals = {
        name: [(t, v) for t, k, v in events.events if k == key]
        for name, key in (("motion", motion), ("person", person))
    }
    out: dict[str, Any] = {"records": len(recs), "status": status, "summary": summary}
    for name, subjects in (("motion", SUBJECTS), ("person", ("person",))):
        expected = transitions(recs, subjects)
        matched, missing = match(expected, arrivals[name], since)
        out[name] = {
            "expected": sum(1 for t, _ in expected if t >= since),
            "arrived": len(arrivals[name]),
            "missing": missing,
            "latency_s": [(round(t, 3), on, round(lat, 4)) for t, on, lat in matched],
        }
    starts = sorted(
        r["detected_at"] for r in recs if r["kind"] == "start" and r["detected_at"] >= since
    )
    out["visits"] = len(starts)
    out["visit_spacing_s"] = [round(b - a, 2) for a, b in itertools.pairwise(starts)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--visits", type=int, default=None, help="visits to wait for (15)")
    parser.add_argument(
        "--extra-cameras",
        type=int,
        default=0,
        help="load: this many more analysed cameras on the same clip (their visits coincide)",
    )
    args = parser.parse_args()
    args.visits = args.visits or (6 if args.quick else 15)
    info = machine_info()
    log(f"machine: {describe_machine(info)}")
    with tempfile.TemporaryDirectory(prefix="obscura-bench-") as tmp:
        clip = Path(tmp) / "crossing.mp4"
        truth = write_crossing_clip(
            clip, width=1280, height=720, fps=15, seconds=8.0, enter_at=0.3, cross_seconds=3.5
        )
        log(f"clip: person in view {truth.enters:.2f}-{truth.leaves:.2f} s of each 8 s loop")
        result = asyncio.run(run(args, clip))

    rows, js = [], {}
    for name, label in (("motion", "MotionDetected"), ("person", "OccupancyDetected (person)")):
        r = result[name]
        for on, kind in ((True, "on (visit starts)"), (False, "off (visit ends)")):
            lat = [x[2] for x in r["latency_s"] if x[1] == on]
            s = Summary.of(lat)
            js[f"{name}_{'on' if on else 'off'}"] = s.as_dict(1000, 2)
            rows.append(
                [
                    label,
                    kind,
                    s.n,
                    f"**{fmt(s.p50 * 1000, 1)}**",
                    fmt(s.p90 * 1000, 1),
                    fmt(s.min * 1000, 1),
                    fmt(s.max * 1000, 1),
                ]
            )
        allv = [x[2] for x in r["latency_s"]]
        s = Summary.of(allv)
        js[f"{name}_all"] = s.as_dict(1000, 2)
        rows.append(
            [
                label,
                "all",
                s.n,
                f"**{fmt(s.p50 * 1000, 1)}**",
                fmt(s.p90 * 1000, 1),
                fmt(s.min * 1000, 1),
                fmt(s.max * 1000, 1),
            ]
        )
    print()
    print(f"{1 + args.extra_cameras} analysed camera(s); {describe_machine(info)}")
    print(
        table(["characteristic", "transition", "n", "p50 ms", "p90 ms", "min ms", "max ms"], rows)
    )
    st = result["status"]
    print(
        f"visits seen: {result['visits']} (spacing {result['visit_spacing_s']} s); "
        f"track records {result['records']}; transitions expected/arrived/missing: "
        f"motion {result['motion']['expected']}/{result['motion']['arrived']}/"
        f"{result['motion']['missing']}, person {result['person']['expected']}/"
        f"{result['person']['arrived']}/{result['person']['missing']}; camera: "
        f"{st.get('frames_analysed')} frames analysed, {st.get('detector_calls')} detector calls, "
        f"inference avg {result['summary'].get('inference_ms_avg')} ms"
    )
    print(f"goal: p50 <= {GOAL_P50_S * 1000:.0f} ms")
    emit_json(
        args,
        {
            "benchmark": "notify_latency",
            "machine": info,
            "cameras": 1 + args.extra_cameras,
            "truth": {"enters": truth.enters, "leaves": truth.leaves, "loop_s": 8.0},
            "latency_ms": js,
            **{k: v for k, v in result.items() if k not in ("status", "summary")},
            "camera_detection": {k: v for k, v in st.items() if k != "events_recent"},
            "summary": result["summary"],
        },
    )


if __name__ == "__main__":
    main()
