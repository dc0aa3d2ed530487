"""One camera connection: the blocking input runs in its own thread, the rest on the loop.

A CameraSource owns exactly one connection and one demux per camera, shared by every consumer
(prebuffer, live view, snapshots, later detection and recording). When the input dies it is
retried with capped exponential backoff and jitter while the rest of the bridge keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from accessories.backend import CameraUnavailable
from bridge.media.fanout import PacketFanout, PacketSubscription
from bridge.media.frames import FrameTap
from bridge.media.packet import StreamInfo, VideoPacket
from bridge.media.prebuffer import Prebuffer

log = logging.getLogger(__name__)


class Input(Protocol):
    """One connection to a camera; every method blocks and runs in the camera's thread."""

    def open(self) -> StreamInfo: ...

    def packets(self) -> Iterator[tuple[bytes, float, bool]]:
        """(Annex B access unit, pts seconds, keyframe) until the connection ends or fails."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial: float = 1.0
    cap: float = 30.0
    jitter: float = 0.2  # ± fraction, so many cameras of one dead NVR don't retry in lockstep
    healthy_after: float = 10.0  # a connection that lasted this long resets the backoff

    def delay(self, attempt: int) -> float:
        base = min(self.cap, self.initial * (2**attempt))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


def run_in_thread(fn: Callable[[], Any], name: str) -> asyncio.Future[Any]:
    """Run a long blocking call in a dedicated thread (the default executor is small and shared)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(_set_exception, future, exc)
        else:
            loop.call_soon_threadsafe(_set_result, future, result)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class CameraSource:
    def __init__(
        self,
        name: str,
        make_input: Callable[[], Input],
        *,
        display_url: str,
        prebuffer_seconds: float = 4.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.name = name
        self.display_url = display_url  # credentials already redacted
        self._make_input = make_input
        self.retry = retry or RetryPolicy()
        self.prebuffer = Prebuffer(prebuffer_seconds)
        self.fanout = PacketFanout()
        self.frames = FrameTap(name, self.prebuffer.from_latest_keyframe)
        self.info: StreamInfo | None = None
        self.state = "starting"
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.next_retry_at: float | None = None
        self.reconnects = 0
        self.packets_received = 0
        self.bytes_received = 0
        self.epoch = 0
        self._stopping = False
        self._wake = asyncio.Event()
        self._listeners: list[Callable[[bool], None]] = []
        self._task: asyncio.Task[None] | None = None

    # -- consumers -------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self.state == "streaming" and self.info is not None

    def subscribe(self, *, from_prebuffer: bool = True, maxsize: int = 300) -> PacketSubscription:
        """Packets from the newest buffered keyframe on; CameraUnavailable when it is down."""
        if not self.available:
            raise CameraUnavailable(f"camera {self.name!r} is {self.state}")
        backlog = self.prebuffer.from_latest_keyframe() if from_prebuffer else ()
        return self.fanout.subscribe(backlog, maxsize)

    def on_availability(self, callback: Callable[[bool], None]) -> None:
        """callback(True/False) on the loop whenever the camera comes up or goes down."""
        self._listeners.append(callback)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"source:{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)
        self.frames.close()

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            self.state = "connecting"
            started = time.monotonic()
            try:
                await self._connect_and_pump()
                self.last_error = "stream ended"
            except Exception as exc:
                self.last_error = describe_error(exc, self.display_url)
            self._went_down()
            if self._stopping:
                break
            if time.monotonic() - started >= self.retry.healthy_after:
                attempt = 0
            delay = self.retry.delay(attempt)
            attempt += 1
            self.state = "retrying"
            self.next_retry_at = time.time() + delay
            log.warning(
                "camera %r: %s; retrying in %.1f s (attempt %d)",
                self.name,
                self.last_error,
                delay,
                attempt,
            )
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass
        self.state = "stopped"

    async def _connect_and_pump(self) -> None:
        source_input = self._make_input()
        try:
            info = await run_in_thread(source_input.open, f"open:{self.name}")
            if self._stopping:
                return
            self.epoch += 1
            self.info = info
            self.state = "streaming"
            self.connected_since = time.time()
            self.next_retry_at = None
            self.last_error = None
            if self.reconnects or self.epoch > 1:
                log.info("camera %r reconnected", self.name)
            log.info(
                "camera %r streaming %dx%d@%.3g fps (%s) from %s",
                self.name,
                info.width,
                info.height,
                info.fps,
                info.profile,
                self.display_url,
            )
            self.frames.set_stream(info)
            for listener in self._listeners:
                listener(True)
            loop = asyncio.get_running_loop()
            await run_in_thread(lambda: self._pump(source_input, loop), f"demux:{self.name}")
        finally:
            await asyncio.to_thread(source_input.close)

    def _pump(self, source_input: Input, loop: asyncio.AbstractEventLoop) -> None:
        epoch = self.epoch
        for data, pts, keyframe in source_input.packets():
            if self._stopping:
                return
            packet = VideoPacket(data, pts, keyframe, epoch)
            loop.call_soon_threadsafe(self._publish, packet)

    def _publish(self, packet: VideoPacket) -> None:
        if packet.epoch != self.epoch or self.state != "streaming":
            return
        self.packets_received += 1
        self.bytes_received += len(packet.data)
        self.prebuffer.append(packet)
        self.fanout.publish(packet)
        self.frames.feed(packet)

    def _went_down(self) -> None:
        was_up = self.state == "streaming"
        self.info = None
        self.connected_since = None
        self.prebuffer.clear()
        self.fanout.end_all()
        self.frames.reset()
        if was_up:
            self.reconnects += 1
            for listener in self._listeners:
                listener(False)

    def status(self) -> dict[str, Any]:
        info = self.info
        return {
            "name": self.name,
            "source": self.display_url,
            "state": self.state,
            "last_error": self.last_error,
            "connected_since": self.connected_since,
            "next_retry_at": self.next_retry_at,
            "reconnects": self.reconnects,
            "packets": self.packets_received,
            "bytes": self.bytes_received,
            "prebuffer_seconds": round(self.prebuffer.duration, 2),
            "prebuffer_bytes": self.prebuffer.nbytes,
            "consumers": len(self.fanout),
            "video": None
            if info is None
            else {
                "codec": info.codec,
                "width": info.width,
                "height": info.height,
                "fps": info.fps,
                "profile": info.profile,
            },
            "decoding": self.frames.active,
        }


def describe_error(exc: BaseException, display_url: str) -> str:
    """A one-line error without credentials (PyAV errors embed the URL they were opened with)."""
    from bridge.redact import redact

    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return redact(text).replace("\n", " ")
