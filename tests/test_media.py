"""Prebuffer, fan-out and file sources (looping, non-H.264 input re-encoded once)."""

from __future__ import annotations

import asyncio
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from accessories.backend import CameraUnavailable
from bridge.config import CameraConfig
from bridge.media.executor import MediaBusy, MediaExecutor
from bridge.media.fanout import PacketFanout
from bridge.media.h264 import NAL_IDR, NAL_PPS, NAL_SPS, nal_type, split_annexb
from bridge.media.packet import VideoPacket
from bridge.media.prebuffer import Prebuffer
from bridge.media.snapshot import COALESCE_SECONDS, Snapshots, snapshot_jpeg
from bridge.sources.base import RetryPolicy
from bridge.sources.factory import make_source
from tests.test_sources import jpeg_size, wait_for


def packets(seconds: float, fps: int = 10, gop: int = 10, epoch: int = 0) -> list[VideoPacket]:
    return [
        VideoPacket(bytes(100), i / fps, i % gop == 0, epoch) for i in range(int(seconds * fps))
    ]


def test_prebuffer_keeps_last_seconds_from_a_keyframe() -> None:
    buf = Prebuffer(seconds=4.0)
    for p in packets(20):
        buf.append(p)
    kept = buf.packets()
    assert kept[0].keyframe
    assert 4.0 <= buf.duration < 5.0  # at least the asked seconds, at most one GOP more
    assert buf.from_latest_keyframe()[0].pts == 19.0
    assert buf.nbytes == 100 * len(kept)


def test_prebuffer_holds_at_least_one_gop_and_restarts_on_reconnect() -> None:
    buf = Prebuffer(seconds=1.0)
    for p in packets(8, gop=80):  # one long GOP: never cut in the middle
        buf.append(p)
    assert len(buf) == 80 and buf.packets()[0].keyframe
    buf.append(VideoPacket(b"x", 0.5, False, epoch=1))  # new connection, not a keyframe
    assert len(buf) == 0
    buf.append(VideoPacket(b"x", 0.6, True, epoch=1))
    assert len(buf) == 1


def test_prebuffer_memory_cap_drops_whole_gops() -> None:
    buf = Prebuffer(seconds=30.0, max_bytes=2500)
    for p in packets(10):
        buf.append(p)
    assert buf.nbytes <= 2500 and buf.packets()[0].keyframe


async def test_slow_consumer_skips_to_next_keyframe() -> None:
    fanout = PacketFanout()
    sub = fanout.subscribe(maxsize=5)
    for p in packets(2.3):  # 23 packets, GOP 10, into a queue of 5: overflows twice
        fanout.publish(p)
    got = [await anext(sub) for _ in range(sub.pending())]
    assert [p.pts for p in got] == [2.0, 2.1, 2.2]  # resumes at the newest keyframe, decodable
    assert got[0].keyframe and sub.dropped == 20
    sub.close()
    assert len(fanout) == 0


