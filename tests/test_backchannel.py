"""Talk-back to a camera's ONVIF RTSP back channel (issue #10, item 3: the camera side).

The camera is gst-rtsp-server's ONVIF server (tests/peers/rtsp_server.py `--backchannel`): its
back channel depayloads and decodes what we send with GStreamer's own G.711 / AAC decoders and
appends the samples to a file, so what the camera heard is checked from outside (FFT for the
tone, ±2 %). Its stderr lists the RTSP requests it received (TEARDOWN, keepalives). G.711 is
checked against FFmpeg for every int16 input; the SDP parser and RTP framing on their own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from bridge.config import CameraConfig, ConfigError, load_config
from bridge.live.talkback import TalkBack
from bridge.media.executor import MediaExecutor
from bridge.sources.backchannel import (
    BackChannelError,
    NoBackChannel,
    OnvifBackChannel,
    parse_backchannel,
    probe_backchannel,
    probe_talkback,
)
from bridge.sources.backchannel_encode import BackChannelEncoder, g711_encode
from tests.peers.rtsp import RtspCamera

pytestmark = pytest.mark.timeout(60)

TONE = 1000.0
USER, PASSWORD = "admin", "pa:ss w0rd"  # ':' and ' ' travel percent-encoded in the URL
URL_PASSWORD = "pa%3Ass%20w0rd"


def with_credentials(url: str, password: str = URL_PASSWORD) -> str:
    return url.replace("rtsp://", f"rtsp://{USER}:{password}@")


def tone(start: int, count: int, rate: int, hz: float = TONE) -> np.ndarray:
    t = (np.arange(count) + start) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


async def talk(channel: OnvifBackChannel, seconds: float, rate: int = 16000) -> None:
    """Send the tone in 20 ms chunks at real time, as a controller's audio arrives."""
    n = rate // 50
    start = time.monotonic()
    for i in range(round(seconds * 50)):
        await channel.send(tone(i * n, n, rate), rate)
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))


async def heard(cam: RtspCamera, samples: int, timeout: float = 5.0) -> np.ndarray:
    deadline = time.monotonic() + timeout
    while len(got := cam.read_backchannel()) < samples and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return got


@pytest.fixture
def camera_file(tmp_path: Path) -> Path:
    return tmp_path / "heard.s16"


# -- pure parts ------------------------------------------------------------------------------
@pytest.mark.parametrize(("law", "ffmpeg"), [("PCMU", "pcm_mulaw"), ("PCMA", "pcm_alaw")])
def test_g711_agrees_with_ffmpeg_for_every_sample(law: str, ffmpeg: str) -> None:
    x = np.arange(-32768, 32768, dtype=np.int16)
    enc = av.CodecContext.create(ffmpeg, "w")
    enc.sample_rate, enc.layout, enc.format = 8000, "mono", "s16"
    enc.open()
    frame = av.AudioFrame.from_ndarray(x[np.newaxis, :], format="s16", layout="mono")
    frame.sample_rate, frame.pts = 8000, 0
    theirs = np.frombuffer(b"".join(bytes(p) for p in enc.encode(frame)), np.uint8)
    ours = np.frombuffer(g711_encode(x, law), np.uint8)
    assert len(theirs) == len(ours) == 65536
    dec = av.CodecContext.create(ffmpeg, "r")
    dec.sample_rate, dec.layout = 8000, "mono"
    level = dec.decode(av.Packet(bytes(range(256))))[0].to_ndarray()[0].astype(np.int32)
    rank = np.searchsorted(np.unique(level), level)  # each code's position on the level scale
    # Same code, or the neighbouring level at a segment boundary (FFmpeg rounds to nearest).
    assert np.abs(rank[ours] - rank[theirs]).max() <= 1
    assert np.mean(ours != theirs) < 0.02
    # and what a camera decodes is the input, within G.711's step (clipped at the top level)
    assert np.abs(level[ours] - x).max() <= 1024


SDP_HEAD = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=cam\r\nt=0 0\r\na=control:*\r\n"
VIDEO = "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:track1\r\na=recvonly\r\n"


