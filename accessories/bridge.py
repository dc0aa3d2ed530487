"""Assembly of the HomeKit side: driver, bridge, one CameraAccessory per camera.

Bridge or standalone? HAP-python serves every request on one asyncio loop and answers most of
them synchronously; only a snapshot (POST /resource) runs as a task, and while it runs the
connection that asked holds all its later requests (hap_protocol stops reading until the
delayed response is sent, for up to RESPONSE_TIMEOUT = 9 s). A controller keeps one HAP
connection per accessory server, so behind a bridge one slow camera's snapshot delays that
controller's reads and writes for every other camera, SetupEndpoints included. As standalone
accessories each camera has its own server, port and connection. Choice: a bridge by default
(one pairing, one port, one mDNS record), made safe by snapshots that come from the latest
frame, fail at once when the camera is known down and time out after 5 s; standalone servers
(``standalone=True``: one server, state file, setup id and port per camera, same setup code)
for many or unreliable cameras. Both are built from the same pieces, so both are supported.

Pair-setup lockout (HAP-python 5.2, checked in accessory_driver/hap_handler): each wrong setup
code (failed SRP proof) counts; after MAX_FAILED_PAIRING_ATTEMPTS = 5 in a row pair-setup is
locked for PAIRING_LOCKOUT_SECONDS = 60 and every pair-setup request, even with the right code,
gets M2 + kTLVError_Busy. The count resets on a successful pairing and when a lockout starts,
does not decay with time, and lives in memory only (a restart clears it). Once paired,
pair-setup answers kTLVError_Unavailable.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import ifaddr  # zeroconf's own dependency: lists interface addresses without any traffic
from pyhap.accessory import Accessory, Bridge
from pyhap.const import CATEGORY_BRIDGE, CATEGORY_CAMERA, CATEGORY_VIDEO_DOOR_BELL, STANDALONE_AID

from .backend import CameraBackend, RecordingBackend
from .camera import CameraAccessory, firmware_revision
from .hap_access import CheckedAccessDriver
from .hap_connections import ConnectionLimits, GuardedHAPServer, GuardedProtocol
from .hap_http import CheckedProtocol
from .hds.server import DataStreamServer
from .recording import CameraRecording, RecordingOptions
from .setup_payload import load_setup_id, setup_uri, validate_setup_code
from .srp import PaddedSrpServer

logger = logging.getLogger(__name__)

BRIDGE_FILES = "homekit-bridge"


def aid_for_name(name: str) -> int:
    """Stable accessory id for a bridged camera, derived from its name (renaming = new
    accessory to HomeKit). 31 bits: controllers handle them, collisions are ~1 in 2**31."""
    value = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big")
    aid = 2 + value % (2**31 - 2)
    return 8 if aid == 7 else aid  # HAP-python avoids aid 7 (its issue #61)


def camera_files(name: str) -> str:
    """Stem of a standalone camera server's state and setup-id files."""
    return f"homekit-camera-{aid_for_name(name):08x}"


def interface_addresses() -> list[str]:
    """This host's IPv4 addresses worth advertising (not loopback, not link-local)."""
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                addr = ipaddress.ip_address(ip.ip)
                if not (addr.is_loopback or addr.is_link_local) and str(addr) not in found:
                    found.append(str(addr))
    return found


class _ObscuraProtocol(CheckedProtocol, GuardedProtocol):
    """A capped connection (hap_connections.py) whose requests are checked (hap_http.py)."""


class _AnyPortServer(GuardedHAPServer):
    """Capped connections (hap_connections.py) with checked requests (hap_http.py); binds
    port 0 (an ephemeral port, for tests) and reports the real port to the state before the
    driver advertises it."""

    async def async_start(self, loop: asyncio.AbstractEventLoop) -> None:
        # GuardedHAPServer.async_start with _ObscuraProtocol instead of GuardedProtocol.
        self.loop = loop
        self.server = await loop.create_server(
            lambda: _ObscuraProtocol(loop, self.connections, self.accessory_handler, self.guard),
            self._addr_port[0],
            self._addr_port[1],
        )
        self.async_cleanup_connections()
        self.accessory_handler.state.port = self.server.sockets[0].getsockname()[1]


