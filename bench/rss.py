"""Memory of the bridge with 4 cameras: idle, with a live viewer, after snapshots.

    .venv/bin/python -m bench.rss [--quick] [--cameras N] [--after-lease] [--json [FILE]]

N (default 4) RTSP cameras, each its own gst-rtsp-server process at 1280x720@15, GOP 15,
~2 Mbit/s, behind one `obscura run` (prebuffer 4 s each). VmRSS (resident now) and VmHWM (peak
resident since start) come from /proc/PID/status, with the thread count, at each step:

1. up: all cameras streaming (prebuffers still filling);
2. idle: prebuffers full, no viewer, no decoder;
3. copy viewer: one viewer of camera 1 at its own 1280x720@15 (no decode);
4. transcode viewer: that viewer replaced by one at 640x360@15 (decoder + libx264);
5. snapshots: after one 640x360 snapshot of every camera (each camera's decoder now runs for
   its 30 s lease);
6. with --after-lease: 35 s later, when the decoders have stopped (is the memory given back?).

Each step holds for a few seconds before sampling; the bridge's CPU over that hold is shown too.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench._common import (
    Env,
    add_common_args,
    close_viewer,
    cpu_seconds,
    describe_machine,
    emit_json,
    fmt,
    log,
    machine_info,
    open_viewer,
    proc_status,
    rtsp_camera,
    running_bridge,
    table,
)
from tests.peers.bridge_process import CameraSpec
from tests.peers.camera_tlv import VideoSelection
from tests.peers.viewer import Viewer


async def sample(env: Env, step: str, hold: float, rows: list[dict[str, Any]]) -> None:
    """Hold for `hold` s (RSS polled every 0.25 s for its max), then record the step."""
    cpu0, t0 = cpu_seconds(env.pid), time.monotonic()
    max_rss = 0
    while time.monotonic() - t0 < hold:
        max_rss = max(max_rss, proc_status(env.pid)["VmRSS"])
        await asyncio.sleep(0.25)
    cpu = 100 * (cpu_seconds(env.pid) - cpu0) / (time.monotonic() - t0)
    st = proc_status(env.pid)
    status = await env.status()
    prebuffer = sum(c["prebuffer_bytes"] for c in status["cameras"])
    decoding = sum(1 for c in status["cameras"] if c.get("decoding"))
    row = {
        "step": step,
        "VmRSS_MiB": st["VmRSS"] / 1024,
        "max_VmRSS_in_step_MiB": max(max_rss, st["VmRSS"]) / 1024,
        "VmHWM_MiB": st["VmHWM"] / 1024,
        "RssAnon_MiB": st.get("RssAnon", 0) / 1024,
        "threads": st["Threads"],
        "prebuffer_MiB": prebuffer / 2**20,
        "decoders": decoding,
        "cpu_percent": cpu,
    }
    rows.append(row)
    log(f"{step}: RSS {row['VmRSS_MiB']:.1f} MiB, HWM {row['VmHWM_MiB']:.1f} MiB")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.cameras
    hold = 3.0 if args.quick else 5.0
    info = machine_info()
    cams = [rtsp_camera(pattern=args.pattern, mount=f"/cam{i}") for i in range(n)]
    names = [f"Cam {i + 1}" for i in range(n)]
    specs = [
        CameraSpec(name, f"rtsp:#{i}", {"prebuffer_seconds": 4}) for i, name in enumerate(names)
    ]
    rows: list[dict[str, Any]] = []
    async with running_bridge(specs, cams, keep=args.keep) as env:
        await sample(env, "up: cameras streaming", 0.5, rows)
        for name in names:
            await env.wait_prebuffer(name, 3.9)
        await sample(env, "idle: prebuffers full", hold, rows)

        sm = env.streams(names[0])[0]
        viewer: Viewer = await open_viewer(env.paired, sm, decode=False)
        await viewer.start(VideoSelection(1280, 720, 15, max_bitrate_kbps=2000))
        await sample(env, "1 viewer, copy 1280x720", hold, rows)
        rows[-1]["modes"] = await env.live_modes(names[0])
        await close_viewer(viewer)
        await env.wait_no_sessions(names[0])

        viewer = await open_viewer(env.paired, sm, decode=False)
        await viewer.start(VideoSelection(640, 360, 15, max_bitrate_kbps=500))
        await sample(env, "1 viewer, transcode 640x360", hold, rows)
        rows[-1]["modes"] = await env.live_modes(names[0])
        await close_viewer(viewer)
        await env.wait_no_sessions(names[0])

        for name in names:
            jpeg = await env.paired.pairing.image(env.aid(name), 640, 360)
            assert jpeg, f"{name}: no snapshot"
        await sample(env, f"after 1 snapshot of each of {n} cameras", hold, rows)
        if args.after_lease:
            log("waiting 35 s for the snapshot leases to expire")
            await asyncio.sleep(35.0 - hold)
            await sample(env, "leases expired (decoders stopped)", hold, rows)

    results: dict[str, Any] = {
        "machine": info,
        "cameras": f"{n} x RTSP {cams[0].width}x{cams[0].height}@{cams[0].fps} (gst-rtsp-server)",
        "steps": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}
                  for r in rows],
    }  # fmt: skip
    print(f"\nBridge memory — {describe_machine(info)}")
    print(f"{results['cameras']}, prebuffer 4 s each\n")
    print(
        table(
            ["step", "VmRSS MiB", "VmHWM MiB", "threads", "prebuffers MiB", "decoders", "CPU %"],
            [
                [
                    r["step"] + (f" ({'/'.join(r['modes'])})" if r.get("modes") else ""),
                    fmt(r["VmRSS_MiB"]),
                    fmt(r["VmHWM_MiB"]),
                    r["threads"],
                    fmt(r["prebuffer_MiB"]),
                    r["decoders"],
                    fmt(r["cpu_percent"]),
                ]
                for r in rows
            ],
        )
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--cameras", type=int, default=4, help="RTSP cameras (4)")
    parser.add_argument(
        "--after-lease", action="store_true", help="also sample after the decoders stop (+35 s)"
    )
    args = parser.parse_args()
    results = asyncio.run(run(args))
    emit_json(args, results)


if __name__ == "__main__":
    main()
