"""Live-view start latency: SelectedRTPStreamConfiguration START -> first SRTP packet / keyframe.

    .venv/bin/python -m bench.live_start [--quick] [-n N] [--json [FILE]]

One RTSP camera (1280x720@15, GOP 15 = 1 s, scrolling bars at ~2 Mbit/s) behind `obscura run`.
A paired aiohomekit controller repeats SetupEndpoints -> START -> wait for the first decodable
keyframe -> END, N times per mode, with a random pause between runs so the start lands at a
random point of the camera's GOP:

- copy: the request is the camera's own size and fps (the bridge forwards the camera's H.264);
- transcode: 640x360@15 at 500 kbit/s (decode + libx264 for this viewer).

Measured from the moment the START write is sent (Viewer.started_at) to the arrival of the
first authenticated SRTP packet, to the arrival of the last packet of the first access unit
that decodes as a keyframe, and to that frame being decoded by the controller (PyAV).

For comparison, "on demand": what a bridge that opens the camera only when a viewer arrives
pays before it has a picture to send — PyAV opening the same RTSP URL (avformat_open_input +
find_stream_info) and decoding its first keyframe, with FFmpeg's default probing (what
`ffmpeg -rtsp_transport tcp -i URL` does) and tuned (probesize=32, analyzeduration=0,
nobuffer). That is the lower bound of the usual ffmpeg-per-viewer design (which also starts a
process and an encoder), and what the prebuffer saves. The camera is already streaming to the
bridge, as an always-on camera would be. Caveat: gst-rtsp-server appears to force an IDR for
every client that joins its shared media (the tuned open gets a keyframe ~60 ms after PLAY
whatever the GOP phase); a camera that does not would add half a GOP on average (0.5 s here).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import av

from bench._common import (
    CAM_FPS,
    CAM_GOP,
    CAM_HEIGHT,
    CAM_WIDTH,
    Env,
    Summary,
    add_common_args,
    close_viewer,
    describe_machine,
    emit_json,
    fmt,
    log,
    machine_info,
    open_viewer,
    probe_stream,
    proc_status,
    rtsp_camera,
    running_bridge,
    table,
)
from tests.peers.bridge_process import CameraSpec
from tests.peers.camera_tlv import VideoSelection
from tests.peers.srtp_receiver import ReceivedFrame, SrtpReceiver

CAMERA = "Bench"
GOAL_P50_S = 0.3
REQUESTS = {
    "copy": VideoSelection(CAM_WIDTH, CAM_HEIGHT, CAM_FPS, max_bitrate_kbps=2000),
    "transcode": VideoSelection(640, 360, 15, max_bitrate_kbps=500),
}


@dataclass
class Runs:
    packet: list[float] = field(default_factory=list)
    keyframe: list[float] = field(default_factory=list)
    decoded: list[float] = field(default_factory=list)
    write: list[float] = field(default_factory=list)  # START write round trip
    live_edge: list[float] = field(default_factory=list)  # end of the initial burst
    burst_frames: list[float] = field(default_factory=list)
    modes: set[str] = field(default_factory=set)
    failures: int = 0


async def one_start(env: Env, mode: str, runs: Runs, timeout: float = 10.0) -> None:
    sm = env.streams(CAMERA)[0]
    viewer = await open_viewer(env.paired, sm)
    try:
        await viewer.start(REQUESTS[mode])
        written = time.monotonic()
        rx = viewer.receiver
        ok = await rx.wait_for(has_keyframe, timeout)
        t0 = viewer.started_at
        runs.write.append(written - t0)
        if not ok or rx.first_packet_at is None or rx.first_keyframe_at is None:
            runs.failures += 1
            log(f"{mode}: no keyframe within {timeout} s (packets={rx.rtp_packets})")
            return
        runs.packet.append(rx.first_packet_at - t0)
        runs.keyframe.append(rx.first_keyframe_at - t0)
        first_key = next(f for f in rx.frames if f.key_frame)
        runs.decoded.append(first_key.decoded - t0)
        runs.modes.update(await env.live_modes(CAMERA))
        # Stay a little longer to see where the initial burst (prebuffer backlog) ends.
        settle = rx.first_keyframe_at + 0.6
        await rx.wait_for(lambda r: bool(r.frames) and r.frames[-1].arrived > settle, 3.0)
        edge = catch_up(rx.frames)
        if edge is not None:
            runs.burst_frames.append(edge[0])
            runs.live_edge.append(edge[1] - t0)
    finally:
        await close_viewer(viewer)
        await env.wait_no_sessions(CAMERA)


def has_keyframe(rx: SrtpReceiver) -> bool:
    return rx.first_keyframe_at is not None and bool(rx.frames)


def catch_up(frames: list[ReceivedFrame]) -> tuple[int, float] | None:
    """(frames in the initial burst, arrival of its last frame).

    Copy mode starts at the prebuffer's newest keyframe, up to one GOP old, and sends that
    backlog as a burst; after it, frames arrive at the camera's rate. The burst ends at the
    first gap of more than half a frame interval.
    """
    arrivals = sorted(f.arrived for f in frames)
    if len(arrivals) < 2:
        return None
    gap = 0.5 / CAM_FPS  # the camera's fps: half its frame interval
    for i in range(len(arrivals) - 1):
        if arrivals[i + 1] - arrivals[i] > gap:
            return i + 1, arrivals[i]
    return None


ON_DEMAND_OPTIONS = {
    "default": {"rtsp_transport": "tcp"},
    "tuned": {
        "rtsp_transport": "tcp",
        "probesize": "32",
        "analyzeduration": "0",
        "fflags": "nobuffer",
    },
}


def on_demand_once(url: str, variant: str, timeout: float = 20.0) -> tuple[float, float]:
    """(open seconds, first decoded keyframe seconds) for a fresh PyAV RTSP client."""
    t0 = time.monotonic()
    options = ON_DEMAND_OPTIONS[variant]
    container = av.open(url, options=options, timeout=(timeout, timeout))
    try:
        opened = time.monotonic() - t0
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            for frame in packet.decode():
                if frame.key_frame:
                    return opened, time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                break
        return opened, math.nan
    finally:
        container.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    n = args.n or (8 if args.quick else 20)
    n_demand = args.on_demand or (4 if args.quick else 8)
    info = machine_info()
    cam = rtsp_camera(pattern=args.pattern, gop=args.gop)
    spec = CameraSpec(CAMERA, "rtsp:#0", {"prebuffer_seconds": 4})
    results: dict[str, Any] = {"machine": info, "camera": f"{cam.width}x{cam.height}@{cam.fps}"}
    runs = {mode: Runs() for mode in REQUESTS}
    demand: dict[str, tuple[list[float], list[float]]] = {v: ([], []) for v in ON_DEMAND_OPTIONS}
    async with running_bridge([spec], [cam], keep=args.keep) as env:
        probe = await asyncio.to_thread(probe_stream, cam.url)
        log(f"camera: {probe.describe()}")
        results["camera_probe"] = asdict(probe)
        await env.wait_prebuffer(CAMERA, 2.0)
        rss = {"before": proc_status(env.pid)["VmRSS"]}
        for mode in REQUESTS:
            log(f"{mode}: {n} starts")
            for _ in range(n):
                await asyncio.sleep(rng.uniform(0.2, 1.2))  # random GOP phase
                await one_start(env, mode, runs[mode])
            rss[f"after {mode}"] = proc_status(env.pid)["VmRSS"]
        results["bridge_rss_kib"] = rss
        log(f"on demand: {n_demand} x {len(ON_DEMAND_OPTIONS)} PyAV opens of the camera URL")
        for _ in range(n_demand):
            for variant, (opens, keys) in demand.items():
                await asyncio.sleep(rng.uniform(0.2, 1.2))
                opened, key = await asyncio.to_thread(on_demand_once, cam.url, variant)
                opens.append(opened)
                keys.append(key)

    rows = []
    for mode, r in runs.items():
        results[mode] = {
            "request": f"{REQUESTS[mode].width}x{REQUESTS[mode].height}@{REQUESTS[mode].fps}",
            "bridge_modes_seen": sorted(r.modes),
            "failures": r.failures,
            "first_packet_s": Summary.of(r.packet).as_dict(),
            "first_keyframe_s": Summary.of(r.keyframe).as_dict(),
            "first_decoded_s": Summary.of(r.decoded).as_dict(),
            "start_write_s": Summary.of(r.write).as_dict(),
            "live_edge_s": Summary.of(r.live_edge).as_dict(),
            "burst_frames": Summary.of(r.burst_frames).as_dict(digits=1),
        }
        label = f"{mode} ({results[mode]['request']}, bridge: {'/'.join(sorted(r.modes))})"
        for what, values in (
            ("first SRTP packet", r.packet),
            ("first keyframe", r.keyframe),
            ("first frame decoded", r.decoded),
            ("START write response", r.write),
            ("end of catch-up burst", r.live_edge),
        ):
            s = Summary.of(values)
            rows.append([label, what, s.n, ms(s.p50), ms(s.p90), ms(s.max)])
    copy_key = Summary.of(runs["copy"].keyframe)
    trans_key = Summary.of(runs["transcode"].keyframe)
    results["on_demand"] = {}
    ratios: list[str] = []
    for variant, (opens, keys) in demand.items():
        d_open, d_key = Summary.of(opens), Summary.of(keys)
        label = f"on demand, PyAV RTSP open ({variant} probing)"
        for what, d in (("av.open returned", d_open), ("first keyframe decoded", d_key)):
            rows.append([label, what, d.n, ms(d.p50), ms(d.p90), ms(d.max)])
        results["on_demand"][variant] = {
            "options": ON_DEMAND_OPTIONS[variant],
            "open_s": d_open.as_dict(),
            "first_keyframe_s": d_key.as_dict(),
            "ratio_over_copy_p50": round(d_key.p50 / copy_key.p50, 1),
            "ratio_over_transcode_p50": round(d_key.p50 / trans_key.p50, 1),
        }
        r = results["on_demand"][variant]
        ratios.append(
            f"{variant} probing: {r['ratio_over_copy_p50']}x copy, "
            f"{r['ratio_over_transcode_p50']}x transcode"
        )
    results["goal_p50_s"] = GOAL_P50_S
    bursts = {m: Summary.of(r.burst_frames).p50 for m, r in runs.items()}

    print(f"\nLive-view start latency — {describe_machine(info)}")
    print(
        f"camera: RTSP {cam.width}x{cam.height}@{cam.fps}, key-int-max {cam.gop}, prebuffer 4 s;"
        f" seen: {probe.describe()}\n"
    )
    print(table(["mode (request)", "from START write to", "n", "p50 ms", "p90 ms", "max ms"], rows))
    print("\non demand / bridge, time to first keyframe (p50): " + "; ".join(ratios))
    print(
        "frames in the initial burst (p50): "
        + ", ".join(f"{m} {fmt(b, 0)}" for m, b in bursts.items())
        + " (copy sends the prebuffer's GOP from its newest keyframe, then the live edge)"
    )
    print(
        f"bridge RSS: {rss['before'] / 1024:.1f} MiB before, "
        + ", ".join(f"{k} starts {v / 1024:.1f} MiB" for k, v in rss.items() if k != "before")
    )
    for mode in REQUESTS:
        p50 = Summary.of(runs[mode].keyframe).p50
        verdict = "meets" if p50 <= GOAL_P50_S else "MISSES"
        print(
            f"goal p50 <= {GOAL_P50_S * 1000:.0f} ms to first keyframe: {mode} {verdict}"
            f" ({ms(p50)} ms)"
        )
    return results


def ms(seconds: float) -> str:
    return fmt(seconds * 1000.0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("-n", type=int, default=0, help="starts per mode (default 20, quick 8)")
    parser.add_argument("--gop", type=int, default=CAM_GOP, help="camera GOP in frames (15)")
    parser.add_argument("--on-demand", type=int, default=0, help="PyAV opens (default 8, quick 4)")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    emit_json(args, results)


if __name__ == "__main__":
    main()