def write_mjpeg_clip(path: Path, seconds: float = 2.0, fps: int = 10) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuvj420p"
        for i in range(int(seconds * fps)):
            img = np.full((240, 320, 3), (i * 12) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("codec", ["mjpeg"])
async def test_file_source_loops_and_reencodes_non_h264(tmp_path: Path, codec: str) -> None:
    clip = tmp_path / "clip.avi"
    write_mjpeg_clip(clip)  # like a USB webcam's MJPEG: re-encoded to H.264 once, here
    source = make_source(CameraConfig(name="File", source=f"file://{clip}"), RetryPolicy())
    source.start()
    try:
        await wait_for(lambda: source.available, 10, "the file source")
        assert source.info is not None and (source.info.width, source.info.height) == (320, 240)
        await wait_for(lambda: source.packets_received >= 30, 10, "a second loop of the clip")
        assert source.state == "streaming" and source.reconnects == 0  # looped, not reopened
        pts = [p.pts for p in source.prebuffer.packets()]
        assert pts == sorted(pts)  # timestamps keep increasing across loops
        keyframe = source.prebuffer.from_latest_keyframe()[0]
        types = [nal_type(n) for n in split_annexb(keyframe.data)]
        assert {NAL_SPS, NAL_PPS, NAL_IDR} <= set(types)
        jpeg = await snapshot_jpeg(source.frames, source.available, 160, 120)
        assert jpeg_size(jpeg) == (160, 120)
    finally:
        await source.stop()


async def test_missing_file_is_retried_not_fatal(tmp_path: Path) -> None:
    source = make_source(
        CameraConfig(name="Nope", source=f"file://{tmp_path}/missing.mp4"),
        RetryPolicy(initial=0.1, cap=0.2),
    )
    source.start()
    try:
        await wait_for(lambda: source.state == "retrying", 5, "a retry")
        assert "No such file" in (source.last_error or "")
    finally:
        await source.stop()
    await asyncio.sleep(0)


def _merge(packets: list[tuple[bytes, float, bool]]) -> list[tuple[tuple[bytes, float, bool], int]]:
    """Run the keyframe merger; record how many input packets it had read at each output."""
    from bridge.sources.av_input import _merge_split_keyframes

    read = 0

    def source():  # type: ignore[no-untyped-def]
        nonlocal read
        for packet in packets:
            read += 1
            yield packet

    return [(out, read) for out in _merge_split_keyframes(source())]


def test_split_keyframes_are_joined() -> None:
    # Like gst-rtsp-server with config-interval: SPS/PPS before each IDR slice splits the AU.
    gop = [(b"\x00\x00\x00\x01\x65A", 0.0, True), (b"\x00\x00\x00\x01\x65B", 0.0, True)]
    out = _merge([*gop, (b"P", 0.1, False), *[(d, t + 1, k) for d, t, k in gop]])
    assert [o[0] for o in out] == [
        (gop[0][0] + gop[1][0], 0.0, True),
        (b"P", 0.1, False),
        (gop[0][0] + gop[1][0], 1.0, True),
    ]


def test_whole_keyframes_stop_being_held_back() -> None:
    packets = [(b"K" if i % 5 == 0 else b"P", i / 10, i % 5 == 0) for i in range(40)]
    out = _merge(packets)
    assert [o[0] for o in out] == packets  # nothing lost, nothing merged
    key_reads = [read for (packet, read) in out if packet[2]]
    key_inputs = [i + 1 for i, p in enumerate(packets) if p[2]]
    assert key_reads[:3] == [n + 1 for n in key_inputs[:3]]  # first ones: held one packet
    assert key_reads[4:] == key_inputs[4:]  # then passed on as soon as read (no frame of delay)


# ---- the media pool and snapshots (issue #8: no deadlock, nothing starves the default pool) ----


async def test_media_pool_names_threads_bounds_its_backlog_and_drops_cancelled_jobs() -> None:
    media = MediaExecutor(workers=1, backlog=2)
    block = threading.Event()
    try:
        running = media.submit(block.wait, 30, what="blocker")
        await wait_for(lambda: media.status()["busy"] == 1, 5, "the blocker to start")
        queued = [media.submit(threading.current_thread, what=f"job {i}") for i in range(2)]
        with pytest.raises(MediaBusy, match="busy: 2 jobs waiting"):
            media.submit(threading.current_thread)  # full: refused at once, not queued
        assert queued[0].cancel()  # its caller went away: it leaves the queue
        status = media.status()
        assert (status["queued"], status["rejected"], status["cancelled"]) == (1, 1, 1)
        assert status["workers"] == 1 and status["longest_running_seconds"] > 0
        block.set()
        assert running.result(5) is True
        worker = queued[1].result(5)
        assert worker.name == "media-1" and worker.daemon  # never holds the process at exit
        assert media.status()["completed"] == 2
    finally:
        block.set()
        assert await media.aclose() == []
    with pytest.raises(MediaBusy, match="shut down"):
        media.submit(threading.current_thread)


async def test_media_pool_close_names_a_stuck_worker_without_waiting_for_it() -> None:
    media = MediaExecutor(workers=2, backlog=4)
    block = threading.Event()
    try:
        media.submit(block.wait, what="stuck on purpose")
        waiting = media.submit(block.wait, what="never started")
        waiting2 = media.submit(block.wait, what="never started either")
        await wait_for(lambda: media.status()["busy"] == 2, 5, "two busy workers")
        started = time.monotonic()
        stuck = await media.aclose(timeout=0.3)
        assert time.monotonic() - started < 2
        assert len(stuck) == 2 and all(
            "stuck on purpose" in s or "never started" in s for s in stuck
        )
        assert waiting.running() or waiting2.running()
    finally:
        block.set()


async def test_identical_snapshot_requests_share_a_render_and_a_full_pool_answers_an_error() -> (
    None
):
    source = make_source(
        CameraConfig(name="Demo", source="demo:", width=640, height=360, fps=15), RetryPolicy()
    )
    media = MediaExecutor(workers=2, backlog=8)
    source.start()
    try:
        await wait_for(lambda: source.available, 10, "the demo camera")
        snapshots = Snapshots(source.frames, media)
        sizes = [(320, 180), (160, 120)] * 10  # a storm: 20 requests, 2 sizes, same moment
        jpegs = await asyncio.gather(*(snapshots.jpeg(True, w, h) for w, h in sizes))
        assert [jpeg_size(j) for j in jpegs] == sizes
        assert snapshots.renders == 2 and media.status()["completed"] == 2
        # Later requests render afresh (a newer frame).
        await asyncio.sleep(COALESCE_SECONDS + 0.05)
        assert jpeg_size(await snapshots.jpeg(True, 320, 180)) == (320, 180)
        assert snapshots.renders == 3

        # A pool whose workers are all stuck and whose backlog is full: an error at once.
        full = MediaExecutor(workers=1, backlog=1)
        block = threading.Event()
        try:
            full.submit(block.wait, 30)
            await wait_for(lambda: full.status()["busy"] == 1, 5, "the stuck worker")
            full.submit(block.wait, 30)
            started = time.monotonic()
            with pytest.raises(CameraUnavailable, match="snapshot refused: media pool busy"):
                await Snapshots(source.frames, full).jpeg(True, 320, 180)
            assert time.monotonic() - started < 1
        finally:
            block.set()
            await full.aclose()
    finally:
        await source.stop()
        await media.aclose()
