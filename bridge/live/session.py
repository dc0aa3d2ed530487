"""H264LiveSession: one camera's packets as an SRTP video stream to one HomeKit controller.

Copy mode forwards the camera's access units; transcode mode runs them through a Transcoder
thread. Both feed the link's one RtpSender, so SSRC, sequence numbers and RTP time stay
continuous when a reconfigure switches between them. Everything here runs on the event loop
except the Transcoder's thread, whose output hops back with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from accessories.backend import StreamEndpoints, VideoRequest
from bridge.live.link import ControllerLink
from bridge.live.policy import (
    MODE_SETTINGS,
    EncoderSettings,
    Mode,
    ModeSetting,
    choose_mode,
    encoder_settings,
)
from bridge.live.transcode import EncodedFrame, Transcoder
from bridge.media.fanout import PacketSubscription, SourceEnded
from bridge.media.packet import StreamInfo, VideoPacket

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LiveStats:
    """Counters for the status API."""

    mode: Mode | None
    packets_sent: int
    bytes_sent: int
    frames_sent: int
    keyframes_sent: int
    frames_dropped: int  # not sent: over the send buffer, transcoder overflow, waiting for IDR
    frames_decoded: int
    frames_encoded: int
    rtcp_sent: int
    rtcp_received: int  # authenticated controller RTCP
    rtcp_rejected: int  # datagrams that failed SRTCP authentication


class H264LiveSession:
    """Implements accessories.backend.LiveSession.

    The UDP socket is bound in the constructor (so local_video_port can go into the
    SetupEndpoints response) and is used both to send and to receive the controller's RTCP.
    on_end runs (once, from the event loop) only when the stream ends by itself: camera gone,
    controller silent for idle_timeout, or the camera unavailable on a reconfigure. stop()
    never triggers it.
    """

    def __init__(
        self,
        subscribe: Callable[[], PacketSubscription],
        stream_info: Callable[[], StreamInfo | None],
        endpoints: StreamEndpoints,
        on_end: Callable[[], None],
        bind_address: str = "",
        *,
        mode: ModeSetting = "auto",
        idle_timeout: float | None = 30.0,
        first_rtcp_timeout: float | None = 120.0,
        gop_seconds: float = 1.0,
        preset: str = "veryfast",
        fps_tolerance: float = 0.1,
        bitrate_headroom: float = 4.0,
        catch_up_after: float = 0.5,
        max_send_buffer: int = 1 << 20,
        cname: str = "obscura",
    ) -> None:
        """idle_timeout: end when the controller has sent nothing for this long (None: never).
        first_rtcp_timeout: the same before its first datagram; generous because some
        controllers only start reporting after a while (None: wait forever).
        catch_up_after: in copy mode, a backlog of this many seconds of packets is sent as a
        catch-up burst (timestamps squeezed) to get back to the live edge.
        max_send_buffer: bytes queued in the transport beyond which frames are dropped (and the
        stream resumes at a keyframe) instead of adding latency.
        """
        if mode not in MODE_SETTINGS:
            raise ValueError(f"mode must be one of {MODE_SETTINGS}, not {mode!r}")
        self.endpoints = endpoints
        self._subscribe = subscribe
        self._stream_info = stream_info
        self._on_end = on_end
        self._mode_setting: ModeSetting = mode
        self._gop_seconds = gop_seconds
        self._preset = preset
        self._fps_tolerance = fps_tolerance
        self._bitrate_headroom = bitrate_headroom
        self._catch_up_after = catch_up_after
        self._max_send_buffer = max_send_buffer
        self._link = ControllerLink(
            endpoints,
            bind_address,
            idle_timeout=idle_timeout,
            first_rtcp_timeout=first_rtcp_timeout,
            cname=cname,
        )
        self._sender = self._link.sender

        self._loop: asyncio.AbstractEventLoop | None = None
        self._request: VideoRequest | None = None
        self._info: StreamInfo | None = None
        self._mode: Mode | None = None
        self._copy_at_keyframe = False  # transcode -> copy waits for the camera's next keyframe
        self._sub: PacketSubscription | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._transcoder: Transcoder | None = None
        self._generation = 0  # bumps when a transcoder retires: its late output is ignored
        self._retired: list[Transcoder] = []
        self._need_keyframe = False  # input side: resume at the camera's next keyframe
        self._need_idr = False  # output side: drop transcoded frames until an IDR
        self._started = False
        self._closed = False
        self._ended = False
        self._frames_dropped = 0

    # -- LiveSession ------------------------------------------------------------------------

    @property
    def local_video_port(self) -> int:
        return self._link.port

    @property
    def mode(self) -> Mode | None:
        """The mode packets are sent in right now (None before start)."""
        return self._mode

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def ended(self) -> bool:
        """True when the stream ended by itself (on_end was or will be called)."""
        return self._ended

    def media_time(self, now: float) -> tuple[float, int] | None:
        """(pts, epoch) our reports map wall time `now` to: the audio's reports follow it."""
        return self._sender.media_time(now)

    def stats(self) -> dict[str, Any]:
        """LiveStats as a JSON-ready dict (the status API serves it as is)."""
        return asdict(self.live_stats())

    def live_stats(self) -> LiveStats:
        transcoders = [*self._retired, *([self._transcoder] if self._transcoder else [])]
        s = self._sender
        return LiveStats(
            mode=self._mode,
            packets_sent=s.packets_sent,
            bytes_sent=s.bytes_sent,
            frames_sent=s.frames_sent,
            keyframes_sent=s.keyframes_sent,
            frames_dropped=self._frames_dropped,
            frames_decoded=sum(t.stats.frames_decoded for t in transcoders),
            frames_encoded=sum(t.stats.frames_encoded for t in transcoders),
            rtcp_sent=s.reports_sent,
            rtcp_received=self._link.rtcp_received,
            rtcp_rejected=self._link.rtcp_rejected,
        )

    async def start(self, request: VideoRequest) -> None:
        """Start streaming. Raises CameraUnavailable if the camera is down, after releasing
        everything (on_end is not called)."""
        if self._started or self._closed:
            raise RuntimeError("live session already started or stopped")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._request = request
        self._sender.configure(request.payload_type, request.max_mtu)
        try:
            await self._link.open(self._rtcp_interval, self._watchdog, self._finish)
            self._info = self._stream_info()
            sub = self._subscribe()
        except BaseException:
            self._release()
            raise
        self._mode = self._choose(request)
        log.info(
            "live %s: %dx%d@%d %dkbps to %s:%d, %s mode",
            self._name,
            request.width,
            request.height,
            request.fps,
            request.max_bitrate_kbps,
            self.endpoints.controller_address,
            self.endpoints.controller_video_port,
            self._mode,
        )
        if self._mode == "transcode":
            self._start_transcoder(request)
        self._run_pump(sub)

    async def reconfigure(self, request: VideoRequest) -> None:
        """New size/fps/bitrate on the same socket, SSRC and sequence numbering.

        If the camera turns out to be unavailable (copy -> transcode needs a new
        subscription), the session ends by itself and on_end is called.
        """
        if not self._started:
            raise RuntimeError("live session not started")
        if self._closed:
            return
        self._request = request
        self._sender.configure(request.payload_type, request.max_mtu)
        self._info = self._stream_info() or self._info
        target = self._choose(request)
        log.info(
            "live %s: reconfigure to %dx%d@%d %dkbps (%s -> %s)",
            self._name,
            request.width,
            request.height,
            request.fps,
            request.max_bitrate_kbps,
            self._mode,
            target,
        )
        if self._mode == "transcode":
            assert self._transcoder is not None
            # Keep transcoding (with the new settings) until the camera's next keyframe, where
            # copy can take over without a gap; or for good if transcoding is still needed.
            self._transcoder.update(self._encoder_settings(request))
            self._copy_at_keyframe = target == "copy"
        elif target == "transcode":
            await self._restart_transcoding(request)

    async def stop(self) -> None:
        """Stop sending at once and release the socket, thread, codecs and tasks. Idempotent."""
        if not self._closed:
            self._release()
        task = self._pump_task
        if task is not None and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)
        await self._link.wait_closed()
        alive = [t for t in self._retired if t.alive]
        if alive:
            await asyncio.to_thread(_join_all, alive, 2.0)

    # -- pipeline ---------------------------------------------------------------------------

    @property
    def _name(self) -> str:
        return self.endpoints.session_id.hex()[:8]

    def _choose(self, request: VideoRequest) -> Mode:
        return choose_mode(
            request,
            self._info,
            self._mode_setting,
            fps_tolerance=self._fps_tolerance,
            bitrate_headroom=self._bitrate_headroom,
        )

    def _encoder_settings(self, request: VideoRequest) -> EncoderSettings:
        return encoder_settings(request, gop_seconds=self._gop_seconds, preset=self._preset)

    def _source_fps(self) -> float:
        if self._info is not None and self._info.fps > 0:
            return self._info.fps
        return float(self._request.fps) if self._request else 30.0

    def _run_pump(self, sub: PacketSubscription) -> None:
        assert self._loop is not None
        self._sub = sub
        self._pump_task = self._loop.create_task(self._pump(sub), name="live-pump")

    def _start_transcoder(self, request: VideoRequest) -> None:
        assert self._loop is not None
        loop = self._loop
        generation = self._generation

        def deliver(frame: EncodedFrame) -> None:  # on the worker thread
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._on_encoded, generation, frame)

        self._transcoder = Transcoder(
            self._encoder_settings(request),
            deliver,
            source_fps=self._info.fps if self._info else None,
            name=f"live-transcode-{self.local_video_port}",
        )
        self._transcoder.start()
        self._need_idr = False

    def _retire_transcoder(self) -> None:
        if self._transcoder is not None:
            self._generation += 1
            self._transcoder.stop()
            self._transcoder.flush_input()
            self._retired.append(self._transcoder)
            self._transcoder = None

    async def _restart_transcoding(self, request: VideoRequest) -> None:
        """copy -> transcode: a fresh subscription starts at the prebuffer's keyframe, so the
        new decoder can catch up and send the newest picture as an IDR right away."""
        old = self._pump_task
        if old is not None:
            old.cancel()
            await asyncio.gather(old, return_exceptions=True)
        if self._closed:
            return
        try:
            sub = self._subscribe()
        except Exception as exc:
            self._finish(f"camera unavailable on reconfigure: {exc}")
            return
        self._mode = "transcode"
        self._need_keyframe = False
        self._start_transcoder(request)
        self._run_pump(sub)

    async def _pump(self, sub: PacketSubscription) -> None:
        catching_up = True  # the subscription starts with the prebuffer's backlog
        lag_limit = max(4, round(self._source_fps() * self._catch_up_after))
        try:
            async for packet in sub:
                if self._closed:
                    return
                pending = sub.pending()
                newest = pending == 0
                if pending >= lag_limit:
                    catching_up = True
                if self._mode == "transcode" and self._copy_at_keyframe and packet.keyframe:
                    self._retire_transcoder()
                    self._mode = "copy"
                    self._copy_at_keyframe = False
                    self._need_keyframe = False
                    log.info("live %s: switched to copy", self._name)
                if self._mode == "copy":
                    burst = catching_up and not newest
                    self._send_copy(packet, compress=burst)
                    if burst:
                        # Let the loop breathe between frames of a backlog burst: other
                        # sessions, RTCP, and receivers sharing this host keep up.
                        await asyncio.sleep(0)
                else:
                    # One more packet waiting is jitter (packets often arrive in pairs), not
                    # a backlog: encode this frame rather than drop it.
                    self._feed_transcoder(packet, (pending <= 1 and not catching_up) or newest)
                if newest:
                    catching_up = False
        except SourceEnded:
            self._finish("camera disconnected")
        except Exception:
            log.exception("live session pump failed")
            self._finish("internal error")
        finally:
            sub.close()

    def _send_copy(self, packet: VideoPacket, *, compress: bool) -> None:
        if self._need_keyframe:
            if not packet.keyframe:
                self._frames_dropped += 1
                return
            self._need_keyframe = False
        if self._sender.write_buffer_size > self._max_send_buffer:
            # The network can't keep up: skip to the next keyframe rather than queue latency.
            self._frames_dropped += 1
            self._need_keyframe = True
            return
        self._sender.send_frame(
            packet.data,
            packet.pts,
            packet.epoch,
            round(90_000 / self._source_fps()),
            keyframe=packet.keyframe,
            compress=compress,
            parameter_sets=self._info.parameter_sets if self._info else None,
        )

    def _feed_transcoder(self, packet: VideoPacket, newest: bool) -> None:
        transcoder = self._transcoder
        if transcoder is None:
            return
        if self._need_keyframe:
            if not packet.keyframe:
                self._frames_dropped += 1
                return
            self._need_keyframe = False
        if not transcoder.submit(packet, newest):
            # The worker is far behind: throw its backlog away and restart at a keyframe.
            self._frames_dropped += 1 + transcoder.flush_input()
            if not (packet.keyframe and transcoder.submit(packet, newest)):
                self._need_keyframe = True

    def _on_encoded(self, generation: int, frame: EncodedFrame) -> None:
        if self._closed or generation != self._generation or self._mode != "transcode":
            return
        if self._need_idr and not frame.keyframe:
            self._frames_dropped += 1
            return
        if self._sender.write_buffer_size > self._max_send_buffer:
            self._frames_dropped += 1
            self._need_idr = True
            if self._transcoder is not None:
                self._transcoder.request_keyframe()
            return
        self._need_idr = False
        fps = self._request.fps if self._request else 30
        self._sender.send_frame(
            frame.data, frame.pts, frame.epoch, round(90_000 / max(1, fps)), keyframe=frame.keyframe
        )

    # -- link callbacks and teardown ---------------------------------------------------------

    def _rtcp_interval(self) -> float:
        return self._request.rtcp_interval if self._request else 0.5

    def _watchdog(self) -> None:
        if self._transcoder is not None and not self._transcoder.alive:
            self._finish("transcoder failed")  # its thread logged why

    def _finish(self, reason: str) -> None:
        """The stream ended by itself: release everything, then tell the accessory once."""
        if self._closed:
            return
        log.info("live %s ended: %s", self._name, reason)
        self._ended = True
        self._release()
        assert self._loop is not None
        self._loop.call_soon(self._notify_end)

    def _notify_end(self) -> None:
        try:
            self._on_end()
        except Exception:
            log.exception("live session on_end callback failed")

    def _release(self) -> None:
        self._closed = True
        task = self._pump_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if self._sub is not None:
            self._sub.close()  # also when the pump task never got to run
        self._retire_transcoder()
        self._link.close()


def _join_all(transcoders: list[Transcoder], timeout: float) -> None:
    for t in transcoders:
        t.join(timeout)
