"""An event sealed in parts (docs/clip-format.md §8): each part a playable fMP4 on the event's
timeline; the parts joined (bridge.media.mp4boxes.EventJoiner) are one MP4 with every frame."""

from __future__ import annotations

import asyncio
import io
import itertools
import struct

import av
import pytest

from bridge.media.mp4boxes import (
    PART_SEQUENCE_STRIDE,
    EventJoiner,
    Mp4Error,
    TopLevelBoxes,
    rebase_moof,
)
from bridge.record import Recorder, RecordSettings
from tests.test_recorder import FPS, T0, Feed, Stream, decode, event, render, sinks, stream

__all__ = ["stream"]  # the module-scoped fixture, shared with test_recorder


def _pts_seconds(data: bytes) -> list[float]:
    with av.open(io.BytesIO(data)) as container:
        s = container.streams.video[0]
        assert s.time_base is not None
        return sorted(float(f.pts * s.time_base) for f in container.decode(s) if f.pts is not None)


def _tfdts(data: bytes) -> list[int]:
    out, pos = [], 0
    while (pos := data.find(b"tfdt", pos)) >= 0:
        version = data[pos + 4]
        fmt = ">Q" if version == 1 else ">I"
        out.append(struct.unpack_from(fmt, data, pos + 8)[0])
        pos += 4
    return out


async def test_an_event_is_sealed_in_parts_that_join_into_one_clip(stream: Stream) -> None:
    feed = Feed(stream)
    made, factory = sinks()
    settings = RecordSettings(pre_roll=1.0, post_roll=1.0, part_length=2.0)
    recorder = Recorder(feed.source, factory, settings, clock=feed.clock)
    better = render(5, 640, 360)
    await feed.until(5.0)
    recorder.on_event(event("start", 1, at=5.0, started=4.5, score=0.6, frame=render(1)))
    await feed.until(9.0)
    recorder.on_event(event("update", 1, at=9.0, started=4.5, score=0.9, frame=better))
    await feed.until(13.0)
    recorder.on_event(event("end", 1, at=13.0, started=4.5, ended=12.2, score=0.9, frame=better))
    await feed.until(16.0)
    await recorder.wait_idle()

    metas = sorted((s.meta for s in made if s.meta), key=lambda m: m.part)
    assert len(metas) == len(made) >= 4
    assert [m.part for m in metas] == list(range(len(metas)))
    assert len({m.event_id for m in metas}) == 1
    assert [m.final for m in metas] == [False] * (len(metas) - 1) + [True]
    assert [m.reason for m in metas] == ["part"] * (len(metas) - 1) + ["post_roll"]
    for a, b in itertools.pairwise(metas):
        assert b.start == pytest.approx(a.end, abs=1e-3)  # back to back
    for m in metas:
        assert m.duration <= settings.part_length + 1e-6  # GOP 1 s: cut at 2 s exactly
    # Keyframe at 3 s (1 s before 4.5 s) … 12.2 s + 1 s post-roll: every frame exactly once.
    assert sum(m.frames for m in metas) == feed.count(3.0, 13.2)
    assert metas[0].start == pytest.approx(T0 + 3.0 + 0.05)
    # A poster on the first part (the event's only one if a crash came next) and on the last
    # (a better detection came later); none in between.
    posters = [m.poster is not None for m in metas]
    assert posters == [True] + [False] * (len(metas) - 2) + [True]

    by_part = sorted(made, key=lambda s: s.meta.part if s.meta else -1)
    start = 0.0
    for sink, meta in zip(by_part, metas, strict=True):
        data = bytes(sink.data)
        decoded = decode(data)  # each part alone is a playable MP4 from a keyframe
        assert decoded.first_is_key and decoded.frames == meta.frames
        pts = _pts_seconds(data)
        assert pts[0] == pytest.approx(start, abs=1e-3)  # on the event's timeline
        start += meta.duration

    joined = bytearray()
    joiner = EventJoiner(joined.extend)
    for sink in by_part:
        joiner.start_part()
        for i in range(0, len(sink.data), 777):  # any piece boundaries
            joiner.feed(bytes(sink.data[i : i + 777]))
    joiner.close()
    whole = decode(bytes(joined))
    assert whole.frames == sum(m.frames for m in metas)
    assert whole.boxes[:2] == ["ftyp", "moov"] and whole.boxes.count("moov") == 1
    assert whole.span == pytest.approx(sum(m.duration for m in metas), abs=0.01)
    pts = _pts_seconds(bytes(joined))
    steps = {round(b - a, 4) for a, b in itertools.pairwise(pts)}
    assert steps == {round(1 / FPS, 4)}  # one continuous timeline, no jump or overlap


