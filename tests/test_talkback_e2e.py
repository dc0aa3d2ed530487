"""Talk-back end to end: an aiohomekit viewer talks, the camera's speaker plays it.

A real `obscura run` with gst-rtsp-server cameras (tests/peers/rtsp.py):
- "Door": sound (AAC tone) and an ONVIF back channel (G.711 µ-law): Microphone and Speaker;
- "Intercom": a back channel, no sound: a Speaker alone (its live view still opens an audio
  port, for the controller's voice);
- "Yard": neither, but `talkback = true`: a Speaker whose camera refuses to talk;
- "Shed": neither: no sound service at all, as before.
The viewer sends a tone as Opus over SRTP on the stream's audio port at real-time pace, the
way the iPhone does while the talk button is held; the camera appends what its back channel
decodes to a file, where the test looks for the tone (FFT).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.peers.bridge_process import BridgeProcess, CameraSpec
from tests.peers.camera_tlv import AudioSelection, VideoSelection
from tests.peers.homekit import (
    Paired,
    find_aid,
    find_characteristic,
    find_characteristics,
    hap_uuid,
    pair,
    stream_management,
    write_value,
)
from tests.peers.owner_bucket import obscura
from tests.peers.rtsp import RtspCamera
from tests.peers.viewer import Viewer
from tests.peers.voice import Voice

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

W, H, FPS = 320, 240, 15
CAMERA_TONE = 440.0
VOICE_TONE = 660.0  # what the viewer "says"
G711_RATE = 8000
VIDEO = VideoSelection(W, H, FPS, max_bitrate_kbps=400)
AUDIO = AudioSelection(sample_rate_khz=16, packet_time_ms=20)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    workdir: Path = tmp_path_factory.mktemp("talkback")
    door_heard, intercom_heard = workdir / "door.s16", workdir / "intercom.s16"
    common: dict[str, Any] = {"width": W, "height": H, "fps": FPS, "gop": FPS}
    with (
        RtspCamera(**common, audio="aac", tone_hz=CAMERA_TONE, backchannel="pcmu",
                   backchannel_file=door_heard, log_requests=True) as door,
        RtspCamera(**common, backchannel="pcma", backchannel_file=intercom_heard) as intercom,
        RtspCamera(**common) as yard,
        RtspCamera(**common) as shed,
    ):  # fmt: skip
        process = BridgeProcess(
            workdir,
            [
                CameraSpec("Door", door.url),
                CameraSpec("Intercom", intercom.url),
                CameraSpec("Yard", yard.url, {"talkback": True}),
                CameraSpec("Shed", shed.url),
            ],
        )
        process.start()
        try:
            for name in ("Door", "Intercom", "Yard", "Shed"):
                process.wait_camera(name)
            SPEAKERS.update(Door=door, Intercom=intercom)
            yield process
        finally:
            code = process.stop()
        log = process.log_text()
        assert code == 0, log
        assert "Traceback" not in log, log
        requests = [ln.split()[-1] for ln in door.stderr.splitlines() if " request " in ln]
        # Every talk's session was torn down (on quiet, or at the bridge's stop at the latest).
        # Every session played was torn down: each talk's (on quiet) and the bridge's own.
        assert requests.count("TEARDOWN") == requests.count("PLAY") >= 3, requests


@pytest.fixture
async def controller(bridge: BridgeProcess) -> AsyncIterator[Paired]:
    paired = await pair(bridge.hap_port, bridge.setup_code)
    yield paired
    await paired.unpair()


SPEAKERS: dict[str, RtspCamera] = {}  # the cameras with a back channel, by name


def heard(process: BridgeProcess, camera: str) -> np.ndarray:
    """All the camera's speaker has played so far (int16 at 8 kHz)."""
    return SPEAKERS[camera].read_backchannel()


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    pcm = pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


async def accessories_of(controller: Paired) -> list[dict[str, Any]]:
    return await controller.pairing.list_accessories_and_characteristics()


async def open_viewer(controller: Paired, camera: str) -> Viewer:
    accessories = await accessories_of(controller)
    sm = stream_management(accessories, find_aid(accessories, camera))[0]
    viewer = await Viewer.open(controller, sm, decode=False)
    await viewer.start(VIDEO, AUDIO)
    assert await viewer.receiver.wait_for(lambda r: r.access_units >= 5, 10)
    return viewer


async def wait_heard(process: BridgeProcess, camera: str, samples: int, within: float) -> None:
    deadline = time.monotonic() + within
    while len(heard(process, camera)) < samples and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


def talkback_status(process: BridgeProcess, camera: str) -> dict[str, Any]:
    status = process.camera_status(camera)["talkback"]
    assert status is not None
    return status


