"""HomeKit Secure Video end to end: a test home hub records a real `obscura run` (issue #9).

The hub (tests/peers/hds_hub.py) does what an Apple home hub does: it reads and parses the
recording TLVs raw, selects a configuration, sets the operating mode and recording Active
(timed writes where the characteristic asks for them), sets up a data stream, says hello,
watches MotionDetected and opens a recording when it goes true, reassembles the chunks and
acknowledges endOfStream. Everything is real: gst-rtsp-server cameras, the bridge process with
its detector, aiohomekit for HAP, our own independent HDS code on the hub's side, PyAV to read
what was recorded.

One bridge serves the module (cheap enough for two cores), with four cameras:
- Porch: a photographed person walks in and out (scenes.py, looped every CLIP_SECONDS), H.264
  with a 2 s GOP at the size the hub selects -> copied; detection on, 2 s post-roll.
- Yard: a test pattern with a 10 s GOP -> transcoded; no detection (the recording runs from the
  hub's open through a 3 s post-roll).
- Gate: the demo camera, no detection, a 60 s post-roll: a recording that runs until the hub
  closes it or goes away (close, refusals, disconnects).
- Shed: the demo camera, never given a configuration (refusal 9).

When a fragment was recorded (the lead before MotionDetected). The hub knows when each
fragment *arrived* and its media times; a frame cannot be sent before the camera produced it,
and the camera produces frames in real time. So for any fragment k whose last video sample
has media time last_k, the first fragment's first frame (media time start_0) was produced at
wall time <= arrival_k - (last_k - start_0). The smallest of these bounds over all fragments
(the live ones are tight, the prebuffer's arrive at once and are loose) is an upper bound of
when the recording's media begins, so `t_motion - bound` is a lower bound of the real lead:
checking it against 3.5 s can only be stricter than the truth.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest
from av.video.frame import PictureType

from accessories.bridge import camera_files
from tests.peers import recording_tlv_peer as rt
from tests.peers.bridge_process import ROOT, BridgeProcess, CameraSpec
from tests.peers.camera_tlv import VideoSelection
from tests.peers.hds_hub import HubCamera, TestHub
from tests.peers.hds_recording import (
    BUSY,
    CANCELLED,
    INVALID_CONFIGURATION,
    NOT_ALLOWED,
    Fragment,
    Recording,
    top_level_boxes,
)
from tests.peers.homekit import find_aid, stream_management
from tests.peers.rtsp import RtspCamera, gst_rtsp_available
from tests.peers.scenes import write_crossing_clip
from tests.peers.viewer import Viewer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not gst_rtsp_available(), reason="gst-rtsp-server is not installed"),
]

WIDTH, HEIGHT, FPS = 640, 360, 15
CLIP_SECONDS = 14.0  # the person enters 4 s into each loop and is gone ~4 s later
POST_ROLL = 2.0
FRAME = 1 / FPS
FRAGMENT_S = 4.0  # what the bridge offers (205) and the hub selects
I_FRAME = PictureType.I


# ---- the bridge and its cameras ----


@dataclass
class Rig:
    bridge: BridgeProcess
    porch: RtspCamera
    yard: RtspCamera
    streaming_since: float  # time.monotonic() when every camera was streaming

    def state_file(self, camera: str) -> Path:
        return self.bridge.workdir / "state" / f"{camera_files(camera)}.hksv.json"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("hksv-e2e")
    clip = work / "person.mp4"
    write_crossing_clip(
        clip, kind="person", width=WIDTH, height=HEIGHT, fps=FPS,
        seconds=CLIP_SECONDS, enter_at=4.0, cross_seconds=4.0,
    )  # fmt: skip
    porch = RtspCamera(width=WIDTH, height=HEIGHT, fps=FPS, gop=2 * FPS, file=clip,
                       bitrate_kbps=600)  # fmt: skip
    yard = RtspCamera(width=WIDTH, height=HEIGHT, fps=FPS, gop=10 * FPS, bitrate_kbps=300)
    demo = {"width": 320, "height": 240, "fps": 5}
    no_detect = False
    with porch, yard:
        bridge = BridgeProcess(
            work,
            [
                CameraSpec("Porch", porch.url, {"detect": {"hold_seconds": 1.0},
                                                "hksv": {"post_roll_seconds": POST_ROLL}}),
                CameraSpec("Yard", yard.url, {"detect": no_detect,
                                              "hksv": {"post_roll_seconds": 3}}),
                CameraSpec("Gate", "demo:", {**demo, "detect": no_detect,
                                             "hksv": {"post_roll_seconds": 60}}),
                CameraSpec("Shed", "demo:", {**demo, "detect": no_detect}),
            ],
            detect={"enabled": True, "fps": 5},
        )  # fmt: skip
        bridge.start(timeout=60)
        try:
            for name in ("Porch", "Yard", "Gate", "Shed"):
                bridge.wait_camera(name, timeout=60)
            yield Rig(bridge, porch, yard, time.monotonic())
        finally:
            code = bridge.stop()
        log = bridge.log_text()
        assert code == 0, log[-4000:]
        assert "Traceback" not in log, log[-8000:]


# ---- helpers ----


async def status(rig: Rig) -> dict[str, Any]:
    return await asyncio.to_thread(rig.bridge.status)


async def hksv(rig: Rig, camera: str) -> dict[str, Any]:
    cameras = (await status(rig))["cameras"]
    return next(c for c in cameras if c["name"] == camera)["hksv"]


async def eventually(probe: Callable[[], Any], what: str, timeout_s: float = 20.0) -> Any:
    """Poll an async `probe` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout_s:g} s: {what} (last: {last!r})")


