"""HKSV recording media (bridge/record/hksv.py): init segment + IDR-aligned fMP4 fragments.

A camera made of the real Prebuffer and PacketFanout is fed real libx264 packets faster than
real time; what the recording yields is parsed with a box walker of this file's own (not the
code under test) and decoded with PyAV/FFmpeg: the whole recording, and every fragment alone
behind the init segment (which only works if it starts with an IDR frame).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import struct
import threading
import time
from dataclasses import dataclass, replace
from fractions import Fraction

import av
import av.video.frame
import numpy as np
import pytest

from accessories.backend import RecordingChunk, RecordingFailed, RecordingRequest
from bridge.media.encoder import H264Encoder
from bridge.media.fanout import PacketFanout, PacketSubscription
from bridge.media.packet import StreamInfo, VideoPacket
from bridge.media.prebuffer import Prebuffer
from bridge.record.hksv import HksvRecording
from bridge.sources.base import CameraSource
from bridge.sources.demo import DemoInput

W, H, FPS = 640, 360, 15
FRAME = 1 / FPS
REQUEST = RecordingRequest(
    width=W, height=H, fps=FPS, bitrate_kbps=800, iframe_interval_ms=4000,
    fragment_ms=4000, prebuffer_ms=4000,
)

pytestmark = pytest.mark.timeout(60)


@dataclass
class Stream:
    info: StreamInfo
    packets: list[VideoPacket]


def _encode(gop: float, seconds: float, width: int = W, height: int = H) -> Stream:
    enc = H264Encoder(width, height, FPS, bitrate_kbps=800, gop_seconds=gop)
    packets = []
    for i in range(int(seconds * FPS)):
        img = np.zeros((height, width, 3), np.uint8)
        img[:, :, 2] = 90
        x = (i * 9) % (width - 40)
        img[height // 3 : height // 3 + 60, x : x + 40] = (230, 120, 40)
        frame = av.video.frame.VideoFrame.from_ndarray(img, format="rgb24")
        for data, pts, key in enc.encode(frame, i / FPS):
            packets.append(VideoPacket(data, pts, key, epoch=1))
    return Stream(StreamInfo("h264", width, height, FPS, enc.parameter_sets, enc.profile), packets)


@pytest.fixture(scope="module")
def gop2() -> Stream:
    return _encode(2.0, 24)


@pytest.fixture(scope="module")
def gop10() -> Stream:
    return _encode(10.0, 24)


class Camera:
    """CameraSource's consumer side (real Prebuffer and PacketFanout), fed by the test."""

    def __init__(self, stream: Stream) -> None:
        self.info: StreamInfo | None = stream.info
        self.prebuffer = Prebuffer(6.0)
        self.fanout = PacketFanout()
        self.packets = stream.packets
        self.next = 0

    def subscribe(self, *, from_prebuffer: bool = True, maxsize: int = 300) -> PacketSubscription:
        backlog = self.prebuffer.from_latest_keyframe() if from_prebuffer else ()
        return self.fanout.subscribe(backlog, maxsize)

    @property
    def newest(self) -> float:
        return self.packets[self.next - 1].pts

    async def until(self, pts: float) -> None:
        """Publishes packets up to `pts`, yielding to the loop after each one."""
        while self.next < len(self.packets) and self.packets[self.next].pts <= pts + 1e-6:
            packet = self.packets[self.next]
            self.prebuffer.append(packet)
            self.fanout.publish(packet)
            self.next += 1
            await asyncio.sleep(0)

    def went_down(self) -> None:
        self.info = None
        self.prebuffer.clear()
        self.fanout.end_all()

    def count(self, start: float, end: float) -> int:
        return sum(1 for p in self.packets if start - 1e-6 <= p.pts <= end + 1e-6)


# -- an independent look at the bytes ------------------------------------------------------------


def boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, payload offset, box end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    out, pos = [], start
    while pos < end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        assert size >= 8 and pos + size <= end, "boxes do not tile"
        out.append((kind, pos + 8, pos + size))
        pos += size
    return out


