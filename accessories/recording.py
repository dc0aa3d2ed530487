"""HomeKit Secure Video for one camera: the services a hub needs, and its recordings.

Adds CameraOperatingMode, CameraRecordingManagement and DataStreamTransportManagement to a
camera accessory (appended after its other services: HAP-python numbers IIDs in order and
controllers remember them), links the recording service to the motion sensor, the stream
services and the data stream service, and keeps what the Home app chose (recording_state.py).

The hub's side of a recording, as this module serves it: it reads the supported
configurations (recording_tlv.py), writes its selection (refused with -70410 when it is not
one we offered; reading it before a write fails with -70402, as hubs expect), sets the
operating mode, then sets up a data stream (SetupDataStreamTransport, answered in the write
response with a port and salt from hds/server.py) and, when MotionDetected goes true, opens a
dataSend stream, served by recording_streams.py: refused while HomeKitCameraActive or
recording Active is off (not allowed), without a selection (invalid configuration), or while
another recording of this camera runs (busy); otherwise the backend's RecordingStream is sent
by a RecordingSender that follows MotionDetected (post-roll, then endOfStream).

HomeKitCameraActive off also means no live view and no snapshots, and the motion sensor's
StatusActive follows it (a hub that sees them disagree turns the camera back on or off).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backend import RecordingBackend, RecordingRequest, VideoCapabilities
from .hap_requests import ReadRefused
from .hds.messages import CloseReason
from .hds.server import DataStreamServer
from .recording_state import load_settings, save_settings
from .recording_streams import RecordingStreams
from .recording_tlv import (
    SUPPORTED_DATA_STREAM_CONFIG,
    EventTrigger,
    SelectedRecordingConfig,
    SetupDataStreamStatus,
    check_selected,
    parse_selected_recording_config,
    parse_setup_data_stream,
    setup_data_stream_response,
    supported_audio_recording_config,
    supported_camera_recording_config,
    supported_video_recording_config,
)
from .streams import ClientAddr, b64, unb64
from .tlv8 import TLVError

if TYPE_CHECKING:
    from pyhap.accessory import Accessory
    from pyhap.service import Service

logger = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class RecordingOptions:
    """The camera's `[cameras.hksv]` settings that shape what we offer and how we record."""

    post_roll: float = 4.0  # seconds after the trigger ends
    max_seconds: float = 180.0  # a recording ends here even if the trigger lasts
    prebuffer_ms: int = 4000
    fragment_ms: int = 4000
    doorbell: bool = False  # a Video Doorbell: 205 offers the doorbell trigger too (bit 2)


