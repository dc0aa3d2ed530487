"""Memory of the bridge with 4 cameras and one HKSV recording on each at once (issue #9).

    .venv/bin/python -m bench.hksv_memory [--quick] [--rounds R] [--gop G] [--json [FILE]]

The cameras of bench/rss.py (benchmark 4, the idle figure in BENCHMARKS.md): 4 gst-rtsp-server
processes at 1280x720@15, GOP 15, ~2 Mbit/s, prebuffer 4 s each, behind one `obscura run`
(detection off). The bench's controller is the home hub (bench/_hksv.py): it selects each
camera's 1280x720@15, turns recording on and keeps a data stream per camera. A 1 s GOP fits the
hub's 4 s fragments, so every recording is copied (`--gop 150`: all four transcoded).

Recordings are held open as in bench/hksv_cpu.py (`post_roll_seconds = 60`, opened while
MotionDetected is false) and closed by the hub (dataSend/close). Steps, each held a few seconds
(VmRSS polled every 0.25 s for its max, as bench/rss.py does), then VmRSS, VmHWM, RssAnon, PSS
(/proc/PID/smaps_rollup) and threads are read:

1. idle: cameras streaming, prebuffers full, hub ready (selection, data streams), no recording;
2. one recording (camera 1);
3. four recordings at once (held longer: the prebuffers go out, then live fragments);
4. all closed;
then steps 3-4 again for each further round (does a second round of recordings grow memory?);
with --after-trim, once more after the bridge's next heap trim (bridge/heap_trim.py, once a
minute: is what the recordings left behind free heap that glibc kept?).
Reported: MiB per step, the ratio to idle (this run's and BENCHMARKS.md's 105.1 MiB) and MiB
per recording.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench._common import (
    CAM_FPS,
    CAM_GOP,
    CAM_HEIGHT,
    CAM_WIDTH,
    Env,
    add_common_args,
    describe_machine,
    emit_json,
    fmt,
    log,
    machine_info,
    rtsp_camera,
    table,
)
from bench._hksv import HubRecorder, hksv_bridge, hksv_spec, hksv_status, ready_camera
from bench.rss import sample
from tests.peers.hds_recording import Recording

IDLE_MIB_BENCHMARK_4 = 105.1  # BENCHMARKS.md, benchmark 4: "idle: prebuffers full"


def pss_mib(pid: int) -> float:
    """Proportional set size (shared pages split among the processes that map them)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def step(
    env: Env, name: str, hold: float, rows: list[dict[str, Any]], recs: list[Recording]
) -> None:
    await sample(env, name, hold, rows)
    status = await env.status()
    rows[-1] |= {
        "PSS_MiB": pss_mib(env.pid),
        "recordings": sum(1 for c in status["cameras"] if (c.get("hksv") or {}).get("recording")),
        "modes": sorted(
            {c["hksv"]["recording"]["mode"] for c in status["cameras"] if c["hksv"]["recording"]}
        ),
        "heap_trims": (status.get("memory") or {}).get("heap_trims"),
        "fragments_received": sum(len(r.media) for r in recs),
        "heap_released_MiB": (status.get("memory") or {}).get("heap_released_mib"),
    }


async def open_all(env: Env, recorders: list[HubRecorder]) -> list[Recording]:
    recs = [await r.open() for r in recorders]
    for r in recorders:
        if (await hksv_status(env, r.name))["recording"] is None:
            raise RuntimeError(f"{r.name}: no recording running after the open")
    return recs