def threads(rig: Rig) -> int:
    assert rig.bridge.proc is not None
    return len(os.listdir(f"/proc/{rig.bridge.proc.pid}/task"))


async def ready(hub: TestHub, name: str, **changes: Any) -> tuple[HubCamera, rt.RecordingSelection]:
    """What a hub does once the owner picks "Stream & Allow Recording": read what the camera
    supports, select a configuration and turn recording on (timed writes where asked)."""
    cam = await hub.camera(name)
    sup = await cam.supported()
    assert sup.transports == [0]  # HDS over TCP
    assert sup.recording.prebuffer_ms >= 4000 and sup.recording.trigger_options & 1
    timed = "tw" in cam.chars.selected.perms
    selection = await cam.select_recording(timed=timed, **changes)
    await cam.set_mode(homekit_active=True, recording_active=True)
    return cam, selection


def motion_index(cam: HubCamera, value: bool, after: int) -> int:
    """Index (in the hub's event log) just past the first MotionDetected == value at/after."""
    key = cam.chars.motion_detected.key
    for i, (_, k, v) in enumerate(cam.hub.events.events[after:], after):
        if k == key and bool(v) == value:
            return i + 1
    raise AssertionError("no such motion event")


async def fresh_motion(cam: HubCamera, rig: Rig, *, history_s: float = 8.0) -> tuple[float, int]:
    """A MotionDetected false -> true event with at least `history_s` of camera behind it
    (a full prebuffer): its time and the event-log index after it."""
    key = cam.chars.motion_detected.key
    after = len(cam.hub.events.events)
    now = (await cam.hub.pairing.get_characteristics([key]))[key]["value"]
    if now:
        await cam.wait_motion(False, timeout_s=30, after=after)
        after = motion_index(cam, False, after)
    for _ in range(4):
        t = await cam.wait_motion(True, timeout_s=2 * CLIP_SECONDS + 10, after=after)
        after = motion_index(cam, True, after)
        if t - rig.streaming_since >= history_s:
            return t, after
        await cam.wait_motion(False, timeout_s=30, after=after)
        after = motion_index(cam, False, after)
    raise AssertionError("no usable motion event")


# ---- reading what the hub received ----


