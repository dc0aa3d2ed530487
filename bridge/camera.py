"""The bridge side of one camera accessory: source + snapshots + live-view sessions.

Sound: the camera's audio flows whenever its config does not say `audio = false` (recordings
use it). Whether the accessory has a Microphone service is decided before the accessory is
built (HomeKit numbers services once): `audio = true` always, `false` never, `"auto"` (the
default) when `decide_audio()` finds usable sound at start (sources/audio_probe.py says why a
probe; `demo:` has its beep, so it always does).

Talk-back: likewise a Speaker service is decided before the accessory is built:
`talkback = true` always, `false` never, `"auto"` (the default) when `decide_talkback()` finds
an ONVIF back channel in the camera's SDP. Then every live view's audio port takes the
controller's voice to the camera's TalkBack (bridge/live/talkback.py), with or without a
Microphone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from accessories.backend import (
    CameraUnavailable,
    LiveSession,
    RecordingRequest,
    RecordingStream,
    SoundLevel,
    StreamEndpoints,
    VideoCapabilities,
)
from bridge.config import CameraConfig
from bridge.live.audio import OpusLiveSession, VideoClock
from bridge.live.link import RtpTarget
from bridge.live.session import H264LiveSession
from bridge.live.stream import LiveStream
from bridge.live.talkback import TalkBack, camera_talkback
from bridge.media.camera_audio import CameraAudioInput
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
        self.sessions: list[LiveStream] = []
        self.media = media  # live Opus encodes there too
        self.snapshots_served = 0
        self.snapshot_errors = 0
        self._snapshots = Snapshots(source.frames, media)  # renders on the bridge's media pool
        # Until decide_audio(): what the config alone says (a demo always beeps).
        demo = config.source.split(":", 1)[0].lower() == "demo"
        self.has_audio = config.audio == "on" or (config.audio == "auto" and demo)
        self.audio_reason = ""
        self.microphone = SoundLevel()  # the Home app's Mute and Volume (accessories/sound.py)
        self.speaker = SoundLevel()
        self.has_speaker = False  # until decide_talkback()
        self.talkback_reason = ""
        self.talkback: TalkBack | None = None
        # Advertised before the camera first connects; refined once its stream is known.
        self._caps = VideoCapabilities(
            native_width=1920, native_height=1080, native_fps=30, has_audio=self.has_audio
        )

    async def decide_audio(self) -> bool:
        """Whether the accessory gets a Microphone service; await it before it is built."""
        mode = self.config.audio
        if mode != "auto" or self.config.source.split(":", 1)[0].lower() == "demo":
            self.audio_reason = {"on": "audio = true", "off": "audio = false"}.get(mode, "demo")
        else:
            from bridge.sources.audio_probe import probe_sound

            info, self.audio_reason = await probe_sound(self.config)
            self.has_audio = info is not None
            # Without sound nothing changes from before: no line (/status says why).
            log.log(
                logging.INFO if self.has_audio else logging.DEBUG,
                "camera %r: %s (%s)", self.name,
                "sound: Microphone service" if self.has_audio else "no Microphone service",
                self.audio_reason,
            )  # fmt: skip
        self._caps = replace(self._caps, has_audio=self.has_audio)
        return self.has_audio

    async def decide_talkback(self) -> bool:
        """Whether the accessory gets a Speaker service; await it before it is built."""
        mode = self.config.talkback
        if mode == "on":
            self.has_speaker, self.talkback_reason = True, "talkback = true"
        else:
            from bridge.sources.backchannel import probe_talkback

            info, self.talkback_reason = await probe_talkback(self.config)
            self.has_speaker = info is not None
            if self.has_speaker:
                log.info("camera %r: talk-back: Speaker service (%s)", self.name,
                         self.talkback_reason)  # fmt: skip
        if self.has_speaker:
            self.talkback = camera_talkback(self.config, self.media, self.speaker)
        self._caps = replace(self._caps, has_speaker=self.has_speaker)
        return self.has_speaker

    async def close(self) -> None:
        """End a talk in progress (its back channel is torn down)."""
        if self.talkback is not None:
            await self.talkback.stop()

    def capabilities(self) -> VideoCapabilities:
        info = self.source.info
        if info is not None:
            self._caps = VideoCapabilities(
                native_width=info.width,
                native_height=info.height,
                native_fps=max(1, round(info.fps)),
                has_audio=self.has_audio,  # fixed when the accessory was built
                has_speaker=self.has_speaker,
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

        def video(ended: Callable[[], None]) -> H264LiveSession:
            return H264LiveSession(
                subscribe=self.source.subscribe,
                stream_info=lambda: self.source.info,
                endpoints=endpoints,
                on_end=ended,
                bind_address=self.bind_address,
                mode=self.config.live_mode,
            )

        def audio(video_clock: VideoClock) -> OpusLiveSession:
            # From the live edge, about 1 s of the camera's packets at most (drop-oldest).
            return OpusLiveSession(
                lambda: self.source.subscribe_audio(from_prebuffer=False, maxsize=64),
                lambda: self.source.audio_info,
                RtpTarget.audio(endpoints),
                self.bind_address,
                video_clock=video_clock,
                executor=self.media,
                name=f"{self.name}/{endpoints.session_id.hex()[:8]}",
                level=self.microphone,
                send=self.has_audio,
                on_talkback=self.talkback.feed_opus if self.talkback is not None else None,
            )

        # Sound for a camera with a Microphone or a Speaker whose controller keyed audio.
        with_audio = (self.has_audio or self.has_speaker) and bool(endpoints.audio_srtp_key)
        session = LiveStream(endpoints, on_end, video=video, audio=audio if with_audio else None)
        self.sessions.append(session)
        return session

    def open_recording(self, request: RecordingRequest) -> RecordingStream:
        """An HKSV recording from the prebuffer on (accessories.backend.RecordingBackend)."""
        if not self.source.available:
            raise CameraUnavailable(f"camera {self.name!r} is {self.source.state}")
        from bridge.record.hksv import HksvRecording

        recording = HksvRecording(
            self.source, request, name=self.name, audio=self._recording_audio(request)
        )
        recording.start()  # now: the prebuffer is measured back from the hub's open
        return recording

    def _recording_audio(self, request: RecordingRequest) -> CameraAudioInput | None:
        """The camera's sound for an HKSV recording (None: the AAC track carries silence)."""
        info = self.source.audio_info
        if info is None or not request.audio_active:
            return None
        return CameraAudioInput(
            info,
            # From the prebuffer on: the recording starts there. Big enough for all of it.
            lambda: self.source.subscribe_audio(from_prebuffer=True, maxsize=4000),
            request.audio_sample_rate,
            request.audio_channels,
            name=self.name,
        )

    def status(self) -> dict[str, Any]:
        status = self.source.status()
        status["live_sessions"] = [
            s.stats() for s in self.sessions if not s.closed and s.mode is not None
        ]
        status["snapshots"] = {"served": self.snapshots_served, "errors": self.snapshot_errors}
        status["microphone"] = self.has_audio
        status["microphone_reason"] = self.audio_reason
        status["speaker"] = self.has_speaker
        status["speaker_reason"] = self.talkback_reason
        status["talkback"] = self.talkback.status() if self.talkback is not None else None
        return status
