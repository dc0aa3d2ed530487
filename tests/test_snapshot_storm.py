"""Snapshot storms cannot deadlock, and a stop always finishes (issue #8, item 1).

The hostile run's findings, as tests: eight threads scaling one decoded frame to different sizes
left seven hung in swscale; 50 concurrent snapshots at mixed sizes starved the bridge and it
then never exited on SIGTERM; the same storm on a cold decoder crashed it. Here: the renderer on
its own (threads on one decoder frame, bounded joins on daemon threads so a regression fails
instead of hanging the suite), then `obscura run` with a live RTSP camera and aiohomekit
connections (a storm on a cold decoder, another on a warm one, then SIGTERM → exit 0), then the
watchdog: a stop that hangs on purpose still ends the process, and the log names the thread.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import av.video.frame
import numpy as np
import pytest

from bridge.media.snapshot import frame_to_jpeg
from tests.peers.bridge_process import ROOT, BridgeProcess, CameraSpec
from tests.peers.homekit import Paired, find_aid, pair, reconnect
from tests.peers.rtsp import RtspCamera, gst_rtsp_available
from tests.test_homekit import jpeg_size

# Five sizes a phone, a tablet and a hub ask for (one above the camera's own 720p).
STORM_SIZES = [(1280, 720), (640, 360), (480, 270), (320, 240), (1920, 1080)]
CONNECTIONS = 10
ANSWER_BOUND = 20.0  # seconds, per snapshot (generous: shared CI machines)


def decoded_frame(width: int = 1280, height: int = 720, seed: int = 8) -> av.video.frame.VideoFrame:
    """A frame straight out of the H.264 decoder, like the ones FrameTap shares."""
    rng = np.random.default_rng(seed)
    y = np.tile(np.linspace(16, 235, width, dtype=np.uint8), (height, 1))
    y[: height // 2] = rng.integers(16, 235, (height // 2, width), dtype=np.uint8)
    uv = rng.integers(64, 192, (height // 2, width), dtype=np.uint8)
    source = av.video.frame.VideoFrame.from_ndarray(np.vstack([y, uv]), format="yuv420p")
    source.pts = 0
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, 15)
    packets = [*encoder.encode(source), *encoder.encode(None)]
    decoder = av.CodecContext.create("h264", "r")
    frames = [f for p in packets for f in decoder.decode(p)] + list(decoder.decode(None))
    assert frames
    return frames[0]


def test_threads_rendering_one_decoded_frame_at_different_sizes_all_finish() -> None:
    """The standalone repro: 8 threads (here 10), one decoded frame, different sizes."""
    frame = decoded_frame()
    sizes = [(160, 90), (320, 180), (480, 270), (640, 360), (800, 450), (1024, 576)]
    sizes += [(1280, 720), (1920, 1080), (320, 240), (640, 480)]
    expected = {size: frame_to_jpeg(frame, *size) for size in sizes}  # one thread at a time
    pixels = [bytes(p) for p in frame.planes]
    tags = (frame.colorspace, frame.color_range, frame.color_trc, frame.color_primaries)
    results: dict[tuple[int, int], list[bytes]] = {size: [] for size in sizes}
    errors: list[BaseException] = []
    start = threading.Barrier(len(sizes))

    def render(size: tuple[int, int]) -> None:
        try:
            start.wait(10)
            for _ in range(4):
                results[size].append(frame_to_jpeg(frame, *size))
        except BaseException as exc:  # reported below
            errors.append(exc)

    # Daemon threads and a bounded join: a hang fails the test instead of the suite.
    threads = [threading.Thread(target=render, args=(s,), daemon=True) for s in sizes]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"{len(hung)} render threads still running after 60 s: {hung}"
    assert not errors, errors
    for size, jpegs in results.items():
        assert len(jpegs) == 4
        assert all(j == expected[size] for j in jpegs), size  # same bytes as a lone render
        assert jpeg_size(jpegs[0]) == size
    # The decoder's frame was only read.
    assert [bytes(p) for p in frame.planes] == pixels
    assert (frame.colorspace, frame.color_range, frame.color_trc, frame.color_primaries) == tags


# ---------------------------------------------------------------------------------------------
# End to end: obscura run + a live RTSP camera + aiohomekit
# ---------------------------------------------------------------------------------------------

needs_gst = pytest.mark.skipif(
    not gst_rtsp_available(), reason="gst-rtsp-server (Debian python3-gi bindings) not installed"
)


async def storm(
    connections: list[Paired], aid: int, rng: np.random.Generator
) -> list[tuple[tuple[int, int], bytes | None, float]]:
    """Every connection asks every size at once (shuffled order per connection)."""

    async def one(p: Paired, size: tuple[int, int]) -> tuple[tuple[int, int], bytes | None, float]:
        started = time.monotonic()
        async with asyncio.timeout(ANSWER_BOUND * 2):
            jpeg = await p.pairing.image(aid, *size)
        return size, jpeg, time.monotonic() - started

    calls = []
    for p in connections:
        for index in rng.permutation(len(STORM_SIZES)):
            calls.append(one(p, STORM_SIZES[index]))
    return await asyncio.gather(*calls)


def check_storm(results: list[tuple[tuple[int, int], bytes | None, float]]) -> list[float]:
    assert len(results) == CONNECTIONS * len(STORM_SIZES)
    unanswered = [size for size, jpeg, _ in results if jpeg is None]
    assert not unanswered, f"{len(unanswered)} of {len(results)} unanswered: {unanswered}"
    for size, jpeg, _ in results:
        assert jpeg is not None and jpeg_size(jpeg) == size
    latencies = sorted(seconds for _, _, seconds in results)
    assert latencies[-1] < ANSWER_BOUND, latencies
    return latencies


@needs_gst
async def test_snapshot_storms_cold_and_warm_then_sigterm_exits_zero(tmp_path: Path) -> None:
    rng = np.random.default_rng(50)
    with RtspCamera(width=1280, height=720, fps=15, gop=15) as camera:
        bridge = BridgeProcess(tmp_path, [CameraSpec("Driveway", camera.url)])
        bridge.start()
        connections: list[Paired] = []
        try:
            bridge.wait_camera("Driveway")
            first = await pair(bridge.hap_port, bridge.setup_code)
            connections.append(first)
            accessories = await first.pairing.list_accessories_and_characteristics()
            aid = find_aid(accessories, "Driveway")
            # More HAP connections with the same pairing (each its own pair-verify), like an
            # iPhone, an iPad and a hub: connected before the storm, which then finds the
            # decoder cold (no snapshot yet, detection off).
            for i in range(1, CONNECTIONS):
                other = await reconnect(first.pairing_data, alias=f"storm-{i}")
                connections.append(other)
                await other.pairing.connection.ensure_connection()
            assert bridge.camera_status("Driveway")["snapshots"]["served"] == 0

            cold = check_storm(await storm(connections, aid, rng))
            warm = check_storm(await storm(connections, aid, rng))

            status = bridge.status()
            media = status["media"]
            assert media["rejected"] == 0 and media["failed"] == 0, media
            assert media["busy"] == 0 and media["queued"] == 0, media
            # Identical requests shared renders: far fewer renders than requests.
            assert 0 < media["completed"] < 2 * CONNECTIONS * len(STORM_SIZES), media
            served = bridge.camera_status("Driveway")["snapshots"]
            assert served["served"] == 2 * CONNECTIONS * len(STORM_SIZES), served
            print(
                f"cold storm p50 {cold[len(cold) // 2]:.2f} s max {cold[-1]:.2f} s; "
                f"warm p50 {warm[len(warm) // 2]:.2f} s max {warm[-1]:.2f} s; "
                f"renders {media['completed']} for {2 * len(cold)} requests"
            )
        finally:
            for p in connections:
                await p.close()
            assert bridge.proc is not None
            started = time.monotonic()
            if bridge.proc.poll() is None:
                bridge.proc.send_signal(signal.SIGTERM)
            try:
                code = bridge.proc.wait(15)
            except subprocess.TimeoutExpired:
                bridge.proc.kill()
                bridge.proc.wait(5)
                raise AssertionError(f"no exit 15 s after SIGTERM:\n{bridge.log_text()}") from None
            stopped_in = time.monotonic() - started
        log = bridge.log_text()
        assert code == 0, log
        assert stopped_in < 5.0, f"exit took {stopped_in:.1f} s"
        assert "Traceback" not in log, log
        # A clean stop: no render left running, no thread left behind, no watchdog.
        assert "still running" not in log and "did not finish" not in log, log


# ---------------------------------------------------------------------------------------------
# The watchdog: a stop that hangs on purpose (in a child process)
# ---------------------------------------------------------------------------------------------

# `obscura run` with BridgeService.stop patched to misbehave. MODE=hang, as the hostile run's
# bridge did: a media worker blocked in a job, and a stop that waits for a thread that never
# returns. MODE=leftover: a stop that finishes but leaves a non-daemon thread behind.
CHILD = """
import asyncio, sys, threading
import bridge.shutdown
from bridge.service import BridgeService

