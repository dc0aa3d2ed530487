"""Camera back → streaming again (issue #8), `obscura run` on loopback.

    .venv/bin/python -m bench.camera_reconnect [--quick] [--outages N] [--outage S]
                                               [--opens N] [--json [FILE]]

Two gst-rtsp-server cameras (the bench camera: 1280x720@15, GOP 15, ~2 Mbit/s) under one
`obscura run`. N times (default 10, seeded), the first camera's server is SIGKILLed, stays dead
for a few seconds (uniform 2-5 s, or `--outage S`), and is started again on the same port and
mount. The camera streams for 10.5-12 s between outages (a healthy stream, see STEADY_S).

What is measured, per outage, from the moment the restarted server listens (its READY line):

- **streaming**: /status shows the camera `streaming` (the RTSP open has returned), polled
  every 20 ms from this process (±10 ms of quantisation);
- **packets**: /status shows its packet count rising again (what a viewer or recorder sees);
- the probes and full opens the bridge spent on the outage (from /status counters);
- the second camera's longest gap between samples showing its packet count rising, during the
  outage and reconnect, and for comparison while both cameras stream (it must not notice).

Then, for reference, `--opens` opens of the camera URL in this process with the bridge's own
AVInput, with and without the fast open (probesize=32): how much of a reconnect is the open.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import shutil
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
    table,
)
from bridge.sources.av_input import FAST_PROBE, AVInput, AVInputOptions
from tests.peers.bridge_process import BridgeProcess, CameraSpec

GOAL_S = 2.0
POLL_S = 0.02
# Streaming time before each outage: longer than RetryPolicy.healthy_after (10 s), so every
# outage hits a healthy camera, as a real one would (a stream that dies young is retried only
# after a backoff, ~1 s: shorter than any outage here, but not what is measured).
STEADY_S = (10.5, 12.0)
RTSP_OPTIONS = {"rtsp_transport": "tcp", "fflags": "nobuffer", "allowed_media_types": "video"}


async def cameras_status(bridge: BridgeProcess) -> dict[str, dict[str, Any]]:
    status = await asyncio.to_thread(bridge.status)
    return {c["name"]: c for c in status["cameras"]}


class GapWatch:
    """Samples the other camera's packet count every 50 ms in the background (so that starting
    the camera server, which blocks the outage's own steps, does not pause it); the longest
    time between two samples showing it rising, in a window, includes sampling and /status
    latency (a floor of ~0.1 s)."""

    def __init__(self, bridge: BridgeProcess) -> None:
        self.bridge = bridge
        self.rises: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _sample(self) -> None:
        last = -1
        while True:
            packets = (await cameras_status(self.bridge))["Back"]["packets"]
            if packets > last:
                self.rises.append(time.monotonic())
                last = packets
            await asyncio.sleep(0.05)

    def max_gap(self, start: float, end: float) -> float:
        ends = [start, *(t for t in self.rises if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(ends))


async def one_outage(
    bridge: BridgeProcess, cam: Any, outage_s: float, other: GapWatch
) -> dict[str, Any]:
    before = (await cameras_status(bridge))["Front"]
    await asyncio.to_thread(cam.kill)
    killed = time.monotonic()
    await asyncio.sleep(outage_s)
    down = (await cameras_status(bridge))["Front"]
    if down["state"] == "streaming":
        raise RuntimeError(f"the camera did not notice its server's death: {down}")
    await asyncio.to_thread(cam.start)
    back = time.monotonic()
    streaming_at: float | None = None
    while True:
        front = (await cameras_status(bridge))["Front"]
        now = time.monotonic()
        if front["state"] == "streaming" and streaming_at is None:
            streaming_at = now
        if front["state"] == "streaming" and front["packets"] > down["packets"]:
            break
        if now - back > 30:
            raise RuntimeError(f"the camera did not come back within 30 s: {front}")
        await asyncio.sleep(POLL_S)
    assert streaming_at is not None
    await asyncio.sleep(0.3)  # the other camera's next samples after the reconnect
    return {
        "outage_s": round(back - killed, 3),
        "streaming_s": round(streaming_at - back, 3),
        "packets_s": round(now - back, 3),
        "probes": front["probes"] - before["probes"],
        "opens": front["opens"] - before["opens"],
        "other_gap_s": round(other.max_gap(killed, time.monotonic()), 3),
    }


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = random.Random(args.seed if args.seed is not None else 8)
    front = rtsp_camera(mount="/front", pattern=args.pattern)
    back = rtsp_camera(mount="/back", pattern=args.pattern)
    await front.astart()
    await back.astart()
    bridge = BridgeProcess(work, [CameraSpec("Front", front.url), CameraSpec("Back", back.url)])
    outages: list[dict[str, Any]] = []
    steady_gaps: list[float] = []
    try:
        await asyncio.to_thread(bridge.start)
        for name in ("Front", "Back"):
            await asyncio.to_thread(bridge.wait_camera, name, "streaming", 60)
        other = GapWatch(bridge)
        other.start()
        for i in range(args.outages):
            steady_start = time.monotonic()
            await asyncio.sleep(rng.uniform(*STEADY_S))
            steady_gaps.append(other.max_gap(steady_start, time.monotonic()))
            outage_s = args.outage if args.outage is not None else rng.uniform(2.0, 5.0)
            result = await one_outage(bridge, front, outage_s, other)
            outages.append(result)
            log(
                f"outage {i + 1}/{args.outages}: {result['outage_s']:.1f} s down; back → "
                f"streaming {result['streaming_s']:.2f} s, packets {result['packets_s']:.2f} s "
                f"({result['probes']} probes, {result['opens']} opens); other camera's "
                f"longest gap {result['other_gap_s']:.2f} s (steady {steady_gaps[-1]:.2f} s)"
            )
        await other.stop()
        final = await cameras_status(bridge)
    finally:
        rc = await asyncio.to_thread(bridge.stop)
        text = bridge.log_text()
        if rc not in (0, None) or "Traceback" in text:
            log(f"bridge exited with {rc}; log:\n{text[-4000:]}")
        log_lines = [line for line in text.splitlines() if "camera 'Front'" in line]
    opens = await asyncio.to_thread(measure_opens, front.url, args.opens)
    await asyncio.to_thread(front.stop)
    await asyncio.to_thread(back.stop)
    return {
        "outages": outages,
        "other_camera": {
            "max_gap_s": max(o["other_gap_s"] for o in outages),
            "max_gap_steady_s": round(max(steady_gaps), 3),
            "reconnects": final["Back"]["reconnects"],
            "state": final["Back"]["state"],
        },
        "front_log_lines": log_lines,
        "opens": opens,
    }


def measure_opens(url: str, n: int) -> dict[str, list[float]]:
    """AVInput.open() of the live camera, fast open vs FFmpeg's default probing (blocking)."""
    out: dict[str, list[float]] = {"fast": [], "full": []}
    for i in range(n * 2):
        variant = "fast" if i % 2 == 0 else "full"
        fast = FAST_PROBE if variant == "fast" else {}
        source_input = AVInput(AVInputOptions(url, options=RTSP_OPTIONS, fast_options=fast))
        started = time.monotonic()
        try:
            source_input.open()
            next(source_input.packets())
            out[variant].append(time.monotonic() - started)
        finally:
            source_input.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--outages", type=int, default=None, help="default 10 (--quick 3)")
    parser.add_argument("--outage", type=float, default=None, help="seconds down (default 2-5)")
    parser.add_argument("--opens", type=int, default=None, help="opens per variant (default 5)")
    args = parser.parse_args()
    args.outages = args.outages or (3 if args.quick else 10)
    args.opens = args.opens if args.opens is not None else (2 if args.quick else 5)
    info = machine_info()
    log(f"machine: {describe_machine(info)}")
    work = Path(tempfile.mkdtemp(prefix="obscura-bench-reconnect-"))
    try:
        result = asyncio.run(run(args, work))
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    outages = result["outages"]
    rows, js = [], {}
    for key, label in (
        ("packets_s", "server back → packets flowing again"),
        ("streaming_s", "server back → state streaming (open returned)"),
    ):
        s = Summary.of([o[key] for o in outages])
        js[key] = s.as_dict(1, 3)
        rows.append(
            [label, s.n, f"**{fmt(s.p50, 2)}**", fmt(s.p90, 2), fmt(s.min, 2), f"{s.max:.2f}"]
        )
    for variant, values in result["opens"].items():
        if not values:
            continue
        s = Summary.of(values)
        js[f"open_{variant}"] = s.as_dict(1, 3)
        label = f"AVInput.open() + first packet, {variant} open (reference)"
        rows.append([label, s.n, fmt(s.p50, 2), fmt(s.p90, 2), fmt(s.min, 2), fmt(s.max, 2)])
    print()
    print(describe_machine(info))
    downs = [o["outage_s"] for o in outages]
    print(
        f"{len(outages)} outages of {min(downs):.1f}-{max(downs):.1f} s; "
        f"/status polled every {POLL_S * 1000:.0f} ms"
    )
    print(table(["interval", "n", "p50 s", "p90 s", "min s", "max s"], rows))
    probes = [o["probes"] for o in outages]
    opens = [o["opens"] for o in outages]
    other = result["other_camera"]
    print(
        f"per outage: {min(probes)}-{max(probes)} probes, {min(opens)}-{max(opens)} full opens; "
        f"bridge log lines for the camera: {len(result['front_log_lines'])} "
        f"(1 start + {len(outages)} x lost/back; bridge/logs.py folds a message repeated "
        "within a minute)"
    )
    print(
        f"other camera: longest gap between packet-count rises {other['max_gap_s']:.2f} s "
        f"during outages, {other['max_gap_steady_s']:.2f} s while both stream; "
        f"{other['reconnects']} reconnects, {other['state']}"
    )
    print(f"goal: streaming again <= {GOAL_S:.0f} s after the camera is back")
    emit_json(args, {"benchmark": "camera_reconnect", "machine": info, "summary_s": js, **result})


if __name__ == "__main__":
    main()