@dataclass
class Track:
    track_id: int
    decode_time: int
    samples: int
    first_offset: int  # of the first sample, in the fragment's bytes (moof-relative base)
    first_size: int


def fragment_tracks(fragment: bytes) -> dict[int, Track]:
    top = boxes(fragment)
    assert [k for k, _, _ in top] == [b"moof", b"mdat"]
    _, moof, moof_end = top[0]
    tracks = {}
    for kind, traf, traf_end in boxes(fragment, moof, moof_end):
        if kind != b"traf":
            continue
        inner = {k: (p, e) for k, p, e in boxes(fragment, traf, traf_end)}
        p, _ = inner[b"tfhd"]
        flags = int.from_bytes(fragment[p + 1 : p + 4], "big")
        assert flags & 0x020000, "default-base-is-moof"
        track_id, pos = struct.unpack(">I", fragment[p + 4 : p + 8])[0], p + 8
        default_size = 0
        for bit, size in ((0x1, 8), (0x2, 4), (0x8, 4)):
            pos += size if flags & bit else 0
        if flags & 0x10:
            default_size = struct.unpack(">I", fragment[pos : pos + 4])[0]
        p, _ = inner[b"tfdt"]
        version = fragment[p]
        field = fragment[p + 4 : p + (12 if version else 8)]
        decode_time = struct.unpack(">Q" if version else ">I", field)[0]
        p, _ = inner[b"trun"]
        tflags = int.from_bytes(fragment[p + 1 : p + 4], "big")
        count, pos = struct.unpack(">I", fragment[p + 4 : p + 8])[0], p + 8
        data_offset = struct.unpack(">i", fragment[pos : pos + 4])[0] if tflags & 0x1 else 0
        pos += 4 if tflags & 0x1 else 0
        pos += 4 if tflags & 0x4 else 0
        pos += 4 if tflags & 0x100 else 0
        first_size = default_size
        if tflags & 0x200:
            first_size = struct.unpack(">I", fragment[pos : pos + 4])[0]
        tracks[track_id] = Track(track_id, decode_time, count, data_offset, first_size)
    return tracks


def nal_types(sample: bytes) -> list[int]:
    types, pos = [], 0
    while pos + 4 <= len(sample):
        n = struct.unpack(">I", sample[pos : pos + 4])[0]
        types.append(sample[pos + 4] & 0x1F)
        pos += 4 + n
    return types


@dataclass
class Decoded:
    video_frames: int
    width: int
    height: int
    audio_seconds: float
    audio_rate: int
    audio_channels: int
    first_key: bool


def decode(data: bytes) -> Decoded:
    with av.open(io.BytesIO(data)) as container:
        vs = container.streams.video[0]
        frames = list(container.decode(vs))
    with av.open(io.BytesIO(data)) as container:
        a = container.streams.audio[0]
        assert a.codec_context.name == "aac"
        samples = sum(f.samples for f in container.decode(a))
        rate, channels = a.codec_context.sample_rate, a.codec_context.channels
    return Decoded(
        len(frames), frames[0].width, frames[0].height, samples / rate, rate, channels,
        frames[0].key_frame,
    )