async def test_speaker_only_on_cameras_that_can_play_sound(
    bridge: BridgeProcess, controller: Paired
) -> None:
    accessories = await accessories_of(controller)

    def services(name: str) -> dict[str, int]:
        aid = find_aid(accessories, name)
        (acc,) = [a for a in accessories if a["aid"] == aid]
        return {s["type"]: s["iid"] for s in acc["services"]}

    mic, speaker = hap_uuid("Microphone"), hap_uuid("Speaker")
    found = {name: services(name) for name in ("Door", "Intercom", "Yard", "Shed")}
    assert mic in found["Door"] and speaker in found["Door"]
    assert mic not in found["Intercom"] and speaker in found["Intercom"]
    assert speaker in found["Yard"]  # talkback = true, whatever the camera says
    assert mic not in found["Shed"] and speaker not in found["Shed"]
    for name in ("Door", "Intercom", "Yard"):  # appended last: no earlier IID moved
        assert found[name][speaker] == max(found[name].values())
    for name in ("Door", "Intercom"):
        aid = find_aid(accessories, name)
        for char in ("Mute", "Volume"):
            ref = find_characteristic(accessories, char, service_type="Speaker", aid=aid)
            assert {"pr", "pw", "ev"} <= set(ref.perms)
    status = bridge.camera_status("Door")
    assert status["speaker"] and status["microphone"], status
    assert "G.711" in status["speaker_reason"], status
    assert bridge.camera_status("Shed")["talkback"] is None


