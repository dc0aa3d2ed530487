"""HomeKit Secure Video on a standalone camera server (`[hap] standalone = true`, issue #9).

Each camera is its own HAP server there, with its own pairing, data streams and state files:
the test hub pairs with the camera itself, selects a configuration, opens a recording and gets
the prebuffer and then endOfStream after the post-roll (the demo camera has no motion sensor
events: the trigger is off from the start, so the recording is the post-roll's length). The
bridged case is test_hksv_e2e.py.
"""

from __future__ import annotations

import asyncio
import io
import stat
from collections.abc import Iterator

import av
import pytest

from tests.peers.bridge_process import BridgeProcess, CameraSpec
from tests.peers.hds_hub import TestHub


@pytest.fixture
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    demo = {"width": 320, "height": 240, "fps": 10, "hksv": {"post_roll_seconds": 2}}
    process = BridgeProcess(tmp_path_factory.mktemp("hksv-standalone"), [
        CameraSpec("Porch", "demo:", demo),
    ])  # fmt: skip
    text = process.config.read_text().replace("[hap]\n", "[hap]\nstandalone = true\n", 1)
    process.config.write_text(text)
    process.start()
    try:
        process.wait_camera("Porch")
        yield process
    finally:
        code = process.stop()
    assert code == 0, process.log_text()[-4000:]
    assert "Traceback" not in process.log_text()


async def test_a_standalone_camera_records_to_its_hub(standalone: BridgeProcess) -> None:
    await asyncio.sleep(4.5)  # a prebuffer's worth of video
    async with TestHub.start(standalone) as hub:
        cam = await hub.camera("Porch")
        await cam.select_recording()
        await cam.set_mode(homekit_active=True, recording_active=True)
        ds = await cam.data_stream()
        rec = await ds.record(stream_id=7, until_end=True, timeout_s=60)
        assert rec.problems == [] and rec.end == "endOfStream", (rec.problems, rec.end)
        assert rec.init is not None and rec.media
        # At least the prebuffer (4 s at 10 fps), decodable, at the camera's size.
        data = rec.init.data + b"".join(m.data for m in rec.media)
        with av.open(io.BytesIO(data)) as container:
            frames = list(container.decode(video=0))
        assert len(frames) >= 40 and (frames[0].width, frames[0].height) == (320, 240)
        status = (await asyncio.to_thread(standalone.camera_status, "Porch"))["hksv"]
        assert status["configured"] and status["recordings"] == 1
    files = list((standalone.workdir / "state").glob("*.hksv.json"))
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
