"""CPU of the bridge while the user talks through a camera (talk-back), against the same view.

    .venv/bin/python -m bench.talkback_cpu [--quick] [--window S] [--rounds R] [--json [FILE]]

One RTSP camera (1280x720@15, GOP 15, ~2 Mbit/s, the other benchmarks' camera) with a 440 Hz
AAC tone and an ONVIF back channel in G.711 µ-law (what nearly every camera offers), behind
`obscura run`; it has a Microphone and a Speaker. The bridge process's utime+stime
(/proc/PID/stat, all threads) is sampled over a fixed window in each phase:

- idle: the camera connected, no viewer;
- view: one viewer at 1280x720@15 (copy) with Opus 16 kHz / 20 ms sound (AAC -> Opus);
- view+talk: the same while the viewer talks for the whole window: a tone as Opus 16 kHz,
  20 ms packets over SRTP (tests/peers/voice.py), which the bridge authenticates, decodes
  (libopus), resamples and encodes as G.711 for the camera's back channel (RTSP interleaved).

Phases are interleaved for R rounds, each after a warm-up (the back channel opens during it).
Reported: % of one core, the net over idle, talk-back's own cost (view+talk minus view) and the
ratio (view+talk) / (view), net over idle; the camera server's own CPU for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any

from bench._common import (
    BENCH_PATTERN,
    CAM_FPS,
    CAM_GOP,
    CAM_HEIGHT,
    CAM_KBPS,
    CAM_WIDTH,
    Env,
    add_common_args,
    close_viewer,
    describe_machine,
    emit_json,
    fmt,
    log,
    machine_info,
    measure_cpu,
    pooled_percent,
    running_bridge,
    table,
)
from tests.peers.bridge_process import CameraSpec
from tests.peers.camera_tlv import AudioSelection, VideoSelection
from tests.peers.rtsp import RtspCamera
from tests.peers.viewer import Viewer
from tests.peers.voice import Voice

CAMERA = "Bench"
VIDEO = VideoSelection(CAM_WIDTH, CAM_HEIGHT, CAM_FPS, max_bitrate_kbps=2000)
AUDIO = AudioSelection(sample_rate_khz=16, packet_time_ms=20)
PHASES = ("idle", "view", "view+talk")


async def phase(env: Env, name: str, window: float, warmup: float) -> dict[str, Any]:
    pids = [env.pid, env.cameras[0].pid or 0]
    viewer: Viewer | None = None
    talking: asyncio.Task[None] | None = None
    if name != "idle":
        viewer = await Viewer.open(env.paired, env.streams(CAMERA)[0], decode=False)
        await viewer.start(VIDEO, AUDIO)
        if name == "view+talk":
            talking = asyncio.create_task(Voice().talk(viewer, warmup + window + 1.0))
    try:
        await asyncio.sleep(warmup)
        before = (await env.camera_status(CAMERA))["talkback"]
        bridge, camera = await measure_cpu(pids, window)
        after = (await env.camera_status(CAMERA))["talkback"]
        return {
            "phase": name,
            "bridge": bridge,
            "camera": camera,
            "talk_frames_per_s": (after["frames_sent"] - before["frames_sent"]) / bridge.wall_s,
            "talk_state": after["state"],
        }
    finally:
        if talking is not None:
            talking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await talking
        if viewer is not None:
            await close_viewer(viewer)
            await env.wait_no_sessions(CAMERA)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    window = args.window or (8.0 if args.quick else 15.0)
    rounds = args.rounds or (1 if args.quick else 2)
    warmup = 2.0 if args.quick else 3.0
    info = machine_info()
    heard = Path(tempfile.mkdtemp(prefix="obscura-talk-")) / "heard.s16"
    cam = RtspCamera(
        width=CAM_WIDTH, height=CAM_HEIGHT, fps=CAM_FPS, gop=CAM_GOP, bitrate_kbps=CAM_KBPS,
        pattern=BENCH_PATTERN, audio="aac", tone_hz=440.0, audio_rate=16000,
        backchannel="pcmu", backchannel_file=heard,
    )  # fmt: skip
    spec = CameraSpec(CAMERA, "rtsp:#0", {"prebuffer_seconds": 4})
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in PHASES}
    results: dict[str, Any] = {"machine": info, "window_s": window, "rounds": rounds}
    async with running_bridge([spec], [cam], keep=args.keep) as env:
        await env.wait_prebuffer(CAMERA, 4.0)
        status = await env.camera_status(CAMERA)
        if not status["speaker"]:
            raise RuntimeError(f"the camera got no Speaker: {status['speaker_reason']}")
        log(f"speaker: {status['speaker_reason']}")
        await asyncio.sleep(2.0)
        for r in range(rounds):
            for name in PHASES:
                log(f"round {r + 1}/{rounds}: {name} ({window:g} s)")
                samples[name].append(await phase(env, name, window, warmup))
    heard_s = heard.stat().st_size / 2 / 8000 if heard.exists() else 0.0
    results["camera_heard_seconds"] = round(heard_s, 1)

    def mean_pct(name: str, key: str) -> float:
        return pooled_percent([s[key] for s in samples[name]])

    idle = mean_pct("idle", "bridge")
    view_net = mean_pct("view", "bridge") - idle
    per_phase: dict[str, Any] = {}
    rows = []
    for name in PHASES:
        pct = mean_pct(name, "bridge")
        net = pct - idle
        fps = sum(s["talk_frames_per_s"] for s in samples[name]) / len(samples[name])
        per_phase[name] = p = {
            "bridge_percent": round(pct, 2),
            "bridge_percent_per_round": [round(s["bridge"].percent, 2) for s in samples[name]],
            "net_over_idle_percent": round(net, 2),
            "talk_over_view_percent": round(net - view_net, 2) if name == "view+talk" else None,
            "ratio_over_view_net": round(net / view_net, 2) if view_net > 0 else None,
            "talk_packets_per_s": round(fps, 1),
            "camera_server_percent": round(mean_pct(name, "camera"), 2),
        }
        rows.append([
            name,
            fmt(pct),
            " / ".join(fmt(x) for x in p["bridge_percent_per_round"]),
            "—" if name == "idle" else fmt(net),
            "—" if (alone := p["talk_over_view_percent"]) is None else fmt(alone),
            f"{net / view_net:.2f}x" if name == "view+talk" and view_net > 0 else "—",
            fmt(fps) if name == "view+talk" else "—",
            fmt(p["camera_server_percent"]),
        ])  # fmt: skip
    results["phases"] = per_phase
    print(f"\nTalk-back, CPU of the bridge process — {describe_machine(info)}")
    print(f"camera: RTSP {cam.width}x{cam.height}@{cam.fps} + AAC 16 kHz tone, back channel "
          f"G.711 µ-law 8 kHz; viewer: Opus 16 kHz / 20 ms both ways")  # fmt: skip
    print(f"window {window:g} s x {rounds} round(s) per phase, after {warmup:g} s warm-up; "
          f"the camera played {heard_s:.1f} s of talk\n")  # fmt: skip
    print(table(
        ["phase", "bridge % core", "per round", "net over idle", "talk-back alone",
         "talking / view (net)", "talk packets/s", "camera server %"],
        rows,
    ))  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--window", type=float, default=0.0, help="seconds per phase (15)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds of all phases (2)")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    emit_json(args, results)


if __name__ == "__main__":
    main()