MODE, CONFIG = sys.argv[1], sys.argv[2]
if MODE == "hang":
    bridge.shutdown.STOP_GRACE_SECONDS = 3.0  # (the bridge's is 8 s)
blocked = threading.Event()
original_stop = BridgeService.stop


async def stop(self):
    if MODE == "hang":
        self.media.submit(blocked.wait, what="blocked on purpose")
        await asyncio.sleep(0.1)
        await original_stop(self)
        await asyncio.to_thread(blocked.wait)
    else:
        await original_stop(self)
        threading.Thread(target=blocked.wait, name="leftover-helper").start()


BridgeService.stop = stop
from bridge.cli import main

sys.exit(main(["run", "--config", CONFIG]))
"""


def start_child(tmp_path: Path, mode: str) -> tuple[BridgeProcess, subprocess.Popen[bytes]]:
    bridge = BridgeProcess(tmp_path, [CameraSpec("Porch", "demo:", {"width": 320, "height": 240})])
    with open(bridge.log, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, mode, str(bridge.config)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    bridge.proc = proc
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, bridge.log_text()
        try:
            bridge.status()
            return bridge, proc
        except OSError:
            assert time.monotonic() < deadline, bridge.log_text()
            time.sleep(0.1)


def wait_exit(
    proc: subprocess.Popen[bytes], bound: float, bridge: BridgeProcess
) -> tuple[int, float]:
    started = time.monotonic()
    try:
        code = proc.wait(bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"still running {bound} s later:\n{bridge.log_text()}") from None
    return code, time.monotonic() - started


def test_watchdog_ends_a_stop_that_hangs_and_names_the_stuck_threads(tmp_path: Path) -> None:
    bridge, proc = start_child(tmp_path, "hang")
    proc.send_signal(signal.SIGTERM)
    code, took = wait_exit(proc, 15, bridge)
    log = bridge.log_text()
    assert code == 70, log  # EXIT_STOP_TIMEOUT
    assert 2.5 < took < 8, took  # the 3 s grace of this child, not systemd's 20 s SIGKILL
    assert "did not finish within 3 s" in log, log
    # Named: the media worker (by the pool at stop, then with its stack by the watchdog) and
    # the thread the stop waits for.
    assert "media pool: still running at shutdown: media-" in log, log
    assert "blocked on purpose" in log
    assert "thread 'media-" in log and "thread 'asyncio_0'" in log, log
    assert 'executor.py", line' in log and "in _work" in log  # where: each thread's stack
    # ... and where the stop waits: the awaits of the loop's task, down to the thread.
    assert "in serve: await service.stop()" in log and " in to_thread: " in log, log


def test_a_second_sigterm_exits_at_once(tmp_path: Path) -> None:
    bridge, proc = start_child(tmp_path, "hang")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    code, took = wait_exit(proc, 10, bridge)
    assert code == 128 + signal.SIGTERM, bridge.log_text()
    assert took < 2.5, took  # well before the 3 s watchdog
    assert "SIGTERM again while stopping" in bridge.log_text()


def test_a_finished_stop_exits_zero_without_joining_a_leftover_thread(tmp_path: Path) -> None:
    bridge, proc = start_child(tmp_path, "leftover")
    proc.send_signal(signal.SIGTERM)
    code, took = wait_exit(proc, 15, bridge)
    log = bridge.log_text()
    assert code == 0, log
    assert took < 6, took  # the leftover grace of 2 s, well before the watchdog's 8 s
    assert "still running; exiting without them" in log and "leftover-helper" in log, log
