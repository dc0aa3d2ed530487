"""CPU of the bridge for one live view with sound (AAC -> Opus) against the same view silent.

    .venv/bin/python -m bench.live_audio_cpu [--quick] [--window S] [--rounds R] [--json [FILE]]

One RTSP camera (1280x720@15, GOP 15, ~2 Mbit/s, the other benchmarks' camera) that also sends
a 440 Hz tone as AAC-LC 16 kHz mono, behind `obscura run`. The bridge process's utime+stime
(/proc/PID/stat, all threads) is sampled over a fixed window in each phase:

- idle: the camera connected (its audio demuxed and prebuffered, nothing decoded), no viewer;
- video: one viewer at the camera's own 1280x720@15 (copy), its START without audio;
- video+opus16: the same with Opus 16 kHz, 20 ms packets selected (iOS on Wi-Fi): the camera's
  AAC decoded, resampled and encoded by libopus, 50 packets a second;
- video+opus24: Opus 24 kHz, 60 ms packets (iOS on cellular).

Phases are interleaved for R rounds (drifts of a shared machine hit all alike), each after a
warm-up. The viewer authenticates its SRTP but does not decode, to disturb the box less.
Reported: % of one core, the net over idle, the audio's own cost (phase minus video) and the
ratio (video with sound) / (video only), net over idle.
"""

from __future__ import annotations

import argparse
import asyncio
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
from tests.peers.camera_tlv import (
    AudioSelection,
    VideoSelection,
    select_stream,
    selected_stream_config,
)
from tests.peers.rtsp import RtspCamera
from tests.peers.srtp_receiver import SrtpAudioReceiver
from tests.peers.viewer import Viewer

CAMERA = "Bench"
VIDEO = VideoSelection(CAM_WIDTH, CAM_HEIGHT, CAM_FPS, max_bitrate_kbps=2000)
PHASES: dict[str, AudioSelection | bool | None] = {
    "idle": False,  # no viewer
    "video": None,  # a viewer, no audio selected
    "video+opus16": AudioSelection(sample_rate_khz=16, packet_time_ms=20),
    "video+opus24": AudioSelection(sample_rate_khz=24, packet_time_ms=60),
}


async def phase(
    env: Env, name: str, audio: AudioSelection | bool | None, window: float, warmup: float
) -> dict[str, Any]:
    pids = [env.pid, env.cameras[0].pid or 0]
    viewer: Viewer | None = None
    rx: SrtpAudioReceiver | None = None
    if audio is not False:
        viewer = await Viewer.open(env.paired, env.streams(CAMERA)[0], decode=False)
        rx = viewer.audio
        if isinstance(audio, AudioSelection):
            await viewer.start(VIDEO, audio)
        else:  # a START without audio parameters: the stream goes silent (no audio socket)
            viewer.receiver.start_receiver_reports(("127.0.0.1", viewer.accessory_port))
            config = selected_stream_config("start", viewer.request.session_id, VIDEO)
            await select_stream(env.paired.pairing, viewer.sm, config)
    try:
        await asyncio.sleep(warmup)
        packets0 = len(rx.packets) if rx else 0
        units0 = viewer.receiver.access_units if viewer else 0
        bridge, camera = await measure_cpu(pids, window)
        sessions = (await env.camera_status(CAMERA))["live_sessions"]
        return {
            "phase": name,
            "bridge": bridge,
            "camera": camera,
            "audio_mode": sessions[0]["audio"]["mode"]
            if sessions and sessions[0]["audio"]
            else None,
            "fps_delivered": ((viewer.receiver.access_units - units0) if viewer else 0)
            / bridge.wall_s,
            "audio_packets_per_s": ((len(rx.packets) - packets0) if rx else 0) / bridge.wall_s,
            "audio_rx_misrouted": 0 if rx is None else rx.auth_failures,
        }
    finally:
        if viewer is not None:
            await close_viewer(viewer)
            await env.wait_no_sessions(CAMERA)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    window = args.window or (8.0 if args.quick else 15.0)
    rounds = args.rounds or (1 if args.quick else 2)
    warmup = 2.0 if args.quick else 3.0
    info = machine_info()
    cam = RtspCamera(
        width=CAM_WIDTH, height=CAM_HEIGHT, fps=CAM_FPS, gop=CAM_GOP, bitrate_kbps=CAM_KBPS,
        pattern=BENCH_PATTERN, audio="aac", tone_hz=440.0, audio_rate=16000,
    )  # fmt: skip
    spec = CameraSpec(CAMERA, "rtsp:#0", {"prebuffer_seconds": 4})
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in PHASES}
    results: dict[str, Any] = {"machine": info, "window_s": window, "rounds": rounds}
    async with running_bridge([spec], [cam], keep=args.keep) as env:
        await env.wait_prebuffer(CAMERA, 4.0)
        audio = (await env.camera_status(CAMERA))["audio"]
        log(f"camera audio: {audio and audio['codec']} {audio and audio['sample_rate']} Hz")
        await asyncio.sleep(2.0)
        for r in range(rounds):
            for name, selection in PHASES.items():
                log(f"round {r + 1}/{rounds}: {name} ({window:g} s)")
                samples[name].append(await phase(env, name, selection, window, warmup))

    def mean_pct(name: str, key: str) -> float:
        return pooled_percent([s[key] for s in samples[name]])

    idle = mean_pct("idle", "bridge")
    video_net = mean_pct("video", "bridge") - idle
    per_phase: dict[str, Any] = {}
    rows = []
    for name in PHASES:
        pct = mean_pct(name, "bridge")
        net = pct - idle
        mode = next((s["audio_mode"] for s in samples[name] if s["audio_mode"]), None)
        fps = sum(s["fps_delivered"] for s in samples[name]) / len(samples[name])
        pps = sum(s["audio_packets_per_s"] for s in samples[name]) / len(samples[name])
        per_phase[name] = {
            "bridge_percent": round(pct, 2),
            "bridge_percent_per_round": [round(s["bridge"].percent, 2) for s in samples[name]],
            "net_over_idle_percent": round(net, 2),
            "audio_over_video_percent": round(net - video_net, 2) if "opus" in name else None,
            "ratio_over_video_net": round(net / video_net, 2) if video_net > 0 else None,
            "audio_mode": mode,
            "fps_delivered": round(fps, 1),
            "audio_packets_per_s": round(pps, 1),
            "camera_server_percent": round(mean_pct(name, "camera"), 2),
        }
        p = per_phase[name]
        rows.append([
            name + (f" ({mode})" if mode else ""),
            fmt(pct),
            " / ".join(fmt(x) for x in p["bridge_percent_per_round"]),
            "—" if name == "idle" else fmt(net),
            "—" if (alone := p["audio_over_video_percent"]) is None else fmt(alone),
            "—" if name in ("idle", "video") or video_net <= 0 else f"{net / video_net:.1f}x",
            "—" if name == "idle" else fmt(fps),
            "—" if "opus" not in name else fmt(pps),
        ])  # fmt: skip
    results["phases"] = per_phase
    print(f"\nLive view with sound, CPU of the bridge process — {describe_machine(info)}")
    print(f"camera: RTSP {cam.width}x{cam.height}@{cam.fps} + AAC 16 kHz mono tone")
    print(f"window {window:g} s x {rounds} round(s) per phase, after {warmup:g} s warm-up\n")
    print(table(
        ["phase", "bridge % core", "per round", "net over idle", "audio alone",
         "with sound / video only (net)", "fps out", "audio packets/s"],
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
