"""A HomeKit live-view viewer for tests and benchmarks: SetupEndpoints, start, receive, stop."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tests.peers.camera_tlv import (
    SetupEndpointsRequest,
    SetupEndpointsResponse,
    VideoSelection,
    reconfigure_stream_config,
    select_stream,
    setup_endpoints,
    start_stream_config,
    stop_stream_config,
)
from tests.peers.homekit import Paired, StreamManagement
from tests.peers.srtp_receiver import SrtpReceiver


@dataclass
class Viewer:
    paired: Paired
    sm: StreamManagement
    request: SetupEndpointsRequest
    response: SetupEndpointsResponse
    receiver: SrtpReceiver
    started_at: float = 0.0

    @classmethod
    async def open(cls, paired: Paired, sm: StreamManagement) -> Viewer:
        """SetupEndpoints with fresh keys; the receiver listens on the advertised port."""
        probe = SetupEndpointsRequest.new(0, 0)
        receiver = SrtpReceiver(probe.video_srtp.master_key, probe.video_srtp.master_salt)
        port = await receiver.start()
        request = SetupEndpointsRequest(
            session_id=probe.session_id,
            controller=type(probe.controller)("127.0.0.1", port, port + 1),
            video_srtp=probe.video_srtp,
            audio_srtp=probe.audio_srtp,
        )
        response = await setup_endpoints(paired.pairing, sm, request, require_write_response=True)
        return cls(paired, sm, request, response, receiver)

    @property
    def accessory_port(self) -> int:
        assert self.response.accessory is not None
        return self.response.accessory.video_port

    async def start(self, video: VideoSelection) -> None:
        self.receiver.start_receiver_reports(("127.0.0.1", self.accessory_port))
        self.started_at = time.monotonic()
        await select_stream(
            self.paired.pairing, self.sm, start_stream_config(self.request.session_id, video)
        )

    async def reconfigure(self, video: VideoSelection) -> None:
        await select_stream(
            self.paired.pairing, self.sm, reconfigure_stream_config(self.request.session_id, video)
        )

    async def stop(self) -> None:
        await select_stream(
            self.paired.pairing, self.sm, stop_stream_config(self.request.session_id)
        )
        self.receiver.stop_receiver_reports()

    def frames_of_size(self, width: int, height: int) -> int:
        return sum(1 for f in self.receiver.frames if (f.width, f.height) == (width, height))

    def close(self) -> None:
        self.receiver.close()
