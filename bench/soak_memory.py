"""Memory soak: does the bridge's RSS keep growing under a Home app's everyday load?

    .venv/bin/python -m bench.soak_memory [--minutes 30] [--warmup 5] [--json [FILE]]
    .venv/bin/python -m bench.soak_memory --minutes 2      # quick check of the harness
    .venv/bin/python -m bench.soak_memory --bridge-env MALLOC_ARENA_MAX=2   # as the unit sets it

Issue #8 asks for RSS at start, after 5 min and at the end of a 30-minute soak, the goal being
no growth after warm-up. Allocator retention (BENCHMARKS.md, benchmark 4) makes RSS climb for
the first sessions and then plateau, so one reading says little: this samples every 10 s and
fits a line to the samples after the warm-up. A leak shows as a slope; retention does not.

The load, all real and on 127.0.0.1:

- 4 gst-rtsp-server cameras at 1280x720@15, GOP 15, 2 Mbit/s. "Drive" serves a looping clip
  (tests/peers/scenes.py) in which a photographed person crosses the yard once a minute, so
  detection fires and the recorder seals a clip now and then; the other three serve
  videotestsrc patterns (`--pattern`).
- `obscura run` (tests/peers/bridge_process.py) with `[detect] enabled` at 5 fps and
  `[storage]` to a file:// bucket with one age recipient (so events are recorded, encrypted,
  spooled and uploaded as in production).
- One paired aiohomekit controller. It asks every camera for a snapshot every 10 s, cameras
  staggered, at a size drawn from the ones iPhone, iPad and Watch tiles use, like an open Home
  app. Two viewers start a live stream on a random camera (copy at the camera's size or a
  640x360 transcode, at random), watch 20-60 s, stop, pause 5-20 s, and repeat.

Sampled from /proc every 10 s: the bridge's VmRSS, RssAnon, threads, open fds and CPU time.
Reported: RSS at start (bridge ready), at the end of the warm-up, at the end, max, and the
slope after warm-up in MiB per 10 min; snapshots answered/failed with p50/max latency; viewer
sessions started/failed; detector calls and clips sealed. Thresholds are not checked: the exit
status is non-zero only when the harness itself fails (a peer does not start, the bridge dies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import random
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from bench._common import (
    CAM_FPS,
    CAM_HEIGHT,
    CAM_WIDTH,
    ROOT,
    Env,
    Summary,
    add_common_args,
    close_viewer,
    cpu_seconds,
    describe_machine,
    emit_json,
    fmt,
    linear_slope,
    log,
    machine_info,
    open_fds,
    open_viewer,
    proc_status,
    rtsp_camera,
    running_bridge,
    table,
)
from crypto.age_keys import generate_identity
from tests.peers.bridge_process import CameraSpec
from tests.peers.camera_tlv import VideoSelection
from tests.peers.scenes import write_crossing_clip
from tests.peers.srtp_receiver import SrtpReceiver

SCENE_CAMERA = "Drive"
CAMERAS = (SCENE_CAMERA, "Porch", "Garden", "Garage")
SCENE_LOOP_S = 60.0  # the person crosses once per loop (in view ~5.5-9.4 s of it)
SAMPLE_EVERY_S = 10.0
SNAPSHOT_EVERY_S = 10.0
# iOS gives up on a snapshot after ~10 s. The bench does not cancel it (aiohomekit would drop the
# connection, and the viewers' sessions with it) but counts the answers that came later.
IOS_SNAPSHOT_PATIENCE_S = 10.0
SNAPSHOT_SIZES = ((640, 360), (1280, 720), (480, 270), (320, 180))
VIEWERS = 2
WATCH_S = (20.0, 60.0)
PAUSE_S = (5.0, 20.0)
FIRST_KEYFRAME_TIMEOUT_S = 10.0
REQUESTS = {
    "copy": VideoSelection(CAM_WIDTH, CAM_HEIGHT, CAM_FPS, max_bitrate_kbps=2000),
    "transcode": VideoSelection(640, 360, 15, max_bitrate_kbps=500),
}
IDR = 5  # H.264 NAL unit type of an IDR slice


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the bridge was ready
    rss_kib: int
    anon_kib: int
    hwm_kib: int
    threads: int
    fds: int
    cpu_s: float
    load1: float  # the box's 1-minute load average (other jobs share the cores)


@dataclass
class Tally:
    snapshot_s: list[float] = field(default_factory=list)
    # (t since ready, camera, "WxH", seconds or None when it failed), in request order
    snapshot_log: list[tuple[float, str, str, float | None]] = field(default_factory=list)
    snapshot_failed: int = 0
    snapshot_errors: Counter[str] = field(default_factory=Counter)
    sessions_started: int = 0
    sessions_failed: int = 0
    sessions_cut: int = 0  # video had stopped before the viewer ended the session
    session_modes: Counter[str] = field(default_factory=Counter)
    watched_s: float = 0.0
    access_units: int = 0


def read_sample(pid: int, t0: float) -> Sample:
    st = proc_status(pid)
    return Sample(
        t=time.monotonic() - t0,
        rss_kib=st["VmRSS"],
        anon_kib=st.get("RssAnon", 0),
        hwm_kib=st["VmHWM"],
        threads=st["Threads"],
        fds=open_fds(pid),
        cpu_s=cpu_seconds(pid),
        load1=float(Path("/proc/loadavg").read_text().split()[0]),
    )


async def sampler(env: Env, t0: float, until: float, samples: list[Sample]) -> None:
    """A sample every SAMPLE_EVERY_S on a fixed grid (t = 0, 10, 20, ...) up to `until`."""
    n = 0
    while True:
        samples.append(read_sample(env.pid, t0))
        s = samples[-1]
        if n % 6 == 0:
            log(
                f"t={s.t / 60:4.1f} min: RSS {s.rss_kib / 1024:.1f} MiB, "
                f"{s.threads} threads, {s.fds} fds"
            )
        n += 1
        next_at = t0 + n * SAMPLE_EVERY_S
        if next_at > until + 0.5:
            return
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def snapshotter(
    env: Env, name: str, offset: float, t0: float, until: float, tally: Tally, rng: random.Random
) -> None:
    """One Home-app tile: a snapshot of `name` every SNAPSHOT_EVERY_S, starting at `offset`."""
    aid = env.aid(name)
    next_at = time.monotonic() + offset
    while next_at < until:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        width, height = rng.choice(SNAPSHOT_SIZES)
        t = time.monotonic()
        took: float | None = None
        try:
            jpeg = await env.paired.pairing.image(aid, width, height)  # aiohomekit: 30 s timeout
            if not jpeg:
                raise ValueError("empty answer")
            size = Image.open(io.BytesIO(jpeg)).size  # reads the header only
            if size != (width, height):
                raise ValueError(f"{size[0]}x{size[1]} instead of {width}x{height}")
            took = time.monotonic() - t
            tally.snapshot_s.append(took)
        except Exception as exc:  # counted and reported; the soak goes on
            tally.snapshot_failed += 1
            tally.snapshot_errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
            log(f"snapshot {name} {width}x{height} failed: {type(exc).__name__}: {exc}")
        tally.snapshot_log.append((round(t - t0, 2), name, f"{width}x{height}", took))
        while next_at <= time.monotonic():  # a tile refreshes on its grid, without catching up
            next_at += SNAPSHOT_EVERY_S


def saw_keyframe(rx: SrtpReceiver) -> bool:
    return rx.nal_types[IDR] > 0


async def viewer_loop(env: Env, slot: int, until: float, tally: Tally, rng: random.Random) -> None:
    """Start a stream on a random camera, watch, stop, pause; repeat until `until`."""
    await asyncio.sleep(rng.uniform(*PAUSE_S) * slot)  # the two viewers out of step
    while time.monotonic() + WATCH_S[0] < until:
        name = rng.choice(CAMERAS)
        sms = env.streams(name)
        sm = sms[slot % len(sms)]  # each viewer its own stream service: both may pick one camera
        mode = rng.choice(tuple(REQUESTS))
        watch = min(rng.uniform(*WATCH_S), until - time.monotonic())
        viewer = None
        try:
            viewer = await open_viewer(env.paired, sm, decode=False)
            await viewer.start(REQUESTS[mode])
            if not await viewer.receiver.wait_for(saw_keyframe, FIRST_KEYFRAME_TIMEOUT_S):
                raise TimeoutError(f"no keyframe within {FIRST_KEYFRAME_TIMEOUT_S:.0f} s")
            tally.sessions_started += 1
            tally.session_modes[mode] += 1
            await asyncio.sleep(max(0.0, watch))
            tally.watched_s += max(0.0, watch)
            tally.access_units += viewer.receiver.access_units
            last = viewer.receiver.last_packet_at
            if last is None or time.monotonic() - last > 2.0:
                tally.sessions_cut += 1
                log(f"viewer {slot}: {name} {mode}: no video for the last 2 s of the session")
        except Exception as exc:
            tally.sessions_failed += 1
            log(f"viewer {slot}: {name} {mode} failed: {type(exc).__name__}: {exc}")
        finally:
            if viewer is not None:
                with contextlib.suppress(Exception):
                    await close_viewer(viewer)
        await asyncio.sleep(rng.uniform(*PAUSE_S))


def scene_clip() -> Path:
    """The Drive camera's 60 s loop, written once per machine (~1.5 min of libx264 at 720p)."""
    path = Path(tempfile.gettempdir()) / f"obscura-bench-soak-scene-{CAM_WIDTH}x{CAM_HEIGHT}.mp4"
    if not path.exists():
        log(f"writing the scene clip {path} (once)")
        part = path.with_suffix(".part.mp4")
        write_crossing_clip(
            part,
            width=CAM_WIDTH,
            height=CAM_HEIGHT,
            fps=CAM_FPS,
            seconds=SCENE_LOOP_S,
            enter_at=5.0,
            cross_seconds=5.0,
        )
        part.rename(path)
    return path


