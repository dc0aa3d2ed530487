"""Live view end to end: real H.264 through PacketFanout -> H264LiveSession -> SRTP receiver."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import socket
import statistics
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from fractions import Fraction

import av
import numpy as np
import pytest

from accessories.backend import CameraUnavailable, StreamEndpoints, VideoRequest
from bridge.live import H264LiveSession, choose_mode, encoder_settings
from bridge.live.rtcp import parse_compound, sdes_cname, sender_report
from bridge.live.rtp import H264Packetizer, RtpClock
from bridge.media.fanout import PacketFanout, PacketSubscription
from bridge.media.h264 import split_annexb
from bridge.media.packet import StreamInfo, VideoPacket
from tests.peers.srtp_receiver import SrtpReceiver

FPS = 30
GOP = 15


# -- test media ----------------------------------------------------------------------------


@functools.cache
def h264_clip(width: int, height: int, frames: int = 90) -> tuple[tuple[bytes, bool], ...]:
    """A testsrc-like clip (bars plus a moving box), keyframe every GOP frames, no B-frames."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, FPS)
    enc.framerate = Fraction(FPS)
    enc.gop_size = GOP
    enc.max_b_frames = 0
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "23"}
    bars = np.tile((np.arange(width) * 8 // width * 30).astype(np.uint8), (height, 1))
    # A drifting texture makes frames big enough to need FU-A, like real pictures.
    coarse = np.random.default_rng(0).integers(0, 40, (height // 4, width // 4), dtype=np.uint8)
    texture = np.kron(coarse, np.ones((4, 4), np.uint8))
    out: list[tuple[bytes, bool]] = []
    for i in range(frames):
        y = bars + np.roll(texture, i * 2, axis=1)
        y[: height // 8] = frame_mark(i)  # a flat band whose brightness tells the frame index
        x0 = (i * 8) % (width - 64)
        y[height // 3 : height // 3 + 64, x0 : x0 + 64] = 235
        yuv = np.concatenate([y, np.full((height // 2, width), 128, np.uint8)])
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = i
        out.extend((bytes(p), bool(p.is_keyframe)) for p in enc.encode(frame))
    out.extend((bytes(p), bool(p.is_keyframe)) for p in enc.encode(None))
    assert out[0][1] and sum(k for _, k in out) == frames // GOP
    return tuple(out)


MARKS = 24  # frame indexes are told apart modulo this


def frame_mark(index: int) -> int:
    return 24 + 8 * (index % MARKS)


def frame_index(frame: av.VideoFrame) -> int:
    """Which clip frame a decoded picture shows (survives scaling and lossy coding)."""
    y = frame.to_ndarray(format="yuv420p")[: frame.height]  # the luma plane, unscaled
    band = y[2 : frame.height // 8 - 2, 4:-4]
    return round((float(band.mean()) - 24) / 8)


class FakeCamera:
    """A source: publishes a clip in real time into a PacketFanout, with a GOP prebuffer."""

    def __init__(self, width: int, height: int, *, bitrate_kbps: int | None = None) -> None:
        self.clip = h264_clip(width, height)
        first = split_annexb(self.clip[0][0])
        params = b"".join(b"\x00\x00\x00\x01" + n for n in first if n[0] & 0x1F in (7, 8))
        self.info = StreamInfo("h264", width, height, float(FPS), params, "main", bitrate_kbps)
        self.fanout = PacketFanout()
        self.prebuffer: list[VideoPacket] = []
        self.available = True
        self.subscriptions = 0
        self.published = 0
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> PacketSubscription:
        if not self.available:
            raise CameraUnavailable("camera down")
        self.subscriptions += 1
        return self.fanout.subscribe(backlog=list(self.prebuffer))

    def stream_info(self) -> StreamInfo | None:
        return self.info if self.available else None

    async def start(self, warmup: float = 0.3) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.sleep(warmup)  # fill the prebuffer so sessions start with a backlog

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        i = 0
        while True:
            data, key = self.clip[i % len(self.clip)]
            packet = VideoPacket(data, pts=i / FPS, keyframe=key)
            self.prebuffer = [packet] if key else [*self.prebuffer, packet]
            self.fanout.publish(packet)
            i += 1
            self.published = i
            await asyncio.sleep(max(0.0, t0 + i / FPS - loop.time()))

    def end(self) -> None:
        self.available = False
        if self._task is not None:
            self._task.cancel()
        self.fanout.end_all()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def request(
    width: int, height: int, fps: int = FPS, kbps: int = 2000, **kw: object
) -> VideoRequest:
    return VideoRequest(width=width, height=height, fps=fps, max_bitrate_kbps=kbps, **kw)  # type: ignore[arg-type]


def endpoints(port: int, key: bytes, salt: bytes) -> StreamEndpoints:
    return StreamEndpoints(
        session_id=os.urandom(16),
        controller_address="127.0.0.1",
        controller_video_port=port,
        controller_audio_port=0,
        srtp_key=key,
        srtp_salt=salt,
        video_ssrc=int.from_bytes(os.urandom(4), "big"),
        local_address="127.0.0.1",
    )


@dataclass
class Live:
    session: H264LiveSession
    rx: SrtpReceiver
    camera: FakeCamera
    ended: list[int]


@contextlib.asynccontextmanager
async def live(
    camera: FakeCamera,
    req: VideoRequest,
    *,
    rx_key: tuple[bytes, bytes] | None = None,
    start: bool = True,
    on_frame: Callable[[av.VideoFrame], None] | None = None,
    **options: object,
) -> AsyncIterator[Live]:
    key, salt = os.urandom(16), os.urandom(14)
    rx = SrtpReceiver(*(rx_key or (key, salt)), on_frame=on_frame)
    port = await rx.start()
    ended: list[int] = []
    session = H264LiveSession(
        camera.subscribe,
        camera.stream_info,
        endpoints(port, key, salt),
        lambda: ended.append(1),
        "127.0.0.1",
        **options,  # type: ignore[arg-type]
    )
    try:
        if start:
            await session.start(req)
        yield Live(session, rx, camera, ended)
    finally:
        await session.stop()
        rx.close()
        await camera.close()


def sizes(rx: SrtpReceiver) -> set[tuple[int, int]]:
    return {(f.width, f.height) for f in rx.frames}


# -- pure parts ----------------------------------------------------------------------------


def test_policy() -> None:
    src = StreamInfo("h264", 1280, 720, 30.0, b"", bitrate_kbps=2000)
    assert choose_mode(request(1280, 720), src) == "copy"
    assert choose_mode(request(1280, 720, fps=30), replace(src, fps=29.97)) == "copy"
    assert choose_mode(request(1280, 720, fps=15), src) == "transcode"
    assert choose_mode(request(640, 360), src) == "transcode"
    assert choose_mode(request(1280, 720, kbps=300), src) == "transcode"
    assert choose_mode(request(1280, 720, kbps=1500), src) == "copy"  # within headroom
    assert choose_mode(request(1280, 720), None) == "transcode"
    assert choose_mode(request(640, 360), src, "copy") == "copy"
    assert choose_mode(request(1280, 720), src, "transcode") == "transcode"
    with pytest.raises(ValueError):
        choose_mode(request(1280, 720), src, "fast")  # type: ignore[arg-type]
    s = encoder_settings(request(641, 361, fps=15, kbps=300, profile="baseline"))
    assert (s.width, s.height, s.fps, s.bitrate_kbps, s.profile) == (640, 360, 15, 300, "baseline")


def test_packetizer_fragments_aggregates_and_marks() -> None:
    p = H264Packetizer(0x1234, 99, 200, initial_sequence=65535)
    sps, pps, idr = b"\x67" + b"\x01" * 10, b"\x68" + b"\x02" * 4, b"\x65" + bytes(range(256)) * 3
    packets = p.packetize([sps, pps, idr], 1000)
    assert all(len(pk) <= 200 for pk in packets)
    assert [pk[12] & 0x1F for pk in packets[:2]] == [24, 28]  # STAP-A(SPS, PPS), then FU-A
    assert [pk[1] >> 7 for pk in packets] == [0] * (len(packets) - 1) + [1]
    seqs = [int.from_bytes(pk[2:4], "big") for pk in packets]
    assert seqs[:2] == [65535, 0]
    fu = packets[1:]
    assert fu[0][13] & 0x80 and fu[-1][13] & 0x40
    assert b"\x65" + b"".join(pk[14:] for pk in fu)[: len(idr) - 1] == idr
    single = p.packetize([b"\x41" + b"\x00" * 50], 4000)
    assert len(single) == 1 and single[0][12] == 0x41


def test_rtp_clock_and_rtcp() -> None:
    clock = RtpClock(initial_offset=0)
    assert clock.stamp(10.0, 0, 3000) == 0
    assert clock.stamp(10.1, 0, 3000) == 9000
    assert clock.stamp(10.1, 0, 3000) == 12000  # same pts again: never reuse a timestamp
    assert clock.stamp(100.0, 0, 3000) == 15000  # big jump: rebase by one frame
    assert clock.stamp(1.0, 1, 3000) == 18000  # new epoch
    assert clock.stamp(1.5, 1, 3000, compress=True) == 18090  # catch-up: squeezed
    report = sender_report(7, 1_700_000_000.5, 1234, 10, 1000) + sdes_cname(7, "obscura")
    assert [(p.packet_type, p.ssrc) for p in parse_compound(report)] == [(200, 7), (202, 7)]


# -- end to end ----------------------------------------------------------------------------


async def test_copy_mode_streams_decodable_srtp() -> None:
    cam = FakeCamera(640, 360)
    await cam.start()
    req = request(640, 360, payload_type=97, max_mtu=700, rtcp_interval=0.2)
    async with live(cam, req) as lv:
        assert lv.session.mode == "copy"
        assert await lv.rx.wait_for(lambda r: len(r.frames) >= 30, within=10)
        rx = lv.rx
        assert rx.auth_failures == 0 and rx.decode_errors == 0
        assert sizes(rx) == {(640, 360)}
        assert rx.frames[0].key_frame and rx.first_keyframe_at is not None
        assert rx.ssrcs == {lv.session.endpoints.video_ssrc}
        assert rx.payload_types == {97}
        assert rx.max_datagram <= 700  # max_mtu bounds the whole SRTP datagram
        assert rx.packet_kinds["fu-a"] > 0 and rx.packet_kinds["stap-a"] > 0
        assert rx.sequence_gaps == 0 and rx.broken_access_units == 0
        assert {7, 8, 5, 1} <= set(rx.nal_types)
        stats = lv.session.stats()
        assert stats["mode"] == "copy" and stats["frames_encoded"] == 0
        assert stats["packets_sent"] >= rx.rtp_packets > 0 and stats["bytes_sent"] > 0
        json.dumps(stats)  # served as is by the status API


async def test_copy_mode_sends_prebuffer_backlog_at_once() -> None:
    cam = FakeCamera(640, 360)
    await cam.start(warmup=0.4)  # ~12 frames into a 15-frame GOP
    backlog = len(cam.prebuffer)
    assert backlog > 5
    async with live(cam, request(640, 360)) as lv:
        # The whole GOP so far arrives as one burst: well before real-time pace would allow.
        assert await lv.rx.wait_for(lambda r: len(r.frames) >= backlog, within=5)
        first_ts = lv.rx.au_timestamps[: backlog - 1]
        steps = {(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(first_ts)}
        assert max(steps) < 3000  # catch-up timestamps are squeezed, not 1/30 s apart


async def test_wrong_key_fails_authentication() -> None:
    cam = FakeCamera(640, 360)
    await cam.start()
    wrong = (os.urandom(16), os.urandom(14))
    async with live(cam, request(640, 360, rtcp_interval=0.1), rx_key=wrong) as lv:
        assert await lv.rx.wait_for(lambda r: r.auth_failures >= 20, within=5)
        await asyncio.sleep(0.3)
        assert lv.rx.rtp_packets == 0 and not lv.rx.frames
        assert lv.rx.rtcp_auth_failures > 0 and not lv.rx.sender_reports


async def test_transcodes_when_size_differs() -> None:
    cam = FakeCamera(1280, 720)
    await cam.start(warmup=0.4)
    shown: list[int] = []
    newest_at_start = cam.published - 1
    req = request(640, 360, kbps=800, profile="baseline")
    async with live(cam, req, on_frame=lambda f: shown.append(frame_index(f))) as lv:
        assert lv.session.mode == "transcode"
        assert await lv.rx.wait_for(lambda r: len(r.frames) >= 20, within=10)
        assert sizes(lv.rx) == {(640, 360)}
        # The first picture is the newest frame of the backlog, encoded as an IDR: the viewer
        # doesn't wait for the camera's next keyframe, nor watch the backlog go by.
        assert lv.rx.frames[0].key_frame
        assert (shown[0] - newest_at_start) % MARKS < 4
        assert lv.rx.auth_failures == 0 and lv.rx.decode_errors == 0
        stats = lv.session.live_stats()
        assert stats.mode == "transcode"
        assert stats.frames_decoded > stats.frames_encoded > 0  # backlog decoded, not sent


async def test_transcode_reduces_frame_rate() -> None:
    cam = FakeCamera(640, 360)
    await cam.start()
    async with live(cam, request(640, 360, fps=15)) as lv:
        assert lv.session.mode == "transcode"
        assert await lv.rx.wait_for(lambda r: len(r.frames) >= 12, within=10)
        ts = lv.rx.au_timestamps[1:]
        steps = [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(ts)]
        assert statistics.median(steps) == 6000  # 90 kHz / 15 fps


async def test_reconfigure_changes_size_and_mode_on_one_stream() -> None:
    cam = FakeCamera(1280, 720)
    await cam.start()
    async with live(cam, request(640, 360)) as lv:
        rx, session = lv.rx, lv.session
        assert session.mode == "transcode"
        assert await rx.wait_for(lambda r: len(r.frames) >= 5, within=10)
        port = session.local_video_port

        await session.reconfigure(request(320, 180, fps=15, kbps=300))
        assert await rx.wait_for(lambda r: r.frames[-1].width == 320, within=5)
        assert session.mode == "transcode"

        await session.reconfigure(request(1280, 720))  # now the camera's stream fits: copy
        # (at the camera's next keyframe: until then the transcoder may already send 1280)
        assert await rx.wait_for(
            lambda r: r.frames[-1].width == 1280 and session.mode == "copy", within=5
        )
        n = len(rx.frames)
        assert await rx.wait_for(lambda r: len(r.frames) >= n + 10, within=5)

        await session.reconfigure(request(640, 360))  # and back: copy -> transcode
        assert await rx.wait_for(lambda r: r.frames[-1].width == 640, within=5)
        assert session.mode == "transcode"

        assert [s for s in [(320, 180), (1280, 720), (640, 360)] if s not in sizes(rx)] == []
        assert session.local_video_port == port
        assert rx.ssrcs == {session.endpoints.video_ssrc}
        assert rx.sequence_gaps == 0 and rx.decode_errors == 0 and rx.auth_failures == 0


async def test_rtcp_sender_reports() -> None:
    cam = FakeCamera(640, 360)
    await cam.start()
    async with live(cam, request(640, 360, rtcp_interval=0.1)) as lv:
        assert await lv.rx.wait_for(lambda r: len(r.sender_reports) >= 4, within=5)
        reports = lv.rx.sender_reports
        assert {r.ssrc for r in reports} == {lv.session.endpoints.video_ssrc}
        assert reports[-1].packet_count > reports[0].packet_count > 0
        assert reports[-1].octet_count > reports[0].octet_count > 0
        assert abs(reports[-1].ntp_time - __import__("time").time()) < 5
        # RTP time in the SR advances like the media clock (90 kHz), within scheduling slack.
        a, b = reports[0], reports[-1]
        rtp_elapsed = ((b.rtp_timestamp - a.rtp_timestamp) & 0xFFFFFFFF) / 90_000
        assert abs(rtp_elapsed - (b.ntp_time - a.ntp_time)) < 0.2


async def test_controller_silence_ends_the_session() -> None:
    cam = FakeCamera(640, 360)
    await cam.start()
    req = request(640, 360, rtcp_interval=0.05)
    async with live(cam, req, idle_timeout=0.4) as lv:
        addr = ("127.0.0.1", lv.session.local_video_port)
        lv.rx.start_receiver_reports(addr, interval=0.1)
        await asyncio.sleep(0.6)  # reports keep it alive past the timeout
        assert not lv.ended and lv.session.live_stats().rtcp_received >= 3
        assert lv.session.live_stats().rtcp_rejected == 0
        lv.rx.stop_receiver_reports()
        assert await lv.rx.wait_for(lambda r: bool(lv.ended), within=3)
        await asyncio.sleep(0.1)
        assert lv.ended == [1] and lv.session.closed


async def test_silent_controller_tolerated_before_first_report() -> None:
    cam = FakeCamera(640, 360)
    await cam.start()
    req = request(640, 360, rtcp_interval=0.05)
    async with live(cam, req, idle_timeout=0.2, first_rtcp_timeout=None) as lv:
        await asyncio.sleep(0.6)
        assert not lv.ended and not lv.session.closed


async def test_stop_releases_everything_without_on_end() -> None:
    cam = FakeCamera(1280, 720)
    await cam.start()
    async with live(cam, request(640, 360)) as lv:
        session, rx = lv.session, lv.rx
        assert await rx.wait_for(lambda r: len(r.frames) >= 5, within=10)
        port = session.local_video_port
        await session.stop()
        await session.stop()  # idempotent
        count = rx.rtp_packets
        await asyncio.sleep(0.3)
        assert rx.rtp_packets == count
        assert rx.byes == 1
        assert len(cam.fanout) == 0  # subscription closed
        assert not [t for t in threading.enumerate() if t.name == f"live-transcode-{port}"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))  # the port is free again
        assert lv.ended == []


async def test_source_ended_calls_on_end_once() -> None:
    cam = FakeCamera(640, 360)
    await cam.start()
    async with live(cam, request(640, 360)) as lv:
        assert await lv.rx.wait_for(lambda r: len(r.frames) >= 3, within=5)
        cam.end()
        assert await lv.rx.wait_for(lambda r: bool(lv.ended), within=3)
        await lv.session.stop()
        await asyncio.sleep(0.1)
        assert lv.ended == [1] and lv.session.ended


async def test_camera_unavailable_on_start() -> None:
    cam = FakeCamera(640, 360)
    cam.available = False
    async with live(cam, request(640, 360), start=False) as lv:
        with pytest.raises(CameraUnavailable):
            await lv.session.start(request(640, 360))
        assert lv.session.closed and lv.ended == []


async def test_stop_before_start_releases_socket() -> None:
    cam = FakeCamera(640, 360)
    async with live(cam, request(640, 360), start=False) as lv:
        port = lv.session.local_video_port
        assert port > 0
        await lv.session.stop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_controller() -> None:
    cam = FakeCamera(640, 360)
    await cam.start()
    key, salt = os.urandom(16), os.urandom(14)
    rx = SrtpReceiver(key, salt, host="::1")
    port = await rx.start()
    ends = replace(endpoints(port, key, salt), controller_address="::1", local_address="::1")
    session = H264LiveSession(cam.subscribe, cam.stream_info, ends, lambda: None, "::1")
    try:
        await session.start(request(640, 360, max_mtu=1228))  # HAP's IPv6 default
        assert await rx.wait_for(lambda r: len(r.frames) >= 5, within=5)
        assert rx.max_datagram <= 1228 and rx.auth_failures == 0
        rx.send_receiver_report(("::1", session.local_video_port))
        assert await rx.wait_for(lambda r: session.live_stats().rtcp_received == 1, within=2)
    finally:
        await session.stop()
        rx.close()
        await cam.close()