class ObscuraDriver(CheckedAccessDriver):
    """AccessoryDriver with a private state file (0600), a setup id kept across restarts,
    port 0 support, HAP connection-loss notifications for the cameras, and HAP's rules for
    requests (permissions, a status per id, 4xx for malformed requests: hap_access.py)."""

    def __init__(
        self,
        *,
        address: str,
        port: int,
        state_stem: Path,
        setup_code: str,
        loop: asyncio.AbstractEventLoop,
        advertise: bool,
        advertised_address: str | list[str] | None = None,
        connection_limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(
            address=address,  # explicit: HAP-python would otherwise probe a public address
            port=port,
            persist_file=str(state_stem.with_name(state_stem.name + ".state")),
            pincode=validate_setup_code(setup_code).encode("ascii"),
            loop=loop,
            advertise=advertise,
            advertised_address=advertised_address,
        )
        self.state.setup_id = load_setup_id(state_stem.with_name(state_stem.name + ".setup-id"))
        # Port 0: State turns it into its default port; bind an ephemeral one instead.
        self.http_server = _AnyPortServer((address, port), self, connection_limits)
        self.cameras: list[CameraAccessory] = []
        # HomeKit Data Streams (HKSV) bind where HAP does; sessions end with their connection.
        self.data_streams = DataStreamServer(address)

    def setup_srp_verifier(self) -> None:
        self._srp_verifier = PaddedSrpServer(self.state.pincode)

    def persist(self) -> None:
        # HAP-python writes through a mkstemp file (0600) then renames it; enforce the mode
        # anyway: the file holds the accessory's long-term private key.
        super().persist()
        _make_private(Path(self.persist_file))

    def load(self) -> None:
        _make_private(Path(self.persist_file))
        super().load()

    def connection_lost(self, client: Any) -> None:
        super().connection_lost(client)
        self.data_streams.connection_closed(client)
        for camera in self.cameras:
            camera.connection_closed(client)

    def setup_uri(self) -> str:
        assert self.accessory is not None
        return setup_uri(
            self.state.pincode.decode("ascii"), self.state.setup_id, self.accessory.category
        )


class ObscuraBridge(Bridge):
    def setup_message(self) -> None:
        # HAP-python prints the setup code and a QR code to stdout; the CLI owns that.
        logger.info("%s is not paired yet", self.display_name)


def _make_private(path: Path) -> None:
    if path.exists() and path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)