def test_sdp_back_channel_is_the_sendonly_audio() -> None:
    sdp = (
        SDP_HEAD + VIDEO
        + "m=audio 0 RTP/AVP 0\r\na=control:track2\r\na=recvonly\r\n"
        + "m=audio 0 RTP/AVP 97 8\r\na=rtpmap:97 G726-32/8000\r\na=ptime:40\r\n"
        + "a=control:rtsp://cam/back\r\na=sendonly\r\n"
    )  # fmt: skip
    info = parse_backchannel(sdp, "rtsp://cam/live/")
    assert (info.codec, info.payload_type, info.clock_rate, info.channels) == ("PCMA", 8, 8000, 1)
    assert info.control == "rtsp://cam/back" and info.aggregate == "rtsp://cam/live/"
    assert info.ptime_ms == 40
    relative = sdp.replace("rtsp://cam/back", "trackback")
    assert parse_backchannel(relative, "rtsp://cam/live").control == "rtsp://cam/live/trackback"

    aac = (
        SDP_HEAD + "m=audio 0 RTP/AVP 96\r\na=rtpmap:96 MPEG4-GENERIC/16000\r\n"
        "a=fmtp:96 streamtype=5; mode=AAC-hbr; config=1410; sizelength=13\r\na=sendonly\r\n"
    )
    info = parse_backchannel(aac, "rtsp://cam/")
    assert (info.codec, info.clock_rate, info.channels) == ("MPEG4-GENERIC", 16000, 2)

    with pytest.raises(NoBackChannel, match="offers no back channel"):
        parse_backchannel(SDP_HEAD + VIDEO, "rtsp://cam/")
    g726 = SDP_HEAD + "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 G726-32/8000\r\na=sendonly\r\n"
    with pytest.raises(NoBackChannel, match="G726-32/8000"):
        parse_backchannel(g726, "rtsp://cam/")


def test_rtp_packets_step_by_the_packet_time() -> None:
    enc = BackChannelEncoder("PCMU", 0, 8000, ptime_ms=20)
    packets = []
    for i in range(50):  # 1 s of 16 kHz in 30 ms chunks: chunks and packets do not line up
        packets += enc.encode(tone(i * 480, 480, 16000), 16000, now=100.0 + i * 0.03)
    assert 70 <= len(packets) <= 75  # 1.5 s at 20 ms, less the resampler's delay
    head = [(p[1], int.from_bytes(p[2:4], "big"), int.from_bytes(p[4:8], "big")) for p in packets]
    assert all(len(p) == 12 + 160 for p in packets)
    assert head[0][0] == 0x80 and all(b == 0 for b, _, _ in head[1:])  # marker, PT 0
    assert all((s2 - s1) % 65536 == 1 for (_, s1, _), (_, s2, _) in itertools.pairwise(head))
    assert all((t2 - t1) % 2**32 == 160 for (_, _, t1), (_, _, t2) in itertools.pairwise(head))
    # a new talk spurt after a pause: marker bit, timestamp jumps by the pause
    later = enc.encode(tone(0, 1600, 16000), 16000, now=100.0 + 50 * 0.03 + 2.0)
    assert later and later[0][1] == 0x80
    jump = (int.from_bytes(later[0][4:8], "big") - head[-1][2]) % 2**32
    assert 2.0 * 8000 <= jump <= 2.1 * 8000


