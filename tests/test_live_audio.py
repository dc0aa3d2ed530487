"""Live view with sound (issue #10): the camera's audio as Opus/SRTP, checked from outside.

A real `obscura run` with four cameras: gst-rtsp-server cameras sending a tone as AAC ("Porch")
and as Opus ("Opus"), one without sound ("Yard"), and the `demo:` camera, whose beeps start at
known instants of the clock that also moves its box. An aiohomekit controller negotiates Opus
as iOS does (16 or 24 kHz, 20 or 60 ms packets) and listens with receivers of its own
(tests/peers/srtp_receiver.py): SRTP with the audio key it chose, every RTP timestamp step,
FFmpeg's libopus for the sound, and the sender reports for lip sync. The audio/video offset is
measured against the camera's own timing two ways: the Opus camera's packets are copied, so the
test's own RTSP client (FFmpeg, which lines streams up by the camera's RTCP sender reports)
tells when each received video frame and audio packet was captured; the demo's beeps are found
in the sound and its box in the pictures.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from accessories.backend import AudioRequest
from accessories.camera_tlv import audio_request, parse_selected_stream_config
from accessories.tlv8 import TLVError
from bridge.live.opus import OpusEncoder, OpusTimeline, copy_problem
from bridge.media.packet import AudioInfo, AudioPacket
from tests.peers.bridge_process import BridgeProcess, CameraSpec
from tests.peers.camera_tlv import AudioSelection, VideoSelection, start_stream_config
from tests.peers.homekit import Paired, find_aid, find_characteristics, pair, stream_management
from tests.peers.rtsp import RtspCamera
from tests.peers.srtp_receiver import SrtpAudioReceiver, rtp_to_ntp
from tests.peers.viewer import Viewer
from tests.test_camera_audio import BEEP_EVERY, DEMO_PERIOD, box_time  # the demo's clock

pytestmark = pytest.mark.timeout(240)

W, H, FPS = 320, 240, 15
AAC_TONE = 440.0
OPUS_TONE = 997.3  # not a whole number of cycles per packet: no two packets alike
MAX_AV_OFFSET = 0.1  # seconds
VIDEO = VideoSelection(W, H, FPS, max_bitrate_kbps=400)


@pytest.fixture(scope="module")
def bridge(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BridgeProcess, CameraClient]]:
    workdir: Path = tmp_path_factory.mktemp("bridge")
    with (
        RtspCamera(width=W, height=H, fps=FPS, gop=FPS, audio="aac", tone_hz=AAC_TONE) as porch,
        # Scrolling bars: every frame differs, so the test can tell which one it received.
        RtspCamera(
            width=W,
            height=H,
            fps=FPS,
            gop=FPS,
            audio="opus",
            tone_hz=OPUS_TONE,
            pattern="smpte horizontal-speed=2",
            bitrate_kbps=300,
        ) as opus,  # fmt: skip
        RtspCamera(width=W, height=H, fps=FPS, gop=FPS) as yard,
        CameraClient(opus.url) as reference,
    ):
        process = BridgeProcess(
            workdir,
            [
                CameraSpec("Porch", porch.url),
                CameraSpec("Opus", opus.url),
                CameraSpec("Yard", yard.url),
                CameraSpec("Demo", "demo:", {"width": W, "height": H, "fps": FPS}),
            ],
        )
        process.start()
        try:
            for name in ("Porch", "Opus", "Yard", "Demo"):
                process.wait_camera(name)
            yield process, reference
        finally:
            code = process.stop()
        log = process.log_text()
        assert code == 0, log
        assert "Traceback" not in log, log


@pytest.fixture
async def controller(bridge: tuple[BridgeProcess, CameraClient]) -> AsyncIterator[Paired]:
    paired = await pair(bridge[0].hap_port, bridge[0].setup_code)
    yield paired
    await paired.unpair()


async def open_viewer(controller: Paired, camera: str, **video: Any) -> Viewer:
    accessories = await controller.pairing.list_accessories_and_characteristics()
    sm = stream_management(accessories, find_aid(accessories, camera))[0]
    return await Viewer.open(controller, sm, **video)


def audio_of(viewer: Viewer) -> SrtpAudioReceiver:
    assert viewer.audio is not None
    return viewer.audio


def live_audio(process: BridgeProcess, camera: str) -> dict[str, Any]:
    (session,) = process.camera_status(camera)["live_sessions"]
    assert session["audio"] is not None, session
    return session["audio"]


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


def unwrap(timestamps: list[int]) -> np.ndarray:
    steps = np.diff(np.asarray(timestamps, np.int64)) % (1 << 32)
    return np.concatenate([[0], np.cumsum(steps)])


DECODED = 48000  # Hz: what the receiver's decoder gives


def check_stream(rx: SrtpAudioReceiver, ssrc: int, rate: int, ptime_ms: int) -> np.ndarray:
    """The RTP stream as HomeKit wants it; returns the sound (mono float at 48 kHz)."""
    packets = rx.packets
    assert rx.auth_failures == 0 and rx.rtcp_auth_failures == 0
    assert {p.ssrc for p in packets} == {ssrc}
    assert {p.payload_type for p in packets} == {110}
    assert packets[0].marker and not any(p.marker for p in packets[1:])
    seqs = [p.sequence for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), "reordered"
    steps = set(np.diff(unwrap([p.timestamp for p in packets])).tolist())
    assert steps == {ptime_ms * rate // 1000}, steps
    decoded = rx.decode()
    frames = {pcm.shape[1] for _, pcm in decoded}
    assert frames == {ptime_ms * DECODED // 1000}, frames  # each packet: one packet time
    return np.concatenate([pcm[0] for _, pcm in decoded])


# -- the pieces: timestamps, gaps, copy or not ----------------------------------------------


def test_selected_audio_parsed_from_the_peers_tlv() -> None:
    sid = os.urandom(16)
    selection = AudioSelection(sample_rate_khz=24, packet_time_ms=60, max_bitrate_kbps=32)
    config = parse_selected_stream_config(start_stream_config(sid, VIDEO, selection))
    assert config.audio is not None and config.audio_present
    audio = config.audio
    assert (audio.codec, audio.ssrc, audio.comfort_noise) == (3, selection.ssrc, False)
    assert audio_request(audio) == AudioRequest(
        sample_rate=24000, packet_time_ms=60, channels=1, payload_type=110, max_bitrate_kbps=32,
        variable_bitrate=True, rtcp_interval=5.0,
    )  # fmt: skip
    assert AudioRequest(24000, 60).frame_samples == 1440
    for bad, why in (
        (AudioSelection(codec="pcmu"), "not Opus"),
        (AudioSelection(packet_time_ms=30), "30 ms"),
        (AudioSelection(sample_rate_khz=8, channels=3), "3 channels"),
    ):
        parsed = parse_selected_stream_config(start_stream_config(sid, VIDEO, bad)).audio
        with pytest.raises(TLVError, match=why):
            audio_request(parsed)


def test_timeline_steps_by_whole_packets() -> None:
    line = OpusTimeline(16000, 320, offset=1000)
    # Jittery pts of back-to-back packets: exact steps.
    stamps = [line.place(pts, 0) for pts in (1.0, 1.021, 1.039, 1.06)]
    assert np.diff(stamps).tolist() == [320, 320, 320] and stamps[0] == 1000
    # 75 ms lost (three and a bit packets): skipped in whole packets, still a multiple.
    assert line.place(1.155, 0) - stamps[-1] == 5 * 320 and line.skipped == 4
    # A jump back (or past MAX_JUMP) is a discontinuity: time just goes on.
    after = line.place(0.2, 0)
    assert after == stamps[-1] + 6 * 320 and line.place(9.0, 0) == after + 320
    assert line.place(9.02, 1) == after + 640  # a new epoch too


def aac_packets(seconds: float, tone: float, rate: int = 16000) -> list[AudioPacket]:
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate, encoder.layout, encoder.format = rate, "mono", "fltp"  # type: ignore[attr-defined]
    encoder.open()
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.5 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
    out = []
    for i in range(0, len(pcm) - 1024, 1024):
        frame = av.AudioFrame.from_ndarray(pcm[None, i : i + 1024], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, i
        out += [AudioPacket(bytes(p), p.pts / rate, 1024 / rate) for p in encoder.encode(frame)]
    return out


def test_encoder_fills_short_gaps_and_skips_long_ones() -> None:
    packets = aac_packets(3.0, 440.0)
    info = AudioInfo("aac", 16000, 1, b"\x14\x08")  # AAC-LC, 16 kHz, mono
    request = AudioRequest(24000, 20)
    line = OpusTimeline(24000, 480, offset=0)
    encoder = OpusEncoder(info, request, line)
    short = packets[:10] + packets[11:20]  # one packet (64 ms) lost: silence
    long = packets[30:]  # 0.6 s lost: a new run, whole packets skipped
    out = encoder.encode(short) + encoder.encode(long)
    steps = set(np.diff([p.timestamp for p in out]).tolist())
    assert all(step % 480 == 0 for step in steps) and 480 in steps
    assert 48 <= encoder.silence * 1000 // 24000 <= 80 and line.skipped >= 25
    assert encoder.decode_errors == 0 and encoder.delay == pytest.approx(0.0065, abs=0.002)
    # Each packet's pts is where its sound starts: 20 ms apart, less the encoder's lookahead.
    assert out[1].pts - out[0].pts == pytest.approx(0.02)


def opus_packet(ms: int, stereo: bool = False, size: int = 60) -> AudioPacket:
    config = {10: 14, 20: 15, 40: 2, 60: 3}[ms]  # CELT FB 10/20 ms, SILK NB 40/60 ms
    toc = config << 3 | (0x04 if stereo else 0)
    return AudioPacket(bytes([toc]) + bytes(size - 1), 1.0, ms / 1000)


def test_copy_only_when_the_cameras_opus_fits() -> None:
    opus = AudioInfo("opus", 48000, 2)  # what an RTSP SDP says, mono or not
    request = AudioRequest(16000, 20, max_bitrate_kbps=24)
    assert copy_problem(opus, request, opus_packet(20, size=60)) is None  # 24 kbit/s
    assert "aac" in (copy_problem(AudioInfo("aac", 16000, 1), request, opus_packet(20)) or "")
    assert "60 ms" in (copy_problem(opus, AudioRequest(16000, 60), opus_packet(20)) or "")
    assert "2 channel" in (copy_problem(opus, request, opus_packet(20, stereo=True)) or "")
    assert "kbit/s" in (copy_problem(opus, request, opus_packet(20, size=161)) or "")


# -- sound as negotiated ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("camera", "rate_khz", "ptime"),
    [("Porch", 16, 20), ("Porch", 16, 60), ("Porch", 24, 20), ("Porch", 24, 60), ("Opus", 16, 60)],
)
async def test_opus_at_the_negotiated_rate_and_packet_time(
    bridge: tuple[BridgeProcess, CameraClient],
    controller: Paired,
    camera: str,
    rate_khz: int,
    ptime: int,
) -> None:
    """AAC, and Opus in 20 ms packets when 60 ms are asked: both transcoded."""
    process, _ = bridge
    tone, codec = (AAC_TONE, "aac") if camera == "Porch" else (OPUS_TONE, "opus")
    viewer = await open_viewer(controller, camera, decode=False)
    rx, rate = audio_of(viewer), rate_khz * 1000
    try:
        assert viewer.accessory_audio_port not in (rx.port, viewer.accessory_port)
        assert viewer.response.audio_ssrc not in (None, viewer.response.video_ssrc)
        selection = AudioSelection(sample_rate_khz=rate_khz, packet_time_ms=ptime)
        await viewer.start(VIDEO, selection)
        wanted = 2.5 * 1000 / ptime  # 2.5 s of sound
        assert await rx.wait_for(lambda r: len(r.packets) >= wanted and r.sender_reports, 15)
        stats = live_audio(process, camera)
        assert await viewer.receiver.wait_for(lambda r: r.access_units >= 15, 5)
        await viewer.stop()
        bye = await rx.wait_for(lambda r: r.byes >= 1, 5)  # the stream's end, said
    finally:
        viewer.close()
    assert viewer.response.audio_ssrc is not None
    pcm = check_stream(rx, viewer.response.audio_ssrc, rate, ptime)
    found = peak_hz(pcm[DECODED // 5 :], DECODED)
    error = found / tone - 1
    print(f"{codec} -> Opus {rate_khz} kHz {ptime} ms: {len(rx.packets)} packets, "
          f"peak {found:.1f} Hz ({error * 100:+.2f} %)")  # fmt: skip
    assert abs(error) <= 0.02
    assert np.sqrt(np.mean(pcm[DECODED // 5 :] ** 2)) > 0.1  # the tone, not near-silence
    assert (stats["mode"], stats["codec_in"]) == ("transcode", codec)
    assert (stats["sample_rate"], stats["packet_time_ms"]) == (rate, ptime)
    assert stats["dropped"] == 0 and stats["decode_errors"] == 0
    assert {r.ssrc for r in rx.sender_reports} == {viewer.response.audio_ssrc}
    assert bye


# -- lip sync ----------------------------------------------------------------------------------


def slice_key(nals: list[bytes]) -> bytes | None:
    """A frame's identity: its coded slice (NAL type 1 or 5), as sent."""
    for nal in nals:
        if nal and nal[0] & 0x1F in (1, 5):
            return nal.rstrip(b"\0")
    return None


