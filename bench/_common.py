"""Shared benchmark plumbing: cameras + bridge + pairing, viewers, percentiles, /proc sampling.

Every benchmark runs the real thing on 127.0.0.1: gst-rtsp-server cameras (tests/peers/rtsp.py),
`obscura run` as a child process (tests/peers/bridge_process.py, HAP advertise=false) and an
aiohomekit controller in this process (tests/peers/homekit.py). Run from the repository root:

    .venv/bin/python -m bench.live_start --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.peers.bridge_process import BridgeProcess, CameraSpec
from tests.peers.camera_tlv import Endpoint, SetupEndpointsRequest, setup_endpoints
from tests.peers.homekit import Paired, StreamManagement, find_aid, pair, stream_management
from tests.peers.rtsp import RtspCamera
from tests.peers.srtp_receiver import SrtpReceiver
from tests.peers.viewer import Viewer

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The camera every benchmark uses unless told otherwise (the 720p15, 1 s GOP).
CAM_WIDTH, CAM_HEIGHT, CAM_FPS, CAM_GOP, CAM_KBPS = 1280, 720, 15, 15, 2000
# Not tests.peers.rtsp.REALISTIC_PATTERN ("smpte horizontal-speed=4"): with it x264enc's scene-cut
# detection fires on every other frame, so the camera sends an IDR every ~2 frames whatever
# key-int-max says (measured: 148 IDRs in 300 frames) — a GOP that would hide what the prebuffer
# and the transcoder really cost at start. Scrolling 8x8 checkers keep key-int-max's GOP (one
# IDR per 15 frames), fill the bitrate (~2 Mbit/s: IDR ~85 kB, P ~11 kB) and cost the gst
# encoder about as much. probe_stream() checks the GOP at the start of a benchmark.
BENCH_PATTERN = "checkers-8 horizontal-speed=2"


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), like numpy's default; nan when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs; nan with fewer than two distinct xs."""
    n = len(xs)
    if n < 2:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p90: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        vals = [v for v in values if not math.isnan(v)]
        if not vals:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            len(vals),
            percentile(vals, 50),
            percentile(vals, 90),
            min(vals),
            max(vals),
            sum(vals) / len(vals),
        )

    def as_dict(self, scale: float = 1.0, digits: int = 4) -> dict[str, float | int]:
        def r(v: float) -> float:
            return round(v * scale, digits)

        return {
            "n": self.n,
            "p50": r(self.p50),
            "p90": r(self.p90),
            "min": r(self.min),
            "max": r(self.max),
            "mean": r(self.mean),
        }


# ----------------------------------------------------------------------------------------------
# /proc sampling (Linux)
# ----------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far, in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # comm may contain spaces and parens
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize", "Threads", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def open_fds(pid: int) -> int:
    """Open file descriptors of `pid` (entries of /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True)
class CpuWindow:
    cpu_s: float
    wall_s: float

    @property
    def percent(self) -> float:
        """Percent of one core."""
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else math.nan


def pooled_percent(windows: Sequence[CpuWindow]) -> float:
    """Percent of one core over several windows (rounds of a phase), weighted by length."""
    return 100.0 * sum(w.cpu_s for w in windows) / sum(w.wall_s for w in windows)


async def measure_cpu(pids: Sequence[int], seconds: float) -> list[CpuWindow]:
    """CPU used by each pid over the same `seconds` of wall time (the loop stays free)."""
    before = [cpu_seconds(p) for p in pids]
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    after = [cpu_seconds(p) for p in pids]
    wall = time.monotonic() - t0
    return [CpuWindow(a - b, wall) for a, b in zip(after, before, strict=True)]


def system_cpu_busy() -> tuple[float, float]:
    """(busy jiffies, total jiffies) of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return float(total - idle), float(total)


# ----------------------------------------------------------------------------------------------
# Machine description for BENCHMARKS.md
# ----------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import av

    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    ffmpeg = getattr(av, "ffmpeg_version_info", "?")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "av": av.__version__,
        "ffmpeg": ffmpeg if isinstance(ffmpeg, str) else ".".join(map(str, ffmpeg)),
    }


