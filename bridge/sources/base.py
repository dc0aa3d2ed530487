"""One camera connection: the blocking input runs in its own thread, the rest on the loop.

A CameraSource owns exactly one connection and one demux per camera, shared by every consumer
(prebuffer, live view, snapshots, later detection and recording). When the input dies, the rest
of the bridge keeps working and the camera is asked a cheap liveness probe every
`probe_interval` (liveness.py: a TCP connect for RTSP, a stat() for a device or file). The
full, expensive open runs only once the probe answers, so a camera streams again well within
2 s of its return and a dead one is not hammered meanwhile. Opens that fail while the probe
answers (a server that is up but whose stream does not open) wait a capped exponential backoff
with jitter, so a half-dead camera is not hammered either. Probes that only time out (a camera
that is off looks like one behind a slow link) let a full open through once per backoff `cap`.
An outage is logged once and the recovery once; what happens in between only every few minutes
(and always in /status).

Sound: an input may also yield AudioPacket (its `audio_info` says what they are). They reach
the loop through the same thread hand-over as the video, on the video's clock, go into the
prebuffer beside it and out through their own fan-out (`subscribe_audio`, drop-oldest queues),
so a slow audio consumer never touches the video. A camera whose audio cannot be carried
(`audio_problem`) streams video alone, with one warning per source, not one per reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from accessories.backend import CameraUnavailable
from bridge.media.fanout import AudioFanout, AudioSubscription, PacketFanout, PacketSubscription
from bridge.media.frames import FrameTap
from bridge.media.packet import AudioInfo, AudioPacket, StreamInfo, VideoPacket
from bridge.media.prebuffer import Prebuffer
from bridge.sources.liveness import Probe

log = logging.getLogger(__name__)

#: How long stop() waits for a blocked open or read before leaving it to its daemon thread
#: (well inside the shutdown watchdog's grace, bridge/shutdown.py).
STOP_WAIT_SECONDS = 1.5


class Input(Protocol):
    """One connection to a camera; every method blocks and runs in the camera's thread.

    Inputs with sound also have `audio_info: AudioInfo | None` (set by open()) and yield
    AudioPacket among the video tuples; `audio_problem: str | None` says why a camera's audio
    is not carried. Both are read with getattr: a video-only input needs neither.
    """

    def open(self) -> StreamInfo: ...

    def packets(self) -> Iterator[tuple[bytes, float, bool] | AudioPacket]:
        """(Annex B access unit, pts seconds, keyframe) until the connection ends or fails,
        and AudioPacket (pts on the same clock) when the input has sound."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial: float = 1.0
    cap: float = 30.0
    jitter: float = 0.2  # ± fraction, so many cameras of one dead NVR don't retry in lockstep
    healthy_after: float = 10.0  # a connection that lasted this long resets the backoff
    probe_interval: float = 0.5  # while a camera is down: one cheap liveness probe this often
    probe_timeout: float = 1.0  # no answer within this counts as none (a hint, not a proof)
    # While a camera stays down: the same reason is logged again this often, a new one at most
    # this often (the outage and the recovery are always logged, once each).
    repeat_log_every: float = 600.0
    new_reason_log_gap: float = 60.0

    def delay(self, attempt: int) -> float:
        base = min(self.cap, self.initial * (2**attempt))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