# -- a real camera -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("codec", "auth", "rate"),
    [("pcmu", "digest", 8000), ("pcma", "basic", 8000), ("aac", None, 16000)],
)
async def test_the_camera_hears_the_tone(
    camera_file: Path, codec: str, auth: str | None, rate: int
) -> None:
    cam = RtspCamera(
        width=320, height=240, backchannel=codec, backchannel_file=camera_file,
        backchannel_rate=rate, log_requests=True, session_timeout=2,
        **({"user": USER, "password": PASSWORD, "auth": auth} if auth else {}),
    )  # fmt: skip
    await cam.astart()
    try:
        url = with_credentials(cam.url) if auth else cam.url
        info, why = await probe_backchannel(url)
        assert info is not None, why
        channel = OnvifBackChannel(url)
        await channel.open()
        assert (channel.codec, channel.sample_rate) == (
            {"pcmu": "PCMU", "pcma": "PCMA", "aac": "MPEG4-GENERIC"}[codec],
            rate,
        )
        assert channel.session_timeout == 2
        await talk(channel, 2.0)
        got = await heard(cam, int(1.8 * rate))
        keepalives = channel.keepalives
        await channel.close()
        await channel.close()  # idempotent
        await asyncio.sleep(0.3)
    finally:
        cam.stop()
    assert 1.8 * rate <= len(got) <= 2.1 * rate, len(got)
    body = got[len(got) // 10 :]  # past any start-up transient
    assert abs(peak_hz(body, rate) - TONE) <= 0.02 * TONE
    assert np.sqrt(np.mean(body.astype(np.float64) ** 2)) > 0.2 * 32768 * 0.5
    requests = [ln.split()[-1] for ln in cam.stderr.splitlines() if " request " in ln]
    probe = ["OPTIONS", "DESCRIBE"]  # then the channel's session, closed by TEARDOWN
    session = ["OPTIONS", "DESCRIBE", "SETUP", "PLAY", "TEARDOWN"]
    assert [r for r in requests if r != "GET_PARAMETER"] == probe + session, requests
    # the session said timeout=2: a keepalive every second while we talked
    assert keepalives >= 1 and requests.count("GET_PARAMETER") == keepalives
    assert URL_PASSWORD not in cam.stderr


async def test_a_camera_without_back_channel_is_a_clear_error_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with asyncio.timeout(20):
        cam = RtspCamera(width=320, height=240)  # no --backchannel: Require gets 551
        await cam.astart()
        try:
            info, why = await probe_backchannel(cam.url)
            assert info is None and "551 Option not supported" in why
            with pytest.raises(NoBackChannel, match="does not support ONVIF back channels"):
                await OnvifBackChannel(cam.url).open()

            talkback = TalkBack("Garage", lambda: OnvifBackChannel(cam.url), retry_after=60)
            with caplog.at_level(logging.WARNING, logger="bridge.live.talkback"):
                talkback.feed_pcm(tone(0, 320, 16000), 16000)  # a talk starts
                while talkback.state == "opening":  # noqa: ASYNC110 - watching a state
                    await asyncio.sleep(0.02)
                for i in range(5):  # later audio is dropped, no new RTSP session
                    talkback.feed_pcm(tone(i * 320, 320, 16000), 16000)
            status = talkback.status()
            assert status["state"] == "unavailable" and status["failures"] == 1
            assert status["dropped_unavailable"] == 5
            assert "does not support ONVIF back channels" in status["last_error"]
            lines = [r.getMessage() for r in caplog.records]
            assert len(lines) == 1 and lines[0].startswith("talk-back to Garage: "), lines
            await talkback.stop()
        finally:
            cam.stop()


async def test_wrong_or_missing_credentials_are_a_clear_error(camera_file: Path) -> None:
    cam = RtspCamera(
        width=320, height=240, backchannel="pcmu", backchannel_file=camera_file,
        user=USER, password=PASSWORD,
    )  # fmt: skip
    await cam.astart()
    try:
        wrong = with_credentials(cam.url, "not-it")
        with pytest.raises(BackChannelError) as refused:
            await OnvifBackChannel(wrong).open()
        message = str(refused.value)
        assert "refused the credentials (401 Unauthorized)" in message
        assert "not-it" not in message and USER not in message and "***@" in message
        with pytest.raises(BackChannelError, match="asks for credentials"):
            await OnvifBackChannel(cam.url).open()
        info, why = await probe_backchannel(wrong)
        assert info is None and "401" in why and "not-it" not in why
    finally:
        cam.stop()
    assert len(cam.read_backchannel()) == 0


@pytest.mark.parametrize("death", ["killed", "frozen"])
async def test_a_camera_that_dies_mid_talk_ends_the_talk_cleanly(
    camera_file: Path, caplog: pytest.LogCaptureFixture, death: str
) -> None:
    """Killed: the connection resets. Frozen (SIGSTOP: a power cut or a lost link, no reset
    comes): the keepalive, every second with this session timeout, gets no answer."""
    cam = RtspCamera(
        width=320, height=240, backchannel="pcmu", backchannel_file=camera_file,
        session_timeout=2,
    )  # fmt: skip
    await cam.astart()
    talkback = TalkBack("Porch", lambda: OnvifBackChannel(cam.url, timeout=1.0), retry_after=60)
    try:
        with caplog.at_level(logging.INFO, logger="bridge.live.talkback"):
            started = time.monotonic()
            for i in range(150):  # 3 s of talk; the camera dies after 1 s
                if i == 50:
                    if death == "killed":
                        cam.kill()
                    else:
                        assert cam.pid is not None
                        os.kill(cam.pid, signal.SIGSTOP)
                talkback.feed_pcm(tone(i * 320, 320, 16000), 16000)
                await asyncio.sleep(max(0.0, started + (i + 1) * 0.02 - time.monotonic()))
            async with asyncio.timeout(5):
                while talkback.state in ("opening", "talking"):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        status = talkback.status()
        assert status["state"] == "unavailable" and status["talks"] == 1, status
        assert status["failures"] == 1 and status["dropped_unavailable"] > 0
        why = {"killed": "closed the connection", "frozen": "no answer to GET_PARAMETER"}[death]
        assert why in status["last_error"], status
        messages = [r.getMessage() for r in caplog.records]
        assert any("back channel open (PCMU/8000)" in m for m in messages)
        assert sum("audio dropped" in m for m in messages) == 1
        assert 0.7 * 8000 <= len(cam.read_backchannel()) <= 1.2 * 8000  # the first second
    finally:
        t0 = time.monotonic()
        await talkback.stop()
        assert time.monotonic() - t0 < 3
        cam.kill()


async def test_talkback_decodes_opus_opens_on_demand_and_closes_when_quiet(
    camera_file: Path,
) -> None:
    """What the wiring will do: the controller's Opus payloads in, the camera hears the tone;
    the back channel opens with the first packet and closes (TEARDOWN) once the talk stops."""
    rate = 16000
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = rate, "mono", "s16"
    enc.open()
    payloads = []
    for i in range(75):  # 1.5 s in 20 ms packets, as the Home app sends them
        pcm = (tone(i * 320, 320, rate) * 32767).astype(np.int16)[np.newaxis, :]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts = rate, i * 320
        payloads += [bytes(p) for p in enc.encode(frame)]
    cam = RtspCamera(
        width=320, height=240, backchannel="pcmu", backchannel_file=camera_file,
        log_requests=True,
    )  # fmt: skip
    await cam.astart()
    media = MediaExecutor(workers=1, backlog=4, name="test-media")  # as the bridge runs it
    talkback = TalkBack(
        "Door", lambda: OnvifBackChannel(cam.url, media=media), media=media, idle_close=0.5
    )
    try:
        for talk_no in (1, 2):
            started = time.monotonic()
            for i, payload in enumerate(payloads):
                talkback.feed_opus(payload)
                await asyncio.sleep(max(0.0, started + (i + 1) * 0.02 - time.monotonic()))
            async with asyncio.timeout(5):
                while talkback.state != "idle":  # noqa: ASYNC110 - closes after idle_close
                    await asyncio.sleep(0.05)
            assert talkback.status()["talks"] == talk_no
            teardowns = [ln for ln in cam.stderr.splitlines() if ln.endswith("request TEARDOWN")]
            assert len(teardowns) == talk_no
        status = talkback.status()
        assert status["failures"] == 0 and status["codec"] == "PCMU/8000"
        assert status["dropped_busy"] == 0 and media.status()["completed"] > 100
        assert status["frames_sent"] == 2 * len(payloads) - status["dropped_overflow"]
        got = cam.read_backchannel()
        assert 2.6 * 8000 <= len(got) <= 3.1 * 8000, len(got)
        assert abs(peak_hz(got[800:12000], 8000) - TONE) <= 0.02 * TONE
    finally:
        await talkback.stop()
        await media.aclose()
        cam.stop()


def test_camera_probe_shows_back_channel_support(camera_file: Path) -> None:
    def probe(url: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "bridge", "camera", "probe", url, "--seconds", "0.5"],
            cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "pa%3A" not in result.stdout + result.stderr
        return result.stdout

    with RtspCamera(
        width=320, height=240, backchannel="pcma", backchannel_file=camera_file,
        user=USER, password=PASSWORD,
    ) as cam:  # fmt: skip
        out = probe(with_credentials(cam.url))
    assert "  talk-back ONVIF back channel, G.711 A-law 8000 Hz mono\n" in out, out
    with RtspCamera(width=320, height=240) as cam:
        out = probe(cam.url)
    assert "  talk-back none: it does not support ONVIF back channels (551 Option" in out, out


def test_talkback_key_in_the_camera_table(tmp_path: Path) -> None:
    def camera(extra: str, source: str = "rtsp://cam/live") -> CameraConfig:
        path = tmp_path / "obscura.toml"
        path.write_text(f'[[cameras]]\nname = "Porch"\nsource = "{source}"\n{extra}')
        return load_config(path).cameras[0]

    assert camera("").talkback == "auto"
    assert camera('talkback = "auto"').talkback == "auto"
    assert camera("talkback = true").talkback == "on"
    assert camera("talkback = false", "demo:").talkback == "off"
    for bad, problem in (
        ('talkback = "yes"', 'must be "auto", true or false'),
        ("talkback = 1", "must be a string or true or false"),
    ):
        with pytest.raises(ConfigError, match=problem) as err:
            camera(bad)
        assert err.value.key == "cameras[0].talkback"
    with pytest.raises(ConfigError, match="needs an rtsp:// source") as err:
        camera("talkback = true", "demo:")
    assert err.value.key == "cameras[0].talkback"


async def test_probe_talkback_follows_the_configuration(camera_file: Path) -> None:
    off = CameraConfig(name="A", source="rtsp://127.0.0.1:9/x", talkback="off")
    assert await probe_talkback(off) == (None, "talkback = false in its configuration")
    demo = CameraConfig(name="B", source="demo:")
    assert await probe_talkback(demo) == (None, "only RTSP cameras have an ONVIF back channel")
    cam = RtspCamera(width=320, height=240, backchannel="pcmu", backchannel_file=camera_file)
    await cam.astart()
    try:
        info, why = await probe_talkback(CameraConfig(name="C", source=cam.url))
        assert info is not None and info.codec == "PCMU" and why == "G.711 µ-law 8000 Hz mono"
    finally:
        cam.stop()