async def test_the_camera_hears_what_the_viewer_says(
    bridge: BridgeProcess, controller: Paired
) -> None:
    process = bridge
    before = len(heard(process, "Door"))
    viewer = await open_viewer(controller, "Door")
    assert viewer.audio is not None
    try:
        assert await viewer.audio.wait_for(lambda r: len(r.packets) >= 25, 10)
        units0, packets0 = viewer.receiver.access_units, len(viewer.audio.packets)
        started = time.monotonic()
        await Voice(VOICE_TONE).talk(viewer, 2.5)
        elapsed = time.monotonic() - started
        await wait_heard(process, "Door", before + 2 * G711_RATE, 5)
        status = talkback_status(process, "Door")
        units = viewer.receiver.access_units - units0
        packets = len(viewer.audio.packets) - packets0
    finally:
        await viewer.stop()
        viewer.close()
    got = heard(process, "Door")[before:]
    print(f"talk: {len(got) / G711_RATE:.2f} s heard of 2.5 s; {status}")
    assert 1.5 * G711_RATE <= len(got) <= 2.7 * G711_RATE, len(got)
    body = got[len(got) // 5 :]
    assert abs(peak_hz(body, G711_RATE) - VOICE_TONE) <= 0.02 * VOICE_TONE
    assert rms(body) > 0.25 * 32768 * 0.5  # loud enough: no gain applied at 100 %
    assert status["codec"] == "PCMU/8000" and status["talks"] >= 1 and status["failures"] == 0
    assert status["frames_sent"] >= 0.6 * 125
    # Talking did not disturb the picture or the camera's own sound.
    assert units >= 0.7 * FPS * elapsed and packets >= 0.7 * 50 * elapsed


async def test_speaker_volume_and_mute_from_the_home_app(
    bridge: BridgeProcess, controller: Paired
) -> None:
    process = bridge
    accessories = await accessories_of(controller)
    aid = find_aid(accessories, "Door")
    volume = find_characteristic(accessories, "Volume", service_type="Speaker", aid=aid).key
    mute = find_characteristic(accessories, "Mute", service_type="Speaker", aid=aid).key
    voice = Voice(VOICE_TONE)
    viewer = await open_viewer(controller, "Door")
    levels: dict[int, float] = {}
    try:
        for percent in (100, 25):
            await write_value(controller.pairing, volume, percent)
            before = len(heard(process, "Door"))
            await voice.talk(viewer, 1.5)
            await wait_heard(process, "Door", before + G711_RATE, 5)
            got = heard(process, "Door")[before:]
            levels[percent] = rms(got[len(got) // 3 :])
        await write_value(controller.pairing, volume, 100)
        await write_value(controller.pairing, mute, True)
        muted0 = talkback_status(process, "Door")["dropped_muted"]
        before = len(heard(process, "Door"))
        await voice.talk(viewer, 1.0)
        await asyncio.sleep(1.0)
        muted = talkback_status(process, "Door")["dropped_muted"] - muted0
        after_mute = len(heard(process, "Door")) - before
        await write_value(controller.pairing, mute, False)
    finally:
        await viewer.stop()
        viewer.close()
    print(f"speaker levels (rms): {levels}; muted: {muted} packets, {after_mute} samples heard")
    assert levels[25] / levels[100] == pytest.approx(0.25, abs=0.07)
    assert muted >= 45 and after_mute < 0.1 * G711_RATE


async def test_microphone_mute_and_volume_apply_to_live_sound(
    bridge: BridgeProcess, controller: Paired
) -> None:
    process = bridge
    accessories = await accessories_of(controller)
    aid = find_aid(accessories, "Door")
    volume = find_characteristic(accessories, "Volume", service_type="Microphone", aid=aid).key
    mute = find_characteristic(accessories, "Mute", service_type="Microphone", aid=aid).key
    viewer = await open_viewer(controller, "Door")
    rx = viewer.audio
    assert rx is not None
    try:
        assert await rx.wait_for(lambda r: len(r.packets) >= 50, 10)
        loud = len(rx.packets)
        await asyncio.sleep(1.0)
        await write_value(controller.pairing, volume, 25)
        await asyncio.sleep(0.5)  # what was in flight at 100 %
        quiet = len(rx.packets)
        await asyncio.sleep(1.0)
        end_quiet = len(rx.packets)
        await write_value(controller.pairing, mute, True)
        await asyncio.sleep(0.5)
        muted_from = len(rx.packets)
        await asyncio.sleep(1.0)
        muted_to = len(rx.packets)
        stats = process.camera_status("Door")["live_sessions"][0]["audio"]
        await write_value(controller.pairing, mute, False)
        await write_value(controller.pairing, volume, 100)
        assert await rx.wait_for(lambda r: len(r.packets) >= muted_to + 25, 5)
    finally:
        await viewer.stop()
        viewer.close()
    decoded = rx.decode()  # (index, pcm at 48 kHz) per packet
    pcm = {i: p[0] for i, p in enumerate(pcm for _, pcm in decoded)}
    a = np.concatenate([pcm[i] for i in range(loud, loud + 40)])
    b = np.concatenate([pcm[i] for i in range(quiet, end_quiet)])
    print(f"microphone: rms {rms(a):.4f} -> {rms(b):.4f} at 25 %; muted: "
          f"{muted_to - muted_from} packets in 1 s, stats {stats['muted']}")  # fmt: skip
    assert rms(b) / rms(a) == pytest.approx(0.25, abs=0.07)
    assert abs(peak_hz(b, 48000) - CAMERA_TONE) <= 0.02 * CAMERA_TONE
    assert muted_to - muted_from <= 2 and stats["muted"] >= 10  # the camera: 64 ms AAC frames


async def test_a_speaker_only_camera_takes_the_voice_on_its_own_audio_port(
    bridge: BridgeProcess, controller: Paired
) -> None:
    process = bridge
    viewer = await open_viewer(controller, "Intercom")
    assert viewer.audio is not None
    try:
        assert viewer.accessory_audio_port != viewer.audio.port  # a port of the bridge's own
        await Voice(VOICE_TONE).talk(viewer, 2.0)
        await wait_heard(process, "Intercom", int(1.2 * G711_RATE), 5)
        (session,) = process.camera_status("Intercom")["live_sessions"]
    finally:
        await viewer.stop()
        viewer.close()
    got = heard(process, "Intercom")
    assert len(got) >= 1.2 * G711_RATE
    assert abs(peak_hz(got[len(got) // 5 :], G711_RATE) - VOICE_TONE) <= 0.02 * VOICE_TONE
    assert len(viewer.audio.packets) == 0  # no Microphone: nothing is sent to the viewer
    assert session["audio"] is None or session["audio"]["packets_sent"] == 0


async def test_a_camera_that_refuses_to_talk_is_a_log_line_not_a_crash(
    bridge: BridgeProcess, controller: Paired
) -> None:
    process = bridge
    viewer = await open_viewer(controller, "Yard")
    try:
        units0 = viewer.receiver.access_units
        await Voice(VOICE_TONE).talk(viewer, 1.5)
        await asyncio.sleep(0.5)
        status = talkback_status(process, "Yard")
        units = viewer.receiver.access_units - units0
    finally:
        await viewer.stop()
        viewer.close()
    assert status["failures"] == 1 and status["state"] == "unavailable", status
    assert status["dropped_unavailable"] > 0 and status["last_error"], status
    assert units >= 0.7 * FPS * 1.5  # the picture went on
    lines = [ln for ln in process.log_text().splitlines() if "talk-back to Yard" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0], lines
    doctor = await asyncio.to_thread(obscura, "doctor", "--config", str(process.config), check=None)
    (line,) = [ln for ln in doctor.stdout.splitlines() if "talk-back" in ln and "refused" in ln]
    assert "1 refused, last:" in line and status["last_error"] in line, doctor.stdout
    assert "talk-back: Speaker (PCMU/8000)" in doctor.stdout, doctor.stdout  # the Door's
    accessories = await accessories_of(controller)
    assert not find_characteristics(
        accessories, "Mute", service_type="Microphone", aid=find_aid(accessories, "Yard")
    )