def _prepare(
    state_dir: Path | str, address: str, advertise: bool, advertised: str | list[str] | None
) -> tuple[Path, str | list[str] | None]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"HomeKit address must be an IP address, got {address!r}") from None
    if advertise and ip.is_unspecified and not advertised:
        advertised = interface_addresses()
        if not advertised:
            raise ValueError(f"listening on {address}: set an address to advertise")
    path = Path(state_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path, advertised


def _attach(driver: ObscuraDriver, top: Accessory, cameras: list[CameraAccessory]) -> None:
    driver.cameras = cameras
    driver.add_accessory(top)  # loads the state file, or creates it


def build_driver(
    name: str,
    address: str,
    port: int,
    setup_code: str,
    state_dir: Path | str,
    advertise: bool,
    cameras: Sequence[CameraBackend],
    loop: asyncio.AbstractEventLoop,
    *,
    advertised_address: str | list[str] | None = None,
    connection_limits: ConnectionLimits | None = None,
) -> tuple[ObscuraDriver, Bridge, list[CameraAccessory]]:
    """One HAP server: a bridge named ``name`` with one CameraAccessory per backend."""
    path, advertised = _prepare(state_dir, address, advertise, advertised_address)
    driver = ObscuraDriver(
        address=address,
        port=port,
        state_stem=path / BRIDGE_FILES,
        setup_code=setup_code,
        loop=loop,
        advertise=advertise,
        advertised_address=advertised,
        connection_limits=connection_limits,
    )
    bridge = ObscuraBridge(driver, name)
    bridge.set_info_service(
        firmware_revision=firmware_revision(),
        manufacturer="Obscura",
        model="Obscura Bridge",
        serial_number=hashlib.sha256(name.encode()).hexdigest()[:12].upper(),
    )
    accessories: list[CameraAccessory] = []
    seen: dict[int, str] = {}
    for backend in cameras:
        aid = aid_for_name(backend.name)
        if aid in seen:
            raise ValueError(f"cameras {seen[aid]!r} and {backend.name!r} need distinct names")
        seen[aid] = backend.name
        camera = CameraAccessory(driver, backend, address=address, aid=aid)
        bridge.add_accessory(camera)
        accessories.append(camera)
    _attach(driver, bridge, accessories)
    return driver, bridge, accessories


def build_standalone_drivers(
    address: str,
    port: int,
    setup_code: str,
    state_dir: Path | str,
    advertise: bool,
    cameras: Sequence[CameraBackend],
    loop: asyncio.AbstractEventLoop,
    *,
    advertised_address: str | list[str] | None = None,
    connection_limits: ConnectionLimits | None = None,
) -> list[tuple[ObscuraDriver, CameraAccessory]]:
    """One HAP server per camera, on ``port + i`` (or ephemeral ports when ``port`` is 0)."""
    path, advertised = _prepare(state_dir, address, advertise, advertised_address)
    result: list[tuple[ObscuraDriver, CameraAccessory]] = []
    stems: dict[str, str] = {}
    for index, backend in enumerate(cameras):
        stem = camera_files(backend.name)
        if stem in stems:
            raise ValueError(f"cameras {stems[stem]!r} and {backend.name!r} need distinct names")
        stems[stem] = backend.name
        driver = ObscuraDriver(
            address=address,
            port=port + index if port else 0,
            state_stem=path / stem,
            setup_code=setup_code,
            loop=loop,
            advertise=advertise,
            advertised_address=advertised,
            connection_limits=connection_limits,
        )
        camera = CameraAccessory(driver, backend, address=address, aid=STANDALONE_AID)
        _attach(driver, camera, [camera])
        result.append((driver, camera))
    return result


def pairing_uris(
    name: str,
    setup_code: str,
    state_dir: Path | str,
    camera_names: Sequence[str],
    *,
    standalone: bool = False,
    doorbells: Collection[str] = (),
) -> list[tuple[str, str]]:
    """(label, X-HM:// URI) per HAP server, for `obscura pair`; works whether or not the
    service runs (setup ids are created on first use and shared with the drivers).
    ``doorbells``: cameras whose standalone server is a Video Doorbell (its category)."""
    path = Path(state_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not standalone:
        setup_id = load_setup_id(path / f"{BRIDGE_FILES}.setup-id")
        return [(name, setup_uri(setup_code, setup_id, CATEGORY_BRIDGE))]
    return [
        (cam, setup_uri(setup_code, load_setup_id(path / f"{camera_files(cam)}.setup-id"), cat))
        for cam in camera_names
        for cat in [CATEGORY_VIDEO_DOOR_BELL if cam in doorbells else CATEGORY_CAMERA]
    ]


class HomeKitBridge:
    """Everything HomeKit for the service: build (bridge or standalone), start, stop, status.

    Construct inside the running event loop (or pass ``loop``)."""

    def __init__(
        self,
        *,
        name: str,
        address: str,
        port: int,
        setup_code: str,
        state_dir: Path | str,
        advertise: bool,
        cameras: Sequence[CameraBackend],
        advertised_address: str | list[str] | None = None,
        standalone: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
        connection_limits: ConnectionLimits | None = None,
    ) -> None:
        loop = loop or asyncio.get_running_loop()
        self.standalone = standalone
        self.state_dir = Path(state_dir)
        if standalone:
            pairs = build_standalone_drivers(
                address, port, setup_code, state_dir, advertise, cameras, loop,
                advertised_address=advertised_address, connection_limits=connection_limits,
            )  # fmt: skip
            self.drivers = [driver for driver, _ in pairs]
            self.cameras = [camera for _, camera in pairs]
        else:
            driver, _, self.cameras = build_driver(
                name, address, port, setup_code, state_dir, advertise, cameras, loop,
                advertised_address=advertised_address, connection_limits=connection_limits,
            )  # fmt: skip
            self.drivers = [driver]
        self._started: list[ObscuraDriver] = []

    @property
    def port(self) -> int:
        """The (first) HAP server's port; the real one once started with port 0."""
        return self.drivers[0].state.port if self.drivers else 0

    @property
    def paired(self) -> bool:
        return all(driver.state.paired for driver in self.drivers)

    @property
    def paired_count(self) -> int:
        return sum(len(driver.state.paired_clients) for driver in self.drivers)

    def connection_stats(self) -> dict[str, int]:
        """HAP connections over all servers: open, verified, cap, refused/evicted/timed out."""
        total: dict[str, int] = {}
        for driver in self.drivers:
            assert isinstance(driver.http_server, GuardedHAPServer)
            for key, value in driver.http_server.guard.stats().items():
                total[key] = total.get(key, 0) + value
        return total

    def setup_uris(self) -> list[tuple[str, str]]:
        return [
            (d.accessory.display_name or "", d.setup_uri()) for d in self.drivers if d.accessory
        ]

    def enable_recording(
        self, index: int, backend: RecordingBackend, options: RecordingOptions
    ) -> CameraRecording:
        """HomeKit Secure Video for camera ``index``; call after its other services are added."""
        camera = self.cameras[index]
        driver = self.drivers[index if self.standalone else 0]
        name = self.cameras[index].backend.name
        return camera.enable_recording(
            backend, data_streams=driver.data_streams, options=options,
            state_path=self.state_dir / f"{camera_files(name)}.hksv.json",
        )  # fmt: skip

    def data_stream_stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for driver in self.drivers:
            for key, value in driver.data_streams.stats().items():
                if isinstance(value, int) and key != "port":
                    total[key] = total.get(key, 0) + value
        return total

    async def start(self, *, data_streams: bool = True) -> None:
        """Serve HAP, then (unless ``data_streams`` is False: call ``start_data_streams()``
        once every configured port is bound) the HDS listeners."""
        for driver in self.drivers:
            await driver.async_start()
            self._started.append(driver)
        if data_streams:
            await self.start_data_streams()

    async def start_data_streams(self) -> None:
        # Ephemeral ports: bound after every configured port (HAP, status), so the listener
        # can never take one of them first (a restart then failed with "port in use").
        for driver in self._started:
            await driver.data_streams.start()

    async def stop(self) -> None:
        """Stop serving; HAP-python then calls each camera's stop(), ending its sessions."""
        for driver in self.drivers:
            await driver.data_streams.stop()
        while self._started:
            await self._started.pop().async_stop()
        await self.stop_all_sessions()  # also when never started

    async def stop_all_sessions(self) -> None:
        await asyncio.gather(*(camera.stop_all_sessions() for camera in self.cameras))
