"""Sources against a real RTSP camera (gst-rtsp-server): connect, die, come back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import av
import pytest

from accessories.backend import CameraUnavailable
from bridge.config import CameraConfig
from bridge.media.fanout import SourceEnded
from bridge.media.h264 import (
    AccessUnitNormalizer,
    first_mb_in_slice,
    join_annexb,
    nal_type,
    split_annexb,
)
from bridge.media.snapshot import snapshot_jpeg
from bridge.sources.av_input import FAST_PROBE, AVInput, AVInputOptions
from bridge.sources.base import CameraSource, RetryPolicy
from bridge.sources.factory import input_factory, make_source
from tests.peers.rtsp import RtspCamera

FAST_RETRY = RetryPolicy(initial=0.3, cap=1.5, jitter=0.1)


async def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def rtsp_camera() -> AsyncIterator[RtspCamera]:
    cam = RtspCamera(width=640, height=360, fps=15, gop=15)
    await asyncio.to_thread(cam.start)
    yield cam
    await asyncio.to_thread(cam.stop)


def jpeg_size(data: bytes) -> tuple[int, int]:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(data)) as img:
        assert img.format == "JPEG"
        return img.size


async def test_rtsp_source_reconnects_while_other_cameras_keep_working(
    rtsp_camera: RtspCamera,
) -> None:
    rtsp = make_source(CameraConfig(name="RTSP", source=rtsp_camera.url), FAST_RETRY)
    demo = make_source(CameraConfig(name="Demo", source="demo:", width=320, height=240), FAST_RETRY)
    events: list[bool] = []
    rtsp.on_availability(events.append)
    rtsp.start()
    demo.start()
    try:
        await wait_for(lambda: rtsp.available and demo.available, 20, "both cameras up")
        assert rtsp.info is not None
        assert (rtsp.info.width, rtsp.info.height) == (640, 360)
        assert rtsp.info.parameter_sets.startswith(b"\x00\x00\x00\x01")
        await wait_for(lambda: len(rtsp.prebuffer) > 20, 10, "prebuffer to fill")
        assert rtsp.prebuffer.packets()[0].keyframe
        assert jpeg_size(await snapshot_jpeg(rtsp.frames, rtsp.available, 320, 180)) == (320, 180)

        sub = rtsp.subscribe()
        first = await asyncio.wait_for(anext(sub), 5)
        assert first.keyframe and b"\x00\x00\x00\x01\x67" in first.data[:64]  # SPS leads

        demo_packets = demo.packets_received
        rtsp_camera.kill()
        with pytest.raises(SourceEnded):
            async with asyncio.timeout(15):
                async for _ in sub:
                    pass
        await wait_for(lambda: not rtsp.available, 15, "the dead camera to be noticed")
        assert rtsp.last_error
        with pytest.raises(CameraUnavailable):
            await snapshot_jpeg(rtsp.frames, rtsp.available, 320, 180)
        with pytest.raises(CameraUnavailable):
            rtsp.subscribe()
        await asyncio.sleep(1.0)
        assert demo.available and demo.packets_received > demo_packets  # unaffected

        await asyncio.to_thread(rtsp_camera.restart)
        await wait_for(lambda: rtsp.available, 30, "the camera to come back")
        assert events[:3] == [True, False, True]
        assert rtsp.reconnects == 1
        jpeg = await snapshot_jpeg(rtsp.frames, rtsp.available, 640, 360)
        assert jpeg_size(jpeg) == (640, 360)
    finally:
        await asyncio.gather(rtsp.stop(), demo.stop())


async def test_unreachable_camera_is_probed_not_reopened(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A closed port on loopback: the cheap probe is refused every 0.5 s; the full (PyAV) open
    # is never tried, and the outage is logged once.
    caplog.set_level("INFO", logger="bridge.sources.base")
    source: CameraSource = make_source(
        CameraConfig(name="Gone", source="rtsp://user:topsecret@127.0.0.1:9/stream"),
        RetryPolicy(probe_interval=0.2),
    )
    source.start()
    try:
        await wait_for(lambda: source.probes >= 8, 20, "eight probes")
        assert source.state == "retrying"
        status = source.status()
        assert status["last_error"] == "127.0.0.1:9 not answering (connection refused)"
        assert status["opens"] == 0 and status["down_since"] is not None
        assert status["next_retry_at"] is not None  # `obscura doctor` shows the next try
    finally:
        await source.stop()
    assert source.state == "stopped"
    lines = [r.getMessage() for r in caplog.records if "Gone" in r.getMessage()]
    assert lines == [
        "camera 'Gone' down: 127.0.0.1:9 not answering (connection refused) "
        "(probing every 0.2 s, reconnecting when it answers)"
    ]
    assert "topsecret" not in caplog.text and "topsecret" not in str(status)


async def test_fast_open_describes_the_stream_like_a_full_probe(
    rtsp_camera: RtspCamera,
) -> None:
    base = {"rtsp_transport": "tcp", "allowed_media_types": "video"}
    fast = AVInput(AVInputOptions(rtsp_camera.url, options=base, fast_options=FAST_PROBE))
    full = AVInput(AVInputOptions(rtsp_camera.url, options=base))
    try:
        fast_info = await asyncio.to_thread(fast.open)
        full_info = await asyncio.to_thread(full.open)
        assert fast.fast_opened and not full.fast_opened
        assert fast_info == full_info
        assert (fast_info.width, fast_info.height, fast_info.fps) == (640, 360, 15.0)
        assert b"\x00\x00\x00\x01\x67" in fast_info.parameter_sets  # SPS from the SDP
        packets = fast.packets()
        first = await asyncio.to_thread(next, packets)
        assert first[0].startswith(b"\x00\x00\x00\x01")
    finally:
        fast.close()
        full.close()


async def test_fast_open_falls_back_when_the_stream_is_not_described(tmp_path: Path) -> None:
    from tests.test_media import write_mjpeg_clip

    clip = tmp_path / "clip.avi"
    write_mjpeg_clip(clip)  # MJPEG: its size is known only after a full probe
    source_input = AVInput(AVInputOptions(str(clip), fast_options=FAST_PROBE))
    try:
        info = await asyncio.to_thread(source_input.open)
        assert not source_input.fast_opened
        assert (info.width, info.height, info.fps) == (320, 240, 10.0)
    finally:
        source_input.close()


async def test_stop_does_not_wait_for_an_open_blocked_on_a_stalled_camera() -> None:
    # A "camera" that accepts the connection and never says a word: PyAV's open blocks until
    # its own timeout (seconds). Stopping the bridge must not wait for that.
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source: CameraSource = make_source(
        CameraConfig(name="Stalled", source=f"rtsp://127.0.0.1:{port}/stream"), FAST_RETRY
    )
    source.start()
    try:
        await wait_for(lambda: source.state == "connecting" and held, 10, "an open under way")
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await source.stop()
        assert time.monotonic() - started < 3.0
        assert source.state == "stopped"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def _first_slices(access_unit: bytes) -> list[int | None]:
    return [first_mb_in_slice(n) for n in split_annexb(access_unit) if nal_type(n) in (1, 5)]


def test_the_first_keyframe_of_a_camera_is_whole() -> None:
    """gst-rtsp-server's x264 cuts each picture in two slices. With the cameras' `nobuffer`,
    FFmpeg's analysis used to drop the first packet it read, the top slice of the first
    keyframe, and every first clip after a (re)connect began with a picture lacking its top."""
    with RtspCamera(width=640, height=360, fps=15, gop=15) as cam:
        source = input_factory(CameraConfig(name="x", source=cam.url))()
        source.open()
        try:
            first = next(item for item in source.packets() if isinstance(item, tuple))
        finally:
            source.close()
    data, _, key = first
    assert key and _first_slices(data)[0] == 0, _first_slices(data)


def test_a_keyframe_missing_its_first_slice_is_no_keyframe() -> None:
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base = Fraction(1, 15)
    encoder.options = {"x264-params": "slices=3:keyint=15", "tune": "zerolatency"}
    frame = av.VideoFrame(320, 240, "yuv420p")
    frame.pts = 0
    packets = [bytes(p) for p in encoder.encode(frame)] + [bytes(p) for p in encoder.encode()]
    idr = packets[0]
    nals = split_annexb(idr)
    slices = [n for n in nals if nal_type(n) == 5]
    assert len(slices) >= 2 and [first_mb_in_slice(n) for n in slices][:1] == [0]
    whole = AccessUnitNormalizer(None)
    assert whole.normalize(idr)[1] and not whole.partial
    headless = join_annexb([n for n in nals if n is not slices[0]])  # lost its top slice
    cut = AccessUnitNormalizer(None)
    assert cut.normalize(headless)[1] is False and cut.partial
