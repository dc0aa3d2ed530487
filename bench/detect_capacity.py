"""Detection capacity: how many 720p H.264 cameras one 2-core box analyses at 5 fps.

    .venv/bin/python -m bench.detect_capacity [--quick] [--scene motion|quiet] [--counts 1,2,..]
                                              [--servers shared|per-camera] [--json [FILE]]

For each N, a fresh `obscura run` with N RTSP cameras (1280x720@15, GOP 15, 2 Mbit/s H.264 from
gst-rtsp-server) and `[detect] enabled = true, fps = 5` (NanoDet-m, 2 onnxruntime threads,
default camera settings). Every camera is decoded in full (H.264 needs every frame) and its
newest frame analysed 5 times a second. After start-up and a warm-up, over a fixed window:

- *fps analysed* per camera = frames_analysed delta / window (status API), and detector calls;
- bridge CPU (utime + stime of all its threads, /proc/PID/stat) in % of one core, and per
  camera; the box's total busy % (of 200); bridge VmRSS;
- the gst-rtsp-server processes' CPU, reported separately: on a real deployment the cameras
  encode on their own hardware, here they share the same two cores.

Scenes: *motion* (worst case) is the photographed person walking across the yard without a
break (a 6 s loop, the person always in view): the tracker always has a live track, so every
analysed frame goes to the detector. *quiet* is the static yard with sensor noise: the gate
lets the detector run every 10 s only.

Cameras: with `--servers shared` (default) one gst-rtsp-server serves its shared media to all N
bridge cameras (N RTSP connections, N decoders and pipelines in the bridge, one encoder on the
box, all cameras see the same frames); `--servers per-camera` starts N servers (N encoders,
each ~20-25% of a core at 720p15, which eats the box the bridge is measured on).
A camera "keeps up" when it is analysed at >= 95% of 5 fps. Goal (issue #3): >= 4 cameras.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import (
    add_common_args,
    cpu_seconds,
    describe_machine,
    emit_json,
    fmt,
    log,
    machine_info,
    proc_status,
    rtsp_camera,
    system_cpu_busy,
    table,
)
from bench._detect import write_crossing_clip, write_quiet_clip
from tests.peers.bridge_process import BridgeProcess, CameraSpec
from tests.peers.rtsp import RtspCamera

FPS = 5.0
KEEPS_UP = 0.95 * FPS
GOAL_CAMERAS = 4


def make_clip(scene: str, path: Path) -> None:
    if scene == "motion":
        write_crossing_clip(
            path, width=1280, height=720, fps=15, seconds=6.0, enter_at=0.0, cross_seconds=6.0
        )
    else:
        write_quiet_clip(path, width=1280, height=720, fps=15, seconds=6.0, noise=3.0)


def detection(bridge: BridgeProcess) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    status = bridge.status()
    cams = {c["name"]: c.get("detection") or {} for c in status["cameras"]}
    return cams, status.get("detection") or {}


def one_count(
    n: int, servers: list[RtspCamera], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    specs = [
        CameraSpec(f"Cam {i + 1}", servers[i % len(servers)].url, {"prebuffer_seconds": 4})
        for i in range(n)
    ]
    bridge = BridgeProcess(workdir, specs, detect={"enabled": True, "fps": FPS, "threads": 2})
    bridge.start()
    try:
        for spec in specs:
            bridge.wait_camera(spec.name, "streaming", 60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cams, _ = detection(bridge)
            if all(c.get("frames_analysed", 0) > 0 for c in cams.values()):
                break
            time.sleep(0.5)
        time.sleep(args.warmup)
        pid = bridge.proc.pid  # type: ignore[union-attr]
        spids = [s.pid for s in servers if s.pid]
        cams0, sum0 = detection(bridge)
        b0, s0 = cpu_seconds(pid), sum(cpu_seconds(p) for p in spids)
        busy0, total0 = system_cpu_busy()
        t0 = time.monotonic()
        time.sleep(args.window)
        wall = time.monotonic() - t0
        b1, s1 = cpu_seconds(pid), sum(cpu_seconds(p) for p in spids)
        busy1, total1 = system_cpu_busy()
        cams1, sum1 = detection(bridge)
        mem = proc_status(pid)
    finally:
        rc = bridge.stop()
        text = bridge.log_text()
        if rc not in (0, None) or "Traceback" in text:
            log(f"bridge exited with {rc}; log:\n{text[-3000:]}")
    fps = {
        name: (cams1[name]["frames_analysed"] - cams0[name]["frames_analysed"]) / wall
        for name in cams1
    }
    calls = sum(cams1[k]["detector_calls"] - cams0[k]["detector_calls"] for k in cams1)
    dcalls = (sum1.get("inference_calls") or 0) - (sum0.get("inference_calls") or 0)
    inf_ms = None
    if dcalls > 0 and sum1.get("inference_ms_avg") is not None:
        total_ms1 = sum1["inference_ms_avg"] * sum1["inference_calls"]
        total_ms0 = (sum0.get("inference_ms_avg") or 0.0) * (sum0.get("inference_calls") or 0)
        inf_ms = (total_ms1 - total_ms0) / dcalls
    bridge_pct = 100 * (b1 - b0) / wall
    result = {
        "cameras": n,
        "window_s": round(wall, 2),
        "fps_per_camera": {k: round(v, 2) for k, v in fps.items()},
        "fps_min": round(min(fps.values()), 2),
        "fps_mean": round(sum(fps.values()) / n, 2),
        "detector_calls_per_s": round(calls / wall, 2),
        "inference_ms_avg": None if inf_ms is None else round(inf_ms, 1),
        "last_analysis_ms": [c.get("last_analysis_ms") for c in cams1.values()],
        "errors": [c.get("error") for c in cams1.values() if c.get("error")],
        "bridge_cpu_percent": round(bridge_pct, 1),
        "bridge_cpu_percent_per_camera": round(bridge_pct / n, 1),
        "servers": len(spids),
        "servers_cpu_percent": round(100 * (s1 - s0) / wall, 1),
        "box_busy_percent": round(200 * (busy1 - busy0) / max(total1 - total0, 1), 1),
        "rss_mib": round(mem.get("VmRSS", 0) / 1024, 1),
        "threads": mem.get("Threads"),
        "keeps_up": min(fps.values()) >= KEEPS_UP,
    }
    log(
        f"N={n}: fps min {result['fps_min']} mean {result['fps_mean']}, calls/s "
        f"{result['detector_calls_per_s']}, bridge {result['bridge_cpu_percent']}%, servers "
        f"{result['servers_cpu_percent']}%, box {result['box_busy_percent']}%, "
        f"RSS {result['rss_mib']} MiB, inference {result['inference_ms_avg']} ms"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--scene", choices=["motion", "quiet"], default="motion")
    parser.add_argument("--counts", default="1,2,3,4,5,6", help="camera counts (1,2,3,4,5,6)")
    parser.add_argument("--servers", choices=["shared", "per-camera"], default="shared")
    parser.add_argument("--window", type=float, default=None, help="seconds per N (20)")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before the window")
    parser.add_argument(
        "--all", action="store_true", help="keep going after the first N that falls behind"
    )
    args = parser.parse_args()
    args.window = args.window or (10.0 if args.quick else 20.0)
    counts = [int(x) for x in args.counts.split(",")]
    info = machine_info()
    log(f"machine: {describe_machine(info)}")

    results: list[dict[str, Any]] = []
    servers: list[RtspCamera] = []
    with tempfile.TemporaryDirectory(prefix="obscura-bench-") as tmp:
        clip = Path(tmp) / f"{args.scene}.mp4"
        make_clip(args.scene, clip)
        try:
            behind = 0
            for n in counts:
                want = 1 if args.servers == "shared" else n
                while len(servers) < want:
                    cam = rtsp_camera(mount=f"/cam{len(servers) + 1}")
                    cam.file = clip
                    cam.start()
                    servers.append(cam)
                workdir = Path(tmp) / f"n{n}"
                workdir.mkdir()
                results.append(one_count(n, servers, args, workdir))
                behind += not results[-1]["keeps_up"]
                if behind >= 2 and not args.all:
                    break  # two counts past the limit: capacity found
        finally:
            for cam in servers:
                cam.stop()

    rows = [
        [
            r["cameras"],
            fmt(r["fps_min"], 2) + " / " + fmt(r["fps_mean"], 2),
            "yes" if r["keeps_up"] else "**no**",
            fmt(r["detector_calls_per_s"], 1),
            fmt(r["inference_ms_avg"], 1) if r["inference_ms_avg"] is not None else "n/a",
            fmt(r["bridge_cpu_percent"], 1),
            fmt(r["bridge_cpu_percent_per_camera"], 1),
            fmt(r["servers_cpu_percent"], 1) + f" ({r['servers']})",
            fmt(r["box_busy_percent"], 0),
            fmt(r["rss_mib"], 1),
        ]
        for r in results
    ]
    capacity = max((r["cameras"] for r in results if r["keeps_up"]), default=0)
    print()
    print(
        f"scene {args.scene}, servers {args.servers}, {args.window:.0f} s windows; "
        f"{describe_machine(info)}"
    )
    print(
        table(
            [
                "cameras",
                "fps analysed min / mean",
                "keeps up (>= 4.75)",
                "detector calls/s",
                "inference ms avg",
                "bridge CPU %",
                "per camera %",
                "camera servers CPU %",
                "box busy % (of 200)",
                "bridge RSS MiB",
            ],
            rows,
        )
    )
    print(f"capacity: {capacity} camera(s) at 5 fps (goal >= {GOAL_CAMERAS})")
    emit_json(
        args,
        {
            "benchmark": "detect_capacity",
            "machine": info,
            "scene": args.scene,
            "servers": args.servers,
            "window_s": args.window,
            "capacity": capacity,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