class CameraRecording:
    """The HKSV services of one camera accessory (the data streams: ``self.streams``)."""

    def __init__(
        self,
        accessory: Accessory,
        backend: RecordingBackend,
        caps: VideoCapabilities,
        *,
        data_streams: DataStreamServer,
        state_path: Path,
        linked: list[Service],
        options: RecordingOptions = RecordingOptions(),
        trigger: Callable[[], bool],
        on_mode_change: Callable[[], None],
        connection_for: Callable[[ClientAddr | None], Any],
        read_guards: dict[int, Callable[[], None]],
    ) -> None:
        self.name = accessory.display_name or "camera"
        self._streams = data_streams
        self._path = state_path
        self._options = options
        self._on_mode_change = on_mode_change
        self._connection_for = connection_for
        self.settings = load_settings(state_path)
        if self.settings.native:
            width, height, fps = self.settings.native
            caps = replace(caps, native_width=width, native_height=height, native_fps=fps)
        self.caps = caps
        self.selected: SelectedRecordingConfig | None = None
        self.streams = RecordingStreams(
            self.name, backend, post_roll=options.post_roll, max_seconds=options.max_seconds,
            trigger=trigger, refusal=self._refusal, request=self._request,
        )  # fmt: skip
        self._setup_response = b64(setup_data_stream_response(SetupDataStreamStatus.GENERIC_ERROR))

        mode = accessory.add_preload_service(
            "CameraOperatingMode", chars=["PeriodicSnapshotsActive"]
        )
        self._mode = mode
        mode.configure_char("HomeKitCameraActive", value=self.settings.homekit_active,
                            setter_callback=self._set_homekit_active)  # fmt: skip
        mode.configure_char("EventSnapshotsActive", value=self.settings.event_snapshots,
                            setter_callback=self._setting("event_snapshots"))  # fmt: skip
        mode.configure_char("PeriodicSnapshotsActive", value=self.settings.periodic_snapshots,
                            setter_callback=self._setting("periodic_snapshots"))  # fmt: skip

        rec = accessory.add_preload_service("CameraRecordingManagement",
                                            chars=["RecordingAudioActive"])  # fmt: skip
        self.service = rec
        rec.configure_char("Active", value=self.settings.recording_active,
                           setter_callback=self._set_recording_active)  # fmt: skip
        rec.configure_char("RecordingAudioActive", value=self.settings.audio_active,
                           setter_callback=self._setting("audio_active"))  # fmt: skip
        self._supported = {
            "SupportedCameraRecordingConfiguration": b"",
            "SupportedVideoRecordingConfiguration": b"",
            "SupportedAudioRecordingConfiguration": b"",
        }
        self._set_supported(caps, initial=True)
        self._selected_char = rec.configure_char("SelectedCameraRecordingConfiguration",
                                                 setter_callback=self._write_selected)  # fmt: skip
        read_guards[id(self._selected_char)] = self._check_selected_read

        dsm = accessory.add_preload_service("DataStreamTransportManagement")
        dsm.configure_char("SupportedDataStreamTransportConfiguration",
                           value=b64(SUPPORTED_DATA_STREAM_CONFIG))  # fmt: skip
        dsm.configure_char("SetupDataStreamTransport", setter_callback=self._setup_data_stream,
                           getter_callback=lambda: self._setup_response)  # fmt: skip
        dsm.configure_char("Version", value="1.0")
        rec.add_linked_service(dsm)
        for service in linked:
            rec.add_linked_service(service)
        self._restore_selection()

    # ---- what the Home app chose ----

    @property
    def homekit_active(self) -> bool:
        return bool(self.settings.homekit_active)

    def snapshot_allowed(self, reason: int | None) -> bool:
        """Snapshots by reason: 0 periodic, 1 event (hubs send it); none while the camera is off."""
        if not self.homekit_active:
            return False
        if reason == 0:
            return bool(self.settings.periodic_snapshots)
        if reason == 1:
            return bool(self.settings.event_snapshots)
        return True

    def _save(self) -> None:
        try:
            save_settings(self._path, self.settings)
        except OSError as exc:
            logger.error("%s: recording settings not saved to %s: %s", self.name, self._path, exc)

    def _setting(self, name: str) -> Callable[[Any], None]:
        def setter(value: Any, sender_client_addr: ClientAddr | None = None) -> None:
            setattr(self.settings, name, 1 if value else 0)
            self._save()

        return setter

    def _set_homekit_active(self, value: Any, sender_client_addr: ClientAddr | None = None) -> None:
        active = 1 if value else 0
        if active == self.settings.homekit_active:
            return
        self.settings.homekit_active = active
        self._save()
        logger.info("%s: HomeKit camera %s", self.name, "on" if active else "off")
        if not active:
            self._stop_recording("camera turned off", CloseReason.NOT_ALLOWED)
        self._on_mode_change()

    def _set_recording_active(
        self, value: Any, sender_client_addr: ClientAddr | None = None
    ) -> None:
        self.settings.recording_active = 1 if value else 0
        self._save()
        if not value:
            self._stop_recording("recording turned off", CloseReason.NOT_ALLOWED)

    # ---- configurations ----

    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        for value in self._supported.values():
            digest.update(len(value).to_bytes(4, "big") + value)
        return digest.hexdigest()[:32]

    def _set_supported(self, caps: VideoCapabilities, *, initial: bool = False) -> bool:
        values = {
            "SupportedCameraRecordingConfiguration": supported_camera_recording_config(
                prebuffer_ms=self._options.prebuffer_ms, fragment_ms=self._options.fragment_ms,
                triggers=EventTrigger.MOTION | (
                    EventTrigger.DOORBELL if self._options.doorbell else EventTrigger(0)
                ),
            ),
            "SupportedVideoRecordingConfiguration": supported_video_recording_config(caps),
            "SupportedAudioRecordingConfiguration": supported_audio_recording_config(),
        }
        if values == self._supported:
            return False
        self._supported = values
        for char_name, value in values.items():
            if initial:
                self.service.configure_char(char_name, value=b64(value))
            else:
                self.service.get_characteristic(char_name).set_value(b64(value))
        return True

    def update_capabilities(self, caps: VideoCapabilities) -> None:
        """The camera's real size is known (or changed): offer what fits; a selection made
        for other capabilities is dropped, and the hub selects again."""
        self.caps = caps
        native = [caps.native_width, caps.native_height, caps.native_fps]
        changed = self._set_supported(caps)
        if native != self.settings.native:
            self.settings.native = native
            self._save()
        if changed and self.selected is not None:
            logger.info("%s: capabilities changed: recording configuration dropped", self.name)
            self._drop_selection()

    def _restore_selection(self) -> None:
        raw = self.settings.selected_bytes
        if raw is None:
            return
        if self.settings.fingerprint != self._fingerprint():
            logger.info("%s: saved recording configuration was for other capabilities", self.name)
            self._drop_selection()
            return
        try:
            selected = parse_selected_recording_config(raw)
            check_selected(selected, self.caps)
        except TLVError as exc:
            logger.warning("%s: saved recording configuration dropped: %s", self.name, exc)
            self._drop_selection()
            return
        self.selected = selected
        self._selected_char.set_value(b64(raw), should_notify=False)

    def _drop_selection(self) -> None:
        self.selected = None
        self._selected_char.set_value("")
        self.settings.selected = None
        self.settings.fingerprint = None
        self._save()

    def _check_selected_read(self) -> None:
        if self.selected is None:
            raise ReadRefused("no recording configuration selected yet")

    def _write_selected(self, value: Any, sender_client_addr: ClientAddr | None = None) -> None:
        try:
            raw = unb64(value, "SelectedCameraRecordingConfiguration")
            selected = parse_selected_recording_config(raw)  # TLVError (a ValueError): -70410
            check_selected(selected, self.caps)
        except ValueError:
            # HAP-python stored the refused value before calling us: reads must go on
            # returning the last valid choice (or failing, when there is none).
            previous = "" if self.selected is None else b64(self.selected.raw)
            self._selected_char.set_value(previous, should_notify=False)
            raise
        self.selected = selected
        self.settings.selected = b64(raw)
        self.settings.fingerprint = self._fingerprint()
        self._save()
        logger.info(
            "%s: hub selected %dx%d@%d %d kbps, fragments of %d ms", self.name,
            selected.width, selected.height, selected.fps, selected.bitrate_kbps,
            selected.fragment_ms,
        )  # fmt: skip

    # ---- data streams ----

    def _setup_data_stream(self, value: Any, sender_client_addr: ClientAddr | None = None) -> str:
        request = parse_setup_data_stream(unb64(value, "SetupDataStreamTransport"))
        connection = self._connection_for(sender_client_addr)
        derive = getattr(connection, "derive_key", None)
        if derive is None or derive(b"", b"") is None:
            logger.warning("%s: data stream asked on a connection without keys", self.name)
            self._setup_response = b64(
                setup_data_stream_response(SetupDataStreamStatus.GENERIC_ERROR)
            )
            return self._setup_response
        try:
            port, salt = self._streams.prepare(
                derive=derive, controller_salt=request.controller_salt,
                owner=sender_client_addr, handler=self.streams, name=f"{self.name} hds",
            )  # fmt: skip
        except ConnectionError as exc:
            logger.warning("%s: data stream refused: %s", self.name, exc)
            status = SetupDataStreamStatus.GENERIC_ERROR
            self._setup_response = b64(setup_data_stream_response(status))
            return self._setup_response
        self._setup_response = b64(
            setup_data_stream_response(SetupDataStreamStatus.SUCCESS, port, salt)
        )
        return self._setup_response

    def set_trigger(self, active: bool) -> None:
        self.streams.set_trigger(active)

    def _stop_recording(self, why: str, close: CloseReason) -> None:
        self.streams.stop_recording(why, close)

    async def stop(self) -> None:
        await self.streams.stop()

    def _refusal(self) -> tuple[CloseReason, str] | None:
        """Why the Home app's choices forbid a recording now (None: allowed)."""
        if not self.homekit_active:
            return CloseReason.NOT_ALLOWED, "HomeKit camera is off"
        if not self.settings.recording_active:
            return CloseReason.NOT_ALLOWED, "recording is off"
        if self.selected is None:
            return CloseReason.INVALID_CONFIGURATION, "no configuration selected"
        return None

    def _request(self) -> RecordingRequest:
        assert self.selected is not None
        return self.selected.to_request(bool(self.settings.audio_active))

    def status(self) -> dict[str, Any]:
        selected = self.selected
        return {
            "configured": selected is not None,
            "selected": None if selected is None else {
                "width": selected.width, "height": selected.height, "fps": selected.fps,
                "bitrate_kbps": selected.bitrate_kbps, "profile": selected.profile,
                "level": selected.level, "iframe_interval_ms": selected.iframe_interval_ms,
                "fragment_ms": selected.fragment_ms, "prebuffer_ms": selected.prebuffer_ms,
                "audio_sample_rate": selected.audio_sample_rate,
                "audio_channels": selected.audio_channels,
            },
            "mode": {
                "homekit_active": self.homekit_active,
                "recording_active": bool(self.settings.recording_active),
                "audio_active": bool(self.settings.audio_active),
                "event_snapshots": bool(self.settings.event_snapshots),
                "periodic_snapshots": bool(self.settings.periodic_snapshots),
            },
            "hds_sessions": sum(1 for s in self._streams.sessions if s.handler is self.streams),
            **self.streams.status(),
        }  # fmt: skip