def nal_types(sample: bytes) -> list[int]:
    """NAL unit types of one AVCC sample (4-byte lengths, as every muxer here writes)."""
    out, i = [], 0
    while i + 4 <= len(sample):
        size = int.from_bytes(sample[i : i + 4], "big")
        if size == 0 or i + 4 + size > len(sample):
            return [*out, -1]  # not AVCC: fails any check below
        out.append(sample[i + 4] & 0x1F)
        i += 4 + size
    return out


@dataclass(frozen=True)
class FragmentMedia:
    start: float  # media time of its first video sample (s)
    last: float  # … of its last video sample
    end: float  # last + that sample's duration
    samples: int
    decoded: int  # frames decoded from init + this fragment alone
    first_nals: list[int]
    first_keyflag: bool
    first_frame_key: bool
    size: tuple[int, int]

    @property
    def seconds(self) -> float:
        return self.end - self.start


def read_fragment(init: bytes, fragment: bytes) -> FragmentMedia:
    """Demux and decode one fragment with nothing but the init segment before it."""
    boxes = top_level_boxes(fragment)
    assert boxes[:2] in (["moof", "mdat"], ["styp", "moof"]), boxes
    with av.open(io.BytesIO(init + fragment), format="mp4") as container:
        video = container.streams.video[0]
        tb = float(video.time_base)
        packets = [p for p in container.demux(video) if p.size]
        frames = []
        for packet in packets:
            frames += video.codec_context.decode(packet)
        frames += video.codec_context.decode(None)
    assert packets, "a fragment without video"
    pts = [p.pts * tb for p in packets]
    last = max(packets, key=lambda p: p.pts)
    return FragmentMedia(
        start=min(pts), last=max(pts), end=(last.pts + (last.duration or 0)) * tb,
        samples=len(packets), decoded=len(frames), first_nals=nal_types(bytes(packets[0])),
        first_keyflag=packets[0].is_keyframe,
        first_frame_key=bool(frames) and frames[0].key_frame and frames[0].pict_type == I_FRAME,
        size=(frames[0].width, frames[0].height) if frames else (0, 0),
    )  # fmt: skip


@dataclass(frozen=True)
class WholeMedia:
    video_frames: int
    video_seconds: float
    size: tuple[int, int]
    audio_codec: str | None
    audio_rate: int
    audio_channels: int
    audio_frames: int
    audio_seconds: float


def read_whole(rec: Recording) -> WholeMedia:
    """init + every fragment, concatenated: what the hub stores, decoded by PyAV."""
    assert rec.init is not None
    blob = rec.init.data + b"".join(f.data for f in rec.media)
    with av.open(io.BytesIO(blob), format="mp4") as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        vframes = aframes = 0
        vspan: list[float] = []
        asamples = 0
        size = (0, 0)
        for packet in container.demux(*container.streams):
            if not packet.size:
                continue
            for frame in packet.decode():
                if packet.stream.type == "video":
                    vframes += 1
                    size = (frame.width, frame.height)
                    vspan.append(float(frame.pts * video.time_base))
                else:
                    aframes += 1
                    asamples += frame.samples
        rate = audio.codec_context.sample_rate if audio else 0
        return WholeMedia(
            video_frames=vframes, video_seconds=max(vspan) - min(vspan) + 1 / FPS,
            size=size, audio_codec=audio.codec_context.name if audio else None,
            audio_rate=rate, audio_channels=audio.codec_context.channels if audio else 0,
            audio_frames=aframes, audio_seconds=asamples / rate if rate else 0.0,
        )  # fmt: skip


def with_media(rec: Recording) -> list[Fragment]:
    """The fragments that carry media: a recording that finishes right between two fragments
    may end with an empty one that only carries endOfStream (nothing else may be empty)."""
    media = rec.media
    if media and not media[-1].data:
        media = media[:-1]
    assert all(f.data for f in media), [len(f.data) for f in rec.media]
    return media


