"""Recorder: events → fragmented-MP4 clips streamed to a sink (bridge/record).

Most tests drive a source with real libx264 packets faster than real time, on a fake wall
clock that follows the packets (wall = T0 + pts + latency), so timings are exact; one test
records the demo camera through a real CameraSource in real time.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.video.frame
import numpy as np
import pytest
from PIL import Image

from bridge.detect.types import Box, TrackEvent
from bridge.media.encoder import H264Encoder
from bridge.media.fanout import PacketFanout, PacketSubscription
from bridge.media.packet import StreamInfo, VideoPacket
from bridge.media.prebuffer import Prebuffer
from bridge.record import ClipMeta, Fmp4Writer, Recorder, RecordSettings
from bridge.sources.base import CameraSource
from bridge.sources.demo import DemoInput

W, H, FPS = 320, 240, 10
GOP = 1.0  # seconds
T0 = 1_700_000_000.0  # the fake wall clock at pts 0
LATENCY = 0.05  # packets "arrive" this long after their pts


@dataclass
class Stream:
    info: StreamInfo
    packets: list[VideoPacket]


def render(i: int, width: int = W, height: int = H) -> av.video.frame.VideoFrame:
    img = np.zeros((height, width, 3), np.uint8)
    img[:, :, 2] = 90
    x = (i * 7) % (width - 24)
    img[height // 3 : height // 3 + 40, x : x + 24] = (230, 120, 40)
    return av.video.frame.VideoFrame.from_ndarray(img, format="rgb24")


@pytest.fixture(scope="module")
def stream() -> Stream:
    enc = H264Encoder(W, H, FPS, bitrate_kbps=300, gop_seconds=GOP)
    packets = []
    for i in range(45 * FPS):
        for data, pts, key in enc.encode(render(i), i / FPS):
            packets.append(VideoPacket(data, pts, key, epoch=1))
    info = StreamInfo("h264", W, H, FPS, enc.parameter_sets, enc.profile)
    return Stream(info, packets)


class FakeSource:
    """CameraSource's consumer side (real Prebuffer and PacketFanout), fed by the test."""

    def __init__(self, info: StreamInfo, name: str = "porch") -> None:
        self.name = name
        self.info: StreamInfo | None = info
        self.prebuffer = Prebuffer(4.0)
        self.fanout = PacketFanout()

    def subscribe(self, *, from_prebuffer: bool = True, maxsize: int = 300) -> PacketSubscription:
        backlog = self.prebuffer.from_latest_keyframe() if from_prebuffer else ()
        return self.fanout.subscribe(backlog, maxsize)

    def publish(self, packet: VideoPacket) -> None:
        self.prebuffer.append(packet)
        self.fanout.publish(packet)

    def went_down(self) -> None:
        self.info = None
        self.prebuffer.clear()
        self.fanout.end_all()


class Feed:
    """Publishes the stream's packets up to a pts; the clock follows the newest packet."""

    def __init__(self, stream: Stream) -> None:
        self.source = FakeSource(stream.info)
        self.packets = stream.packets
        self.next = 0
        self.pts = 0.0

    def clock(self) -> float:
        return T0 + self.pts + LATENCY

    async def until(self, pts: float) -> None:
        while self.next < len(self.packets) and self.packets[self.next].pts <= pts + 1e-6:
            packet = self.packets[self.next]
            self.pts = packet.pts
            self.source.publish(packet)
            self.next += 1
            await asyncio.sleep(0)

    def count(self, start: float, end: float) -> int:
        return sum(1 for p in self.packets if start - 1e-6 <= p.pts < end - 1e-6)


