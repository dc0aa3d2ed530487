"""aiohomekit, as the Home app would, against `obscura run` with a demo camera."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohomekit.exceptions import AuthenticationError
from PIL import Image

from tests.peers.bridge_process import BridgeProcess, CameraSpec
from tests.peers.camera_tlv import (
    STATUS_AVAILABLE,
    STATUS_IN_USE,
    parse_streaming_status,
    parse_supported_rtp,
    parse_supported_video,
)
from tests.peers.camera_tlv import VideoSelection as Video
from tests.peers.homekit import (
    EventLog,
    HapStatusError,
    Paired,
    find_aid,
    pair,
    read_tlv,
    reconnect,
    stream_management,
    write_with_response,
)
from tests.peers.viewer import Viewer


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    workdir: Path = tmp_path_factory.mktemp("bridge")
    process = BridgeProcess(
        workdir,
        [
            CameraSpec("Porch", "demo:", {"width": 640, "height": 360, "fps": 15}),
            CameraSpec("Yard", "demo:", {"width": 320, "height": 240, "fps": 10}),
        ],
    )
    process.start()
    process.wait_camera("Porch")
    process.wait_camera("Yard")
    yield process
    assert process.stop() == 0, process.log_text()
    log = process.log_text()
    assert "Traceback" not in log, log
    assert process.setup_code not in log  # secrets never logged


@pytest.fixture
async def controller(bridge: BridgeProcess) -> AsyncIterator[Paired]:
    paired = await pair(bridge.hap_port, bridge.setup_code)
    yield paired
    await paired.unpair()


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        return img.size


async def test_wrong_code_refused_then_pair_read_snapshot_and_unpair(bridge: BridgeProcess) -> None:
    with pytest.raises(AuthenticationError):
        await pair(bridge.hap_port, "111-22-333")
    paired = await pair(bridge.hap_port, bridge.setup_code)
    try:
        accessories = await paired.pairing.list_accessories_and_characteristics()
        porch, yard = find_aid(accessories, "Porch"), find_aid(accessories, "Yard")
        assert porch != yard
        assert bridge.status()["hap"]["paired_controllers"] == 1

        streams = stream_management(accessories, porch)
        assert len(streams) >= 2  # two viewers at once
        video = parse_supported_video(
            await read_tlv(paired.pairing, streams[0].supported_video.key)
        )
        sizes = {(w, h) for w, h, _ in video[0].resolutions}
        assert (640, 360) in sizes and (320, 240) in sizes
        assert video[0].codec_type == 0  # H.264
        rtp = parse_supported_rtp(await read_tlv(paired.pairing, streams[0].supported_rtp.key))
        assert rtp == [0]  # AES_CM_128_HMAC_SHA1_80
        status = await read_tlv(paired.pairing, streams[0].streaming_status.key)
        assert parse_streaming_status(status) == STATUS_AVAILABLE

        for aid, (w, h) in ((porch, (640, 360)), (porch, (320, 180)), (yard, (320, 240))):
            jpeg = await paired.pairing.image(aid, w, h)
            assert jpeg is not None and jpeg_size(jpeg) == (w, h)
        data = dict(paired.pairing_data)
    finally:
        await paired.unpair()
    assert bridge.status()["hap"]["paired_controllers"] == 0
    stale = await reconnect(data)
    try:
        with pytest.raises(Exception):  # noqa: B017 - any refusal: the pairing is gone
            await stale.pairing.list_accessories_and_characteristics()
    finally:
        await stale.close()


async def test_live_view_start_reconfigure_stop_and_two_viewers(
    bridge: BridgeProcess, controller: Paired
) -> None:
    accessories = await controller.pairing.list_accessories_and_characteristics()
    porch = find_aid(accessories, "Porch")
    first_sm, second_sm = stream_management(accessories, porch)[:2]
    events = EventLog(controller.pairing)
    await events.subscribe([first_sm.streaming_status.key])

    first = await Viewer.open(controller, first_sm)
    second = await Viewer.open(controller, second_sm)
    try:
        assert first.response.status == 0 and first.response.video_ssrc
        await first.start(Video(640, 360, 15, max_bitrate_kbps=800))
        assert await first.receiver.wait_for(lambda r: len(r.frames) >= 10, 10)
        assert first.receiver.auth_failures == 0
        assert first.frames_of_size(640, 360) >= 10
        assert first.receiver.ssrcs == {first.response.video_ssrc}
        assert first.receiver.frames[0].key_frame
        in_use = await read_tlv(controller.pairing, first_sm.streaming_status.key)
        assert parse_streaming_status(in_use) == STATUS_IN_USE
        session = bridge.camera_status("Porch")["live_sessions"][0]
        assert session["mode"] == "copy"  # the camera's own size and fps: no re-encoding

        # A second viewer at a smaller size, at the same time: transcoded for it alone.
        await second.start(Video(320, 180, 15, max_bitrate_kbps=300))
        assert await second.receiver.wait_for(lambda _: second.frames_of_size(320, 180) >= 5, 15)
        modes = sorted(s["mode"] for s in bridge.camera_status("Porch")["live_sessions"])
        assert modes == ["copy", "transcode"]
        before = len(first.receiver.frames)
        assert await first.receiver.wait_for(lambda r: len(r.frames) > before + 5, 10)

        # Reconfigure the first viewer to 480x270: new frames come at the new size.
        await first.reconfigure(Video(480, 270, 15, max_bitrate_kbps=400))
        assert await first.receiver.wait_for(lambda _: first.frames_of_size(480, 270) >= 5, 15)
        assert first.receiver.ssrcs == {first.response.video_ssrc}  # same stream, resized

        # Stop: packets stop, StreamingStatus returns to available (with an event).
        await first.stop()
        await events.wait_for(
            first_sm.streaming_status.key,
            lambda v: parse_streaming_status(v) == STATUS_AVAILABLE,
            timeout_s=10,
        )
        await asyncio.sleep(0.5)
        stopped_at = first.receiver.rtp_packets
        await asyncio.sleep(1.0)
        assert first.receiver.rtp_packets == stopped_at
        assert second.receiver.last_packet_at is not None
        await second.stop()
        await asyncio.sleep(0.5)
        assert bridge.camera_status("Porch")["live_sessions"] == []
    finally:
        first.close()
        second.close()
        await events.close()


@pytest.mark.parametrize(
    "garbage",
    ["", "AAAA", "////", "not base64 at all!", "AQ==", "ARBmb28=", "AwEAAQ=="],
)
async def test_garbage_tlv_writes_get_an_error_status(
    bridge: BridgeProcess, controller: Paired, garbage: str
) -> None:
    accessories = await controller.pairing.list_accessories_and_characteristics()
    sm = stream_management(accessories, find_aid(accessories, "Yard"))[0]
    for key in (sm.setup_endpoints.key, sm.selected_config.key):
        with pytest.raises(HapStatusError) as err:
            await write_with_response(controller.pairing, key, garbage)
        assert err.value.status < 0
    # Still healthy afterwards.
    jpeg = await controller.pairing.image(find_aid(accessories, "Yard"), 320, 240)
    assert jpeg is not None and jpeg_size(jpeg) == (320, 240)
