"""A real RTSP camera (gst-rtsp-server) behind `obscura run`, seen by aiohomekit.

Copy mode when the request fits the camera, transcode when it does not, and the camera dying
mid-stream: streams end cleanly, snapshots answer with an error, the other camera keeps going,
and everything comes back with the camera.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.bridge_process import BridgeProcess, CameraSpec
from tests.peers.camera_tlv import STATUS_AVAILABLE, STATUS_IN_USE, parse_streaming_status
from tests.peers.camera_tlv import VideoSelection as Video
from tests.peers.homekit import EventLog, find_aid, pair, read_tlv, stream_management
from tests.peers.rtsp import RtspCamera
from tests.peers.viewer import Viewer
from tests.test_homekit import jpeg_size


@pytest.fixture
def camera() -> Iterator[RtspCamera]:
    with RtspCamera(width=1280, height=720, fps=15, gop=15) as cam:
        yield cam


@pytest.fixture
def bridge(tmp_path: Path, camera: RtspCamera) -> Iterator[BridgeProcess]:
    process = BridgeProcess(
        tmp_path,
        [
            CameraSpec("Driveway", camera.url.replace("rtsp://", "rtsp://admin:s3cret@")),
            CameraSpec("Demo", "demo:", {"width": 320, "height": 240, "fps": 10}),
        ],
    )
    process.start()
    process.wait_camera("Driveway")
    process.wait_camera("Demo")
    yield process
    assert process.stop() == 0
    log = process.log_text()
    assert "s3cret" not in log  # camera credentials never logged
    assert "Traceback" not in log, log


async def test_copy_transcode_and_camera_death_mid_stream(
    bridge: BridgeProcess, camera: RtspCamera
) -> None:
    paired = await pair(bridge.hap_port, bridge.setup_code)
    events = EventLog(paired.pairing)
    viewers: list[Viewer] = []
    try:
        accessories = await paired.pairing.list_accessories_and_characteristics()
        driveway, demo = find_aid(accessories, "Driveway"), find_aid(accessories, "Demo")
        sm_copy, sm_transcode = stream_management(accessories, driveway)[:2]
        await events.subscribe([sm_copy.streaming_status.key, sm_transcode.streaming_status.key])

        copy = await Viewer.open(paired, sm_copy)
        viewers.append(copy)
        await copy.start(Video(1280, 720, 30, max_bitrate_kbps=2000))
        assert await copy.receiver.wait_for(lambda _: copy.frames_of_size(1280, 720) >= 15, 15)
        assert copy.receiver.auth_failures == 0
        assert copy.receiver.frames[0].key_frame

        transcode = await Viewer.open(paired, sm_transcode)
        viewers.append(transcode)
        await transcode.start(Video(640, 360, 15, max_bitrate_kbps=500))
        assert await transcode.receiver.wait_for(
            lambda _: transcode.frames_of_size(640, 360) >= 10, 15
        )
        sessions = bridge.camera_status("Driveway")["live_sessions"]
        assert sorted(s["mode"] for s in sessions) == ["copy", "transcode"]

        # The camera dies mid-stream.
        camera.kill()
        for sm in (sm_copy, sm_transcode):
            await events.wait_for(
                sm.streaming_status.key,
                lambda v: parse_streaming_status(v) != STATUS_IN_USE,
                timeout_s=20,
            )
        bridge.wait_camera("Driveway", "retrying", timeout=20)
        assert bridge.camera_status("Driveway")["live_sessions"] == []
        started = time.monotonic()
        image = await paired.pairing.image(driveway, 640, 360)
        assert image is None or not image.startswith(b"\xff\xd8")  # an error, not a JPEG
        assert time.monotonic() - started < 5  # and not a hang
        # The other camera is unaffected.
        jpeg = await paired.pairing.image(demo, 320, 240)
        assert jpeg is not None and jpeg_size(jpeg) == (320, 240)

        # The camera comes back: snapshots and live view with it.
        await asyncio.to_thread(camera.restart)
        await asyncio.to_thread(bridge.wait_camera, "Driveway", "streaming", 30)
        jpeg = await paired.pairing.image(driveway, 640, 360)
        assert jpeg is not None and jpeg_size(jpeg) == (640, 360)
        status = await read_tlv(paired.pairing, sm_copy.streaming_status.key)
        assert parse_streaming_status(status) == STATUS_AVAILABLE
        again = await Viewer.open(paired, sm_copy)
        viewers.append(again)
        await again.start(Video(1280, 720, 30, max_bitrate_kbps=2000))
        assert await again.receiver.wait_for(lambda _: again.frames_of_size(1280, 720) >= 5, 15)
        assert bridge.camera_status("Driveway")["reconnects"] == 1
    finally:
        for viewer in viewers:
            viewer.close()
        await events.close()
        await paired.unpair()


async def test_pairing_locked_out_after_repeated_wrong_codes(tmp_path: Path) -> None:
    from aiohomekit.exceptions import AuthenticationError, BusyError, UnavailableError

    process = BridgeProcess(tmp_path, [CameraSpec("Demo", "demo:", {"width": 320, "height": 240})])
    process.start()
    try:
        for _ in range(5):
            with pytest.raises(AuthenticationError):
                await pair(process.hap_port, "271-82-818")
        with pytest.raises((AuthenticationError, BusyError, UnavailableError)):
            await pair(process.hap_port, process.setup_code)  # right code, but locked out
        assert process.status()["hap"]["paired_controllers"] == 0
    finally:
        process.stop()
