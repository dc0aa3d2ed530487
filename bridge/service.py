"""Starts and stops every stage of the bridge on one asyncio loop, and reports their health."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from accessories.bridge import HomeKitBridge
from accessories.hap_connections import ConnectionLimits
from bridge.camera import BridgeCamera
from bridge.config import Config
from bridge.detect.service import DetectionService
from bridge.heap_trim import HeapTrimmer
from bridge.media.executor import MediaExecutor
from bridge.pairing import resolve_setup_code
from bridge.preflight import bind_errors
from bridge.shutdown import ShutdownWatchdog, StopSignals, finish, run
from bridge.sources.base import CameraSource
from bridge.sources.factory import make_source
from bridge.status import start_status_server

log = logging.getLogger(__name__)


def ensure_private_dir(path: os.PathLike[str] | str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


class BridgeService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.time()
        self.sources: list[CameraSource] = []
        self.cameras: list[BridgeCamera] = []
        self.homekit: HomeKitBridge | None = None
        self.detection: DetectionService | None = None
        self.vault: Any = None
        self.storage_error: str | None = None
        self.recorders: list[Any] = []
        self.doorbells: Any = None  # bridge.doorbell.Doorbells, once HomeKit is built
        self._status_runner: Any = None
        self.media: MediaExecutor | None = None
        self.heap = HeapTrimmer.from_env()  # RSS follows the heap in use (heap_trim.py says why)

    async def start(self) -> None:
        config = self.config
        ensure_private_dir(config.state_dir)
        # Snapshots (and later other media work) run here, never on the default executor.
        self.media = MediaExecutor()
        for cam in config.cameras:
            if not cam.enabled:
                continue
            source = make_source(cam)
            self.sources.append(source)
            self.cameras.append(
                BridgeCamera(cam, source, bind_address=config.hap.address, media=self.media)
            )
        # Microphone and Speaker or not are fixed when an accessory is built: ask first.
        await asyncio.gather(
            *(camera.decide_audio() for camera in self.cameras),
            *(camera.decide_talkback() for camera in self.cameras),
        )
        self.homekit = HomeKitBridge(
            name=config.name,
            address=config.hap.address,
            port=config.hap.port,
            setup_code=resolve_setup_code(config),
            state_dir=config.state_dir,
            advertise=config.hap.advertise,
            advertised_address=config.hap.advertised_address,
            cameras=self.cameras,
            standalone=config.hap.standalone,
            connection_limits=ConnectionLimits(
                max_connections=config.hap.max_connections,
                max_per_address=config.hap.max_connections_per_address,
            ),
        )
        for camera, accessory in zip(self.cameras, self.homekit.cameras, strict=True):
            camera.source.on_availability(_availability_handler(camera, accessory))
            accessory.set_camera_available(False)
        self.detection = DetectionService(config, self.cameras, self.homekit.cameras)
        self.detection.add_sensors()
        self._enable_hksv()  # after the sensors: HomeKit remembers services by IID order
        self._enable_doorbells()  # after HKSV's services, for the same reason
        for camera, accessory in zip(self.cameras, self.homekit.cameras, strict=True):
            if camera.has_speaker:
                accessory.enable_speaker()  # last of all (talk-back came last)
        for source in self.sources:
            source.start()
        with bind_errors(config, "hap"):  # taken since the preflight: exit 2, naming the key
            await self.homekit.start(data_streams=False)
        await self.detection.start()
        await self._start_recording()
        self.heap.start()
        if config.status.enabled:
            from bridge.doorbell_api import add_ring_route
            from bridge.owner.owner_api import add_owner_routes

            def extend(app: Any) -> None:
                # The owner's shares and deletions, each proven with an owner identity.
                add_owner_routes(app, lambda: self.vault)
                add_ring_route(app, lambda: self.doorbells)  # POST /cameras/{name}/ring

            with bind_errors(config, "status"):
                self._status_runner = await start_status_server(
                    self.status, config.status.address, config.status.port, extend
                )
        await self.homekit.start_data_streams()  # ephemeral ports: after every fixed one
        log.info(
            "%s is running: HomeKit on %s:%d, %d camera(s)%s",
            config.name,
            config.hap.address,
            self.homekit.port,
            len(self.cameras),
            "" if self.homekit.paired else " — not paired yet: run `obscura pair` for the QR code",
        )
        if config.demo:  # its demo key, and the command that opens its clips
            from bridge.demo import log_demo_start

            log_demo_start(config)

    def _enable_hksv(self) -> None:
        from accessories.recording import RecordingOptions

        assert self.homekit is not None
        for index, camera in enumerate(self.cameras):
            hksv = camera.config.hksv
            if not hksv.enabled:
                continue
            if camera.config.prebuffer_seconds < 4.0:
                log.warning(
                    "camera %r: prebuffer_seconds = %g: HomeKit Secure Video asks for 4 s before"
                    " each event; recordings will start later than the hub expects",
                    camera.name, camera.config.prebuffer_seconds,
                )  # fmt: skip
            self.homekit.enable_recording(
                index, camera,
                RecordingOptions(post_roll=hksv.post_roll_seconds, max_seconds=hksv.max_seconds,
                                 doorbell=camera.config.doorbell),
            )  # fmt: skip

    def _enable_doorbells(self) -> None:
        from bridge.doorbell import Doorbell, Doorbells, load_or_create_token

        assert self.homekit is not None
        # Created on the first start whether or not a camera is a doorbell yet (0600).
        self.doorbells = Doorbells(
            load_or_create_token(self.config.state_dir), (c.name for c in self.cameras)
        )
        for camera, accessory in zip(self.cameras, self.homekit.cameras, strict=True):
            if camera.config.doorbell:
                accessory.enable_doorbell()
                self.doorbells.add(Doorbell(camera.name, accessory, frames=camera.source.frames))
        if len(self.doorbells) and not self.config.status.enabled:
            log.warning("doorbell cameras cannot be rung: [status] enabled = false turns off "
                        "the local API that `obscura ring` and buttons use")  # fmt: skip

    async def _start_recording(self) -> None:
        storage = self.config.storage
        if storage is None:
            log.warning(
                "no [storage] in the configuration: events are not recorded "
                "(run `obscura keys generate`, then `obscura keys add-recipient`)"
            )
            return
        from bridge.doorbell import DOORBELL_SUBJECT
        from bridge.record import Recorder, RecordSettings
        from bridge.store.config import NO_RECIPIENTS
        from bridge.store.vault import ClipVault
        from crypto.padding import mp4_free_box, mp4_padding

        if not storage.recipients:
            self.storage_error = NO_RECIPIENTS
            log.error("recording is off, cameras keep streaming: %s", NO_RECIPIENTS)
            return
        try:
            vault = ClipVault(storage, self.config.state_dir)
            await vault.start()
        except (ValueError, OSError) as exc:  # bad bucket URL, credentials file, keys, state
            # Like a broken model: cameras keep streaming; the log and doctor say why.
            self.storage_error = str(exc)
            log.error("recording is off, cameras keep streaming: %s", exc)
            return
        self.vault = vault
        settings = RecordSettings(
            pre_roll=storage.pre_roll_seconds,
            post_roll=storage.post_roll_seconds,
            max_length=storage.max_clip_seconds,
            part_length=storage.part_seconds,
        )
        assert self.detection is not None
        for camera in self.cameras:
            doorbell = self.doorbells.get(camera.name) if self.doorbells else None
            if not camera.config.detect.enabled and doorbell is None:
                continue
            if storage.pre_roll_seconds > camera.config.prebuffer_seconds:
                # The pre-roll comes from the live prebuffer: it cannot reach further back.
                log.warning(
                    "camera %r: storage.pre_roll_seconds = %g exceeds its prebuffer_seconds = %g:"
                    " clips start at most ~%g s before an event; raise prebuffer_seconds",
                    camera.name, storage.pre_roll_seconds, camera.config.prebuffer_seconds,
                    camera.config.prebuffer_seconds,
                )
            subjects = tuple(camera.config.detect.subjects) if camera.config.detect.enabled else ()
            if doorbell is not None:  # rings are recorded as events of their own subject
                subjects += (DOORBELL_SUBJECT,)
            recorder = Recorder(
                camera.source, self.vault.sink_factory, settings,
                pad=lambda n: mp4_free_box(mp4_padding(n)),
                subjects=subjects,
            )
            if camera.config.detect.enabled:
                self.detection.add_listener(recorder.on_event)
            if doorbell is not None:
                doorbell.recorder = recorder.on_event
            self.recorders.append(recorder)

    async def stop(self) -> None:
        await self.heap.stop()
        if self._status_runner is not None:
            await self._status_runner.cleanup()
        if self.doorbells is not None:
            self.doorbells.stop()  # no ring's event ends after the recorders stopped
        if self.detection is not None:
            await self.detection.stop()  # ends open tracks: recorders start their post-roll
        await asyncio.gather(*(r.stop() for r in self.recorders), return_exceptions=True)
        if self.vault is not None:
            await self.vault.stop()
        if self.homekit is not None:
            await self.homekit.stop()
        await asyncio.gather(*(c.close() for c in self.cameras), return_exceptions=True)
        await asyncio.gather(*(s.stop() for s in self.sources), return_exceptions=True)
        if self.media is not None:
            await self.media.aclose()  # ≤ 2 s, then names the workers still busy

    def status(self) -> dict[str, Any]:
        homekit = self.homekit
        return {
            "name": self.config.name,
            "started_at": self.started_at,
            "demo": self.config.demo,
            "hap": {
                "address": self.config.hap.address,
                "port": homekit.port if homekit else self.config.hap.port,
                "paired_controllers": homekit.paired_count if homekit else 0,
                "advertise": self.config.hap.advertise,
                "connections": homekit.connection_stats() if homekit else None,
                "data_streams": homekit.data_stream_stats() if homekit else None,
            },
            "cameras": [self._camera_status(c) for c in self.cameras],
            "detection": self.detection.summary() if self.detection else None,
            "media": self.media.status() if self.media else None,
            "memory": self.heap.status(),
            "storage": self.vault.status()
            if self.vault
            else ({"error": self.storage_error} if self.storage_error else None),
        }

    def _camera_status(self, camera: BridgeCamera) -> dict[str, Any]:
        status = camera.status()
        if self.homekit is not None:
            accessory = self.homekit.cameras[self.cameras.index(camera)]
            status["hksv"] = accessory.recording.status() if accessory.recording else None
        recorder = next((r for r in self.recorders if r.source is camera.source), None)
        if recorder is not None:
            status["recording"] = recorder.status()
        if self.detection is not None:
            status["detection"] = self.detection.status(camera.name)
        doorbell = self.doorbells.get(camera.name) if self.doorbells is not None else None
        status["doorbell"] = doorbell.status() if doorbell is not None else None
        return status


def _availability_handler(camera: BridgeCamera, accessory: Any) -> Any:
    def changed(up: bool) -> None:
        if up:
            # The real stream size is known now: advertise resolutions that fit it.
            accessory.update_capabilities()
        accessory.set_camera_available(up)

    return changed


async def serve(config: Config, watchdog: ShutdownWatchdog | None = None) -> None:
    service = BridgeService(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    from bridge.logs import loop_exception_handler

    loop.set_exception_handler(loop_exception_handler)  # EMFILE on accept: one line, no traceback
    # The first SIGTERM/SIGINT stops (and arms the watchdog), a second one exits at once.
    StopSignals(loop, stop, watchdog or ShutdownWatchdog()).install()
    try:
        await service.start()
    except BaseException:
        await service.stop()  # whatever had started (sources, HAP, detection) ends cleanly
        raise
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        await service.stop()


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (systemd and most shells start at 1,024): the
    HAP port is capped (hap_connections.py), but cameras, clips and uploads need descriptors too."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Enough, whatever the hard limit: some tools still walk every possible descriptor.
    target = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.debug("open files limit stays at %d: %s", soft, exc)
            return
        log.debug("open files limit raised from %d to %d", soft, target)


def run_forever(config: Config) -> int:
    raise_open_files_limit()
    if config.demo:
        log.info("no configuration file found: running the demo camera (see `obscura init`)")
    watchdog = ShutdownWatchdog()
    run(serve(config, watchdog), watchdog)  # asyncio.run, but a stuck thread cannot hold it
    return finish(0)