def check(chunks: list[RecordingChunk], request: RecordingRequest = REQUEST) -> Decoded:
    """What every recording must be; returns the whole recording decoded."""
    assert chunks[0].kind == "init" and chunks[0].sequence == 1
    assert [k for k, _, _ in boxes(chunks[0].data)] == [b"ftyp", b"moov"]
    fragments = chunks[1:]
    assert fragments and all(c.kind == "fragment" for c in fragments)
    assert [c.sequence for c in fragments] == list(range(2, len(fragments) + 2))
    init = chunks[0].data
    video_time = audio_time = 0
    for chunk in fragments:
        tracks = fragment_tracks(chunk.data)
        assert sorted(tracks) == [1, 2]  # both tracks in every fragment
        video, audio = tracks[1], tracks[2]
        assert video.decode_time == video_time  # contiguous, starting at 0
        assert audio.decode_time * 90000 // request.audio_sample_rate == pytest.approx(
            video.decode_time, abs=90000 * 1024 // request.audio_sample_rate
        )
        video_time += round(chunk.duration * 90000)
        audio_time = audio.decode_time
        first = chunk.data[video.first_offset : video.first_offset + video.first_size]
        assert 5 in nal_types(first), "a fragment starts with an IDR frame"
        assert chunk.duration <= request.fragment_ms / 1000 + FRAME + 1e-3
        alone = decode(init + chunk.data)  # decodable without anything before it
        assert alone.first_key and alone.video_frames == video.samples
    assert audio_time > 0
    whole = decode(init + b"".join(c.data for c in fragments))
    assert (whole.audio_rate, whole.audio_channels) == (
        request.audio_sample_rate, request.audio_channels,
    )
    media = sum(c.duration for c in fragments)
    assert whole.audio_seconds == pytest.approx(media, abs=1024 / request.audio_sample_rate)
    return whole


async def take(rec: HksvRecording, n: int, timeout: float = 10) -> list[RecordingChunk]:
    out = []
    async with asyncio.timeout(timeout):
        async for chunk in rec:
            out.append(chunk)
            if len(out) == n:
                break
    return out


async def drain(rec: HksvRecording, timeout: float = 20) -> list[RecordingChunk]:
    async with asyncio.timeout(timeout):
        return [chunk async for chunk in rec]


def worker_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("hksv:")]


# -- copy ------------------------------------------------------------------------------------


async def test_copy_starts_with_the_prebuffer_at_once_and_follows_live(gop2: Stream) -> None:
    cam = Camera(gop2)
    await cam.until(9.0)
    opened = cam.newest
    rec = HksvRecording(cam, REQUEST, name="porch")
    rec.start()
    assert rec.mode == "copy", rec.mode_reason
    # The prebuffer's complete GOPs come at once: nothing new is published meanwhile.
    first = await take(rec, 2, timeout=5)
    assert [c.kind for c in first] == ["init", "fragment"]
    # A live fragment goes out with the keyframe that completes it (8.0 .. 12.0 at 12.0).
    await cam.until(12.0)
    live = await take(rec, 1, timeout=5)
    assert live[0].duration == pytest.approx(4.0)
    await cam.until(19.0)
    rec.finish()
    chunks = first + live + await drain(rec)
    await rec.close()
    whole = check(chunks)
    assert (whole.width, whole.height) == (W, H)
    # Every packet from the first fragment's keyframe to the last one published, none lost;
    # the recording starts at least the prebuffer before the open moment.
    after_open = cam.count(opened + FRAME / 2, cam.newest)
    before_open = whole.video_frames - after_open
    start = opened - (before_open - 1) * FRAME
    assert opened - start >= 4.0 - 1e-6
    assert any(p.keyframe and abs(p.pts - start) < 1e-6 for p in cam.packets)
    # 2 s GOPs are grouped in twos: full fragments last the fragment length.
    assert [c.duration for c in chunks[1:-1]] == pytest.approx([4.0] * (len(chunks) - 2))
    stats = rec.stats()
    assert stats["mode"] == "copy" and stats["fragments"] == len(chunks) - 1
    assert stats["prebuffer_seconds"] == pytest.approx(before_open * FRAME, abs=FRAME)
    assert stats["dropped"] == 0 and stats["state"] == "closed" and stats["moov_changes"] == 0
    assert len(cam.fanout) == 0 and not worker_threads()


