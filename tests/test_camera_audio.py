"""The camera's sound, from the sources into the bridge on the video's clock (issue #10).

Real cameras: gst-rtsp-server (tests/peers/rtsp_server.py) serving H.264 and a sine tone as AAC
or G.711 A-law, one without sound and one whose sound FFmpeg cannot use (Siren), and the
`demo:` camera's beep. What the bridge makes of it is checked from outside: arrival times
against pts, PyAV decoding the HKSV recording's AAC track (FFT for the tone's frequency, the
demo's beeps against its moving box for the A/V offset), aiohomekit for the Microphone service,
and the `obscura` command for /status, doctor and `camera probe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from accessories.backend import CameraUnavailable, RecordingChunk, RecordingRequest
from bridge.camera import BridgeCamera
from bridge.config import CameraConfig, ConfigError, load_config
from bridge.media.packet import AudioPacket, VideoPacket
from bridge.sources.base import CameraSource, RetryPolicy
from bridge.sources.factory import make_source
from tests.peers.bridge_process import ROOT, BridgeProcess, CameraSpec
from tests.peers.homekit import find_aid, find_characteristics, pair
from tests.peers.rtsp import RtspCamera

pytestmark = pytest.mark.timeout(120)

W, H, FPS = 640, 360, 15
AAC_TONE, ALAW_TONE = 440.0, 1000.0
MAX_AV_GAP = 0.1  # seconds


def recording_request(rate: int, *, active: bool = True) -> RecordingRequest:
    return RecordingRequest(
        width=W, height=H, fps=FPS, bitrate_kbps=800, iframe_interval_ms=4000,
        fragment_ms=4000, prebuffer_ms=4000, audio_sample_rate=rate, audio_channels=1,
        audio_active=active,
    )  # fmt: skip


@pytest.fixture(scope="module")
def aac_camera() -> Iterator[RtspCamera]:
    with RtspCamera(width=W, height=H, fps=FPS, gop=FPS, audio="aac", tone_hz=AAC_TONE) as cam:
        yield cam


@pytest.fixture(scope="module")
def alaw_camera() -> Iterator[RtspCamera]:
    with RtspCamera(width=W, height=H, fps=FPS, gop=FPS, audio="alaw", tone_hz=ALAW_TONE) as cam:
        yield cam


@contextlib.asynccontextmanager
async def streaming(config: CameraConfig, *, retry: RetryPolicy | None = None
                    ) -> AsyncIterator[CameraSource]:  # fmt: skip
    source = make_source(config, retry)
    source.start()
    try:
        async with asyncio.timeout(15):
            while not source.available:  # noqa: ASYNC110 - polling a state
                await asyncio.sleep(0.02)
        yield source
    finally:
        await source.stop()


async def wait_prebuffer(source: CameraSource, seconds: float) -> None:
    async with asyncio.timeout(15):
        while source.prebuffer.duration < seconds:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def wait_trimmed(source: CameraSource) -> None:
    """Until the prebuffer is full and has dropped its first GOP (the camera's steady state)."""
    async with asyncio.timeout(15):
        while not (packets := source.prebuffer.packets()) or packets[0].pts < 0.9:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def collect(source: CameraSource, seconds: float) -> tuple[list, list]:
    """(arrival, packet) of every video and audio packet published during `seconds`."""
    loop = asyncio.get_running_loop()
    video: list[tuple[float, VideoPacket]] = []
    audio: list[tuple[float, AudioPacket]] = []

    async def read(sub: object, into: list) -> None:
        async for packet in sub:  # type: ignore[attr-defined]
            into.append((loop.time(), packet))

    async with (
        source.subscribe(from_prebuffer=False) as vsub,
        source.subscribe_audio(from_prebuffer=False) as asub,
    ):
        tasks = [asyncio.create_task(read(vsub, video)), asyncio.create_task(read(asub, audio))]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return video, audio


def av_gap(video: list, audio: list) -> float:
    """How far apart audio and video pts are at the same wall time: each stream's smallest
    (arrival - pts) is its delivery delay; the difference of the two is the pts offset. It
    includes what the camera's encoders add: x264 sends a frame about one frame time (67 ms at
    15 fps) after its pts, while the synthetic tone's packets go out at their pts."""
    lat_v = min(t - p.pts for t, p in video)
    lat_a = min(t - p.pts for t, p in audio)
    return lat_v - lat_a


# -- sources ---------------------------------------------------------------------------------


async def test_aac_camera_sound_follows_the_video_clock(aac_camera: RtspCamera) -> None:
    async with streaming(CameraConfig(name="Porch", source=aac_camera.url)) as source:
        info = source.audio_info
        assert info is not None and (info.codec, info.sample_rate, info.channels) == (
            "aac", 16000, 1,
        )  # fmt: skip
        assert info.extradata  # the AudioSpecificConfig from the SDP: a decoder can start
        video, audio = await collect(source, 3.0)
        assert len(audio) >= 35 and len(video) >= 35
        gap = av_gap(video, audio)
        print(f"AAC camera: audio pts vs video pts at the same wall time: {gap * 1000:+.1f} ms")
        assert abs(gap) < MAX_AV_GAP
        steps = np.diff([p.pts for _, p in audio])
        assert all(p.duration == pytest.approx(1024 / 16000) for _, p in audio)
        assert np.allclose(steps, 1024 / 16000, atol=0.002), steps  # contiguous, no jumps

        # The prebuffer keeps the audio that sounds over its video, no more, no less.
        await wait_trimmed(source)
        frames, sound = source.prebuffer.packets(), source.prebuffer.audio_packets()
        assert frames[0].keyframe
        # The packet sounding at the first picture, and one before it (a decoder's pre-roll).
        assert sound[1].pts <= frames[0].pts < sound[1].pts + sound[1].duration
        assert sound[0].pts + sound[0].duration == pytest.approx(sound[1].pts, abs=0.002)
        assert sound[-1].pts + sound[-1].duration >= frames[-1].pts - 0.15
        assert source.status()["audio"]["prebuffer_seconds"] >= 4.0

        # A consumer that does not read loses its oldest packets, counted; the video and a
        # reading audio consumer lose nothing.
        async with (
            source.subscribe(from_prebuffer=True) as vsub,  # from a keyframe: no skipping
            source.subscribe_audio(from_prebuffer=False, maxsize=4) as slow,
            source.subscribe_audio(from_prebuffer=False) as fast,
        ):
            await asyncio.sleep(1.5)
            assert slow.dropped >= 10 and vsub.dropped == 0 and fast.dropped == 0
            assert source.status()["audio"]["dropped"] == slow.dropped
            # No await in between: nothing new arrives while the queues are read.
            kept = [slow.get_nowait() for _ in range(slow.pending())]
            newest = [fast.get_nowait() for _ in range(fast.pending())]
            assert [p.pts for p in kept] == [p.pts for p in newest[-4:]]  # the newest stayed
            got = [await anext(vsub) for _ in range(vsub.pending())]
            assert len(got) >= 15 and max(np.diff([p.pts for p in got])) < 0.2
        status = source.status()["audio"]
        assert status["packets"] >= 100 and status["codec"] == "aac"


async def test_g711_camera_sound_follows_the_video_clock(alaw_camera: RtspCamera) -> None:
    async with streaming(CameraConfig(name="Gate", source=alaw_camera.url)) as source:
        info = source.audio_info
        assert info is not None
        assert (info.codec, info.sample_rate, info.channels, info.extradata) == (
            "pcm_alaw", 8000, 1, b"",
        )  # fmt: skip
        video, audio = await collect(source, 2.5)
        gap = av_gap(video, audio)
        print(f"A-law camera: audio pts vs video pts at the same wall time: {gap * 1000:+.1f} ms")
        assert abs(gap) < MAX_AV_GAP
        for _, packet in audio:  # one byte per sample
            assert packet.duration == pytest.approx(len(packet.data) / 8000)
        ends = [p.pts + p.duration for _, p in audio]
        assert np.allclose([p.pts for _, p in audio][1:], ends[:-1], atol=0.002)


async def test_camera_without_sound_streams_as_before() -> None:
    with RtspCamera(width=W, height=H, fps=FPS, gop=FPS) as cam:
        config = CameraConfig(name="Yard", source=cam.url)
        async with streaming(config) as source:
            camera = BridgeCamera(config, source, "127.0.0.1")
            assert await camera.decide_audio() is False
            assert camera.capabilities().has_audio is False
            assert source.audio_info is None and source.audio_problem is None
            with pytest.raises(CameraUnavailable, match="no audio"):
                source.subscribe_audio()
            assert camera._recording_audio(recording_request(32000)) is None  # HKSV: silence
            await wait_prebuffer(source, 1.0)
            status = camera.status()
            assert status["audio"] is None and status["microphone"] is False
            assert status["packets"] >= 15 and status["video"]["width"] == W


async def test_unusable_sound_video_alone_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.sources.base")
    retry = RetryPolicy(initial=0.2, cap=0.5, probe_interval=0.1)
    with RtspCamera(width=W, height=H, fps=FPS, gop=FPS, audio="siren") as cam:
        config = CameraConfig(name="Shed", source=cam.url)
        camera = BridgeCamera(config, make_source(config), "127.0.0.1")
        assert await camera.decide_audio() is False
        assert "FFmpeg does not know" in camera.audio_reason
        async with streaming(config, retry=retry) as source:
            started = time.monotonic()
            assert source.audio_info is None
            assert source.audio_problem == "an audio codec FFmpeg does not know"
            await wait_prebuffer(source, 1.0)
            assert time.monotonic() - started < 3  # no seconds of analysis for the odd stream
            cam.restart()  # the same camera again: still one warning
            async with asyncio.timeout(15):
                while source.reconnects < 1 or not source.available:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await wait_prebuffer(source, 1.0)
    warnings = [r.getMessage() for r in caplog.records if "its sound is" in r.getMessage()]
    assert warnings == [
        "camera 'Shed': its sound is an audio codec FFmpeg does not know: streaming video alone"
    ]


def test_audio_config_key(tmp_path: Path) -> None:
    def camera(value: str) -> CameraConfig:
        path = tmp_path / "obscura.toml"
        extra = f"audio = {value}\n" if value else ""
        path.write_text(f'[[cameras]]\nname = "Cam"\nsource = "demo:"\n{extra}')
        return load_config(path).cameras[0]

    assert [camera(v).audio for v in ("", '"auto"', "true", "false")] == [
        "auto", "auto", "on", "off",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match=r'cameras\[0\]\.audio.*"auto", true or false'):
        camera('"yes"')


# -- HKSV: the recording's AAC track carries the camera's sound ------------------------------


async def record(
    camera: BridgeCamera, req: RecordingRequest, live: float
) -> tuple[bytes, dict[str, Any]]:
    """An HKSV recording from the prebuffer on, `live` seconds past the open; init + fragments.
    Opened once the prebuffer is full and has moved on (not the camera's first second)."""
    await wait_trimmed(camera.source)
    rec = camera.open_recording(req)
    chunks: list[RecordingChunk] = []

    async def take() -> None:
        async for chunk in rec:
            chunks.append(chunk)

    task = asyncio.create_task(take())
    await asyncio.sleep(live)
    rec.finish()
    try:
        async with asyncio.timeout(20):
            await task
    finally:
        await rec.close()
    assert chunks[0].kind == "init" and len(chunks) >= 3
    return b"".join(c.data for c in chunks), rec.stats()


def decode(mp4: bytes) -> tuple[list[tuple[float, np.ndarray]], np.ndarray, int, float]:
    """(video frames (time, rgb), audio samples (mono float), audio rate, audio start time)."""
    with av.open(io.BytesIO(mp4)) as container:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac"
        decoded = list(container.decode(stream))
        rate = stream.codec_context.sample_rate
    pcm = np.concatenate([f.to_ndarray()[0] for f in decoded])
    return frames, pcm, rate, decoded[0].time


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(("kind", "rate"), [("aac", 16000), ("alaw", 32000)])
async def test_hksv_recording_carries_the_camera_tone(
    kind: str, rate: int, request: pytest.FixtureRequest
) -> None:
    cam: RtspCamera = request.getfixturevalue(f"{kind}_camera")
    tone = AAC_TONE if kind == "aac" else ALAW_TONE
    config = CameraConfig(name="Porch", source=cam.url)
    async with streaming(config) as source:
        camera = BridgeCamera(config, source, "127.0.0.1")
        mp4, stats = await record(camera, recording_request(rate), live=1.5)
    sound = stats["audio"]
    assert sound["received"] > 0 and sound["dropped"] == 0 and sound["decode_errors"] == 0
    frames, pcm, got_rate, audio_start = decode(mp4)
    assert got_rate == rate
    video_start = frames[0][0]
    video_end = frames[-1][0] + 1 / FPS
    assert video_end - video_start >= 5.0  # the prebuffer's 4 s and the live part
    found = peak_hz(pcm[rate // 5 :], rate)
    print(f"{kind}: HKSV track {len(pcm) / rate:.2f} s at {rate} Hz, peak {found:.1f} Hz")
    assert found == pytest.approx(tone, rel=0.02)
    # Sound from the first picture to the last (20 ms windows louder than -30 dBFS).
    window = rate // 50
    loud = [
        i for i in range(len(pcm) // window)
        if np.sqrt(np.mean(pcm[i * window : (i + 1) * window] ** 2)) > 0.03
    ]  # fmt: skip
    first = audio_start + loud[0] * window / rate - video_start
    last = audio_start + (loud[-1] + 1) * window / rate - video_start
    tail = video_end - video_start - last
    print(f"{kind}: sound from {first * 1000:.0f} ms to {tail * 1000:.0f} ms before the end")
    assert first < MAX_AV_GAP and last > video_end - video_start - MAX_AV_GAP
    assert len(loud) >= 0.95 * (last - first) * 50  # no holes


# The demo's box: x of its right edge = phase x (width + box width), phase = (t mod 12) / 12.
DEMO_PERIOD = 12.0
BEEP_EVERY = 1.6


def box_time(rgb: np.ndarray) -> float | None:
    """The demo's clock (seconds) that drew this frame, from where its box is."""
    h, w = rgb.shape[:2]
    row = rgb[int(h * 0.7) - max(16, h // 4) // 2]
    red = np.flatnonzero((row[:, 0] > 150) & (row[:, 1] < 130) & (row[:, 2] < 120))
    if len(red) == 0:
        return None
    bw = max(8, w // 16)
    edges = []
    if red[-1] < w - 1:
        edges.append((red[-1] + 1) / (w + bw))  # right edge
    if red[0] > 0:
        edges.append((red[0] + bw) / (w + bw))  # left edge
    return float(np.mean(edges)) * DEMO_PERIOD if edges else None


async def test_demo_beeps_in_step_with_its_picture() -> None:
    config = CameraConfig(name="Demo", source="demo:", width=W, height=H, fps=FPS)
    async with streaming(config) as source:
        info = source.audio_info
        assert info is not None and (info.codec, info.sample_rate, info.channels) == (
            "aac", 16000, 1,
        )  # fmt: skip
        camera = BridgeCamera(config, source, "127.0.0.1")
        assert camera.has_audio and await camera.decide_audio()
        assert camera._recording_audio(recording_request(16000, active=False)) is None
        mp4, _ = await record(camera, recording_request(16000), live=1.5)
    frames, pcm, rate, audio_start = decode(mp4)
    assert peak_hz(pcm, rate) == pytest.approx(440, rel=0.02)
    # Output time minus the demo's time, for the pictures...
    shown = [(t, box_time(rgb)) for t, rgb in frames]
    video_offsets = [t - drawn for t, drawn in shown if drawn is not None]
    assert len(video_offsets) > 0.9 * len(frames)
    video_offset = float(np.median(video_offsets))
    assert np.ptp(video_offsets) < 0.15  # one clock: the box moves with the pictures' times
    # ... and for the beeps, which start at every multiple of 1.6 s of the demo's time.
    onsets, last = [], -rate
    for i in np.flatnonzero(np.abs(pcm) > 0.15):  # half the beep's level: mid-fade-in
        quiet_before = i >= rate // 20 and np.abs(pcm[i - rate // 20 : i - rate // 50]).max() < 0.02
        if i - last > rate // 2 and quiet_before:
            onsets.append(audio_start + i / rate - 0.01)  # the fade-in lasts 20 ms
        last = i
    assert len(onsets) >= 3
    audio_offsets = []
    for onset in onsets:
        drawn = round((onset - video_offset) / BEEP_EVERY) * BEEP_EVERY
        audio_offsets.append(onset - drawn)
    offset = float(np.median(audio_offsets)) - video_offset
    print(f"demo: HKSV audio vs video {offset * 1000:+.0f} ms over {len(onsets)} beeps")
    assert abs(offset) < MAX_AV_GAP


# -- the whole bridge: Microphone services, /status, doctor, camera probe --------------------


def obscura(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


async def test_bridge_microphone_only_with_sound(tmp_path: Path, aac_camera: RtspCamera) -> None:
    with (
        RtspCamera(width=320, height=240, fps=10, gop=10) as plain,
        RtspCamera(width=320, height=240, fps=10, gop=10, audio="siren") as odd,
    ):
        bridge = BridgeProcess(tmp_path, [
            CameraSpec("Porch", aac_camera.url),
            CameraSpec("Yard", plain.url),
            CameraSpec("Shed", odd.url),
            CameraSpec("Silent", aac_camera.url, {"audio": False}),
        ])  # fmt: skip
        await asyncio.to_thread(bridge.start)
        try:
            for name in ("Porch", "Yard", "Shed", "Silent"):
                await asyncio.to_thread(bridge.wait_camera, name)
            paired = await pair(bridge.hap_port, bridge.setup_code)
            try:
                accessories = await paired.pairing.list_accessories_and_characteristics()
            finally:
                await paired.close()
            mics = {
                name: len(find_characteristics(
                    accessories, "MUTE", service_type="MICROPHONE",
                    aid=find_aid(accessories, name),
                ))
                for name in ("Porch", "Yard", "Shed", "Silent")
            }  # fmt: skip
            assert mics == {"Porch": 1, "Yard": 0, "Shed": 0, "Silent": 0}

            await asyncio.sleep(1.0)
            porch, yard, shed, silent = (
                bridge.camera_status(n) for n in ("Porch", "Yard", "Shed", "Silent")
            )
            audio = porch["audio"]
            assert porch["microphone"] is True
            assert (audio["codec"], audio["sample_rate"], audio["channels"]) == ("aac", 16000, 1)
            assert audio["packets"] > 10 and audio["dropped"] == 0
            assert yard["audio"] is None and yard["microphone"] is False
            assert shed["audio"] is None and "does not know" in shed["audio_problem"]
            assert silent["audio"] is None and silent["microphone"] is False
            assert silent["video"]["width"] == W  # the same camera, video only

            doctor = await asyncio.to_thread(obscura, "doctor", "--config", str(bridge.config))
            out = doctor.stdout
            assert "audio: aac 16000 Hz mono, " in out and "packets; Microphone" in out
            assert "audio: none (the camera sends no sound); no Microphone" in out
            assert "audio: NOT carried, its sound is an audio codec FFmpeg does not know" in out
            probe = await asyncio.to_thread(
                obscura, "camera", "probe", aac_camera.url, "--seconds", "1"
            )
            assert "audio     aac 16000 Hz mono, " in probe.stdout, probe.stdout + probe.stderr
        finally:
            assert await asyncio.to_thread(bridge.stop) == 0
        log = bridge.log_text()
        assert "Traceback" not in log, log
        assert log.count("its sound is") == 1  # Shed, once