def source_revision() -> dict[str, Any]:
    """The commit the bridge ran from, and whether tracked files differed from it."""

    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else "?"

    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    commit = git("rev-parse", "--short", "HEAD").strip()
    return {"commit": commit, "modified": [c[3:] for c in changed if c.strip()]}


async def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    scene = scene_clip()
    cams = [rtsp_camera(pattern=args.pattern, mount=f"/cam{i}") for i in range(len(CAMERAS))]
    cams[0].file = scene
    specs = [
        CameraSpec(name, f"rtsp:#{i}", {"prebuffer_seconds": 4}) for i, name in enumerate(CAMERAS)
    ]
    identity = generate_identity()
    storage = {"bucket": (work / "bucket").as_uri(), "recipients": [str(identity.recipient)]}
    detect = {"enabled": True, "fps": 5}
    samples: list[Sample] = []
    tally = Tally()
    async with running_bridge(
        specs, cams, keep=args.keep, detect=detect, storage=storage, env=args.bridge_env
    ) as env:
        t0 = time.monotonic()
        until = t0 + args.minutes * 60.0
        log(f"bridge ready (pid {env.pid}); soaking for {args.minutes:g} min")
        load = [
            *(
                snapshotter(env, name, i * SNAPSHOT_EVERY_S / len(CAMERAS), t0, until, tally, rng)
                for i, name in enumerate(CAMERAS)
            ),
            *(viewer_loop(env, slot, until, tally, rng) for slot in range(VIEWERS)),
        ]
        tasks = [asyncio.create_task(c) for c in load]
        try:
            await sampler(env, t0, until, samples)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        status = await env.status()
    return {"samples": samples, "tally": tally, "status": status}