async def test_copy_keeps_b_frames_in_decode_order() -> None:
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 320, 180, "yuv420p"
    ctx.time_base = Fraction(1, 90000)
    ctx.framerate = Fraction(FPS)
    ctx.max_b_frames = 2
    ctx.options = {"preset": "ultrafast", "x264-params": "keyint=30:min-keyint=30:bframes=2"
                   ":scenecut=0:repeat-headers=1"}
    packets = []
    for i in range(16 * FPS + 1):
        frame = None
        if i < 16 * FPS:
            img = np.full((180, 320, 3), 40, np.uint8)
            img[60:100, (i * 5) % 280 : (i * 5) % 280 + 40] = (240, 200, 30)
            frame = av.video.frame.VideoFrame.from_ndarray(img, format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i * 6000, Fraction(1, 90000)
        for p in ctx.encode(frame):
            assert p.pts is not None
            packets.append(VideoPacket(bytes(p), 100.0 + p.pts / 90000, p.is_keyframe, 1))
    assert any(b.pts < a.pts for a, b in itertools.pairwise(packets))  # reordered
    info = StreamInfo("h264", 320, 180, FPS, b"", "main")
    cam = Camera(Stream(info, packets))
    await cam.until(108.0)
    request = replace(REQUEST, width=320, height=180)
    rec = HksvRecording(cam, request)
    rec.start()
    assert rec.mode == "copy", rec.mode_reason
    await cam.until(116.0)
    rec.finish()
    chunks = await drain(rec)
    await rec.close()
    whole = check(chunks, request)
    assert whole.video_frames == cam.count(104.0, 115.99)
    assert [c.duration for c in chunks[1:-1]] == pytest.approx([4.0] * (len(chunks) - 2))


class Tone:
    """An AudioInput: a 1 kHz tone from timeline second 1.0 on (silence before)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate

    def read(self, start: int, count: int) -> np.ndarray | None:
        n = np.arange(start, start + count)
        tone = 0.5 * np.sin(2 * np.pi * 1000 * n / self.rate) * (n >= self.rate)
        return tone.astype(np.float32)[None, :]


async def test_audio_input_shares_the_video_clock(gop2: Stream) -> None:
    cam = Camera(gop2)
    await cam.until(8.0)
    request = replace(REQUEST, audio_sample_rate=16000)
    rec = HksvRecording(cam, request, audio=Tone(16000))
    rec.start()
    await cam.until(12.0)
    rec.finish()
    chunks = await drain(rec)
    await rec.close()
    check(chunks, request)
    data = b"".join(c.data for c in chunks)
    with av.open(io.BytesIO(data)) as container:
        vs = container.streams.video[0]
        first_video = next(iter(container.decode(vs)))
        assert first_video.time is not None
    with av.open(io.BytesIO(data)) as container:
        pcm = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    onset = int(np.argmax(np.abs(pcm) > 0.25)) / 16000
    # The tone starts 1 s after the first frame, give or take AAC's pre-echo (< 1 ms here);
    # one frame of encoder delay (64 ms at 16 kHz) would show.
    assert onset - first_video.time == pytest.approx(1.0, abs=0.01)

    silent = HksvRecording(cam, replace(request, audio_active=False), audio=Tone(16000))
    silent.start()
    silent.finish()
    quiet = b"".join(c.data for c in await drain(silent))
    await silent.close()
    with av.open(io.BytesIO(quiet)) as container:
        assert max(np.abs(f.to_ndarray()).max() for f in container.decode(audio=0)) < 1e-3


# -- transcode -------------------------------------------------------------------------------


async def test_a_long_gop_is_transcoded_with_an_idr_every_fragment(gop10: Stream) -> None:
    cam = Camera(gop10)
    await cam.until(11.0)  # a keyframe at 10 s: the prebuffer holds 0..11 s
    rec = HksvRecording(cam, REQUEST, name="yard")
    rec.start()
    assert rec.mode == "transcode" and "apart" in rec.mode_reason
    await cam.until(20.0)
    rec.finish()
    chunks = await drain(rec)
    await rec.close()
    whole = check(chunks)
    assert (whole.width, whole.height) == (W, H)
    # IDRs forced where we want them, not where the camera put its own: every 1 s while the
    # prebuffer is caught up (the hub's first fragment comes after 1 s of encoding, not 4 s),
    # then every 4 s (the selected fragment length).
    durations = [c.duration for c in chunks[1:-1]]
    short = len([d for d in durations if d == pytest.approx(1.0)])
    assert short >= 3 and durations[:short] == pytest.approx([1.0] * short), durations
    assert durations[short:] == pytest.approx([4.0] * (len(durations) - short)), durations
    stats = rec.stats()
    assert stats["frames_encoded"] == whole.video_frames
    # The output starts at the prebuffer (4 s before the open), not at the camera's keyframe
    # 11 s back: the frames before it are only decoded, so the hub's window is not spent on them.
    assert stats["prebuffer_seconds"] == pytest.approx(4.0, abs=FRAME + 1e-3)


async def test_another_size_is_transcoded_to_the_selected_one(gop2: Stream) -> None:
    cam = Camera(gop2)
    await cam.until(7.0)
    request = replace(REQUEST, width=320, height=180, fps=10, iframe_interval_ms=2000)
    rec = HksvRecording(cam, request, name="gate")
    rec.start()
    assert rec.mode == "transcode" and "320x180" in rec.mode_reason
    await cam.until(14.0)
    rec.finish()
    chunks = await drain(rec)
    await rec.close()
    whole = check(chunks, request)
    assert (whole.width, whole.height) == (320, 180)
    # Fragments of 2 s GOPs grouped up to 4 s; the 15 fps camera brought down to 10 fps.
    assert max(c.duration for c in chunks[1:]) == pytest.approx(4.0, abs=0.11)
    media = sum(c.duration for c in chunks[1:])
    assert whole.video_frames == pytest.approx(media * 10, abs=2)


# -- ends ------------------------------------------------------------------------------------


async def test_finish_flushes_the_fragment_in_progress(gop2: Stream) -> None:
    cam = Camera(gop2)
    await cam.until(8.0)
    rec = HksvRecording(cam, REQUEST)
    rec.start()
    await cam.until(11.0)  # mid-fragment: 10.0 .. 11.0 is in progress
    rec.finish()
    await cam.until(14.0)  # no longer recorded
    chunks = await drain(rec)
    await rec.close()
    check(chunks)
    assert chunks[-1].duration == pytest.approx(11.0 - 8.0 + FRAME, abs=0.01)
    with pytest.raises(StopAsyncIteration):
        await rec.__anext__()


async def test_close_mid_stream_frees_the_worker_and_the_subscription(gop2: Stream) -> None:
    cam = Camera(gop2)
    await cam.until(8.0)
    rec = HksvRecording(cam, REQUEST, name="close")
    consumer = asyncio.create_task(take(rec, 100, timeout=30))
    await asyncio.sleep(0.5)
    assert worker_threads() == ["hksv:close"] and len(cam.fanout) == 1  # started lazily
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    await rec.close()
    await rec.close()  # idempotent
    assert not worker_threads() and len(cam.fanout) == 0
    assert rec.stats()["state"] == "closed"


async def test_close_from_the_cancelled_consumer(gop2: Stream) -> None:
    cam = Camera(gop2)
    await cam.until(8.0)
    rec = HksvRecording(cam, REQUEST, name="cancel")
    two = asyncio.Event()

    async def session() -> None:
        got = 0
        try:
            async for _chunk in rec:
                got += 1
                if got == 2:
                    two.set()
        finally:
            await rec.close()

    task = asyncio.create_task(session())
    async with asyncio.timeout(10):
        await two.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and not worker_threads() and len(cam.fanout) == 0


async def test_a_slow_consumer_fails_instead_of_buffering(gop2: Stream) -> None:
    cam = Camera(gop2)
    await cam.until(6.0)
    rec = HksvRecording(cam, REQUEST, name="slow", max_pending=3)
    rec.start()
    peak = 0
    for t in range(7, 24):
        await cam.until(float(t))
        await asyncio.sleep(0.05)
        peak = max(peak, rec.stats()["pending"])
    assert peak <= 4  # never more than the bound (+ the one that trips it)
    with pytest.raises(RecordingFailed, match="consumer too slow"):
        await take(rec, 100)
    assert rec.stats()["pending_bytes"] == 0
    await rec.close()
    assert not worker_threads() and len(cam.fanout) == 0


async def test_the_camera_going_away_ends_with_what_was_recorded(gop2: Stream) -> None:
    cam = Camera(gop2)
    await cam.until(8.0)
    rec = HksvRecording(cam, REQUEST)
    rec.start()
    await cam.until(13.0)
    cam.went_down()
    chunks: list[RecordingChunk] = []
    with pytest.raises(RecordingFailed, match="disconnected"):
        async with asyncio.timeout(10):
            async for chunk in rec:
                chunks.append(chunk)
    await rec.close()
    whole = check(chunks)
    assert sum(c.duration for c in chunks[1:]) == pytest.approx(13.0 - 4.0 + FRAME, abs=0.01)
    assert whole.video_frames == cam.count(4.0, 13.0)
    assert rec.stats()["error"] == "the camera disconnected"


async def test_a_media_failure_ends_the_recording_and_releases_the_camera(gop2: Stream) -> None:
    cam = Camera(gop2)
    await cam.until(8.0)
    rec = HksvRecording(cam, replace(REQUEST, audio_sample_rate=22050))  # not a HomeKit rate
    with pytest.raises(RecordingFailed, match=r"media failure.*22050"):
        await take(rec, 10)
    assert len(cam.fanout) == 0 and rec.stats()["state"] == "failed"
    await rec.close()
    assert not worker_threads()


async def test_a_camera_that_is_down_cannot_record(gop2: Stream) -> None:
    cam = Camera(gop2)
    cam.info = None
    rec = HksvRecording(cam, REQUEST)
    with pytest.raises(RecordingFailed, match="not streaming"):
        await rec.__anext__()
    await rec.close()


async def test_demo_camera_in_real_time() -> None:
    """The real CameraSource (its prebuffer, fan-out and demux thread) with the demo camera."""
    source = CameraSource(
        "demo", lambda: DemoInput(320, 240, 10.0), display_url="demo:", prebuffer_seconds=5.0
    )
    request = replace(REQUEST, width=320, height=240, fps=10)
    source.start()
    try:
        async with asyncio.timeout(15):
            while source.prebuffer.duration < 4.6:  # noqa: ASYNC110 - a camera, polled
                await asyncio.sleep(0.05)
        rec = HksvRecording(source, request, name="demo")
        opened = time.monotonic()
        rec.start()
        assert rec.mode == "copy", rec.mode_reason
        chunks = await take(rec, 2)
        latency = time.monotonic() - opened
        chunks += await take(rec, 1, timeout=10)  # a live one, in real time
        rec.finish()
        chunks += await drain(rec)
        await rec.close()
    finally:
        await source.stop()
    check(chunks, request)
    assert latency < 1.0  # the prebuffer's fragment at once
    stats = rec.stats()
    assert stats["prebuffer_seconds"] >= 4.0 and stats["dropped"] == 0
    assert stats["first_fragment_started_at"] <= stats["opened_at"] - 4.0 + 0.2
    assert len(source.fanout) == 0


# -- cost ------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_cpu_of_copy_and_transcode_at_720p() -> None:
    """Worker CPU per second of media (the figures in the report; bounds are generous)."""
    figures = {}
    for gop in (2.0, 10.0):
        stream = _encode(gop, 18, 1280, 720)
        cam = Camera(stream)
        await cam.until(8.0)
        request = replace(REQUEST, width=1280, height=720, bitrate_kbps=2000)
        rec = HksvRecording(cam, request, name=f"cost{gop:g}")
        rec.start()
        await cam.until(17.0)
        rec.finish()
        chunks = await drain(rec, timeout=60)
        await rec.close()
        stats = rec.stats()
        figures[stats["mode"]] = stats["cpu_seconds"] / stats["media_seconds"]
        assert len(chunks) >= 4
    print(f"\nHKSV worker CPU per media second at 1280x720@15: {figures}")
    assert figures["copy"] < 0.1
    assert figures["transcode"] > figures["copy"]