def check_fragments(rec: Recording, fps: int, fragment_s: float) -> list[FragmentMedia]:
    """Every fragment decodes alone, starts with an IDR frame, lasts at most the fragment
    length plus one frame, and follows the previous one without a gap."""
    assert rec.init is not None and top_level_boxes(rec.init.data)[:2] == ["ftyp", "moov"]
    media = [read_fragment(rec.init.data, f.data) for f in with_media(rec)]
    frame = 1 / fps
    for i, m in enumerate(media):
        where = f"fragment {i + 1} of {len(media)}: {m}"
        assert 5 in m.first_nals and -1 not in m.first_nals, where  # an IDR access unit
        assert m.first_keyflag and m.first_frame_key, where
        assert m.decoded == m.samples, where  # decodes alone, every frame
        assert 0 < m.seconds <= fragment_s + frame + 0.01, where
        if i:
            assert abs(m.start - media[i - 1].end) <= frame + 0.01, (where, media[i - 1])
    return media


def media_lead(rec: Recording, media: list[FragmentMedia], event: float) -> float:
    """A lower bound of how long before `event` (time.monotonic) the recording's media begins
    (see the module docstring for why it is conservative)."""
    start = media[0].start
    begins_by = min(
        f.completed_at - (m.last - start) for f, m in zip(with_media(rec), media, strict=True)
    )
    return event - begins_by


# ---- 1. copy ----


async def test_copy_recording_of_a_person_walking_by(rig: Rig) -> None:
    async with TestHub.start(rig.bridge) as hub:
        cam, sel = await ready(hub, "Porch")
        assert (sel.width, sel.height, sel.fps) == (WIDTH, HEIGHT, FPS)  # the camera's own
        assert sel.fragment_ms == FRAGMENT_S * 1000 and sel.prebuffer_ms >= 4000
        await cam.watch_motion()
        ds = await cam.data_stream()
        t_motion, after = await fresh_motion(cam, rig)
        response, rec = await ds.open_recording(1, reason="motion")  # as the event arrives
        assert response.accepted, response
        await rec.wait_fragments(1, timeout_s=15)
        running = (await hksv(rig, "Porch"))["recording"]
        assert running is not None and running["mode"] == "copy", running
        await cam.wait_motion(False, timeout_s=40, after=after)
        assert await rec.wait_end(timeout_s=FRAGMENT_S + POST_ROLL + 30) == "endOfStream"
        assert rec.problems == [] and ds.problems == [], (rec.problems, ds.problems)
        assert rec.acked_at is not None and rec.after_end == 0

        media = check_fragments(rec, FPS, FRAGMENT_S)
        assert {m.size for m in media} == {(WIDTH, HEIGHT)}
        lead = media_lead(rec, media, t_motion)
        assert lead >= 3.5, (lead, media)
        # the end: after motion ended (for the last time), with the post-roll (the bridge
        # starts it a moment before the hub hears of it), not much later
        assert rec.ended_at is not None
        changes = [(t, bool(v)) for t, v in cam.motion_events() if t_motion <= t <= rec.ended_at]
        assert changes[-1][1] is False, changes
        tail = rec.ended_at - changes[-1][0]
        assert POST_ROLL - 0.5 <= tail <= POST_ROLL + FRAGMENT_S + 15, tail
        whole = read_whole(rec)
        assert whole.size == (WIDTH, HEIGHT)
        assert whole.video_frames == sum(m.samples for m in media)
        assert (whole.audio_codec, whole.audio_rate, whole.audio_channels) == ("aac", 32000, 1)
        assert whole.audio_frames > 0 and abs(whole.audio_seconds - whole.video_seconds) < 1.0

        last = await eventually(
            lambda: _last_if_idle(rig, "Porch"), "the recording is over in /status"
        )
        assert last["ended"] == "end_of_stream" and "no ack" not in last["detail"], last
        assert last["mode"] == "copy" and last["fragments"] == len(media), last
        # What the owner sees: doctor and /metrics say how the recording ended.
        doctor, metrics = await asyncio.to_thread(_doctor_and_metrics, rig)
        assert "HomeKit Secure Video: recording 640x360" in doctor, doctor
        assert "ended by end of stream" in doctor, doctor
        ends = 'obscura_hksv_recording_ends_total{camera="Porch",reason="end_of_stream"}'
        assert ends in metrics, metrics
        first = rec.media[0]
        print(
            f"\ncopy: motion->first fragment {first.completed_at - t_motion:.3f} s, open answered "
            f"in {response.at - rec.opened_at:.3f} s, media lead >= {lead:.2f} s, "
            f"fragments {[round(m.seconds, 3) for m in media]}, motion clear->end "
            f"{tail:.2f} s, {whole.video_seconds:.1f} s video / {whole.audio_seconds:.1f} s audio"
        )


