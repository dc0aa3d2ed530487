"""Sound from an ALSA capture device (`audio_device`): a USB camera's microphone (issue #10).

The machine has no sound card, so the device is alsa-lib's own `file` PCM plugin reading a FIFO
(tests' ALSA_CONFIG_PATH adds its definition to the system's alsa.conf): real alsa-lib, real
FFmpeg `alsa` demuxer, paced like a sound card by `ToneDevice`'s thread, which writes 10 ms
blocks just after their last sample's time. Its sound is a 1 kHz tone in beeps that start at
every whole second of the monotonic clock, so the test knows when each beep began and can
check the bridge's pts against that instant (through the video's clock, measured here from
the video packets' arrival, as a viewer would see it). What it checks:

- a `demo:` and a `file://` camera (whose own 440 Hz track the device replaces) carry the tone
  as pcm_s16le in 20 ms packets, on the video's clock;
- a device that does not exist (yet), and one that dies mid-stream: the video goes on, /status
  and the log name the device, and the sound comes back with the device (retried with backoff);
- a real `obscura run`: a Microphone service for the camera whose device opens, none for the one
  whose device does not, the tone in the live view's Opus (aiohomekit controller, SRTP receiver);
- configuration errors name the key (exit status 2).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from bridge.config import CameraConfig, ConfigError, load_config
from bridge.media.packet import AudioInfo
from bridge.sources.alsa_capture import Chunker, _Converter
from bridge.sources.alsa_device import CaptureFormat
from bridge.sources.alsa_input import StampedAVInput, VideoClock
from bridge.sources.av_input import AVInputOptions
from tests.peers.bridge_process import ROOT, BridgeProcess, CameraSpec
from tests.peers.camera_tlv import AudioSelection
from tests.peers.homekit import find_aid, find_characteristics, pair
from tests.test_camera_audio import av_gap, collect, streaming
from tests.test_live_audio import DECODED, VIDEO, audio_of, check_stream, open_viewer, peak_hz

pytestmark = pytest.mark.timeout(120)

RATE = 16000
TONE_HZ = 1000.0
FILE_TONE_HZ = 440.0  # the file's own sound, which the device replaces
BEEP_SECONDS = 0.5  # of every second
LEVEL = 0.5
BLOCK = 160  # samples written at a time (10 ms)
MAX_AV_OFFSET = 0.1  # seconds
SYSTEM_ALSA = "/usr/share/alsa/alsa.conf"
W, H, FPS = VIDEO.width, VIDEO.height, VIDEO.fps

if not Path(SYSTEM_ALSA).is_file():
    pytest.skip("needs alsa-lib's configuration (Debian: libasound2-data)", allow_module_level=True)


def tone_at(t: np.ndarray) -> np.ndarray:
    """The device's sound at monotonic times `t`: beeps from every whole second on."""
    gate = (t % 1.0) < BEEP_SECONDS
    return LEVEL * np.sin(2 * np.pi * TONE_HZ * t) * gate


