"""The bridge side of one camera accessory: source + snapshots + live-view sessions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from accessories.backend import (
    CameraUnavailable,
    LiveSession,
    RecordingRequest,
    RecordingStream,
    StreamEndpoints,
    VideoCapabilities,
)
from bridge.config import CameraConfig
from bridge.live.session import H264LiveSession
from bridge.media.executor import MediaExecutor
from bridge.media.snapshot import Snapshots
from bridge.sources.base import CameraSource

log = logging.getLogger(__name__)


class BridgeCamera:
    """Implements accessories.backend.CameraBackend on top of a CameraSource."""

    def __init__(
        self,
        config: CameraConfig,
        source: CameraSource,
        bind_address: str,
        media: MediaExecutor | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.source = source
        self.bind_address = bind_address
        self.sessions: list[H264LiveSession] = []
        self.snapshots_served = 0
        self.snapshot_errors = 0
        self._snapshots = Snapshots(source.frames, media)  # renders on the bridge's media pool
        # Advertised before the camera first connects; refined once its stream is known.
        self._caps = VideoCapabilities(native_width=1920, native_height=1080, native_fps=30)

    def capabilities(self) -> VideoCapabilities:
        info = self.source.info
        if info is not None:
            self._caps = VideoCapabilities(
                native_width=info.width,
                native_height=info.height,
                native_fps=max(1, round(info.fps)),
            )
        return self._caps

    async def snapshot(self, width: int, height: int) -> bytes:
        try:
            jpeg = await self._snapshots.jpeg(self.source.available, width, height)
        except CameraUnavailable:
            self.snapshot_errors += 1
            raise
        self.snapshots_served += 1
        return jpeg

    def open_live_session(
        self, endpoints: StreamEndpoints, on_end: Callable[[], None]
    ) -> LiveSession:
        if not self.source.available:
            raise CameraUnavailable(f"camera {self.name!r} is {self.source.state}")
        self.sessions = [s for s in self.sessions if not s.closed]
        session = H264LiveSession(
            subscribe=self.source.subscribe,
            stream_info=lambda: self.source.info,
            endpoints=endpoints,
            on_end=on_end,
            bind_address=self.bind_address,
            mode=self.config.live_mode,
        )
        self.sessions.append(session)
        return session

    def open_recording(self, request: RecordingRequest) -> RecordingStream:
        """An HKSV recording from the prebuffer on (accessories.backend.RecordingBackend)."""
        if not self.source.available:
            raise CameraUnavailable(f"camera {self.name!r} is {self.source.state}")
        from bridge.record.hksv import HksvRecording

        recording = HksvRecording(self.source, request, name=self.name)
        recording.start()  # now: the prebuffer is measured back from the hub's open
        return recording

    def status(self) -> dict[str, Any]:
        status = self.source.status()
        status["live_sessions"] = [
            s.stats() for s in self.sessions if not s.closed and s.mode is not None
        ]
        status["snapshots"] = {"served": self.snapshots_served, "errors": self.snapshot_errors}
        return status