async def test_a_stop_mid_event_keeps_every_sealed_part(stream: Stream) -> None:
    feed = Feed(stream)
    made, factory = sinks()
    recorder = Recorder(
        feed.source, factory, RecordSettings(pre_roll=1.0, part_length=2.0), clock=feed.clock
    )
    await feed.until(5.0)
    recorder.on_event(event("start", 1, at=5.0, started=5.0))
    await feed.until(10.0)
    # Parts are sealed while the event goes on, not at its end.
    for _ in range(500):
        if sum(1 for s in made if s.meta is not None) >= 2:
            break
        await asyncio.sleep(0.01)
    assert sum(1 for s in made if s.meta is not None) >= 2
    assert recorder.recording
    await recorder.stop()
    metas = sorted((s.meta for s in made if s.meta), key=lambda m: m.part)
    assert metas[-1].reason == "stopped" and metas[-1].final
    # From the keyframe at 3 s (the newest ≥ 1 s before 5 s, arrival latency included).
    assert sum(m.frames for m in metas) == feed.count(3.0, 10.0 + 1 / FPS)


def test_rebase_moves_tfdt_and_sequence(stream: Stream) -> None:
    from bridge.record import Fmp4Writer

    plain, moved = bytearray(), bytearray()

    class Sink:
        def __init__(self, into: bytearray) -> None:
            self.into = into

        def write(self, data: bytes) -> None:
            self.into.extend(data)

    for into, timeline in ((plain, (0, 0)), (moved, (450_000, 3))):
        writer = Fmp4Writer(Sink(into), 320, 240, fps=FPS, timeline=timeline)
        for packet in stream.packets[:30]:
            writer.write(packet)
        writer.finish()
    assert len(plain) == len(moved)
    assert [t + 450_000 for t in _tfdts(bytes(plain))] == _tfdts(bytes(moved))
    seq = moved.find(b"mfhd")
    assert struct.unpack_from(">I", moved, seq + 8)[0] == 3 * PART_SEQUENCE_STRIDE + 1
    assert _pts_seconds(bytes(moved))[0] == pytest.approx(5.0)


def test_box_reader_rejects_garbage_and_handles_64_bit_sizes() -> None:
    with pytest.raises(Mp4Error):
        TopLevelBoxes().feed(struct.pack(">I4s", 4, b"moof"))  # smaller than its header
    reader = TopLevelBoxes(collect=frozenset({b"moof"}))
    body = b"x" * 10
    big = struct.pack(">I4sQ", 1, b"mdat", 16 + len(body)) + body
    pieces = reader.feed(big[:5]) + reader.feed(big[5:])
    assert b"".join(p for _, p, _ in pieces) == big
    assert {k for k, _, _ in pieces} == {b"mdat"}
    truncated = TopLevelBoxes()
    truncated.feed(struct.pack(">I4s", 100, b"mdat") + b"abc")
    with pytest.raises(Mp4Error):
        truncated.close()
    with pytest.raises(Mp4Error):  # a child box that overruns its moof
        rebase_moof(struct.pack(">I4sI4s", 16, b"moof", 200, b"mfhd"), 1, 1)


class _DiskFull(RuntimeError):
    reported = True  # like SpoolFull: the store has logged the episode itself


async def test_a_part_whose_sink_fails_is_cut_at_the_next_keyframe(
    stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    """A full spool fails the part being written; the next part starts at the next keyframe
    (not at the part boundary, here 60 s away), so once space is back almost nothing is lost;
    the failure is not logged again per part (the spool reports the episode)."""
    from tests.test_recorder import MemorySink

    feed = Feed(stream)
    sinks_made: list[MemorySink] = []

    class FullOnce(MemorySink):
        def write(self, data: bytes) -> None:
            if len(sinks_made) == 1 and len(self.data) >= 3000:
                raise _DiskFull("no space left in the spool")
            super().write(data)

    def factory() -> MemorySink:
        sinks_made.append(FullOnce())
        return sinks_made[-1]

    caplog.set_level("DEBUG", logger="bridge.record.recorder")
    recorder = Recorder(
        feed.source, factory, RecordSettings(pre_roll=1.0, part_length=60.0), clock=feed.clock
    )
    await feed.until(5.0)
    recorder.on_event(event("start", 1, at=5.0, started=5.0, frame=render(2)))
    for tenth in range(51, 121):  # near real time: the worker thread fails as it would live
        await feed.until(tenth / 10)
        await asyncio.sleep(0.01)
    recorder.on_event(event("end", 1, at=12.0, started=5.0, ended=11.5))
    await feed.until(20.0)
    await recorder.wait_idle()

    assert sinks_made[0].aborted and sinks_made[0].meta is None
    assert recorder.clips_failed == 1
    later = [s.meta for s in sinks_made[1:] if s.meta is not None]
    assert later, "nothing recorded after the failure"
    first = min(later, key=lambda m: m.part)
    # The write of the GOP that ends at 6 s failed; the next part starts at the keyframe after
    # (GOP 1 s), not 60 s later; and it carries the event's poster, which part 0 never stored.
    assert first.part == 1 and first.start <= T0 + 7.1
    assert first.poster is not None
    assert later[-1].final
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
