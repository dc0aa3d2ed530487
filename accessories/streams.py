"""One CameraRTPStreamManagement service: SetupEndpoints → LiveSession → StreamingStatus.

Each service holds at most one session. iOS writes SetupEndpoints (we reserve a LiveSession and
answer with our address, port and SSRC; iOS reads the answer back, or gets it as a write
response when it asks for one), then SelectedRTPStreamConfiguration to start, reconfigure or
end it. StreamingStatus is derived from that state on every change, never set by hand:
UNAVAILABLE while the camera is down (or the service inactive), IN_USE from the start command
until the stream ends (stop command, session ending by itself, HAP connection closing),
AVAILABLE otherwise. A reserved but unstarted session does not make the service busy: a new
SetupEndpoints replaces it, and it is released if no start follows within PENDING_TIMEOUT.

Session operations (start, reconfigure, stop) run as tasks, one after another per session, so
a stop never overtakes the start it ends; a stop cancels a start still in progress first.

Sound: for a camera with a Microphone (capabilities().has_audio) or a Speaker (talk-back)
SetupEndpoints hands the controller's audio key, salt and port plus our audio SSRC to the
session, which binds its own audio socket (local_audio_port, reported back); START passes the
selected Opus parameters (AudioRequest). The controller's voice arrives on that socket too, in
the same key. An audio selection we cannot serve costs the stream its sound, never its
picture. With neither service everything stays as it was: no audio socket, the controller's
own audio port echoed back, no audio sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from .backend import (
    AudioRequest,
    CameraBackend,
    CameraUnavailable,
    LiveSession,
    StreamEndpoints,
    VideoRequest,
)
from .camera_tlv import (
    SelectedAudio,
    SessionCommand,
    SetupEndpointsRequest,
    SetupStatus,
    SRTPSuite,
    StreamingStatus,
    audio_request,
    parse_selected_stream_config,
    parse_setup_endpoints,
    setup_endpoints_response,
    setup_endpoints_status,
    streaming_status,
    video_request,
)
from .tlv8 import TLVError

if TYPE_CHECKING:
    from pyhap.accessory import Accessory

logger = logging.getLogger(__name__)

PENDING_TIMEOUT = 30.0  # seconds a reserved session may wait for its start command
STOP_TIMEOUT = 5.0  # seconds stop_all waits for sessions to release their resources

ClientAddr = tuple[str, int]
AddressResolver = Callable[[ClientAddr | None, bool], str | None]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise TLVError(f"{what}: expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TLVError(f"{what}: value is not valid base64") from None


def random_ssrc() -> int:
    return secrets.randbits(32) or 1


@dataclass(eq=False)
class _Live:
    """A reserved (then started) LiveSession of one stream service."""

    session_id: bytes
    ipv6: bool
    client_addr: ClientAddr | None
    session: LiveSession | None = None
    started: bool = False
    ended: bool = False
    request: VideoRequest | None = None
    last_op: asyncio.Task[None] | None = None
    start_task: asyncio.Task[None] | None = None
    expiry: asyncio.TimerHandle | None = None


class StreamManagement:
    """Owns one CameraRTPStreamManagement service of ``accessory``."""

    def __init__(
        self,
        accessory: Accessory,
        index: int,
        backend: CameraBackend,
        *,
        video_config: str,
        audio_config: str,
        rtp_config: str,
        resolve_local_address: AddressResolver,
        camera_up: Callable[[], bool],
        pending_timeout: float = PENDING_TIMEOUT,
    ) -> None:
        self.name = f"{backend.name}#{index}"
        self._backend = backend
        self._resolve = resolve_local_address
        self._camera_up = camera_up
        self._pending_timeout = pending_timeout
        self.live: _Live | None = None
        self.active = True
        self.talkback = False  # set by CameraAccessory.enable_speaker: a Speaker service
        self._setup_response = b64(setup_endpoints_status(SetupStatus.ERROR))
        self._tasks: set[asyncio.Task[None]] = set()

        svc = accessory.add_preload_service(
            "CameraRTPStreamManagement", chars=["Active"], unique_id=index
        )
        self.service = svc
        svc.configure_char("SupportedVideoStreamConfiguration", value=video_config)
        svc.configure_char("SupportedAudioStreamConfiguration", value=audio_config)
        svc.configure_char("SupportedRTPConfiguration", value=rtp_config)
        svc.configure_char(
            "StreamingStatus", value=self._status_value(), getter_callback=self._status_value
        )
        svc.configure_char(
            "SetupEndpoints",
            setter_callback=self._on_setup_endpoints,
            getter_callback=lambda: self._setup_response,
        )
        svc.configure_char("SelectedRTPStreamConfiguration", setter_callback=self._on_selected)
        # iOS expects Active on every stream service (HAP-NodeJS and HAP-python add it too).
        svc.configure_char("Active", value=1, setter_callback=self._on_active)
        self._status_char = svc.get_characteristic("StreamingStatus")

    def set_video_config(self, value: str) -> None:
        self.service.configure_char("SupportedVideoStreamConfiguration", value=value)

    # ---- status ----

    def status(self) -> StreamingStatus:
        if not self._camera_up():
            return StreamingStatus.UNAVAILABLE
        if self.live is not None and self.live.started:
            return StreamingStatus.IN_USE
        if not self.active:
            return StreamingStatus.UNAVAILABLE
        return StreamingStatus.AVAILABLE

    def _status_value(self) -> str:
        return b64(streaming_status(self.status()))

    def refresh(self) -> None:
        """Publish StreamingStatus to subscribers when it changed."""
        self._status_char.set_value(self._status_value())

    def _on_active(self, value: Any) -> None:
        self.active = bool(value)
        self.refresh()

    # ---- SetupEndpoints ----

    def _on_setup_endpoints(self, value: Any, sender_client_addr: ClientAddr | None = None) -> str:
        # Raising here makes HAP-python answer this write with an error status.
        request = parse_setup_endpoints(unb64(value, "SetupEndpoints"))
        if request.video_srtp.suite is not SRTPSuite.AES_CM_128_HMAC_SHA1_80:
            raise TLVError(
                f"SetupEndpoints: unsupported video SRTP {request.video_srtp.suite.name}"
            )
        self._setup_response = b64(self._setup(request, sender_client_addr))
        return self._setup_response

    def _setup(self, request: SetupEndpointsRequest, client_addr: ClientAddr | None) -> bytes:
        sid = request.session_id
        current = self.live
        if current is not None and current.started:
            logger.info("%s: SetupEndpoints while streaming: busy", self.name)
            return setup_endpoints_status(SetupStatus.BUSY, sid)
        if not self._camera_up() or not self.active:
            return setup_endpoints_status(SetupStatus.ERROR, sid)
        if current is not None:
            self._release(current, "replaced by a new SetupEndpoints")
        local = self._resolve(client_addr, request.ipv6)
        if local is None:
            ip = "IPv6" if request.ipv6 else "IPv4"
            logger.warning("%s: no local %s address to stream from", self.name, ip)
            return setup_endpoints_status(SetupStatus.ERROR, sid)
        # Sound only for a Microphone or a Speaker, and only with the one suite we speak.
        audio = self._has_audio() and request.audio_srtp.suite is SRTPSuite.AES_CM_128_HMAC_SHA1_80
        endpoints = StreamEndpoints(
            session_id=sid,
            controller_address=request.controller_address,
            controller_video_port=request.video_port,
            controller_audio_port=request.audio_port,
            srtp_key=request.video_srtp.key,
            srtp_salt=request.video_srtp.salt,
            video_ssrc=random_ssrc(),
            local_address=local,
            audio_srtp_key=request.audio_srtp.key if audio else b"",
            audio_srtp_salt=request.audio_srtp.salt if audio else b"",
            audio_ssrc=random_ssrc(),
        )
        live = _Live(session_id=sid, ipv6=request.ipv6, client_addr=client_addr)
        try:
            live.session = self._backend.open_live_session(
                endpoints, partial(self._on_session_end, live)
            )
        except (CameraUnavailable, OSError) as exc:
            logger.warning("%s: cannot open a live session: %s", self.name, exc)
            return setup_endpoints_status(SetupStatus.ERROR, sid)
        if live.ended:  # on_end fired before open_live_session returned
            self._enqueue(live, live.session.stop, "stop")
            return setup_endpoints_status(SetupStatus.ERROR, sid)
        self.live = live
        loop = asyncio.get_running_loop()
        live.expiry = loop.call_later(self._pending_timeout, self._expire, live)
        logger.info(
            "%s: session %s reserved for %s:%d",
            self.name, sid.hex(), request.controller_address, request.video_port,
        )  # fmt: skip
        # Without a microphone there is no audio socket: like HAP-NodeJS for video-only
        # cameras, report the controller's own audio port back.
        return setup_endpoints_response(
            request,
            local_address=local,
            video_port=live.session.local_video_port,
            audio_port=live.session.local_audio_port or request.audio_port,
            video_ssrc=endpoints.video_ssrc,
            audio_ssrc=endpoints.audio_ssrc,
        )

    def _has_audio(self) -> bool:
        """Whether this stream has an audio port: for the camera's sound (Microphone) or the
        controller's voice (Speaker), which both travel on it."""
        if self.talkback:
            return True
        try:
            return self._backend.capabilities().has_audio
        except Exception:  # a backend that cannot say has no Microphone service either
            return False

    def _audio_request(self, selected: SelectedAudio | None) -> AudioRequest | None:
        """The audio selected: None without a Microphone or Speaker, or for a selection we
        cannot serve."""
        if selected is None or not self._has_audio():
            return None
        try:
            return audio_request(selected)
        except TLVError as exc:
            logger.warning("%s: streaming without sound: %s", self.name, exc)
            return None

    def _expire(self, live: _Live) -> None:
        if not live.started and not live.ended:
            self._release(live, f"not started within {self._pending_timeout:g}s")

    # ---- SelectedRTPStreamConfiguration ----

    def _on_selected(self, value: Any) -> None:
        config = parse_selected_stream_config(unb64(value, "SelectedRTPStreamConfiguration"))
        live = self.live
        if live is None or live.session_id != config.session_id:
            if config.command is SessionCommand.END:  # already over: stopping is idempotent
                return
            raise TLVError(f"{self.name}: unknown session {config.session_id.hex()}")
        match config.command:
            case SessionCommand.START:
                if live.started:
                    raise TLVError(f"{self.name}: session already started")
                request = video_request(config.video, ipv6=live.ipv6)
                audio = self._audio_request(config.audio)
                live.started, live.request = True, request
                if live.expiry is not None:
                    live.expiry.cancel()
                self.refresh()
                logger.info("%s: start %s %s", self.name, request, audio or "without sound")
                start = partial(self._start, live, request, audio)
                live.start_task = self._enqueue(live, start, "start")
            case SessionCommand.RECONFIGURE:
                if not live.started:
                    raise TLVError(f"{self.name}: reconfigure before start")
                request = video_request(config.video, ipv6=live.ipv6, base=live.request)
                live.request = request
                logger.info("%s: reconfigure %s", self.name, request)
                self._enqueue(live, partial(self._reconfigure, live, request), "reconfigure")
            case SessionCommand.END:
                self._release(live, "ended by the controller")
            case _:
                raise TLVError(f"{self.name}: {config.command.name} is not supported")

    async def _start(self, live: _Live, request: VideoRequest, audio: AudioRequest | None) -> None:
        if live.ended or live.session is None:
            return
        if audio is None:
            await live.session.start(request)
        else:
            await live.session.start(request, audio)

    async def _reconfigure(self, live: _Live, request: VideoRequest) -> None:
        if not live.ended and live.session is not None:
            await live.session.reconfigure(request)

    # ---- ending ----

    def _detach(self, live: _Live) -> None:
        live.ended = True
        if live.expiry is not None:
            live.expiry.cancel()
        if self.live is live:
            self.live = None
            self.refresh()

    def _release(self, live: _Live, why: str) -> None:
        """We end the session: the service is free at once, the session stops in the background."""
        if live.ended:
            return
        logger.info("%s: session %s %s", self.name, live.session_id.hex(), why)
        self._detach(live)
        if live.start_task is not None and not live.start_task.done():
            live.start_task.cancel()
        if live.session is not None:
            self._enqueue(live, live.session.stop, "stop")

    def _on_session_end(self, live: _Live) -> None:
        """The backend's on_end: the session ended by itself and released its resources."""
        if not live.ended:
            logger.info("%s: session %s ended by itself", self.name, live.session_id.hex())
            self._detach(live)

    def connection_closed(self, client_addr: ClientAddr) -> None:
        """The HAP connection that set the session up is gone: nobody can stop it any more."""
        live = self.live
        if live is not None and live.client_addr == client_addr:
            self._release(live, "ended: its HAP connection closed")

    async def stop_all(self) -> None:
        """End the session and wait up to STOP_TIMEOUT for its operations to finish."""
        if self.live is not None:
            self._release(self.live, "stopped for shutdown")
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_TIMEOUT)
            for task in pending:
                logger.warning(
                    "%s: %s still running after %gs", self.name, task.get_name(), STOP_TIMEOUT
                )
                task.cancel()

    # ---- serial operations ----

    def _enqueue(
        self, live: _Live, op: Callable[[], Awaitable[None]], what: str
    ) -> asyncio.Task[None]:
        previous = live.last_op

        async def run() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            await op()

        task = asyncio.get_running_loop().create_task(run(), name=f"{self.name} {what}")
        live.last_op = task
        self._tasks.add(task)
        task.add_done_callback(partial(self._op_done, live, what))
        return task

    def _op_done(self, live: _Live, what: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        logger.warning("%s: %s failed: %r", self.name, what, exc, exc_info=exc)
        if what != "stop":
            self._release(live, f"ended: {what} failed")