def _doctor_and_metrics(rig: Rig) -> tuple[str, str]:
    doctor = subprocess.run(
        [sys.executable, "-m", "bridge", "doctor", "--config", str(rig.bridge.config)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{rig.bridge.status_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return doctor.stdout, response.read().decode()


async def _last_if_idle(rig: Rig, camera: str) -> dict[str, Any] | None:
    st = await hksv(rig, camera)
    return st["last_recording"] if st["recording"] is None and st["last_recording"] else None


# ---- 2. transcode ----


async def test_transcode_when_the_camera_gop_is_too_long(rig: Rig) -> None:
    async with TestHub.start(rig.bridge) as hub:
        cam, sel = await ready(hub, "Yard")
        assert (sel.width, sel.height) == (WIDTH, HEIGHT)
        ds = await cam.data_stream()
        t_open = time.monotonic()
        response, rec = await ds.open_recording(1, reason="motion")
        assert response.accepted, response
        await rec.wait_fragments(1, timeout_s=20)
        running = (await hksv(rig, "Yard"))["recording"]
        assert running is not None and running["mode"] == "transcode", running
        assert await rec.wait_end(timeout_s=60) == "endOfStream"
        assert rec.problems == [] and ds.problems == [], (rec.problems, ds.problems)
        media = check_fragments(rec, FPS, FRAGMENT_S)
        assert {m.size for m in media} == {(sel.width, sel.height)}
        assert len(media) >= 2  # the 10 s GOP was cut: fragments of <= 4 s
        lead = media_lead(rec, media, t_open)
        assert lead >= 3.5, (lead, media)
        whole = read_whole(rec)
        assert whole.size == (sel.width, sel.height) and whole.audio_codec == "aac"
        assert whole.audio_frames > 0
        last = await eventually(lambda: _last_if_idle(rig, "Yard"), "the recording is over")
        assert last["mode"] == "transcode" and last["ended"] == "end_of_stream", last
        print(
            f"\ntranscode: open->first fragment {rec.media[0].completed_at - t_open:.3f} s, "
            f"lead >= {lead:.2f} s, fragments {[round(m.seconds, 3) for m in media]}"
        )


# ---- 3. the hub closes mid-stream ----


async def test_hub_closes_mid_stream_and_opens_again(rig: Rig) -> None:
    base = threads(rig)
    async with TestHub.start(rig.bridge) as hub:
        cam, _ = await ready(hub, "Gate")
        ds = await cam.data_stream()
        response, rec = await ds.open_recording(1)
        assert response.accepted, response
        await rec.wait_fragments(1, timeout_s=20)
        assert (await hksv(rig, "Gate"))["recording"]["ended"] == "running"
        await ds.close_stream(1, CANCELLED)
        last = await eventually(lambda: _last_if_idle(rig, "Gate"), "recording freed")
        assert last["ended"] == "hub_closed", last

        # the same data stream records again
        response, rec2 = await ds.open_recording(2)
        assert response.accepted, response
        await rec2.wait_fragments(1, timeout_s=20)
        assert rec2.problems == [] and rec2.init is not None
        assert read_fragment(rec2.init.data, rec2.media[0].data).first_keyflag
        await ds.close_stream(2)
        await eventually(lambda: _last_if_idle(rig, "Gate"), "second recording freed")
        st = await status(rig)
        assert st["hap"]["data_streams"]["sessions"] == 1
        assert (await hksv(rig, "Gate"))["hds_sessions"] == 1
        await asyncio.sleep(0.5)
        assert ds.problems == [] and not ds.is_closed  # closing a stream keeps the connection
        await ds.close()  # the hub disconnects
        await eventually(lambda: _sessions(rig, "Gate", 0), "the HDS session is gone")
    await eventually(lambda: _threads_at_most(rig, base), "the recording threads are gone")


async def _sessions(rig: Rig, camera: str, count: int) -> bool:
    st = await status(rig)
    cam = next(c for c in st["cameras"] if c["name"] == camera)
    return st["hap"]["data_streams"]["sessions"] == count and cam["hksv"]["hds_sessions"] == count


async def _threads_at_most(rig: Rig, count: int) -> bool:
    return threads(rig) <= count


# ---- 4. refusals ----


async def test_refused_opens(rig: Rig) -> None:
    async with TestHub.start(rig.bridge) as hub:
        shed = await hub.camera("Shed")
        await shed.set_mode(homekit_active=True, recording_active=True)
        ds = await shed.data_stream()
        response, _ = await ds.open_recording(1)
        assert (response.status, response.message_status) == (6, INVALID_CONFIGURATION)

        gate, _ = await ready(hub, "Gate")
        ds = await gate.data_stream()
        await gate.set_mode(homekit_active=False)
        try:
            response, _ = await ds.open_recording(2)
            assert (response.status, response.message_status) == (6, NOT_ALLOWED)
        finally:
            await gate.set_mode(homekit_active=True)
        await gate.set_mode(recording_active=False)
        try:
            response, _ = await ds.open_recording(3)
            assert (response.status, response.message_status) == (6, NOT_ALLOWED)
        finally:
            await gate.set_mode(recording_active=True)

        response, rec = await ds.open_recording(4)
        assert response.accepted, response
        await rec.wait_fragments(1, timeout_s=20)
        response, _ = await ds.open_recording(5)  # a second open while one runs
        assert (response.status, response.message_status) == (6, BUSY)
        other = await gate.data_stream()  # … from another data stream too
        response, _ = await other.open_recording(1)
        assert (response.status, response.message_status) == (6, BUSY)
        assert rec.end is None and rec.problems == []  # the running one goes on
        await ds.close_stream(4)
        await eventually(lambda: _last_if_idle(rig, "Gate"), "recording freed")
        refused = (await hksv(rig, "Gate"))["refused"]
        assert refused.get("not_allowed", 0) >= 2 and refused.get("busy", 0) >= 2, refused
        assert (await hksv(rig, "Shed"))["refused"].get("invalid_configuration", 0) >= 1


# ---- 5. the hub goes away mid-stream ----


async def _reconnected(hub: TestHub, old: object) -> None:
    connection = hub.pairing.connection
    async with asyncio.timeout(20):  # aiohomekit reconnects by itself
        while connection.protocol in (None, old) or not connection.is_connected:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _recording_gone(rig: Rig, camera: str) -> dict[str, Any] | None:
    last = await _last_if_idle(rig, camera)
    return last if last is not None and await _sessions(rig, camera, 0) else None


async def test_hub_disconnects_mid_stream(rig: Rig) -> None:
    base = threads(rig)
    async with TestHub.start(rig.bridge) as hub:
        gate, _ = await ready(hub, "Gate")
        # (a) the HDS TCP connection drops
        ds = await gate.data_stream()
        response, rec = await ds.open_recording(1)
        assert response.accepted, response
        await rec.wait_fragments(1, timeout_s=20)
        during = threads(rig)
        await ds.close()
        last = await eventually(lambda: _recording_gone(rig, "Gate"), "freed after TCP close")
        assert last["ended"] == "connection_lost", last

        # (b) the HAP connection that set the data stream up drops: its sessions go with it
        ds = await gate.data_stream()
        response, rec = await ds.open_recording(2)
        assert response.accepted, response
        await rec.wait_fragments(1, timeout_s=20)
        old = hub.pairing.connection.protocol
        assert hub.pairing.connection.transport is not None
        hub.pairing.connection.transport.close()
        assert (await ds.wait_closed(timeout_s=15)) == "accessory"
        last = await eventually(lambda: _recording_gone(rig, "Gate"), "freed after HAP close")
        assert last["ended"] == "connection_lost", last
        await eventually(lambda: _threads_at_most(rig, base), "the recording threads are gone")
        st = await status(rig)
        assert st["media"]["busy"] == 0 and st["hap"]["data_streams"]["prepared"] == 0, st

        # the bridge goes on: snapshots, live view and a new recording on the new session
        await _reconnected(hub, old)
        await hub.refresh()
        for name in ("Gate", "Porch"):
            jpeg = await hub.pairing.image(find_aid(hub.accessories, name), 320, 180)
            assert jpeg is not None and jpeg[:2] == b"\xff\xd8", name
        sm = stream_management(hub.accessories, find_aid(hub.accessories, "Porch"))[0]
        viewer = await Viewer.open(hub.paired, sm)
        try:
            await viewer.start(VideoSelection(WIDTH, HEIGHT, FPS, max_bitrate_kbps=800))
            assert await viewer.receiver.wait_for(lambda r: len(r.frames) >= 10, 20)
            await viewer.stop()
        finally:
            viewer.close()
        ds = await gate.data_stream()
        response, rec = await ds.open_recording(3)
        assert response.accepted, response
        await rec.wait_fragments(1, timeout_s=20)
        assert rec.problems == []
        await ds.close_stream(3)
        await eventually(lambda: _last_if_idle(rig, "Gate"), "recording freed")
    print(f"\nthreads: {base} before, {during} while recording, {threads(rig)} after")


# ---- 6. a restart keeps what the hub chose ----


async def test_restart_keeps_the_selection_and_the_mode(rig: Rig) -> None:
    async with TestHub.start(rig.bridge) as hub:
        gate = await hub.camera("Gate")
        sup = await gate.supported()
        chosen = rt.RecordingSelection.from_supported(sup.recording, sup.video, sup.audio)
        chosen = dataclasses.replace(chosen, bitrate_kbps=1234, iframe_interval_ms=2000)
        written = chosen.encode()
        await gate.write_raw(gate.chars.selected, written, timed="tw" in gate.chars.selected.perms)
        mode = {"homekit_active": True, "recording_active": True, "audio_active": False,
                "event_snapshots": False, "periodic_snapshots": True}  # fmt: skip
        await gate.set_mode(**mode)
        assert await gate.read_raw(gate.chars.selected) == written

        old = hub.pairing.connection.protocol
        assert rig.bridge.stop() == 0
        state = rig.state_file("Gate")
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        saved = json.loads(state.read_text())
        assert base64.b64decode(saved["selected"]) == written and saved["audio_active"] == 0
        rig.bridge.start(timeout=60)
        for name in ("Porch", "Yard", "Gate", "Shed"):
            rig.bridge.wait_camera(name, timeout=60)
        rig.streaming_since = time.monotonic()

        await _reconnected(hub, old)
        assert await gate.read_raw(gate.chars.selected) == written
        c = gate.chars
        refs = {"homekit_active": c.homekit_active, "recording_active": c.recording_active,
                "audio_active": c.audio_active, "event_snapshots": c.event_snapshots,
                "periodic_snapshots": c.periodic_snapshots}  # fmt: skip
        keys = [ref.key for ref in refs.values() if ref is not None]
        values = await hub.pairing.get_characteristics(keys)
        got = {name: bool(values[ref.key]["value"]) for name, ref in refs.items() if ref}
        assert got == mode, got
        st = await hksv(rig, "Gate")
        assert st["configured"] and st["selected"]["bitrate_kbps"] == 1234, st
        assert st["selected"]["iframe_interval_ms"] == 2000
        assert st["mode"] == mode, st["mode"]
        # and it records with that selection
        ds = await gate.data_stream()
        response, rec = await ds.open_recording(1)
        assert response.accepted, response
        await rec.wait_fragments(1, timeout_s=20)
        await ds.close_stream(1)
        await gate.set_mode(audio_active=True, event_snapshots=True)