def run_in_thread(fn: Callable[[], Any], name: str) -> asyncio.Future[Any]:
    """Run a long blocking call in a dedicated thread (the default executor is small and shared)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def target() -> None:
        try:
            try:
                result = fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                loop.call_soon_threadsafe(_set_result, future, result)
        except RuntimeError:  # the loop closed meanwhile (shutdown): nobody is waiting
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


def _close_in_thread(source_input: Input) -> None:
    threading.Thread(target=source_input.close, name="close-input", daemon=True).start()


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
        probe: Probe | None = None,
    ) -> None:
        self.name = name
        self.display_url = display_url  # credentials already redacted
        self._make_input = make_input
        self._probe = probe  # None: nothing cheap to ask (demo:), every retry is a full open
        self.retry = retry or RetryPolicy()
        self.prebuffer = Prebuffer(prebuffer_seconds)
        self.fanout = PacketFanout()
        self.audio_fanout = AudioFanout()
        self.frames = FrameTap(name, self.prebuffer.from_latest_keyframe)
        self.info: StreamInfo | None = None
        self.audio_info: AudioInfo | None = None  # the sound carried (None: video alone)
        self.audio_problem: str | None = None  # why the camera's sound is not carried
        self.audio_packets = 0
        self.audio_bytes = 0
        self.state = "starting"
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.next_retry_at: float | None = None
        self.reconnects = 0
        self.down_since: float | None = None  # wall clock; None while streaming (or never up)
        self.probes = 0  # liveness probes sent
        self.opens = 0  # full opens tried
        self._failures = 0  # opens in a row that did not lead to a healthy stream
        self._last_open_at = -math.inf  # monotonic
        self._probing = False
        self._down_at = 0.0  # monotonic twin of down_since
        self._logged_reason: str | None = None
        self._logged_at = 0.0
        self._opens_at_down = 0  # self.opens when the outage began (0: since start)
        self._probes_at_down = 0
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

    def subscribe_audio(
        self, *, from_prebuffer: bool = True, maxsize: int = 250, since: float | None = None
    ) -> AudioSubscription:
        """Audio packets (bounded queue, the oldest dropped when full); CameraUnavailable when
        the camera is down or has no sound. `from_prebuffer`: first the buffered audio (the
        prebuffer's whole window, or what still sounds from pts `since` on)."""
        if not self.available:
            raise CameraUnavailable(f"camera {self.name!r} is {self.state}")
        if self.audio_info is None:
            raise CameraUnavailable(f"camera {self.name!r} has no audio")
        backlog = self.prebuffer.audio_packets(since) if from_prebuffer else ()
        return self.audio_fanout.subscribe(backlog, maxsize)

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
            if self._probing:
                self._task.cancel()  # a probe (or a slow name lookup) need not finish
            done, _ = await asyncio.wait({self._task}, timeout=STOP_WAIT_SECONDS)
            if not done:
                # An open or read blocked on a stalled camera (PyAV's own timeout is longer):
                # the shutdown must not wait for it. Its daemon thread ends with the process,
                # and the input is closed once that thread lets go of it.
                log.info("camera %r: not waiting for a blocked open or read to time out",
                         self.name)
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        self.state = "stopped"
        self.frames.close()

    async def _run(self) -> None:
        not_before = 0.0  # monotonic time before which no full open is tried (backoff)
        while not self._stopping:
            if not await self._wait_for_camera(not_before):
                break
            self.state = "connecting"
            self.next_retry_at = None
            self.opens += 1
            started = self._last_open_at = time.monotonic()
            epoch = self.epoch
            try:
                await self._connect_and_pump()
                error = "stream ended"
            except Exception as exc:
                error = describe_error(exc, self.display_url)
            streamed = self.epoch != epoch
            log.debug(
                "camera %r: %s after %.2f s: %s",
                self.name,
                "stream ended" if streamed else "open failed",
                time.monotonic() - started,
                error,
            )
            self._went_down()
            if self._stopping:
                break
            self.last_error = error
            if streamed and time.monotonic() - started >= self.retry.healthy_after:
                self._failures = 0
            else:
                self._failures += 1
            # After a healthy stream: again as soon as the camera answers. Opens that fail (or
            # streams that die young) while it answers wait a capped backoff.
            delay = self.retry.delay(self._failures - 1) if self._failures else 0.0
            not_before = time.monotonic() + delay
            self.state = "retrying"
            lasted = time.monotonic() - started if streamed else None
            self._note_down(error, lasted=lasted, backoff=delay)
        self.state = "stopped"

    async def _wait_for_camera(self, not_before: float) -> bool:
        """Wait out the backoff, then probe until the camera answers; False when stopping."""
        delay = not_before - time.monotonic()
        if delay > 0:
            self.next_retry_at = time.time() + delay
            if await self._sleep(delay):
                return False
        if self._probe is None:
            return not self._stopping
        while not self._stopping:
            started = time.monotonic()
            self.probes += 1
            self._probing = True
            try:
                problem = await self._probe()
            finally:
                self._probing = False
            if problem is None:
                return not self._stopping
            if not problem.definite and started - self._last_open_at >= self.retry.cap:
                return not self._stopping  # timeouts prove little: a full open now and then
            # Gone rather than half-working: open at once when it answers again.
            self._failures = 0
            self.last_error = problem.reason
            self.state = "retrying"
            self._note_down(problem.reason, lasted=None, backoff=0.0)
            wait = max(0.0, started + self.retry.probe_interval - time.monotonic())
            self.next_retry_at = time.time() + wait
            if await self._sleep(wait):
                return False
        return False

    async def _sleep(self, seconds: float) -> bool:
        """Sleep `seconds` unless stopped first; True when stopping."""
        self._wake.clear()
        if not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)
        return self._stopping

    def _note_down(self, reason: str, *, lasted: float | None, backoff: float) -> None:
        """Log the start of an outage once; while it lasts, only now and then. `lasted`: how
        long the stream that just ended had streamed (None: it never came up)."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = time.time()
            self._down_at = now
            if lasted is not None:
                self._opens_at_down, self._probes_at_down = self.opens, self.probes
            if backoff > 0:
                how = f"next try in {backoff:.1f} s, backing off"
            elif self._probe is not None:
                how = f"probing every {self.retry.probe_interval:g} s, reconnecting when it answers"
            else:
                how = "retrying"
            what = "down" if lasted is None else f"lost after {_span(lasted)} of streaming"
            log.warning("camera %r %s: %s (%s)", self.name, what, reason, how)
        else:
            since_log = now - self._logged_at
            if since_log < self.retry.new_reason_log_gap or (
                reason == self._logged_reason and since_log < self.retry.repeat_log_every
            ):
                return
            log.warning(
                "camera %r still down after %s: %s (%d probes, %d opens so far)",
                self.name,
                _span(now - self._down_at),
                reason,
                self.probes - self._probes_at_down,
                self.opens - self._opens_at_down,
            )
        self._logged_reason = reason
        self._logged_at = now

    async def _connect_and_pump(self) -> None:
        source_input = self._make_input()
        busy: asyncio.Future[Any] | None = None  # the thread using source_input, if any
        try:
            busy = run_in_thread(source_input.open, f"open:{self.name}")
            info = await busy
            if self._stopping:
                return
            self.epoch += 1
            self.info = info
            self._note_audio(source_input)
            self.state = "streaming"
            self.connected_since = time.time()
            self.next_retry_at = None
            self.last_error = None
            back = ""
            if self.down_since is not None:
                back = (
                    f" back after {time.monotonic() - self._down_at:.1f} s "
                    f"({self.opens - self._opens_at_down} open(s)):"
                )
                self.down_since = None
                self._logged_reason = None
            log.info(
                "camera %r%s streaming %dx%d@%.3g fps (%s) from %s",
                self.name,
                back,
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
            busy = run_in_thread(lambda: self._pump(source_input, loop), f"demux:{self.name}")
            await busy
        finally:
            if busy is not None and not busy.done():
                # Cancelled (a stop that would not wait) while a thread still uses the input:
                # closing it under that thread is unsafe with PyAV; close it after.
                busy.add_done_callback(lambda _f: _close_in_thread(source_input))
            else:
                await asyncio.to_thread(source_input.close)

    def _note_audio(self, source_input: Input) -> None:
        self.audio_info = getattr(source_input, "audio_info", None)
        problem = getattr(source_input, "audio_problem", None)
        if problem is not None and problem != self.audio_problem:
            log.warning("camera %r: its sound is %s: streaming video alone", self.name, problem)
        self.audio_problem = problem

    def _pump(self, source_input: Input, loop: asyncio.AbstractEventLoop) -> None:
        epoch = self.epoch
        for item in source_input.packets():
            if self._stopping:
                return
            if isinstance(item, AudioPacket):
                sound = AudioPacket(item.data, item.pts, item.duration, epoch)
                loop.call_soon_threadsafe(self._publish_audio, sound)
                continue
            data, pts, keyframe = item
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

    def _publish_audio(self, packet: AudioPacket) -> None:
        if packet.epoch != self.epoch or self.state != "streaming":
            return
        self.audio_packets += 1
        self.audio_bytes += len(packet.data)
        self.prebuffer.append_audio(packet)
        self.audio_fanout.publish(packet)

    def _went_down(self) -> None:
        was_up = self.state == "streaming"
        self.info = None
        self.audio_info = None
        self.connected_since = None
        self.prebuffer.clear()
        self.fanout.end_all()
        self.audio_fanout.end_all()
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
            "down_since": self.down_since,
            "reconnects": self.reconnects,
            "probes": self.probes,
            "opens": self.opens,
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
            "audio": self._audio_status(),
            "audio_problem": self.audio_problem,
        }

    def _audio_status(self) -> dict[str, Any] | None:
        info = self.audio_info
        if info is None:
            return None
        return {
            "codec": info.codec,
            "sample_rate": info.sample_rate,
            "channels": info.channels,
            "packets": self.audio_packets,
            "bytes": self.audio_bytes,
            "dropped": self.audio_fanout.dropped,
            "consumers": len(self.audio_fanout),
            "prebuffer_seconds": round(self.prebuffer.audio_duration, 2),
        }


def _span(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def describe_error(exc: BaseException, display_url: str) -> str:
    """A one-line error without credentials (PyAV errors embed the URL they were opened with)."""
    from bridge.redact import redact

    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return redact(text).replace("\n", " ")