def describe_machine(info: dict[str, Any]) -> str:
    return (
        f"{info['date']}; {info['cpus']} CPUs ({info['cpu_model']}), "
        f"load {' '.join(info['loadavg_at_start'])}; Python {info['python']}, "
        f"PyAV {info['av']} (FFmpeg {info['ffmpeg']})"
    )


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (pastes straight into BENCHMARKS.md)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repetitions/shorter windows")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="also write the results as JSON to FILE ('-' or nothing: stdout)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for start jitter")
    parser.add_argument(
        "--pattern",
        default=None,
        help=f"videotestsrc pattern of the RTSP camera(s) (default {BENCH_PATTERN!r})",
    )


def emit_json(args: argparse.Namespace, results: dict[str, Any]) -> None:
    if not args.json:
        return
    text = json.dumps(_json_safe(results), indent=2, default=str)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).write_text(text + "\n")
        print(f"JSON written to {args.json}")


def _json_safe(value: Any) -> Any:
    """NaN (a statistic of no samples) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Cameras, bridge, pairing
# ----------------------------------------------------------------------------------------------


def rtsp_camera(
    *,
    width: int = CAM_WIDTH,
    height: int = CAM_HEIGHT,
    fps: int = CAM_FPS,
    gop: int = CAM_GOP,
    bitrate_kbps: int = CAM_KBPS,
    mount: str = "/cam",
    pattern: str | None = None,
) -> RtspCamera:
    """A camera-like RTSP server: the scrolling-bars pattern fills the bitrate like a real one."""
    return RtspCamera(
        width=width,
        height=height,
        fps=fps,
        gop=gop,
        bitrate_kbps=bitrate_kbps,
        pattern=pattern or BENCH_PATTERN,
        mount=mount,
    )


@dataclass(frozen=True)
class StreamProbe:
    """What a plain PyAV client sees on the camera URL over a few seconds."""

    frames: int
    keyframes: int
    seconds: float
    kbps: float
    gop: float  # mean frames between keyframes; nan with fewer than two

    def describe(self) -> str:
        gop = f"GOP {self.gop:.1f} frames" if not math.isnan(self.gop) else "GOP longer than that"
        return (
            f"{self.frames} frames, {self.keyframes} keyframes in {self.seconds:.1f} s "
            f"({gop}), {self.kbps:.0f} kbit/s"
        )


def probe_stream(url: str, seconds: float = 3.0) -> StreamProbe:
    """Count access units and keyframes over `seconds` of stream time (pieces of one access unit
    share a pts). Blocking. Durations come from timestamps: av.open() reads ahead while it
    probes, so wall time would overstate the rate."""
    import av

    container = av.open(url, options={"rtsp_transport": "tcp"}, timeout=(20.0, 10.0))
    try:
        stream = container.streams.video[0]
        tb = float(stream.time_base or 1 / 90000)
        pts_seen: set[int] = set()
        key_pts: set[int] = set()
        nbytes = 0
        first: int | None = None
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            first = packet.pts if first is None else first
            if (packet.pts - first) * tb >= seconds:
                break
            nbytes += packet.size
            pts_seen.add(packet.pts)
            if packet.is_keyframe:
                key_pts.add(packet.pts)
        span = seconds if first is None else max(seconds, (max(pts_seen) - first) * tb)
        order = sorted(pts_seen)
        keys = [i for i, pts in enumerate(order) if pts in key_pts]
        gop = (keys[-1] - keys[0]) / (len(keys) - 1) if len(keys) >= 2 else math.nan
        return StreamProbe(len(pts_seen), len(key_pts), span, nbytes * 8 / 1000 / span, gop)
    finally:
        container.close()


@dataclass
class Env:
    """A running bench: cameras, the bridge process, a paired controller and /accessories."""

    workdir: Path
    cameras: list[RtspCamera]
    bridge: BridgeProcess
    paired: Paired
    accessories: list[dict[str, Any]]
    names: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.bridge.proc is not None
        return self.bridge.proc.pid

    def aid(self, name: str) -> int:
        return find_aid(self.accessories, name)

    def streams(self, name: str) -> list[StreamManagement]:
        return stream_management(self.accessories, self.aid(name))

    async def status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.bridge.status)

    async def camera_status(self, name: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.bridge.camera_status, name)

    async def live_modes(self, name: str) -> list[str]:
        return [s["mode"] for s in (await self.camera_status(name))["live_sessions"]]

    async def wait_no_sessions(self, name: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while modes := await self.live_modes(name):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: live sessions did not end: {modes}")
            await asyncio.sleep(0.05)

    async def wait_prebuffer(self, name: str, seconds: float, timeout: float = 30.0) -> None:
        """Until the camera's prebuffer holds `seconds` of video (a realistic steady state)."""
        deadline = time.monotonic() + timeout
        while (await self.camera_status(name))["prebuffer_seconds"] < seconds:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def running_bridge(
    specs: Sequence[CameraSpec],
    cameras: Sequence[RtspCamera] = (),
    *,
    keep: bool = False,
    camera_timeout: float = 60.0,
    detect: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Env]:
    """Start `cameras` (RTSP servers), then the bridge with `specs`, wait until every camera
    streams, pair. Everything is torn down on exit; Tracebacks in the bridge log are reported.
    `detect`: the bridge's [detect] table (None: detection off, as BridgeProcess writes it);
    `storage`: its [storage] table (None: no recording); `env`: variables added to the bridge's
    environment (e.g. MALLOC_ARENA_MAX=2, as deploy/obscura.service sets it)."""
    tmp = tempfile.mkdtemp(prefix="obscura-bench-")
    workdir = Path(tmp)
    started: list[RtspCamera] = []
    bridge: BridgeProcess | None = None
    paired: Paired | None = None
    try:
        for cam in cameras:
            await cam.astart()
            started.append(cam)
        specs = [_resolve(spec, started) for spec in specs]
        bridge = BridgeProcess(workdir, list(specs), detect=detect, storage=storage, env=env)
        await asyncio.to_thread(bridge.start)
        for spec in specs:
            await asyncio.to_thread(bridge.wait_camera, spec.name, "streaming", camera_timeout)
        paired = await pair(bridge.hap_port, bridge.setup_code)
        accessories = await paired.pairing.list_accessories_and_characteristics()
        yield Env(workdir, started, bridge, paired, accessories, [s.name for s in specs])
    finally:
        if paired is not None:
            await paired.close()
        if bridge is not None:
            rc = await asyncio.to_thread(bridge.stop)
            text = bridge.log_text()
            if rc not in (0, None) or "Traceback" in text:
                log(f"bridge exited with {rc}; log {bridge.log}:\n{text[-4000:]}")
                keep = True
        for cam in started:
            await asyncio.to_thread(cam.stop)
        if keep:
            log(f"work directory kept: {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def _resolve(spec: CameraSpec, cameras: Sequence[RtspCamera]) -> CameraSpec:
    """`rtsp:#N` in a CameraSpec's source means the URL of the N-th started camera."""
    if spec.source.startswith("rtsp:#"):
        index = int(spec.source[len("rtsp:#") :])
        return CameraSpec(spec.name, cameras[index].url, dict(spec.extra))
    return spec


# ----------------------------------------------------------------------------------------------
# Viewers
# ----------------------------------------------------------------------------------------------


async def open_viewer(paired: Paired, sm: StreamManagement, *, decode: bool = True) -> Viewer:
    """Viewer.open, with the option not to decode (the CPU benchmark keeps the box quieter)."""
    probe = SetupEndpointsRequest.new(0, 0)
    srtp = probe.video_srtp
    receiver = SrtpReceiver(srtp.master_key, srtp.master_salt, decode=decode)
    port = await receiver.start()
    request = SetupEndpointsRequest(
        session_id=probe.session_id,
        controller=Endpoint("127.0.0.1", port, port + 1),
        video_srtp=probe.video_srtp,
        audio_srtp=probe.audio_srtp,
    )
    response = await setup_endpoints(paired.pairing, sm, request, require_write_response=True)
    return Viewer(paired, sm, request, response, receiver)


async def close_viewer(viewer: Viewer, *, stop: bool = True) -> None:
    try:
        if stop:
            await viewer.stop()
    finally:
        viewer.close()


def jitter(rng: random.Random, low: float, high: float) -> float:
    return rng.uniform(low, high)