class ToneDevice:
    """ALSA capture devices without a sound card (module docstring). `hang_up(s)` closes the
    FIFO for `s` seconds: alsa-lib then reads end-of-file as endless silence, at once, which
    the bridge must take for a broken device. `define(name)` adds a device to the running
    configuration (a new file, renamed in place: alsa-lib re-reads files whose inode changed)."""

    def __init__(self, workdir: Path) -> None:
        self.fifo = workdir / "mic.fifo"
        os.mkfifo(self.fifo)
        self.base = workdir / "asound.conf"
        self.late = workdir / "late.conf"
        self.base.write_text(self._pcm("tone"))
        self.late.write_text("")
        self.config_path = f"{SYSTEM_ALSA}:{self.base}:{self.late}"
        self.sessions = 0  # readers served
        self._stop = threading.Event()
        self._paused_until = 0.0
        self._hangup = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tone-device", daemon=True)

    def _pcm(self, name: str) -> str:
        return (
            f'pcm.{name} {{ type file slave {{ pcm "null" }} file "/dev/null" '
            f'infile "{self.fifo}" format "raw" }}\n'
        )

    def define(self, name: str) -> None:
        fresh = self.late.with_suffix(".new")
        fresh.write_text(self._pcm(name))
        fresh.replace(self.late)

    def hang_up(self, seconds: float) -> None:
        self._paused_until = time.monotonic() + seconds
        self._hangup.set()

    def __enter__(self) -> ToneDevice:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() < self._paused_until:
                time.sleep(0.01)
                continue
            try:  # a writer's open of a FIFO without a reader fails at once (non-blocking)
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                assert exc.errno == errno.ENXIO, exc
                time.sleep(0.005)
                continue
            self.sessions += 1
            self._hangup.clear()
            try:
                self._serve(fd)
            except BrokenPipeError:
                pass  # the reader closed: serve the next one
            finally:
                os.close(fd)

    def _serve(self, fd: int) -> None:
        start, k = time.monotonic(), 0
        while not (self._stop.is_set() or self._hangup.is_set()):
            due = start + (k + BLOCK) / RATE  # a block goes out once its last sample is "heard"
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            t = start + np.arange(k, k + BLOCK) / RATE
            data = (tone_at(t) * 32767).astype("<i2").tobytes()
            while data and not self._stop.is_set():
                try:
                    data = data[os.write(fd, data) :]
                except BlockingIOError:  # the reader is not reading (yet): the pipe is full
                    time.sleep(0.002)
            k += BLOCK


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToneDevice]:
    with ToneDevice(tmp_path_factory.mktemp("alsa")) as tone:
        yield tone