def at(samples: list[Sample], t: float) -> Sample:
    """The first sample at or after `t` (the last one if none)."""
    return next((s for s in samples if s.t >= t - 0.5), samples[-1])


def summarise(samples: list[Sample], warmup_s: float) -> dict[str, Any]:
    after = [s for s in samples if s.t >= warmup_s - 0.5]
    slope = linear_slope([s.t for s in after], [s.rss_kib / 1024 for s in after])
    anon = linear_slope([s.t for s in after], [s.anon_kib / 1024 for s in after])
    start, warm, end = samples[0], at(samples, warmup_s), samples[-1]

    def point(s: Sample) -> dict[str, Any]:
        return {
            "t_s": round(s.t, 1),
            "rss_mib": round(s.rss_kib / 1024, 1),
            "anon_mib": round(s.anon_kib / 1024, 1),
            "threads": s.threads,
            "fds": s.fds,
        }

    return {
        "start": point(start),
        "warmup": point(warm),
        "end": point(end),
        "max_rss_mib": round(max(s.rss_kib for s in samples) / 1024, 1),
        "hwm_mib": round(end.hwm_kib / 1024, 1),
        "samples_after_warmup": len(after),
        "slope_mib_per_10min": round(slope * 600, 2),
        "anon_slope_mib_per_10min": round(anon * 600, 2),
        "threads_max": max(s.threads for s in samples),
        "fds_max": max(s.fds for s in samples),
        "load_min": min(s.load1 for s in samples),
        "load_max": max(s.load1 for s in samples),
        "cpu_percent": round(100 * (end.cpu_s - start.cpu_s) / max(end.t - start.t, 1e-9), 1),
    }


