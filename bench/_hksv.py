"""HKSV benchmark plumbing (issue #9): the test home hub on a bench bridge, recordings on demand.

`running_bridge` (bench/_common.py) pairs one aiohomekit controller with `obscura run`; the HKSV
benchmarks make that controller the home hub of tests/peers/hds_hub.py (`TestHub`). The hub
needs the pair-verify secret of its HAP connection to derive HDS keys, so `hksv_bridge`
installs the secret capture before the bridge is paired; `BenchHub.adopt` then wraps the
pairing (a bridge takes one pair-setup only, so the hub cannot pair a second time).

`ready_camera` does what a hub does before it records a camera: it writes the recording
selection (the camera's own size unless told otherwise) and the operating mode, and sets up a
data stream with hello. `HubRecorder.open` opens a recording (dataSend/open) and returns the
hub's collector of it (tests/peers/hds_recording.py: every fragment with its arrival times).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from bench._common import Env, running_bridge
from tests.peers.bridge_process import CameraSpec
from tests.peers.hds_hub import HubCamera, TestHub
from tests.peers.hds_recording import Recording
from tests.peers.hds_stream import DataStream, RecordingRefused
from tests.peers.homekit import EventLog
from tests.peers.pair_verify_secret import capture_pair_verify_secrets
from tests.peers.recording_tlv_peer import RecordingSelection
from tests.peers.rtsp import RtspCamera

# Camera GOPs at 15 fps: a 2 s GOP fits the hub's 4 s fragments (copied); 10 s does not
# (transcoded to the selected size, bitrate and I-frame interval).
GOP_COPY, GOP_TRANSCODE = 30, 150


def hksv_spec(
    name: str, source: str, *, post_roll: float = 60.0, prebuffer: float = 4.0, **extra: Any
) -> CameraSpec:
    """A camera with `[cameras.hksv]` (post-roll as given; recordings end at 180 s at most)."""
    hksv = {"post_roll_seconds": post_roll, "max_seconds": 180}
    return CameraSpec(name, source, {"prebuffer_seconds": prebuffer, "hksv": hksv, **extra})


class BenchHub(TestHub):
    """A TestHub on the bench's own pairing (`running_bridge` pairs; the bench closes it)."""

    @classmethod
    async def adopt(cls, env: Env) -> BenchHub:
        hub = cls(env.bridge.hap_port, env.bridge.setup_code)
        hub._paired = env.paired
        hub._events = EventLog(env.paired.pairing)
        await hub.refresh()
        return hub

    async def close(self, *, unpair: bool = False) -> None:
        """Data streams and event subscriptions; the pairing is running_bridge's to close."""
        for ds in self.streams:
            await ds.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.events.close()


@contextlib.asynccontextmanager
async def hksv_bridge(
    specs: Sequence[CameraSpec],
    cameras: Sequence[RtspCamera],
    *,
    keep: bool = False,
    detect: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[tuple[Env, BenchHub]]:
    """`running_bridge` (same arguments), with its controller playing the home hub."""
    capture_pair_verify_secrets()
    async with running_bridge(specs, cameras, keep=keep, detect=detect, env=env) as bench:
        hub = await BenchHub.adopt(bench)
        try:
            yield bench, hub
        finally:
            await hub.close()


@dataclass
class HubRecorder:
    """One camera the hub is ready to record: its selection and its data stream."""

    name: str
    camera: HubCamera
    ds: DataStream
    selection: RecordingSelection
    next_id: int = 1

    async def open(self) -> Recording:
        """dataSend/open on a new stream id; raises RecordingRefused if the bridge refuses."""
        stream_id, self.next_id = self.next_id, self.next_id + 1
        response, rec = await self.ds.open_recording(stream_id)
        if not response.accepted:
            raise RecordingRefused(response)
        return rec

    async def close(self, env: Env, rec: Recording) -> None:
        """The hub ends the recording (dataSend/close) and waits until the bridge let it go."""
        if rec.end is None:
            await self.ds.close_stream(rec.stream_id)
        await wait_recording(env, self.name, running=False)


async def ready_camera(
    hub: TestHub, name: str, *, resolution: tuple[int, int, int] | None = None
) -> HubRecorder:
    """Select a recording configuration (`resolution`, default the first offered: the
    camera's own size), turn recording on, set up a data stream and say hello."""
    camera = await hub.camera(name)
    selection = await camera.select_recording(resolution=resolution)
    await camera.set_mode(homekit_active=True, recording_active=True)
    ds = await camera.data_stream()
    return HubRecorder(name, camera, ds, selection)


async def hksv_status(env: Env, name: str) -> dict[str, Any]:
    status = (await env.camera_status(name)).get("hksv")
    if not status:
        raise RuntimeError(f"{name}: HKSV is not configured on the bridge")
    return dict(status)


async def wait_recording(env: Env, name: str, *, running: bool, timeout: float = 15.0) -> None:
    """Until the bridge's status shows a recording of `name` running (or none)."""
    deadline = time.monotonic() + timeout
    while ((await hksv_status(env, name))["recording"] is not None) != running:
        if time.monotonic() > deadline:
            state = "start" if running else "end"
            raise RuntimeError(f"{name}: the recording did not {state} within {timeout:g} s")
        await asyncio.sleep(0.1)