@pytest.fixture
def alsa_env(device: ToneDevice, monkeypatch: pytest.MonkeyPatch) -> ToneDevice:
    monkeypatch.setenv("ALSA_CONFIG_PATH", device.config_path)
    return device


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of H.264 with a 440 Hz AAC track of its own (looped by the file source)."""
    path = tmp_path_factory.mktemp("clip") / "desk.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        video.options = {"preset": "ultrafast", "g": str(FPS), "bf": "0"}
        audio = out.add_stream("aac", rate=RATE, layout="mono")
        rng = np.random.default_rng(3)
        for i in range(2 * FPS):
            pixels = rng.integers(0, 255, (H, W, 3), np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(video.encode(frame))
        t = np.arange(2 * RATE) / RATE
        pcm = (0.5 * np.sin(2 * np.pi * FILE_TONE_HZ * t)).astype(np.float32)
        for i in range(0, len(pcm) - 1024, 1024):
            sound = av.AudioFrame.from_ndarray(pcm[None, i : i + 1024], "fltp", "mono")
            sound.sample_rate, sound.pts = RATE, i
            out.mux(audio.encode(sound))
        out.mux(video.encode())
        out.mux(audio.encode())
    return path


def camera(source: str, **extra: object) -> CameraConfig:
    size = {"width": W, "height": H, "fps": float(FPS)} if source == "demo:" else {}
    return CameraConfig(name="Desk", source=source, **size, **extra)  # type: ignore[arg-type]


def beep_starts(packets: list, rate: int = RATE) -> list[float]:
    """pts where a beep starts in audio packets (each packet placed by its own pts, so a gap
    between packets does not shift what follows)."""
    starts, quiet_until = [], packets[0].pts  # (not a start: a beep already sounding)
    for p in packets:
        pcm = np.frombuffer(p.data, "<i2") / 32768
        for i in np.flatnonzero(np.abs(pcm) > LEVEL / 2):
            at = p.pts + i / rate
            if at > quiet_until + 0.3:  # the first loud sample after a silence
                starts.append(at)
            quiet_until = at
    return starts


# -- the pieces: packets, time, format ----------------------------------------------------


def test_chunker_times_packets_by_the_sample_count_and_resyncs_on_a_gap() -> None:
    chunker = Chunker(RATE, 1)
    rng = np.random.default_rng(5)
    out, at = [], 100.0
    for _ in range(200):  # 1 s in 5 ms periods, stamps jittering by up to 2 ms
        out += chunker.feed(bytes(160), at + rng.uniform(-0.002, 0.002))
        at += 0.005
    assert len(out) == 50 and {c.duration for c in out} == {0.02}
    steps = np.diff([c.at for c in out])
    assert np.abs(steps - 0.02).max() < 0.0005 and abs(out[0].at - 100.0) < 0.003
    out2 = list(chunker.feed(bytes(160), at + 0.5))  # 0.5 s lost (an overrun)
    assert chunker.resyncs == 1 and out2 == []  # 1 s = 50 whole packets: nothing left to flush
    out3 = [c for i in range(1, 4) for c in chunker.feed(bytes(160), at + 0.5 + i * 0.005)]
    assert len(out3) == 1 and out3[0].at == pytest.approx(at + 0.5, abs=1e-6)
    # A partial packet before a gap goes out shorter, at its own time.
    chunker = Chunker(RATE, 2)
    assert list(chunker.feed(bytes(4 * 100), 5.0)) == []
    (short,) = chunker.feed(bytes(4 * 100), 6.0)
    assert (short.at, short.duration, len(short.data)) == (5.0, 100 / RATE, 400)


def test_converter_turns_a_hw_devices_format_into_the_one_asked() -> None:
    convert = _Converter(48000, 2, CaptureFormat("hw:1,0", RATE, 1))
    t = np.arange(48000) / 48000
    stereo = np.repeat((0.5 * np.sin(2 * np.pi * TONE_HZ * t) * 32767).astype("<i2"), 2)
    out = b"".join(convert(stereo[i : i + 960].tobytes()) for i in range(0, len(stereo), 960))
    pcm = np.frombuffer(out, "<i2") / 32768
    assert abs(len(pcm) - RATE) < 64 and abs(peak_hz(pcm, RATE) / TONE_HZ - 1) < 0.01


def test_video_clock_from_capture_stamps_or_arrival() -> None:
    now = time.monotonic()
    clock = VideoClock()  # a V4L2 camera: the kernel's monotonic stamp, 80 ms before arrival
    clock.frame(2.0, now, now - 0.08)
    assert clock.basis == "capture" and clock.origin == pytest.approx(now - 2.08)
    clock = VideoClock()  # the same on the wall clock
    wall = time.time()
    clock.frame(2.0, now, wall - 0.08)
    assert clock.basis == "capture" and clock.origin == pytest.approx(now - 2.08, abs=0.002)
    clock = VideoClock()  # a file: the least delayed hand-over
    for pts, late in ((0.0, 0.05), (0.1, 0.004), (0.2, 0.03)):
        clock.frame(pts, now + pts + late, None)
    assert clock.basis == "arrival" and clock.origin == pytest.approx(now + 0.004)
    clock.frame(0.3, now + 0.31, 1234.5)  # a stamp on no known clock: arrival still
    assert clock.basis == "arrival" and clock.origin == pytest.approx(now + 0.004)


def test_stamped_input_tells_where_its_pts_are_on_the_demuxers_clock(clip: Path) -> None:
    """What V4L2 cameras use (no webcam here: a looping file shows the same arithmetic)."""
    video = StampedAVInput(AVInputOptions(url=str(clip), loop=True))
    video.open()
    try:
        offsets = []
        for _, pts, _ in itertools.islice(video.packets(), 3 * FPS):  # type: ignore[misc]
            offsets.append((pts, video.stamp_offset))
    finally:
        video.close()
    # The file's own time is pts for the first loop and 2 s less than pts for the second.
    assert {round(o, 3) for p, o in offsets if p < 1.9} == {0.0}
    assert {round(o, 3) for p, o in offsets if p > 2.1} == {-2.0}


# -- the source ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["demo", "file"])
async def test_device_sound_on_the_video_clock(alsa_env: ToneDevice, clip: Path, kind: str) -> None:
    source = "demo:" if kind == "demo" else f"file://{clip}"
    async with streaming(camera(source, audio_device="tone")) as src:
        assert src.audio_info == AudioInfo("pcm_s16le", RATE, 1)
        assert src.audio_problem is None
        await asyncio.sleep(0.5)
        video, audio = await collect(src, 3.5)
    packets = [p for _, p in audio]
    assert len(packets) >= 0.9 * 3.5 / 0.02 and len(video) >= 0.8 * 3.5 * FPS
    assert {round(p.duration, 6) for p in packets} == {0.02}
    steps = np.diff([p.pts for p in packets])
    assert abs(float(np.median(steps)) - 0.02) < 0.0005, steps
    pcm = np.frombuffer(b"".join(p.data for p in packets), "<i2") / 32768
    found = peak_hz(pcm, RATE)
    spectrum = np.abs(np.fft.rfft(pcm))
    own = spectrum[round(FILE_TONE_HZ * len(pcm) / RATE)] / spectrum.max()
    assert abs(found / TONE_HZ - 1) <= 0.02 and own < 0.01, (found, own)
    # Where the video's pts 0 is on the monotonic clock, from its packets' arrival; each beep's
    # pts put there must be the whole second it began at.
    origin = min(t - p.pts for t, p in video)
    offsets = [at + origin - round(at + origin) for at in beep_starts(packets)]
    gap = av_gap(video, audio)
    print(f"{kind}: {len(packets)} packets, peak {found:.1f} Hz; beeps at "
          f"{[round(float(o) * 1000, 1) for o in offsets]} ms of their instant; arrival gap "
          f"{gap * 1000:+.1f} ms")  # fmt: skip
    assert len(offsets) >= 3
    assert abs(float(np.median(offsets))) <= MAX_AV_OFFSET and np.ptp(offsets) < 0.05
    assert abs(gap) <= MAX_AV_OFFSET


async def test_missing_device_video_goes_on_until_it_appears(
    alsa_env: ToneDevice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with streaming(camera("demo:", audio_device="later")) as src:
        problem = src.audio_problem or ""
        assert "ALSA device 'later' does not open" in problem, problem
        assert src.audio_info is not None and src.audio_packets == 0
        assert src.status()["audio_problem"] == problem
        alsa_env.define("later")  # plugged in: picked up by the next try (1 s, then 2 s)
        async with asyncio.timeout(10):
            while src.audio_packets < 20:  # noqa: ASYNC110 - polling a state
                await asyncio.sleep(0.05)
        assert src.audio_problem is None and src.status()["video"] is not None
        assert src.packets_received > 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("its sound is unavailable: ALSA device 'later'" in m for m in messages) == 1
    assert any("sound from ALSA device 'later' again" in m for m in messages), messages


async def test_device_that_dies_mid_stream_comes_back(
    alsa_env: ToneDevice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with streaming(camera("demo:", audio_device="tone")) as src:
        await asyncio.sleep(0.5)
        assert src.audio_problem is None and src.audio_packets > 10
        frames = src.packets_received
        alsa_env.hang_up(1.5)
        async with asyncio.timeout(5):
            while src.audio_problem is None:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert "faster than real time" in src.audio_problem, src.audio_problem
        assert src.status()["audio_problem"] == src.audio_problem
        async with asyncio.timeout(10):
            while src.audio_problem is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        before = src.audio_packets
        await asyncio.sleep(1.0)
        assert src.audio_packets - before >= 40
        assert src.packets_received - frames >= 2.5 * FPS * 0.8  # the video never stopped
        assert src.reconnects == 0
    messages = [r.getMessage() for r in caplog.records]
    lost = [m for m in messages if "its sound is unavailable: ALSA device 'tone'" in m]
    assert len(lost) == 1 and "video goes on" in lost[0], messages
    assert sum("sound from ALSA device 'tone' again" in m for m in messages) == 1


# -- the bridge ------------------------------------------------------------------------------


async def test_bridge_microphone_and_live_opus_from_the_device(
    tmp_path: Path, device: ToneDevice, clip: Path
) -> None:
    bridge = BridgeProcess(
        tmp_path,
        [
            CameraSpec("Desk", f"file://{clip}", {"audio_device": "tone"}),
            CameraSpec("Attic", f"file://{clip}", {"audio_device": "nosuch"}),
        ],
        env={"ALSA_CONFIG_PATH": device.config_path},
    )
    await asyncio.to_thread(bridge.start)
    try:
        for name in ("Desk", "Attic"):
            await asyncio.to_thread(bridge.wait_camera, name)
        controller = await pair(bridge.hap_port, bridge.setup_code)
        try:
            accessories = await controller.pairing.list_accessories_and_characteristics()
            mics = {
                name: len(find_characteristics(
                    accessories, "MUTE", service_type="MICROPHONE",
                    aid=find_aid(accessories, name),
                ))
                for name in ("Desk", "Attic")
            }  # fmt: skip
            assert mics == {"Desk": 1, "Attic": 0}
            viewer = await open_viewer(controller, "Desk", decode=False)
            rx, ptime = audio_of(viewer), 20
            try:
                await viewer.start(VIDEO, AudioSelection(sample_rate_khz=16, packet_time_ms=ptime))
                assert await rx.wait_for(lambda r: len(r.packets) >= 2.5 * 1000 / ptime, 15)
                await viewer.stop()
            finally:
                viewer.close()
        finally:
            await controller.unpair()
        desk, attic = bridge.camera_status("Desk"), bridge.camera_status("Attic")
    finally:
        code = await asyncio.to_thread(bridge.stop)
    log = bridge.log_text()
    assert code == 0 and "Traceback" not in log, log
    assert viewer.response.audio_ssrc is not None
    pcm = check_stream(rx, viewer.response.audio_ssrc, 16000, ptime)
    sound = pcm[DECODED // 5 :]
    found = peak_hz(sound, DECODED)
    print(f"live Opus from the ALSA device: {len(rx.packets)} packets, peak {found:.1f} Hz")
    assert abs(found / TONE_HZ - 1) <= 0.02
    assert desk["microphone"] is True and desk["audio_problem"] is None
    assert (desk["audio"]["codec"], desk["audio"]["sample_rate"]) == ("pcm_s16le", RATE)
    assert desk["audio"]["packets"] > 100
    assert attic["state"] == "streaming" and attic["microphone"] is False
    assert "ALSA device 'nosuch' does not open" in attic["audio_problem"]
    assert log.count("its sound is unavailable: ALSA device 'nosuch'") == 1


# -- configuration ---------------------------------------------------------------------------


def load_camera(tmp_path: Path, source: str, extra: str) -> CameraConfig:
    path = tmp_path / "obscura.toml"
    path.write_text(f'[[cameras]]\nname = "Cam"\nsource = "{source}"\n{extra}')
    return load_config(path).cameras[0]


def test_audio_device_keys(tmp_path: Path) -> None:
    cam = load_camera(tmp_path, "v4l2:///dev/video0", 'audio_device = "plughw:CARD=C920,DEV=0"')
    assert (cam.audio_device, cam.audio_rate, cam.audio_channels) == (
        "plughw:CARD=C920,DEV=0", 16000, 1,
    )  # fmt: skip
    cam = load_camera(
        tmp_path, "demo:", 'audio_device = "hw:1,0"\naudio_rate = 48000\naudio_channels = 2'
    )
    assert (cam.audio_rate, cam.audio_channels) == (48000, 2)
    assert load_camera(tmp_path, "demo:", "").audio_device is None
    for source, extra, key, why in (
        ("rtsp://cam/x", 'audio_device = "hw:1,0"', "audio_device", "RTSP"),
        ("demo:", 'audio_device = "hw:1,0"\naudio = false', "audio_device", "audio = false"),
        ("demo:", "audio_rate = 16000", "audio_rate", "needs audio_device"),
        ("demo:", 'audio_device = "hw:1,0"\naudio_rate = 12345', "audio_rate", "one of"),
        ("demo:", 'audio_device = "hw:1,0"\naudio_channels = 3', "audio_channels", "1 or 2"),
        ("demo:", 'audio_device = " "', "audio_device", "arecord"),
    ):
        with pytest.raises(ConfigError, match=rf"cameras\[0\]\.{key}.*{why}"):
            load_camera(tmp_path, source, extra)


def test_rtsp_with_audio_device_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "obscura.toml"
    path.write_text('[[cameras]]\nname = "Cam"\nsource = "rtsp://cam/x"\naudio_device = "hw:1,0"\n')
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(path)], cwd=ROOT,
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "cameras[0].audio_device" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
