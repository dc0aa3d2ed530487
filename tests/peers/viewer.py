"""A HomeKit live-view viewer for tests and benchmarks: SetupEndpoints, start, receive, stop.

It listens on a video port (SrtpReceiver) and an audio port (SrtpAudioReceiver, keyed with the
audio SRTP parameters it sent), as iOS does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tests.peers.camera_tlv import (
    AudioSelection,
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
from tests.peers.srtp_receiver import SrtpAudioReceiver, SrtpReceiver


@dataclass
class Viewer:
    paired: Paired
    sm: StreamManagement
    request: SetupEndpointsRequest
    response: SetupEndpointsResponse
    receiver: SrtpReceiver
    audio: SrtpAudioReceiver | None = None
    started_at: float = 0.0

    @classmethod
    async def open(cls, paired: Paired, sm: StreamManagement, **video: Any) -> Viewer:
        """SetupEndpoints with fresh keys; the receivers listen on the advertised ports.
        `video`: options for the SrtpReceiver (decode, on_frame, keep_nals...)."""
        probe = SetupEndpointsRequest.new(0, 0)
        srtp = probe.video_srtp
        receiver = SrtpReceiver(srtp.master_key, srtp.master_salt, **video)
        audio = SrtpAudioReceiver(probe.audio_srtp.master_key, probe.audio_srtp.master_salt)
        port = await receiver.start()
        audio_port = await audio.start()
        request = SetupEndpointsRequest(
            session_id=probe.session_id,
            controller=type(probe.controller)("127.0.0.1", port, audio_port),
            video_srtp=probe.video_srtp,
            audio_srtp=probe.audio_srtp,
        )
        try:
            response = await setup_endpoints(
                paired.pairing, sm, request, require_write_response=True
            )
        except BaseException:
            receiver.close()
            audio.close()
            raise
        return cls(paired, sm, request, response, receiver, audio)

    @property
    def accessory_port(self) -> int:
        assert self.response.accessory is not None
        return self.response.accessory.video_port

    @property
    def accessory_audio_port(self) -> int:
        """The accessory's audio port (our own audio port when it has no microphone)."""
        assert self.response.accessory is not None
        return self.response.accessory.audio_port

    async def start(self, video: VideoSelection, audio: AudioSelection | None = None) -> None:
        """START with video and audio parameters (iOS always sends both; default Opus
        16 kHz / 20 ms)."""
        self.receiver.start_receiver_reports(("127.0.0.1", self.accessory_port))
        if self.audio is not None and self.accessory_audio_port != self.audio.port:
            self.audio.start_receiver_reports(("127.0.0.1", self.accessory_audio_port))
        self.started_at = time.monotonic()
        config = start_stream_config(self.request.session_id, video, audio)
        await select_stream(self.paired.pairing, self.sm, config)

    async def reconfigure(self, video: VideoSelection) -> None:
        await select_stream(
            self.paired.pairing, self.sm, reconfigure_stream_config(self.request.session_id, video)
        )

    async def stop(self) -> None:
        await select_stream(
            self.paired.pairing, self.sm, stop_stream_config(self.request.session_id)
        )
        self.receiver.stop_receiver_reports()
        if self.audio is not None:
            self.audio.stop_receiver_reports()

    def frames_of_size(self, width: int, height: int) -> int:
        return sum(1 for f in self.receiver.frames if (f.width, f.height) == (width, height))

    def close(self) -> None:
        self.receiver.close()
        if self.audio is not None:
            self.audio.close()