def annexb_nals(data: bytes) -> list[bytes]:
    return [n for n in data.split(b"\x00\x00\x01") if n]


class CameraClient:
    """The test's own RTSP client of a camera, playing from the start of the module (so the
    camera's sender reports have long been heard when a test looks): every packet's pts on one
    timeline, which FFmpeg derives from the camera's RTP-Info and RTCP sender reports."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.packets: dict[str, list[tuple[float, float, bytes]]] = {"video": [], "audio": []}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CameraClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        with av.open(self.url, options={"rtsp_transport": "tcp"}, timeout=10) as container:
            for packet in container.demux():
                if self._stop.is_set():
                    return
                if packet.pts is None or packet.size == 0:
                    continue
                pts = float(packet.pts * packet.time_base)
                kind = packet.stream.type
                self.packets[kind].append((time.monotonic(), pts, bytes(packet)))

    def since(self, kind: str, start: float) -> list[tuple[float, bytes]]:
        """(pts, data) of the packets that arrived after `start` (time.monotonic())."""
        return [(pts, data) for t, pts, data in list(self.packets[kind]) if t >= start]


def unique(pairs: list[tuple[float, bytes | None]]) -> dict[bytes, float]:
    seen: dict[bytes, list[float]] = {}
    for pts, key in pairs:
        if key is not None:
            seen.setdefault(key, []).append(pts)
    return {k: v[0] for k, v in seen.items() if len(v) == 1}


async def test_copied_opus_in_step_with_the_video_by_the_cameras_clock(
    bridge: tuple[BridgeProcess, CameraClient], controller: Paired
) -> None:
    process, reference = bridge
    assert reference.packets["audio"] and reference.packets["video"]
    since = time.monotonic() - 2.0  # the prebuffer's backlog is at most a GOP (1 s) old
    viewer = await open_viewer(controller, "Opus", decode=False, keep_nals=True)
    rx, rate, ptime = audio_of(viewer), 16000, 20
    try:
        # The camera sends 64 kbit/s: a controller allowing that gets its packets as they are.
        selection = AudioSelection(sample_rate_khz=16, packet_time_ms=ptime, max_bitrate_kbps=64)
        await viewer.start(VIDEO, selection)
        assert await rx.wait_for(lambda r: len(r.packets) >= 200 and r.sender_reports, 15)
        stats = live_audio(process, "Opus")
    finally:
        await viewer.stop()
        viewer.close()
    assert stats["mode"] == "copy" and stats["decode_errors"] == 0
    assert viewer.response.audio_ssrc is not None
    pcm = check_stream(rx, viewer.response.audio_ssrc, rate, ptime)
    found = peak_hz(pcm[DECODED // 5 :], DECODED)
    print(f"Opus copied: peak {found:.1f} Hz ({(found / OPUS_TONE - 1) * 100:+.2f} %)")
    assert found == pytest.approx(OPUS_TONE, rel=0.02)

    # When the camera captured each received frame and packet, by the reference's timeline...
    frames = reference.since("video", since)
    video_at = unique([(pts, slice_key(annexb_nals(data))) for pts, data in frames])
    audio_at = unique(list(reference.since("audio", since)))
    # ... and when the controller plays them, by our sender reports.
    video_reports, audio_reports = viewer.receiver.sender_reports, rx.sender_reports
    video = [
        rtp_to_ntp(ts, video_reports, 90000) - video_at[key]
        for ts, nals in viewer.receiver.units
        if (key := slice_key(nals)) in video_at
    ]
    audio = [
        rtp_to_ntp(p.timestamp, audio_reports, rate) - audio_at[p.payload]
        for p in rx.packets
        if p.payload in audio_at
    ]
    assert len(video) >= 0.8 * len(viewer.receiver.units) and len(video) >= 30
    assert len(audio) >= 0.8 * len(rx.packets)
    offset = float(np.median(audio) - np.median(video))
    print(f"Opus copied: audio vs video {offset * 1000:+.1f} ms by the camera's clock "
          f"({len(video)} frames, {len(audio)} packets)")  # fmt: skip
    assert abs(offset) <= MAX_AV_OFFSET


def beep_onsets(pcm: np.ndarray, rate: int) -> list[int]:
    """Sample indexes where a beep starts (half its level, after 30 ms of quiet)."""
    onsets, last = [], -rate
    for i in np.flatnonzero(np.abs(pcm) > 0.15):
        quiet = i >= rate // 20 and np.abs(pcm[i - rate // 20 : i - rate // 50]).max() < 0.02
        if i - last > rate // 2 and quiet:
            onsets.append(int(i))
        last = i
    return onsets


async def test_transcoded_sound_in_step_with_the_picture(
    bridge: tuple[BridgeProcess, CameraClient], controller: Paired
) -> None:
    process, _ = bridge
    drawn: list[float | None] = []
    viewer = await open_viewer(
        controller, "Demo", on_frame=lambda f: drawn.append(box_time(f.to_ndarray(format="rgb24")))
    )
    rx, rate, ptime = audio_of(viewer), 24000, 20
    try:
        await viewer.start(VIDEO, AudioSelection(sample_rate_khz=24, packet_time_ms=ptime))
        assert await rx.wait_for(lambda r: len(r.packets) >= 5.5 * 1000 / ptime, 20)
        stats = live_audio(process, "Demo")
    finally:
        await viewer.stop()
        viewer.close()
    assert stats["mode"] == "transcode"
    assert viewer.response.audio_ssrc is not None
    pcm = check_stream(rx, viewer.response.audio_ssrc, rate, ptime)
    # The picture: when the demo drew each frame (its box says, modulo its 12 s walk), against
    # when the controller shows it. The demo's clock started when it connected: that gives
    # the whole seconds the box cannot.
    started = process.camera_status("Demo")["connected_since"]
    frames = viewer.receiver.frames
    shown = [
        (rtp_to_ntp(f.rtp_timestamp, viewer.receiver.sender_reports, 90000), t)
        for f, t in zip(frames, drawn, strict=True)
        if t is not None
    ]
    assert len(shown) >= 0.9 * len(frames) >= 40
    raw = np.array([ntp - t for ntp, t in shown])
    video = raw - DEMO_PERIOD * np.round((raw - started) / DEMO_PERIOD)
    # The first second is the prebuffer's backlog, sent at once to reach the live edge (its
    # timestamps squeezed): from then on one clock for every frame.
    video = video[len(video) // 4 :]
    assert np.ptp(video) < 0.15
    video_offset = float(np.median(video))  # shown at = drawn at + video_offset
    # The sound: each beep's start, against the multiple of 1.6 s it was made at.
    ts = unwrap([p.timestamp for p in rx.packets]) + rx.packets[0].timestamp
    offsets = []
    for i in beep_onsets(pcm, DECODED):
        tick = int(ts[0] + round(i * rate / DECODED)) & 0xFFFFFFFF
        ntp = rtp_to_ntp(tick, rx.sender_reports, rate) - 0.01  # the fade-in's middle
        made = ntp - video_offset  # the demo's clock, if sound and picture agree
        offsets.append(made - round(made / BEEP_EVERY) * BEEP_EVERY)
    assert len(offsets) >= 3
    offset = float(np.median(offsets))
    print(f"demo AAC -> Opus 24 kHz: audio vs video {offset * 1000:+.1f} ms over "
          f"{len(offsets)} beeps (spread {np.ptp(offsets) * 1000:.1f} ms)")  # fmt: skip
    assert abs(offset) <= MAX_AV_OFFSET


# -- without sound, and with garbage --------------------------------------------------------


async def test_camera_without_audio_streams_as_before(
    bridge: tuple[BridgeProcess, CameraClient], controller: Paired
) -> None:
    process, _ = bridge
    accessories = await controller.pairing.list_accessories_and_characteristics()
    mics = {
        name: len(find_characteristics(
            accessories, "MUTE", service_type="MICROPHONE", aid=find_aid(accessories, name)
        ))
        for name in ("Porch", "Opus", "Yard", "Demo")
    }  # fmt: skip
    assert mics == {"Porch": 1, "Opus": 1, "Yard": 0, "Demo": 1}
    viewer = await open_viewer(controller, "Yard", decode=True)
    rx = audio_of(viewer)
    try:
        assert viewer.accessory_audio_port == rx.port  # ours echoed: no audio socket
        await viewer.start(VIDEO)  # with iOS's usual Opus selection
        assert await viewer.receiver.wait_for(lambda r: len(r.frames) >= 20, 10)
        (session,) = process.camera_status("Yard")["live_sessions"]
    finally:
        await viewer.stop()
        viewer.close()
    assert session["mode"] == "copy" and session["audio"] is None
    assert viewer.receiver.auth_failures == 0 and viewer.receiver.decode_errors == 0
    assert rx.datagrams == 0  # not a byte of sound


async def test_garbage_on_the_audio_port_is_dropped_without_touching_the_video(
    bridge: tuple[BridgeProcess, CameraClient], controller: Paired
) -> None:
    process, _ = bridge
    viewer = await open_viewer(controller, "Porch", decode=False)
    rx, rate = audio_of(viewer), 16000
    sent = 0
    try:
        await viewer.start(VIDEO, AudioSelection(sample_rate_khz=16, packet_time_ms=20))
        assert await rx.wait_for(lambda r: len(r.packets) >= 25, 10)
        units0, packets0 = viewer.receiver.access_units, len(rx.packets)
        target = ("127.0.0.1", viewer.accessory_audio_port)
        # A forger without the key (random SRTP and SRTCP), random bytes (empty to oversized).
        forger = SrtpAudioReceiver(os.urandom(16), os.urandom(14))
        await forger.start()
        assert forger.transport is not None
        rng = np.random.default_rng(7)
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            for _ in range(20):
                forger.send_rtp(target, rng.bytes(int(rng.integers(20, 200))), 1234, 110)
                rtcp = struct.pack("!BBHI", 0x81, 201, 1, 99) + rng.bytes(8)
                forger.transport.sendto(rtcp, target)  # unauthenticated RTCP
                forger.transport.sendto(rng.bytes(int(rng.integers(0, 3000))), target)
                sent += 3
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
        forger.close()
        units = viewer.receiver.access_units - units0
        packets = len(rx.packets) - packets0
        # The controller itself, with its key (talk-back's way in): these are let through.
        for i in range(10):
            rx.send_rtp(target, bytes([0x78]) + rng.bytes(40), 960 * i, 110)
        await asyncio.sleep(0.5)
        stats = live_audio(process, "Porch")
        (session,) = process.camera_status("Porch")["live_sessions"]
    finally:
        await viewer.stop()
        viewer.close()
    print(f"garbage: {sent} datagrams in {elapsed:.1f} s; meanwhile {units} frames "
          f"({units / elapsed:.1f} fps), {packets} audio packets")  # fmt: skip
    assert units >= 0.7 * FPS * elapsed  # the picture went on
    assert packets >= 0.7 * 50 * elapsed  # and so did the sound
    assert stats["talkback_packets"] == 10  # only the controller's own got through
    assert stats["rtp_rejected"] + stats["rtcp_rejected"] >= 0.5 * sent
    assert session["rtcp_rejected"] == 0  # the video port never saw any of it
    pcm = check_stream(rx, viewer.response.audio_ssrc or 0, rate, 20)
    assert peak_hz(pcm[DECODED // 5 :], DECODED) == pytest.approx(AAC_TONE, rel=0.02)