class MemorySink:
    """The only output of a clip: bytes in memory, and who wrote them from which thread."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.data = bytearray()
        self.threads: set[int] = set()
        self.meta: ClipMeta | None = None
        self.aborted = False
        self.fail_after = fail_after

    def write(self, data: bytes) -> None:
        if self.fail_after is not None and len(self.data) >= self.fail_after:
            raise OSError("disk full")
        self.threads.add(threading.get_ident())
        self.data += data

    async def finish(self, meta: ClipMeta) -> None:
        self.meta = meta

    def abort(self) -> None:
        self.aborted = True


def sinks() -> tuple[list[MemorySink], Callable[[], MemorySink]]:
    made: list[MemorySink] = []

    def factory() -> MemorySink:
        made.append(MemorySink())
        return made[-1]

    return made, factory


def event(
    kind: str,
    track: int,
    *,
    at: float,
    started: float,
    ended: float | None = None,
    subject: str = "person",
    score: float = 0.8,
    frame: av.video.frame.VideoFrame | None = None,
) -> TrackEvent:
    return TrackEvent(
        kind=kind,  # type: ignore[arg-type]
        camera="porch",
        track_id=track,
        label=subject,
        subject=subject,
        score=score,
        best_score=score,
        box=Box(0.2, 0.2, 0.4, 0.7),
        time=T0 + at,
        started_at=T0 + started,
        ended_at=None if ended is None else T0 + ended,
        best_frame=frame,
    )


@dataclass
class Decoded:
    frames: int
    first_is_key: bool
    duration: float  # container duration (from the fragments)
    span: float  # last pts - first pts + one frame, from the decoded frames
    boxes: list[str]


def decode(data: bytes) -> Decoded:
    with av.open(io.BytesIO(bytes(data))) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        assert tb is not None
        frames = list(container.decode(stream))
        duration = (container.duration or 0) / 1_000_000
    pts = sorted(float(f.pts * tb) for f in frames if f.pts is not None)
    span = pts[-1] - pts[0] + 1 / FPS if pts else 0.0
    return Decoded(len(frames), frames[0].key_frame, duration, span, top_level_boxes(data))


def top_level_boxes(data: bytes) -> list[str]:
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        boxes.append(kind.decode())
        pos += size
    assert pos == len(data), "boxes do not tile the file"
    return boxes


def free_box(size: int) -> bytes:
    return struct.pack(">I4s", size, b"free") + bytes(size - 8)


# -- the muxer on its own ----------------------------------------------------------------------


def test_fmp4_is_streamed_and_decodes_with_the_right_duration(stream: Stream) -> None:
    out = MemorySink()
    writer = Fmp4Writer(out, W, H, fps=FPS)
    sizes = []
    for packet in stream.packets[5 : 5 + 50]:  # starts mid-GOP: skipped up to a keyframe
        writer.write(packet)
        sizes.append(writer.bytes_written)
    assert writer.skipped == 5
    assert 0 < sizes[-1] < len(out.data) + 1  # fragments reached the sink before finish
    writer.finish()
    assert writer.bytes_written == len(out.data)
    assert writer.frames == 45 and writer.duration == pytest.approx(4.5)
    decoded = decode(out.data)
    assert decoded.frames == 45 and decoded.first_is_key
    assert decoded.duration == pytest.approx(4.5, abs=0.01)
    assert decoded.span == pytest.approx(4.5, abs=0.01)
    boxes = decoded.boxes
    assert boxes[:2] == ["ftyp", "moov"] and "mfra" not in boxes
    assert boxes[2:] == ["moof", "mdat"] * 5  # one fragment per GOP
    assert b"avcC" in out.data[:2000]  # parameter sets out of band, as avc1 requires
    # Padding after finish() keeps it a valid MP4.
    out.data += free_box(1000)
    assert decode(out.data).frames == 45


def test_fmp4_derives_decode_order_timestamps_for_b_frames() -> None:
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = W, H, "yuv420p"
    ctx.time_base = Fraction(1, 90000)
    ctx.framerate = Fraction(FPS)
    ctx.max_b_frames = 2
    ctx.options = {"preset": "ultrafast", "x264-params": "keyint=10:min-keyint=10:bframes=2"}
    packets = []
    for i in range(41):
        frame = render(i).reformat(format="yuv420p") if i < 40 else None
        if frame is not None:
            frame.pts, frame.time_base = i * 9000, Fraction(1, 90000)
        for p in ctx.encode(frame):
            assert p.pts is not None
            packets.append(VideoPacket(bytes(p), 7.0 + p.pts / 90000, p.is_keyframe))
    assert any(b.pts < a.pts for a, b in itertools.pairwise(packets))  # reordered
    out = MemorySink()
    writer = Fmp4Writer(out, W, H)  # no frame rate given: inferred from the timestamps
    for packet in packets:
        writer.write(packet)
    writer.finish()
    decoded = decode(out.data)
    assert decoded.frames == 40 and decoded.first_is_key
    assert decoded.span == pytest.approx(4.0, abs=0.01)
    assert decoded.duration == pytest.approx(writer.duration, abs=0.01)


def test_fmp4_survives_repeated_and_backward_timestamps(stream: Stream) -> None:
    packets = stream.packets[:20]
    packets[4] = VideoPacket(packets[4].data, packets[3].pts, False)  # stamped twice alike
    packets[7] = VideoPacket(packets[7].data, packets[5].pts, False)  # a step back
    out = MemorySink()
    writer = Fmp4Writer(out, W, H, fps=FPS)
    for packet in packets:
        writer.write(packet)
    writer.finish()
    decoded = decode(out.data)
    assert decoded.frames == 20 and decoded.span == pytest.approx(2.0, abs=0.01)
    # (The step back reads like B-frame reordering: presentation may start one frame late.)
    assert decoded.duration == pytest.approx(writer.duration, abs=0.01)
    assert writer.duration <= 2.1 + 1e-6


# -- the recorder ------------------------------------------------------------------------------


async def test_clip_has_pre_roll_event_post_roll_and_metadata(
    stream: Stream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anything written to a file would land in the cwd or the temp dir: both are empty after.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    feed = Feed(stream)
    made, factory = sinks()
    settings = RecordSettings(pre_roll=2.0, post_roll=1.5, max_length=60.0, part_length=60.0)
    recorder = Recorder(feed.source, factory, settings, clock=feed.clock)
    best = render(0, 1280, 720)

    await feed.until(6.0)
    # Seen first at 5.6 s, confirmed (start event) at 6.0 s; a better sighting at 7 s.
    recorder.on_event(event("start", 1, at=6.0, started=5.6, score=0.6))
    await feed.until(7.0)
    recorder.on_event(event("update", 1, at=7.0, started=5.6, score=0.9, frame=best))
    await feed.until(9.0)
    # The worker thread muxes as packets come: fragments reach the sink during the event.
    for _ in range(200):
        if made and made[0].data:
            break
        await asyncio.sleep(0.01)
    streamed_before_end = sum(len(s.data) for s in made)
    recorder.on_event(event("end", 1, at=9.0, started=5.6, ended=8.0, score=0.9, frame=best))
    await feed.until(12.0)
    await recorder.wait_idle()

    assert len(made) == 1
    sink = made[0]
    meta = sink.meta
    assert meta is not None and not sink.aborted
    assert streamed_before_end > 0  # the clip left as a stream while the event went on
    assert threading.get_ident() not in sink.threads  # muxing and writes off the loop
    # Pre-roll from the keyframe at 3 s (the newest ≥ 2 s before 5.6 s), post-roll to 9.5 s.
    event_seconds = 8.0 - 5.6
    assert meta.duration == pytest.approx(2.0 + event_seconds + 1.5, abs=GOP)
    assert meta.duration == pytest.approx(6.5)
    assert meta.frames == feed.count(3.0, 9.5)
    assert meta.start == pytest.approx(T0 + 3.0 + LATENCY)
    assert meta.start <= T0 + 5.6 - settings.pre_roll
    assert meta.end == pytest.approx(meta.start + meta.duration)
    assert meta.reason == "post_roll" and meta.part == 0
    assert meta.camera == "porch" and meta.subjects == ("person",)
    assert meta.best_score == pytest.approx(0.9)
    assert (meta.width, meta.height) == (W, H)
    assert meta.media_bytes == meta.size == len(sink.data)
    assert meta.poster is not None and meta.poster[:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(meta.poster)).size == (640, 360)

    decoded = decode(sink.data)
    assert decoded.first_is_key and decoded.frames == meta.frames
    assert decoded.duration == pytest.approx(meta.duration, abs=0.01)
    assert decoded.span == pytest.approx(meta.duration, abs=0.01)
    assert decoded.boxes[:2] == ["ftyp", "moov"]
    assert os.listdir(tmp_path) == []  # no plaintext (or any) file


async def test_new_start_during_post_roll_extends_the_clip(stream: Stream) -> None:
    feed = Feed(stream)
    made, factory = sinks()
    recorder = Recorder(
        feed.source, factory, RecordSettings(pre_roll=1.0, post_roll=2.0, part_length=60.0),
        clock=feed.clock,
    )
    cat = render(3, 640, 480)
    await feed.until(5.0)
    recorder.on_event(event("start", 1, at=5.0, started=4.8))
    await feed.until(7.0)
    recorder.on_event(event("end", 1, at=7.0, started=4.8, ended=6.5))
    await feed.until(8.0)  # inside the post-roll (until 8.5)
    recorder.on_event(
        event("start", 2, at=8.0, started=7.9, subject="animal", score=0.95, frame=cat)
    )
    await feed.until(10.0)
    recorder.on_event(
        event("end", 2, at=10.0, started=7.9, ended=9.5, subject="animal", score=0.95, frame=cat)
    )
    await feed.until(14.0)
    await recorder.wait_idle()

    assert len(made) == 1
    meta = made[0].meta
    assert meta is not None
    assert meta.subjects == ("animal", "person")
    assert meta.best_score == pytest.approx(0.95)
    assert meta.duration == pytest.approx(11.5 - 3.0)  # keyframe 3 s … 9.5 s + 2 s post-roll
    assert Image.open(io.BytesIO(meta.poster or b"")).size == (640, 480)
    assert decode(made[0].data).frames == meta.frames


async def test_max_length_splits_into_consecutive_events(stream: Stream) -> None:
    feed = Feed(stream)
    made, factory = sinks()
    settings = RecordSettings(pre_roll=1.0, post_roll=1.0, max_length=3.0, part_length=60.0)
    recorder = Recorder(feed.source, factory, settings, clock=feed.clock)
    await feed.until(5.0)
    recorder.on_event(event("start", 1, at=5.0, started=4.5))
    await feed.until(15.0)
    recorder.on_event(event("end", 1, at=15.0, started=4.5, ended=14.2))
    await feed.until(18.0)
    await recorder.wait_idle()

    metas = sorted((s.meta for s in made if s.meta), key=lambda m: m.start)
    assert len(metas) == len(made) >= 4
    # Each stretch of max_length is an event of its own (one part each).
    assert [m.part for m in metas] == [0] * len(metas)
    assert len({m.event_id for m in metas}) == len(metas)
    assert all(m.final for m in metas)
    assert [m.reason for m in metas] == ["max_length"] * (len(metas) - 1) + ["post_roll"]
    for a, b in itertools.pairwise(metas):
        assert b.start == pytest.approx(a.end, abs=1e-3)  # back to back: no gap, no overlap
    for meta in metas:
        assert meta.duration <= settings.max_length + 1e-6
        assert meta.subjects == ("person",)
    # Keyframe at 3 s (1 s before 4.5 s) … 14.2 s + 1 s post-roll: every frame exactly once.
    total = sum(m.duration for m in metas)
    assert total == pytest.approx(15.2 - 3.0, abs=1 / FPS)
    assert metas[-1].end - metas[0].start == pytest.approx(total, abs=1e-3)
    assert sum(m.frames for m in metas) == feed.count(3.0, 15.2)
    for sink in made:
        decoded = decode(sink.data)
        assert decoded.first_is_key and sink.meta is not None
        assert decoded.frames == sink.meta.frames
        assert decoded.duration == pytest.approx(sink.meta.duration, abs=0.01)


async def test_camera_lost_finishes_the_clip_with_what_it_has(stream: Stream) -> None:
    feed = Feed(stream)
    made, factory = sinks()
    recorder = Recorder(
        feed.source, factory, RecordSettings(pre_roll=1.0, part_length=60.0), clock=feed.clock
    )
    await feed.until(5.0)
    recorder.on_event(event("start", 1, at=5.0, started=4.5))
    await feed.until(7.45)
    feed.source.went_down()  # SourceEnded for the subscription
    await recorder.wait_idle()
    assert not recorder.recording
    meta = made[0].meta
    assert meta is not None and meta.reason == "source_ended"
    assert meta.duration == pytest.approx(7.5 - 3.0)
    decoded = decode(made[0].data)
    assert decoded.frames == meta.frames == feed.count(3.0, 7.5)
    assert decoded.first_is_key


async def test_padding_stop_and_a_failing_sink(stream: Stream) -> None:
    feed = Feed(stream)
    outputs: list[MemorySink] = []

    def factory() -> MemorySink:
        # The first clip's store breaks (disk full) after 5 kB; the next works.
        outputs.append(MemorySink(fail_after=5000 if not outputs else None))
        return outputs[-1]

    def pad(n: int) -> bytes:
        return free_box(-n % 4096 + 4096)  # a stand-in for Padmé: whole 4 KiB blocks

    recorder = Recorder(
        feed.source, factory, RecordSettings(pre_roll=1.0, part_length=60.0), pad=pad,
        clock=feed.clock,
    )
    await feed.until(5.0)
    recorder.on_event(event("start", 1, at=5.0, started=5.0))
    await feed.until(9.0)
    recorder.on_event(event("end", 1, at=9.0, started=5.0, ended=8.5))
    await feed.until(15.0)
    await recorder.wait_idle()
    assert outputs[0].aborted and outputs[0].meta is None
    assert recorder.clips_failed == 1 and "disk full" in (recorder.last_error or "")
    # If the failure was seen while the event went on, its next part (a new sink) took over
    # at the next keyframe (test_recorder_parts.py); the fast feed here may not leave time.
    recovered = len(outputs) - 1

    recorder.on_event(event("start", 2, at=15.0, started=15.0))
    await feed.until(17.0)
    await recorder.stop()  # shutdown mid-event: the clip keeps what it has
    last = outputs[-1]
    meta = last.meta
    assert meta is not None and meta.reason == "stopped" and not last.aborted
    assert meta.size == len(last.data) and meta.size % 4096 == 0
    assert meta.size > meta.media_bytes
    assert decode(last.data).frames == meta.frames
    assert recorder.clips_finished == recovered + 1


async def test_other_cameras_and_unchosen_subjects_record_nothing(stream: Stream) -> None:
    feed = Feed(stream)
    made, factory = sinks()
    recorder = Recorder(feed.source, factory, subjects={"person"}, clock=feed.clock)
    await feed.until(3.0)
    recorder.on_event(event("start", 1, at=3.0, started=3.0, subject="vehicle"))
    other = event("start", 2, at=3.0, started=3.0)
    recorder.on_event(TrackEvent(**{**_fields(other), "camera": "garage"}))
    recorder.on_event(event("end", 9, at=3.0, started=1.0, ended=2.0))  # unknown track
    await feed.until(4.0)
    assert not recorder.recording and made == []


def _fields(e: TrackEvent) -> dict[str, object]:
    return {name: getattr(e, name) for name in TrackEvent.__dataclass_fields__}


async def test_demo_camera_records_in_real_time() -> None:
    source = CameraSource("porch", lambda: DemoInput(320, 240, 15.0), display_url="demo:")
    made, factory = sinks()
    recorder = Recorder(
        source, factory, RecordSettings(pre_roll=1.0, post_roll=1.0, part_length=60.0)
    )
    started = await record_demo_event(source, recorder, 1.0)
    meta = made[0].meta
    assert meta is not None and meta.reason == "post_roll"
    # Demo GOP is 1 s: pre-roll 1-2 s, event ~1.2 s, post-roll 1 s.
    assert 1.0 + 1.2 + 1.0 - 0.3 <= meta.duration <= 1.0 + 1.2 + 1.0 + 1.0 + 0.3
    assert meta.start <= started - 1.0 + 0.1
    decoded = decode(made[0].data)
    assert decoded.first_is_key and decoded.frames == meta.frames
    # The demo beeps: its clip has sound too, which starts one AAC frame (1024 samples at
    # 16 kHz) before the first picture and whose last frame may run past the last picture's
    # end by up to one more (docs/clip-format.md §4.1, tests/test_clip_audio.py).
    with av.open(io.BytesIO(bytes(made[0].data))) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
    assert meta.duration - 0.01 <= decoded.duration <= meta.duration + 2 * 1024 / 16000 + 0.01


async def record_demo_event(
    source: CameraSource, recorder: Recorder, seconds: float, *, buffered: float = 2.2
) -> float:
    """Runs the demo camera `source` until it has `buffered` s buffered, then a person seen from
    0.2 s ago for `seconds`, until `recorder` has written the event; returns when it started."""
    source.start()
    try:
        deadline = time.monotonic() + 10
        while source.prebuffer.duration < buffered:
            assert time.monotonic() < deadline, "demo camera produced no video"
            await asyncio.sleep(0.05)
        started = time.time() - 0.2
        recorder.on_event(_demo_event("start", started, None))
        await asyncio.sleep(seconds)
        recorder.on_event(_demo_event("end", started, time.time()))
        await asyncio.wait_for(recorder.wait_idle(), 15)
    finally:
        await source.stop()
    return started


def _demo_event(kind: str, started: float, ended: float | None) -> TrackEvent:
    now = time.time()
    return TrackEvent(
        kind=kind,  # type: ignore[arg-type]
        camera="porch",
        track_id=1,
        label="person",
        subject="person",
        score=0.7,
        best_score=0.7,
        box=Box(0.2, 0.2, 0.4, 0.7),
        time=now,
        started_at=started,
        ended_at=ended,
    )