async def close_all(env: Env, recorders: list[HubRecorder], recs: list[Recording]) -> None:
    for r, rec in zip(recorders, recs, strict=True):
        if rec.end is not None:
            raise RuntimeError(f"{r.name}: the recording ended early ({rec.end})")
        await r.close(env, rec)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    hold = 3.0 if args.quick else 5.0
    hold_rec = 10.0 if args.quick else 20.0
    info = machine_info()
    cams = [
        rtsp_camera(gop=args.gop, pattern=args.pattern, mount=f"/cam{i}")
        for i in range(args.cameras)
    ]
    names = [f"Cam {i + 1}" for i in range(args.cameras)]
    specs = [hksv_spec(name, f"rtsp:#{i}") for i, name in enumerate(names)]
    rows: list[dict[str, Any]] = []
    async with hksv_bridge(specs, cams, keep=args.keep) as (env, hub):
        recorders = [await ready_camera(hub, name) for name in names]
        for name in names:
            await env.wait_prebuffer(name, 3.9)
        await step(env, "idle: prebuffers full, hub ready", hold, rows, [])
        recs = await open_all(env, recorders[:1])
        await step(env, "1 recording", hold_rec, rows, recs)
        await close_all(env, recorders[:1], recs)
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds}: {args.cameras} recordings")
            recs = await open_all(env, recorders)
            await step(env, f"{args.cameras} recordings (round {r + 1})", hold_rec, rows, recs)
            await close_all(env, recorders, recs)
            await step(env, f"all closed (round {r + 1})", hold, rows, recs)
            problems = sorted({p for rec in recs for p in rec.problems})
            if problems:
                log(f"hub problems: {problems}")
        if args.after_trim:
            trims = rows[-1]["heap_trims"]
            log("waiting for the bridge's next heap trim (once a minute)")
            async with asyncio.timeout(90):  # polling the status API: no event to wait on
                while (await env.status())["memory"]["heap_trims"] == trims:  # noqa: ASYNC110
                    await asyncio.sleep(1.0)
            await step(env, "after the next heap trim", hold, rows, [])
    return report(args, info, rows)


def report(args: argparse.Namespace, info: dict[str, Any], rows: list[dict[str, Any]]) -> dict:
    idle = rows[0]
    n = args.cameras
    full = [r for r in rows if r["recordings"] == n]
    peak = max(full, key=lambda r: r["VmRSS_MiB"])
    per_rec = (peak["VmRSS_MiB"] - idle["VmRSS_MiB"]) / n
    print(f"\nBridge memory with HKSV recordings — {describe_machine(info)}")
    print(
        f"{n} x RTSP {CAM_WIDTH}x{CAM_HEIGHT}@{CAM_FPS} GOP {args.gop} (gst-rtsp-server), "
        f"prebuffer 4 s each; recordings selected at {CAM_WIDTH}x{CAM_HEIGHT}@{CAM_FPS}\n"
    )
    print(
        table(
            ["step", "VmRSS MiB", "max in step", "VmHWM", "RssAnon", "PSS", "threads",
             "fragments to hub", "vs idle", "CPU %"],
            [
                [
                    r["step"] + (f" ({'/'.join(r['modes'])})" if r["modes"] else ""),
                    f"**{fmt(r['VmRSS_MiB'])}**", fmt(r["max_VmRSS_in_step_MiB"]),
                    fmt(r["VmHWM_MiB"]), fmt(r["RssAnon_MiB"]), fmt(r["PSS_MiB"]),
                    r["threads"], r["fragments_received"],
                    f"{r['VmRSS_MiB'] / idle['VmRSS_MiB']:.2f}x", fmt(r["cpu_percent"]),
                ]
                for r in rows
            ],
        )
    )  # fmt: skip
    print(
        f"\n{n} recordings: {fmt(peak['VmRSS_MiB'])} MiB = "
        f"{peak['VmRSS_MiB'] / idle['VmRSS_MiB']:.2f}x this run's idle "
        f"({fmt(idle['VmRSS_MiB'])} MiB), {peak['VmRSS_MiB'] / IDLE_MIB_BENCHMARK_4:.2f}x "
        f"benchmark 4's idle ({IDLE_MIB_BENCHMARK_4} MiB); {per_rec:.1f} MiB per recording "
        f"(VmRSS over idle / {n}); heap trims so far: {rows[-1]['heap_trims']}, "
        f"{rows[-1]['heap_released_MiB']} MiB released"
    )
    return {
        "benchmark": "hksv_memory",
        "machine": info,
        "cameras": n,
        "gop": args.gop,
        "idle_benchmark_4_mib": IDLE_MIB_BENCHMARK_4,
        "mib_per_recording": round(per_rec, 2),
        "steps": [
            {k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in rows
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--cameras", type=int, default=4, help="RTSP cameras (4)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds of N recordings (2)")
    parser.add_argument(
        "--gop", type=int, default=CAM_GOP, help=f"camera GOP in frames ({CAM_GOP}: copy)"
    )
    parser.add_argument(
        "--after-trim",
        action="store_true",
        help="at the end, wait for the bridge's next malloc_trim and sample again (<= 60 s)",
    )
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 2)
    emit_json(args, asyncio.run(run(args)))


if __name__ == "__main__":
    main()
