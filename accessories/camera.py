"""CameraAccessory: a HomeKit IP camera on HAP-python, driven by a CameraBackend.

Built from HAP-python's service definitions instead of ``pyhap.camera.Camera`` (which spawns
ffmpeg and uses the lossy ``pyhap.tlv``). Services, in this order (HAP-python numbers IIDs in
the order services are added and controllers remember services by IID, so only ever append):
AccessoryInformation, [HAPProtocolInformation when standalone], MotionSensor,
CameraRTPStreamManagement x max(2, max_streams), Microphone (only with audio), then any
OccupancySensor added with ``add_occupancy_sensor``, then HomeKit Secure Video's services when
``enable_recording`` is called (recording.py), then the Doorbell service when
``enable_doorbell`` is called (doorbell.py), then the Speaker when ``enable_speaker`` is called
(sound.py; talk-back came after the rest, so it goes last and no earlier IID moves).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pyhap.accessory import Accessory
from pyhap.const import CATEGORY_CAMERA, CATEGORY_VIDEO_DOOR_BELL

from .backend import CameraBackend, CameraUnavailable, RecordingBackend
from .camera_tlv import supported_audio_config, supported_rtp_config, supported_video_config
from .doorbell import RING_HOLD, DoorbellService, RingHold
from .sound import add_sound_service
from .streams import PENDING_TIMEOUT, ClientAddr, StreamManagement, b64

if TYPE_CHECKING:
    from pathlib import Path

    from pyhap.accessory_driver import AccessoryDriver
    from pyhap.characteristic import Characteristic
    from pyhap.service import Service

    from .hds.server import DataStreamServer
    from .recording import CameraRecording, RecordingOptions

logger = logging.getLogger(__name__)

# HAP-python gives a snapshot 9 s before answering 500 and iOS gives up after 10 s; a live
# camera answers from its latest frame well within this, a stuck one must not hold the (shared,
# serialised) HAP connection for long.
SNAPSHOT_TIMEOUT = 5.0
MIN_STREAMS = 2  # iOS wants at least two stream services per camera
MAX_SNAPSHOT_SIDE = 7680


def firmware_revision() -> str:
    try:
        return metadata.version("obscura")
    except metadata.PackageNotFoundError:
        return "0.1.0"


class CameraAccessory(Accessory):
    """One camera. ``address`` is the address the HAP server is bound to; live video is sent
    from the local address of the controller's HAP connection, or from ``address``."""

    category = CATEGORY_CAMERA

    def __init__(
        self,
        driver: AccessoryDriver,
        backend: CameraBackend,
        *,
        address: str,
        aid: int | None = None,
        display_name: str | None = None,
        snapshot_timeout: float = SNAPSHOT_TIMEOUT,
        pending_timeout: float = PENDING_TIMEOUT,
    ) -> None:
        super().__init__(driver, display_name or backend.name, aid=aid)
        self.backend = backend
        self._address = address
        self._camera_up = True
        self.recording: CameraRecording | None = None
        self.doorbell: DoorbellService | None = None
        self.speaker: Service | None = None
        self._ring_hold = RingHold(RING_HOLD, self._trigger_changed)
        self._snapshot_timeout = snapshot_timeout
        caps = backend.capabilities()
        serial = hashlib.sha256(backend.name.encode()).hexdigest()[:12].upper()
        self.set_info_service(
            firmware_revision=firmware_revision(),
            manufacturer="Obscura",
            model="Obscura Camera",
            serial_number=serial,
        )

        motion = self.add_preload_service("MotionSensor", chars=["StatusActive"])
        self._motion_service = motion
        self._motion: Characteristic = motion.configure_char("MotionDetected", value=False)
        self._status_active: list[Characteristic] = [
            motion.configure_char("StatusActive", value=True)
        ]

        configs = {
            "video_config": b64(supported_video_config(caps)),
            "audio_config": b64(supported_audio_config()),
            "rtp_config": b64(supported_rtp_config()),
        }
        self.streams = [
            StreamManagement(
                self,
                index,
                backend,
                **configs,
                resolve_local_address=self._local_address,
                camera_up=self._streaming_allowed,
                pending_timeout=pending_timeout,
            )
            for index in range(max(MIN_STREAMS, caps.max_streams))
        ]
        if caps.has_audio:
            add_sound_service(self, "Microphone", backend.microphone)
        self._occupancy: dict[str, Characteristic] = {}

    def setup_message(self) -> None:
        # HAP-python prints the setup code and a QR code to stdout; the CLI owns that.
        logger.info("%s is not paired yet", self.display_name)

    def enable_recording(
        self,
        backend: RecordingBackend,
        *,
        data_streams: DataStreamServer,
        state_path: Path,
        options: RecordingOptions,
    ) -> CameraRecording:
        """Add HomeKit Secure Video (after every other service: IIDs follow the order)."""
        from .recording import CameraRecording

        connections = self.driver.http_server.connections
        self.recording = CameraRecording(
            self, backend, self.backend.capabilities(),
            data_streams=data_streams, state_path=state_path, options=options,
            linked=[self._motion_service] + [s.service for s in self.streams],
            trigger=self._recording_trigger,
            on_mode_change=self._mode_changed,
            connection_for=lambda addr: connections.get(addr) if addr else None,
            read_guards=getattr(self.driver, "read_guards", {}),
        )  # fmt: skip
        self._refresh_status_active()
        return self.recording

    def enable_doorbell(self) -> DoorbellService:
        """Make this camera a Video Doorbell (after every other service, HKSV's included:
        IIDs follow the order). A doorbell's HKSV options must say so too (205's trigger bits)."""
        self.doorbell = DoorbellService(self)
        self.category = CATEGORY_VIDEO_DOOR_BELL  # a standalone server advertises it
        return self.doorbell

    def enable_speaker(self) -> None:
        """Add the Speaker service (talk-back), after every other service: IIDs follow the
        order. The live streams then open their audio port for the controller's voice even
        without a Microphone."""
        if self.speaker is not None:
            return
        self.speaker = add_sound_service(self, "Speaker", self.backend.speaker)
        for stream in self.streams:
            stream.talkback = True

    def ring(self) -> None:
        """The doorbell was pressed: the iPhone's ring notification now, and an HKSV recording's
        trigger on for a few seconds (doorbell.py says why)."""
        if self.doorbell is None:
            raise ValueError(f"{self.display_name} is not a doorbell")
        self.doorbell.ring()
        self._ring_hold.start()
        self._trigger_changed()

    def _recording_trigger(self) -> bool:
        return self.motion_detected or self._ring_hold.active

    def _trigger_changed(self) -> None:
        if self.recording is not None:
            self.recording.set_trigger(self._recording_trigger())

    def _streaming_allowed(self) -> bool:
        return self._camera_up and (self.recording is None or self.recording.homekit_active)

    def _refresh_status_active(self) -> None:
        # The motion sensor's StatusActive follows HomeKitCameraActive too (hksv-protocol.md).
        for char in self._status_active:
            char.set_value(self._streaming_allowed())

    def _mode_changed(self) -> None:
        self._refresh_status_active()
        for stream in self.streams:
            stream.refresh()
        if not self._streaming_allowed():
            task = asyncio.get_running_loop().create_task(self.stop_all_sessions())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # ---- state pushed by the bridge ----

    @property
    def camera_available(self) -> bool:
        return self._camera_up

    def set_camera_available(self, available: bool) -> None:
        """Tell the accessory whether the camera is up; StreamingStatus and StatusActive follow."""
        available = bool(available)
        if available == self._camera_up:
            return
        logger.info("%s: camera %s", self.display_name, "up" if available else "down")
        self._camera_up = available
        for stream in self.streams:
            stream.refresh()
        self._refresh_status_active()

    def update_capabilities(self) -> None:
        """Re-read backend.capabilities() (e.g. once the camera's real size is known) and
        advertise the matching sizes. The number of streams and audio cannot change."""
        caps = self.backend.capabilities()
        value = b64(supported_video_config(caps))
        for stream in self.streams:
            stream.set_video_config(value)
        if self.recording is not None:
            self.recording.update_capabilities(caps)

    def set_motion(self, detected: bool) -> None:
        self._set_now(self._motion, bool(detected))
        self._trigger_changed()  # a ring's hold keeps it on (doorbell.py)

    @property
    def motion_detected(self) -> bool:
        return bool(self._motion.value)

    def _set_now(self, char: Characteristic, value: Any) -> None:
        """Set a sensor value and push the event at once.

        HAP-python batches ordinary events in a 0.5 s window; a person at the door must reach
        the iPhone without that delay, so these go out as immediate events.
        """
        if char.value == value:
            return
        char.set_value(value, should_notify=False)
        if self.driver is not None and getattr(self.driver, "aio_stop_event", None) is not None:
            self.publish(char.value, char, None, immediate=True)

    def add_occupancy_sensor(self, subject: str) -> None:
        """Add an OccupancySensor named ``subject`` (seam for per-subject sensors, issue #3).

        Call before the driver starts and always in the same order: IIDs follow the order.
        """
        if subject in self._occupancy:
            raise ValueError(f"{self.display_name}: occupancy sensor {subject!r} exists")
        svc = self.add_preload_service(
            "OccupancySensor", chars=["Name", "StatusActive"], unique_id=f"occupancy:{subject}"
        )
        svc.configure_char("Name", value=subject)
        active = svc.configure_char("StatusActive", value=self._streaming_allowed())
        self._status_active.append(active)
        self._occupancy[subject] = svc.configure_char("OccupancyDetected", value=0)

    def set_occupancy(self, subject: str, detected: bool) -> None:
        self._set_now(self._occupancy[subject], 1 if detected else 0)

    @property
    def occupancy_subjects(self) -> list[str]:
        return list(self._occupancy)

    # ---- snapshots ----

    async def async_get_snapshot(self, data: dict[str, Any]) -> bytes:
        """Answer POST /resource. Any exception here becomes an HTTP 500 from HAP-python
        (hap_protocol turns a failed delayed response into a generic failure response)."""
        width, height = _image_size(data)
        if not self._camera_up:
            raise CameraUnavailable(f"{self.display_name}: camera is down")
        reason = data.get("reason")
        if self.recording is not None and not self.recording.snapshot_allowed(reason):
            # Answered like any refused snapshot (HAP-python: 500); the hub asked for a kind
            # the owner turned off in the Home app.
            raise CameraUnavailable(f"{self.display_name}: snapshots (reason {reason}) are off")
        try:
            async with asyncio.timeout(self._snapshot_timeout):
                jpeg = await self.backend.snapshot(width, height)
        except CameraUnavailable as exc:
            logger.debug("%s: snapshot unavailable: %s", self.display_name, exc)
            raise
        except TimeoutError:
            logger.warning("%s: snapshot took over %gs", self.display_name, self._snapshot_timeout)
            raise
        if not jpeg:
            raise CameraUnavailable(f"{self.display_name}: empty snapshot")
        return jpeg

    # ---- sessions ----

    def connection_closed(self, client_addr: ClientAddr) -> None:
        for stream in self.streams:
            stream.connection_closed(client_addr)

    async def stop_all_sessions(self) -> None:
        """Stop every live session and wait (bounded) for their resources to be released."""
        await asyncio.gather(*(stream.stop_all() for stream in self.streams))

    async def stop(self) -> None:
        """HAP-python calls this when its driver stops."""
        self._ring_hold.cancel()
        if self.recording is not None:
            await self.recording.stop()
        await self.stop_all_sessions()

    def _local_address(self, client_addr: ClientAddr | None, ipv6: bool) -> str | None:
        """Our address as the controller reaches us, in the family the controller asked for."""
        candidates = []
        connection = self.driver.http_server.connections.get(client_addr) if client_addr else None
        if connection is not None and connection.transport is not None:
            sockname = connection.transport.get_extra_info("sockname")
            if sockname:
                candidates.append(sockname[0])
        candidates.append(self._address)
        for candidate in candidates:
            try:
                ip = ipaddress.ip_address(str(candidate).split("%", 1)[0])
            except ValueError:
                continue
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if ip.version == (6 if ipv6 else 4) and not ip.is_unspecified:
                return str(ip)
        return None


def _image_size(data: dict[str, Any]) -> tuple[int, int]:
    try:
        width, height = data["image-width"], data["image-height"]
    except (KeyError, TypeError):
        raise ValueError("snapshot request without image-width/image-height") from None
    for value in (width, height):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"snapshot size must be integers, got {width!r}x{height!r}")
        if not 0 < value <= MAX_SNAPSHOT_SIDE:
            raise ValueError(f"snapshot size out of range: {width}x{height}")
    return width, height
