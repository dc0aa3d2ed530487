"""LiveStream: one live view as HomeKit sees it, the camera's picture and (maybe) its sound.

accessories/ knows one LiveSession per SetupEndpoints; the bridge serves it with two sessions
that share nothing but the controller: H264LiveSession (video port and key) and, for a camera
with a Microphone whose controller gave audio keys, an OpusLiveSession (audio port and key).
This class only puts them together:

- both sockets are bound at once (the SetupEndpoints response carries both ports); the audio
  one first, so a failure to bind the video releases it again;
- start() starts the video, then the audio if the controller selected any; sound that cannot
  start costs the stream its sound, never its picture (a warning, then video alone);
- the video decides the stream's life: when it ends by itself (camera gone, controller silent)
  the audio is closed too and the accessory hears once. The audio ending by itself (the
  camera's sound stopped) leaves the picture running;
- the audio lines its reports up with the video's (`media_time`), see bridge/live/audio.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from accessories.backend import AudioRequest, StreamEndpoints, VideoRequest
from bridge.live.audio import OpusLiveSession, VideoClock
from bridge.live.policy import Mode
from bridge.live.session import H264LiveSession

log = logging.getLogger(__name__)

VideoFactory = Callable[[Callable[[], None]], H264LiveSession]  # on_end -> session
AudioFactory = Callable[[VideoClock], OpusLiveSession]  # the video's media_time -> session


class LiveStream:
    """Implements accessories.backend.LiveSession."""

    def __init__(
        self,
        endpoints: StreamEndpoints,
        on_end: Callable[[], None],
        *,
        video: VideoFactory,
        audio: AudioFactory | None = None,
    ) -> None:
        self.endpoints = endpoints
        self._on_end = on_end
        self.audio: OpusLiveSession | None = audio(self._video_clock) if audio else None
        try:
            self.video = video(self._video_ended)
        except BaseException:
            if self.audio is not None:
                self.audio.close()
            raise

    # -- LiveSession --------------------------------------------------------------------------

    @property
    def local_video_port(self) -> int:
        return self.video.local_video_port

    @property
    def local_audio_port(self) -> int | None:
        return self.audio.port if self.audio is not None else None

    @property
    def mode(self) -> Mode | None:
        return self.video.mode

    @property
    def closed(self) -> bool:
        return self.video.closed

    @property
    def ended(self) -> bool:
        return self.video.ended

    def stats(self) -> dict[str, Any]:
        """The video's stats with the sound's under "audio" (None: no sound sent)."""
        stats = self.video.stats()
        audio = self.audio
        stats["audio"] = audio.stats() if audio is not None and audio.mode is not None else None
        return stats

    async def start(self, request: VideoRequest, audio: AudioRequest | None = None) -> None:
        try:
            await self.video.start(request)
        except BaseException:
            await self._stop_audio()
            raise
        if self.audio is None:
            return
        if audio is None:  # the controller wants no sound: give the socket back now
            await self._stop_audio()
            return
        try:
            await self.audio.start(audio)
        except Exception as exc:
            log.warning("live %s: streaming without sound: %r", self._name, exc)
            await self._stop_audio()

    async def reconfigure(self, request: VideoRequest) -> None:
        await self.video.reconfigure(request)

    async def stop(self) -> None:
        """Stop both and release everything; idempotent, never calls on_end."""
        await asyncio.gather(self.video.stop(), self._stop_audio())

    # -- internals ----------------------------------------------------------------------------

    @property
    def _name(self) -> str:
        return self.endpoints.session_id.hex()[:8]

    def _video_clock(self, now: float) -> tuple[float, int] | None:
        video = getattr(self, "video", None)  # not built yet while the audio is
        return video.media_time(now) if video is not None else None

    def _video_ended(self) -> None:
        if self.audio is not None:
            self.audio.close()  # its socket is freed on the loop's next turn
        self._on_end()

    async def _stop_audio(self) -> None:
        if self.audio is not None:
            await self.audio.stop()
