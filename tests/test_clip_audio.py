"""Event clips with sound (issue #10): the camera's audio as an AAC track in the encrypted clips.

Checked from outside with real peers: the `demo:` camera recorded in-process (its beeps against
its moving box give the A/V offset; its parts joined as the owner's tools join them), and a real
bridge (`obscura run`) recording a person crossing a gst-rtsp-server camera that also sends a
tone, as AAC (copied) or G.711 A-law (transcoded). The owner opens each part with stock
`age -d` and the whole event with `obscura clips get`; PyAV decodes them: an AAC track, the
tone's frequency (FFT), sound from the first picture to the last (100 ms), no hole or overlap
at the joins of the parts.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from bridge.media.mp4boxes import EventJoiner
from bridge.record import Recorder, RecordSettings
from bridge.record.clip_audio import EventAudio
from bridge.sources.base import CameraSource
from bridge.sources.demo import DemoInput
from tests.peers.owner_bucket import Recorded, clips, record_bucket
from tests.test_camera_audio import BEEP_EVERY, box_time, peak_hz
from tests.test_recorder import MemorySink, record_demo_event, sinks

pytestmark = pytest.mark.timeout(180)

W, H, FPS = 640, 360, 15
MAX_AV_GAP = 0.1  # seconds


@dataclass
class Sound:
    video: tuple[float, float]  # first picture, end of the last (seconds)
    frames: list[tuple[float, np.ndarray]]  # (time, rgb) when asked for
    packets: list[tuple[float, float]]  # AAC access units: (start, duration), seconds
    pcm: np.ndarray  # the first channel, decoded
    rate: int
    start: float  # time of the first decoded sample

    def loud(self, window: float = 0.02, level: float = 0.03) -> list[float]:
        """Start times of the windows louder than `level` RMS (-30 dBFS)."""
        n = round(self.rate * window)
        return [
            self.start + i * window
            for i in range(len(self.pcm) // n)
            if np.sqrt(np.mean(self.pcm[i * n : (i + 1) * n] ** 2)) > level
        ]

    def joins(self) -> list[float]:
        """Gap (+) or overlap (-) between each AAC frame's end and the next one's start."""
        return [b[0] - (a[0] + a[1]) for a, b in zip(self.packets, self.packets[1:], strict=False)]


def sound(mp4: bytes, *, pictures: bool = False) -> Sound:
    with av.open(io.BytesIO(mp4)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac"
        frames = [
            (float(f.time), f.to_ndarray(format="rgb24") if pictures else np.empty(0))
            for f in container.decode(video=0)
        ]
    with av.open(io.BytesIO(mp4)) as container:
        audio = container.streams.audio[0]
        tb = audio.time_base
        assert tb is not None
        packets = [
            (float(p.pts * tb), float(p.duration * tb))
            for p in container.demux(audio)
            if p.pts is not None
        ]
    with av.open(io.BytesIO(mp4)) as container:
        decoded = list(container.decode(audio=0))
        rate = container.streams.audio[0].codec_context.sample_rate
    pcm = np.concatenate([f.to_ndarray()[0] for f in decoded])
    frames.sort(key=lambda f: f[0])
    video = (frames[0][0], frames[-1][0] + 1 / FPS)
    return Sound(video, frames, packets, pcm, rate, float(decoded[0].time))


def check_covers(s: Sound, label: str) -> tuple[float, float]:
    """Sound from the first picture to the last, within MAX_AV_GAP, and no hole in between."""
    loud = s.loud()
    first, last = loud[0] - s.video[0], s.video[1] - (loud[-1] + 0.02)
    print(
        f"{label}: sound starts {first * 1000:+.0f} ms from the first picture, ends"
        f" {-last * 1000:+.0f} ms from the end of the last"
    )
    assert first < MAX_AV_GAP and last < MAX_AV_GAP, (first, last)
    assert len(loud) >= 0.95 * (loud[-1] - loud[0]) / 0.02  # no holes
    return first, last


# -- in-process: the demo camera -----------------------------------------------------------------


async def record_demo(audio: bool, seconds: float, part_length: float) -> list[MemorySink]:
    """An event of `seconds` on a real demo camera, recorded in parts; the parts in order.
    It starts well after the camera (the pre-roll's first picture has sound before it too)."""
    source = CameraSource(
        "porch", lambda: DemoInput(W, H, float(FPS), audio=audio), display_url="demo:"
    )
    made, factory = sinks()
    settings = RecordSettings(pre_roll=1.0, post_roll=1.0, part_length=part_length)
    recorder = Recorder(source, factory, settings)
    await record_demo_event(source, recorder, seconds, buffered=3.5)
    assert all(s.meta is not None for s in made) and recorder.clips_failed == 0
    return sorted(made, key=lambda s: s.meta.part if s.meta else 0)


@contextlib.contextmanager
def transcoding() -> Iterator[None]:
    """Clips whose sound is re-encoded even from AAC, as a camera's G.711 or Opus is."""
    plain = EventAudio.__dict__["for_source"]
    EventAudio.for_source = classmethod(  # type: ignore[method-assign,assignment]
        lambda cls, source: plain.__func__(cls, source, transcode=True)
    )
    try:
        yield
    finally:
        EventAudio.for_source = plain  # type: ignore[method-assign]


def join(parts: list[bytes]) -> bytes:
    out = bytearray()
    joiner = EventJoiner(out.extend)
    for data in parts:
        joiner.start_part()
        joiner.feed(data)
    joiner.close()
    return bytes(out)


def av_offset(s: Sound) -> tuple[float, int]:
    """(audio - video) in seconds from the demo's beeps (every 1.6 s of its clock) against its
    box (where the box is says which instant of its clock a picture shows), beeps counted."""
    shown = [(t, box_time(rgb)) for t, rgb in s.frames]
    video_offsets = [t - drawn for t, drawn in shown if drawn is not None]
    assert len(video_offsets) > 0.9 * len(shown)
    video_offset = float(np.median(video_offsets))
    rate, pcm = s.rate, s.pcm
    onsets, last = [], -rate
    for i in np.flatnonzero(np.abs(pcm) > 0.15):  # half the beep's level: mid-fade-in
        quiet_before = i >= rate // 20 and np.abs(pcm[i - rate // 20 : i - rate // 50]).max() < 0.02
        if i - last > rate // 2 and quiet_before:
            onsets.append(s.start + i / rate - 0.01)  # the fade-in lasts 20 ms
        last = i
    offsets = [o - round((o - video_offset) / BEEP_EVERY) * BEEP_EVERY for o in onsets]
    return float(np.median(offsets)) - video_offset, len(onsets)


@pytest.mark.parametrize("mode", ["copy", "transcode"])
async def test_demo_clip_sound_in_step_and_continuous_across_parts(mode: str) -> None:
    """The demo's AAC copied, or re-encoded as AAC-LC as any other codec would be: in step with
    the pictures, and one continuous track once the 1 s parts are joined."""
    with transcoding() if mode == "transcode" else contextlib.nullcontext():
        parts = await record_demo(audio=True, seconds=4.5, part_length=1.0)
    assert len(parts) >= 5
    frame = 1024 / 16000
    for n, part in enumerate(parts):  # each part alone: its sound where its pictures are
        s = sound(bytes(part.data))
        # The first part has the frame before its first picture too (clip-format §4.1).
        early = frame if n == 0 else 0.0
        assert -early - 1e-3 < s.packets[0][0] - s.video[0] < frame + 1e-3, (n, s.packets[0])
        assert s.packets[-1][0] < s.video[1] <= s.packets[-1][0] + s.packets[-1][1] + 1e-3
    whole = sound(join([bytes(p.data) for p in parts]), pictures=True)
    assert -frame - 1e-3 < whole.packets[0][0] - whole.video[0] < 1e-3
    assert whole.packets[-1][0] < whole.video[1]
    joins = whole.joins()
    gaps = f"{min(joins) * 1000:+.1f}..{max(joins) * 1000:+.1f} ms"
    print(f"{mode}: {len(parts)} parts, {len(joins) + 1} AAC frames, joins {gaps}")
    assert max(abs(j) for j in joins) < 1e-3  # no hole, no overlap: not at the parts' joins either
    offset, beeps = av_offset(whole)
    print(f"{mode}: clip audio vs video {offset * 1000:+.1f} ms over {beeps} beeps")
    assert beeps >= 3 and abs(offset) < MAX_AV_GAP


async def test_camera_without_sound_records_video_only() -> None:
    [part] = await record_demo(audio=False, seconds=1.0, part_length=60.0)
    with av.open(io.BytesIO(bytes(part.data))) as container:
        assert [s.type for s in container.streams] == ["video"]
        assert len(list(container.decode(video=0))) == part.meta.frames  # type: ignore[union-attr]
    assert b"mp4a" not in part.data


# -- a real bridge, a real camera, the owner's tools --------------------------------------------


def record_event(work: Path, audio: str, tone: float, **storage: float) -> Recorded:
    """A real bridge records a person crossing a camera that sends `audio`; `clip`: the event
    as `clips list --json` shows it."""
    # The person comes once the bridge has been streaming for a few seconds: a camera's sound
    # may start a little after its first picture, and the event should not begin there.
    rec = record_bucket(
        work, camera={"gop": FPS, "audio": audio, "tone_hz": tone},
        scene={"seconds": 16, "enter_at": 7.0, "cross_seconds": 4.0}, **storage,
    )  # fmt: skip
    assert rec.clip["state"] == "complete", rec.clip
    return rec


def check_event(rec: Recorded, tone: float, work: Path, label: str) -> Sound:
    event = rec.clip
    # Each part with stock age: an MP4 with an AAC track of the tone.
    for n, part in enumerate(event["parts"]):
        plain = subprocess.run(
            ["age", "-d", "-i", str(rec.key), str(rec.bucket / rec.bridge_id / part["id"])],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        s = sound(plain)
        assert peak_hz(s.pcm, s.rate) == pytest.approx(tone, rel=0.02), (label, n)
    # The event with the owner's tool: one MP4, its parts joined, sound from end to end.
    mp4 = work / "event.mp4"
    clips(rec, "get", event["id"], "-o", str(mp4), state=work / "owner")
    whole = sound(mp4.read_bytes())
    found = peak_hz(whole.pcm[whole.rate // 5 :], whole.rate)
    print(f"{label}: {len(event['parts'])} parts, {whole.rate} Hz AAC, peak {found:.1f} Hz")
    assert found == pytest.approx(tone, rel=0.02)
    frame = whole.packets[0][1]
    joins = whole.joins()
    print(f"{label}: AAC frame joins {min(joins) * 1000:+.1f}..{max(joins) * 1000:+.1f} ms")
    assert max(abs(j) for j in joins) <= frame + 1e-3  # nothing lost or doubled at the joins
    check_covers(whole, label)
    return whole


def last_clip_sound(rec: Recorded) -> dict[str, str]:
    assert rec.status is not None
    (camera,) = rec.status["cameras"]
    return camera["recording"]["last_clip_sound"]


def test_bridge_clips_copy_the_camera_aac(tmp_path: Path) -> None:
    rec = record_event(tmp_path, "aac", 440.0, part_seconds=1.0)
    assert len(rec.clip["parts"]) >= 3  # 1 s parts: the joins are checked too
    whole = check_event(rec, 440.0, tmp_path, "aac")
    assert whole.rate == 16000 and {d for _, d in whole.packets} == {1024 / 16000}
    assert last_clip_sound(rec) == {
        "mode": "copy", "from": "aac 16000 Hz mono", "aac": "AAC-LC 16000 Hz mono"
    }


def test_bridge_clips_transcode_g711_to_aac(tmp_path: Path) -> None:
    rec = record_event(tmp_path, "alaw", 1000.0)
    whole = check_event(rec, 1000.0, tmp_path, "alaw")
    assert whole.rate == 16000  # 8 kHz A-law: AAC-LC at 16 kHz
    assert last_clip_sound(rec)["mode"] == "transcode"  # /status says so