WINDOW_HEADERS = [
    "minutes", "VmRSS MiB min / mean / max", "RssAnon MiB (end)", "threads max", "fds max",
    "bridge CPU %", "load", "snapshots", "snapshot p50 / max ms",
]  # fmt: skip


def window_rows(
    samples: list[Sample], shots: list[tuple[float, str, str, float | None]], minutes: float
) -> list[list[str]]:
    """The soak in ~6 windows (5 min each in a 30-minute run): memory, CPU, load, snapshots."""
    width = max(60.0, round(minutes / 6) * 60.0)
    rows = []
    for a in range(0, max(1, round(minutes * 60 / width))):
        lo, hi = a * width, (a + 1) * width
        w = [s for s in samples if lo - 0.5 <= s.t <= hi + 0.5]
        if len(w) < 2:
            continue
        rss = [s.rss_kib / 1024 for s in w]
        took = Summary.of([x for t, _, _, x in shots if lo <= t < hi and x is not None])
        rows.append([
            f"{lo / 60:g}-{hi / 60:g}",
            f"{min(rss):.1f} / {sum(rss) / len(rss):.1f} / {max(rss):.1f}",
            fmt(w[-1].anon_kib / 1024),
            str(max(s.threads for s in w)),
            str(max(s.fds for s in w)),
            fmt(100 * (w[-1].cpu_s - w[0].cpu_s) / (w[-1].t - w[0].t)),
            f"{min(s.load1 for s in w):.1f}-{max(s.load1 for s in w):.1f}",
            str(took.n),
            f"{fmt(took.p50 * 1000, 0)} / {fmt(took.max * 1000, 0)}",
        ])  # fmt: skip
    return rows


