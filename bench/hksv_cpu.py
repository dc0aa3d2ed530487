"""CPU of the bridge for one HKSV recording, copy vs transcode, over its idle baseline (issue #9).

    .venv/bin/python -m bench.hksv_cpu [--quick] [--window S] [--rounds R] [--json [FILE]]

Two gst-rtsp-server cameras at 1280x720@15, ~2 Mbit/s, behind one `obscura run` (detection
off): *Copy* has a 2 s GOP, which fits the hub's 4 s fragments, so its H.264 is copied;
*Transcode* has a 10 s GOP, so its recording is decoded and re-encoded (libx264 veryfast) at the
same 1280x720@15, 2000 kbit/s, an IDR every 4 s. The bench's controller is the home hub
(bench/_hksv.py): it selects 1280x720@15 on both cameras, turns recording on and keeps one
data stream per camera open the whole time.

Holding a recording open without detection: `post_roll_seconds = 60`. The hub opens a recording
while MotionDetected is false; the bridge then sends the prebuffer and the live fragments and
would end the recording 60 s later (post-roll of a trigger that already ended). Each phase is
shorter than that, and the hub closes the stream (dataSend/close) at its end. What the bridge
does per fragment is what a motion-triggered recording does; only the trigger differs.

The bridge's utime+stime (/proc/PID/stat, all threads) is sampled over a fixed window in each
phase: idle (both cameras streaming and prebuffering, hub paired with data streams, no
recording), copy, transcode. The window starts after a warm-up that covers the recording's
start (the prebuffer goes out at once; the transcoder first catches up on it); that start is
reported apart as CPU seconds. Phases are interleaved for R rounds (idle, copy, transcode, ...).
Reported: % of one core, net over idle, transcode/copy, and the hub's received rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import asdict
from typing import Any

from bench._common import (
    CAM_FPS,
    CAM_HEIGHT,
    CAM_WIDTH,
    Env,
    add_common_args,
    cpu_seconds,
    describe_machine,
    emit_json,
    fmt,
    log,
    machine_info,
    measure_cpu,
    probe_stream,
    rtsp_camera,
    system_cpu_busy,
    table,
)
from bench._hksv import (
    GOP_COPY,
    GOP_TRANSCODE,
    HubRecorder,
    hksv_bridge,
    hksv_spec,
    hksv_status,
    ready_camera,
    wait_recording,
)

GOAL_COPY_PERCENT = 5.0
CAMERAS = {"Copy": GOP_COPY, "Transcode": GOP_TRANSCODE}
PHASES = {"idle": None, "copy": "Copy", "transcode": "Transcode"}


async def phase(
    env: Env, name: str, recorder: HubRecorder | None, window: float, warmup: float
) -> dict[str, Any]:
    pids = [env.pid, *(c.pid or 0 for c in env.cameras), os.getpid()]
    rec = None
    start_cpu = cpu_seconds(env.pid)
    if recorder is not None:
        rec = await recorder.open()
        await wait_recording(env, recorder.name, running=True)
    try:
        await asyncio.sleep(warmup)
        start_cpu = cpu_seconds(env.pid) - start_cpu
        mode = (await hksv_status(env, recorder.name))["recording"]["mode"] if recorder else ""
        frags0 = len(rec.media) if rec else 0
        bytes0 = sum(len(f.data) for f in rec.media) if rec else 0
        busy0, total0 = system_cpu_busy()
        windows = await measure_cpu(pids, window)
        busy1, total1 = system_cpu_busy()
        bridge, bench = windows[0], windows[-1]
        cameras = sum(w.percent for w in windows[1:-1])
        machine = 100.0 * (busy1 - busy0) / max(1.0, total1 - total0) * (os.cpu_count() or 1)
        frags = (len(rec.media) - frags0) if rec else 0
        nbytes = (sum(len(f.data) for f in rec.media) - bytes0) if rec else 0
        if rec is not None and rec.end is not None:
            raise RuntimeError(f"{name}: the recording ended during the window ({rec.end})")
        return {
            "phase": name,
            "mode": mode,
            "bridge_cpu_s": bridge.cpu_s,
            "wall_s": bridge.wall_s,
            "start_cpu_s": start_cpu if rec else None,
            "cameras_percent": cameras,
            "hub_percent": bench.percent,
            "machine_percent": machine,
            "fragments_in_window": frags,
            "kbps_received": nbytes * 8 / 1000 / bridge.wall_s,
            "problems": list(rec.problems) if rec else [],
        }
    finally:
        if recorder is not None and rec is not None:
            await recorder.close(env, rec)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    window = args.window or (10.0 if args.quick else 20.0)
    rounds = args.rounds or (1 if args.quick else 2)
    warmup = args.warmup
    info = machine_info()
    cams = [
        rtsp_camera(gop=gop, mount=f"/{name.lower()}", pattern=args.pattern)
        for name, gop in CAMERAS.items()
    ]
    specs = [hksv_spec(name, f"rtsp:#{i}") for i, name in enumerate(CAMERAS)]
    samples: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
    results: dict[str, Any] = {"machine": info, "window_s": window, "rounds": rounds}
    async with hksv_bridge(specs, cams, keep=args.keep) as (env, hub):
        probes = {
            n: await asyncio.to_thread(probe_stream, c.url, 4.0)
            for n, c in zip(CAMERAS, cams, strict=True)
        }
        for n, p in probes.items():
            log(f"camera {n}: {p.describe()}")
        results["camera_probes"] = {n: asdict(p) for n, p in probes.items()}
        recorders = {n: await ready_camera(hub, n) for n in CAMERAS}
        for n in CAMERAS:
            await env.wait_prebuffer(n, 4.0)
        await asyncio.sleep(2.0)  # let the probes' load fade
        for r in range(rounds):
            for name, camera in PHASES.items():
                log(f"round {r + 1}/{rounds}: {name} ({window:g} s)")
                recorder = recorders[camera] if camera else None
                samples[name].append(await phase(env, name, recorder, window, warmup))
        selected = {n: (await hksv_status(env, n))["selected"] for n in CAMERAS}
    results["selected"] = selected
    return report(results, samples, cams[0], warmup)


def report(
    results: dict[str, Any], samples: dict[str, list[dict[str, Any]]], cam: Any, warmup: float
) -> dict[str, Any]:
    def pct(name: str) -> float:
        s = samples[name]
        return 100.0 * sum(x["bridge_cpu_s"] for x in s) / sum(x["wall_s"] for x in s)

    def mean(name: str, key: str) -> float:
        return sum(x[key] for x in samples[name]) / len(samples[name])

    idle = pct("idle")
    per_phase: dict[str, Any] = {}
    rows = []
    for name in PHASES:
        s = samples[name]
        total = pct(name)
        modes = sorted({x["mode"] for x in s if x["mode"]})
        per_phase[name] = {
            "bridge_modes_seen": modes,
            "bridge_percent": round(total, 2),
            "bridge_percent_per_round": [
                round(100 * x["bridge_cpu_s"] / x["wall_s"], 2) for x in s
            ],
            "net_over_idle_percent": round(total - idle, 2),
            "ratio_to_idle": round(total / idle, 2) if idle > 0 else None,
            "start_cpu_s": [
                None if x["start_cpu_s"] is None else round(x["start_cpu_s"], 2) for x in s
            ],
            "kbps_received": round(mean(name, "kbps_received")),
            "fragments_in_window": [x["fragments_in_window"] for x in s],
            "cameras_percent": round(mean(name, "cameras_percent"), 1),
            "hub_percent": round(mean(name, "hub_percent"), 1),
            "machine_percent": round(mean(name, "machine_percent")),
            "problems": sorted({p for x in s for p in x["problems"]}),
        }  # fmt: skip
        p = per_phase[name]
        recording = name != "idle"
        rows.append([
            f"{name} ({'/'.join(modes)})" if recording else "idle (2 cameras, hub, no recording)",
            f"**{fmt(total)}**",
            " / ".join(fmt(x) for x in p["bridge_percent_per_round"]),
            fmt(p["net_over_idle_percent"]) if recording else "—",
            f"{fmt(p['ratio_to_idle'], 2)}x" if recording else "—",
            " / ".join(fmt(x) for x in p["start_cpu_s"]) if recording else "—",
            fmt(p["kbps_received"], 0) if recording else "—",
            fmt(p["hub_percent"]),
            fmt(p["machine_percent"], 0),
        ])  # fmt: skip
    results["phases"] = per_phase
    copy_net = per_phase["copy"]["net_over_idle_percent"]
    trans_net = per_phase["transcode"]["net_over_idle_percent"]
    ratio = trans_net / copy_net if copy_net > 0 else float("nan")
    results["ratio_transcode_over_copy_net"] = round(ratio, 1)
    results["goal_copy_percent"] = GOAL_COPY_PERCENT
    window, rounds = results["window_s"], results["rounds"]
    print(f"\nHKSV recording CPU of the bridge process — {describe_machine(results['machine'])}")
    print(
        f"cameras: RTSP {cam.width}x{cam.height}@{cam.fps}, ~{cam.bitrate_kbps} kbit/s, GOP "
        f"{GOP_COPY} (Copy) and {GOP_TRANSCODE} (Transcode); selected "
        f"{CAM_WIDTH}x{CAM_HEIGHT}@{CAM_FPS}; window {window:g} s x {rounds} round(s), after a "
        f"{warmup:g} s warm-up from the open\n"
    )
    headers = [
        "phase", "bridge % core", "per round", "net over idle", "phase / idle",
        f"start: CPU-s in first {warmup:g} s", "kbit/s to hub", "hub %", "whole box % (of 200)",
    ]  # fmt: skip
    print(table(headers, rows))
    copy_total = per_phase["copy"]["bridge_percent"]
    print(f"\ntranscode / copy (net over idle): {fmt(ratio)}x")
    print(
        f"goal copy <= {GOAL_COPY_PERCENT:g}% of a core: "
        f"{'meets' if copy_net <= GOAL_COPY_PERCENT else 'MISSES'} ({fmt(copy_net)}% for the "
        f"recording; {fmt(copy_total)}% for the whole bridge with its 2 cameras)"
    )
    problems = {n: p["problems"] for n, p in per_phase.items() if p["problems"]}
    if problems:
        print(f"hub problems: {problems}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--window", type=float, default=0.0, help="seconds per phase (20)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds of all phases (2)")
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="seconds from the open to the window (10)"
    )
    args = parser.parse_args()
    emit_json(args, asyncio.run(run(args)))


if __name__ == "__main__":
    main()