def report(args: argparse.Namespace, info: dict[str, Any], result: dict[str, Any]) -> dict:
    samples: list[Sample] = result["samples"]
    tally: Tally = result["tally"]
    status: dict[str, Any] = result["status"]
    warmup_s = args.warmup * 60.0
    mem = summarise(samples, warmup_s)
    snaps = Summary.of(tally.snapshot_s)
    late = sum(1 for x in tally.snapshot_s if x > IOS_SNAPSHOT_PATIENCE_S)
    cameras = {
        c["name"]: {
            "snapshots": c["snapshots"],
            "detector_calls": (c.get("detection") or {}).get("detector_calls"),
            "frames_analysed": (c.get("detection") or {}).get("frames_analysed"),
        }
        for c in status["cameras"]
    }
    storage = status.get("storage") or {}

    print(f"\nMemory soak — {describe_machine(info)}; bridge at {info['revision']['commit']}")
    print(
        f"{len(CAMERAS)} RTSP cameras {CAM_WIDTH}x{CAM_HEIGHT}@{CAM_FPS} ({SCENE_CAMERA}: a "
        f"person crosses once a minute); detection 5 fps; file:// bucket, 1 recipient; "
        f"snapshots every {SNAPSHOT_EVERY_S:.0f} s per camera; {VIEWERS} viewers; "
        f"{args.minutes:g} min, warm-up {args.warmup:g} min; bridge environment: "
        + (" ".join(f"{k}={v}" for k, v in args.bridge_env.items()) or "inherited")
        + "\n"
    )
    print(table(WINDOW_HEADERS, window_rows(samples, tally.snapshot_log, args.minutes)))
    print()
    w, e, s0 = mem["warmup"], mem["end"], mem["start"]
    print(table(
        ["RSS start MiB", f"at {args.warmup:g} min", "end", "max", "slope after warm-up",
         "threads start/warm/end", "fds start/warm/end"],
        [[s0["rss_mib"], w["rss_mib"], e["rss_mib"], mem["max_rss_mib"],
          f"{mem['slope_mib_per_10min']:+.2f} MiB/10 min",
          f"{s0['threads']}/{w['threads']}/{e['threads']}", f"{s0['fds']}/{w['fds']}/{e['fds']}"]],
    ))  # fmt: skip
    heap = status.get("memory") or {}
    trims = (
        f"heap trims (bridge/heap_trim.py): {heap['heap_trims']}, {heap['heap_released_mib']} "
        f"MiB released in all; {heap['heap_trim_ms_max']} ms the longest"
        if heap.get("heap_trim_every_s")
        else "heap trims: off"
    )
    print(
        f"\nsnapshots: {snaps.n} answered, {tally.snapshot_failed} failed; p50 "
        f"{fmt(snaps.p50 * 1000)} ms, p90 {fmt(snaps.p90 * 1000)} ms, max "
        f"{fmt(snaps.max * 1000)} ms; {late} answered after {IOS_SNAPSHOT_PATIENCE_S:g} s"
        f"\nviewer sessions: {tally.sessions_started} started "
        f"({', '.join(f'{k} {v}' for k, v in sorted(tally.session_modes.items()))}), "
        f"{tally.sessions_failed} failed, {tally.sessions_cut} cut short; "
        f"{tally.watched_s / 60:.1f} min watched"
        f"\ndetector calls: "
        + ", ".join(f"{n} {c['detector_calls']}" for n, c in cameras.items())
        + f"; clips sealed {storage.get('clips_sealed')}; bridge CPU {mem['cpu_percent']}%"
        + f"\n{trims}"
        f"\nload average (1 min) {mem['load_min']}-{mem['load_max']} during the soak "
        "(bridge CPU %: of one core)"
    )
    return {
        "benchmark": "soak_memory",
        "machine": info,
        "minutes": args.minutes,
        "warmup_minutes": args.warmup,
        "bridge_env": args.bridge_env,
        "memory": mem,
        "snapshots": {
            "answered": snaps.n,
            "failed": tally.snapshot_failed,
            "answered_after_10s": late,
            "latency_ms": snaps.as_dict(1000, 1),
            "errors": dict(tally.snapshot_errors),
            "log": [
                [t, name, size, None if s is None else round(s * 1000, 1)]
                for t, name, size, s in tally.snapshot_log
            ],
        },
        "viewers": {
            "started": tally.sessions_started,
            "failed": tally.sessions_failed,
            "cut_short": tally.sessions_cut,
            "modes": dict(tally.session_modes),
            "watched_s": round(tally.watched_s),
            "access_units": tally.access_units,
        },
        "cameras": cameras,
        "storage": {k: storage.get(k) for k in ("clips_sealed", "manifest_seq", "uploads")},
        "bridge_memory": status.get("memory"),
        "samples": [asdict(s) for s in samples],
    }


def _name_value(arg: str, parser: argparse.ArgumentParser) -> tuple[str, str]:
    name, sep, value = arg.partition("=")
    if not sep or not name:
        parser.error(f"--bridge-env wants NAME=VALUE, not {arg!r}")
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length (30)")
    parser.add_argument(
        "--warmup", type=float, default=None, help="warm-up minutes (5; at most half the soak)"
    )
    parser.add_argument(
        "--bridge-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="add a variable to the bridge's environment (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )
    args = parser.parse_args()
    args.bridge_env = dict(_name_value(a, parser) for a in args.bridge_env)
    if args.quick:
        args.minutes = min(args.minutes, 2.0)
    args.warmup = args.warmup if args.warmup is not None else min(5.0, args.minutes / 2)
    info = machine_info() | {"revision": source_revision()}
    log(f"machine: {describe_machine(info)}; revision {info['revision']}")
    with tempfile.TemporaryDirectory(prefix="obscura-bench-soak-") as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
    emit_json(args, report(args, info, result))


if __name__ == "__main__":
    main()
