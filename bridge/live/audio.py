"""OpusLiveSession: the camera's sound as an Opus/SRTP stream to one HomeKit controller.

Audio has its own port, SRTP key, SSRC, RTP clock, codec and drop policy, so it is a session of
its own beside H264LiveSession (bridge/live/stream.py puts the two together). It reuses the
video's pieces: a ControllerLink (socket, SRTP, RTCP loop) with an AudioPacketizer at the
negotiated rate.

- Nothing is decoded while nobody listens: the camera's audio is subscribed at start() (from
  the live edge: latency matters more than the prebuffer) and released at stop().
- Copy or transcode (bridge/live/opus.py): the first packet decides. The camera's own Opus goes
  out as it is when it fits the request (copy, on the loop: no codec at all); anything else is
  decoded, resampled and encoded by an OpusEncoder on the bridge's media executor. One job per
  session at a time, so the encoder's codec contexts see one thread at a time; packets that
  arrive meanwhile wait in the inbox and go in the next job together.
- Drop policy: the oldest. The subscription keeps `queue_packets`, the inbox `max_backlog`
  seconds; what falls out is counted (`dropped`) and the timeline skips over it in whole
  packets. Audio has no keyframes, and a late sound is worse than a missing one.
- Lip sync: our sender reports map audio RTP time to the wall clock through the video's own
  mapping (H264LiveSession.media_time: the pts its reports call "now"). Both streams carry the
  camera's pts, so the controller lines them up as the camera captured them, whatever each
  pipeline's latency. No report goes out before the video has sent a frame.
- Talk-back: the controller's own Opus arrives on this port. The link authenticates it (SRTP,
  a forgery is counted in `rtp_rejected` and dropped) and each packet's RTP payload goes to
  `on_talkback` (e.g. bridge/live/talkback.py's TalkBack.feed_opus); without one it is only
  counted. It never touches what we send.
- The Microphone's Mute and Volume (a SoundLevel the accessory writes) apply per packet: muted,
  nothing is sent (counted in `muted`; the reports go on); below 100 %, the camera's Opus is
  transcoded too, so the gain can be applied. `send=False` is a Speaker-only camera: the port
  is there for the controller's voice, and nothing of the camera's is subscribed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from accessories.backend import AudioRequest, CameraUnavailable, SoundLevel
from bridge.live.link import ControllerLink, RtpTarget
from bridge.live.opus import OpusEncoder, OpusPacket, OpusTimeline, copy_problem
from bridge.live.rtp import AudioPacketizer, rtp_payload
from bridge.media.executor import MediaBusy, MediaExecutor
from bridge.media.fanout import AudioSubscription, SourceEnded
from bridge.media.packet import AudioInfo, AudioPacket

log = logging.getLogger(__name__)

AudioMode = Literal["copy", "transcode"]
VideoClock = Callable[[float], "tuple[float, int] | None"]
FIRST_REPORT_AFTER = 0.5  # seconds: the controller can lip-sync only once it has one


@dataclass(frozen=True, slots=True)
class AudioStats:
    mode: AudioMode | None
    codec_in: str | None
    sample_rate: int
    packet_time_ms: int
    packets_in: int  # the camera's packets taken
    packets_sent: int
    bytes_sent: int
    dropped: int  # the camera's packets lost to the drop-oldest queues
    skipped_packets: int  # packets' worth of time skipped over gaps
    silence_ms: int  # silence put into short gaps (transcode)
    decode_errors: int
    executor_busy: int  # jobs the media executor refused (retried with the next packet)
    rtcp_sent: int
    rtcp_received: int
    rtcp_rejected: int
    rtp_rejected: int  # datagrams on our audio port failing SRTP authentication
    talkback_packets: int  # authenticated RTP from the controller
    muted: int  # the camera's packets not sent because the Microphone is muted


class OpusLiveSession:
    """The sound of one live view. The socket is bound at once (its port goes into the
    SetupEndpoints response); start() begins sending; stop() releases everything."""

    def __init__(
        self,
        subscribe: Callable[[], AudioSubscription],
        audio_info: Callable[[], AudioInfo | None],
        target: RtpTarget,
        bind_address: str = "",
        *,
        video_clock: VideoClock,
        executor: MediaExecutor | None = None,
        max_backlog: float = 0.5,
        on_talkback: Callable[[bytes], None] | None = None,  # an RTP payload (Opus)
        level: SoundLevel | None = None,  # the Microphone's Mute and Volume
        send: bool = True,  # False: no Microphone, only the controller's voice comes in
        cname: str = "obscura",
        name: str = "",
    ) -> None:
        self.target = target
        self.name = name or f"audio-{target.ssrc:08x}"
        self._subscribe = subscribe
        self._audio_info = audio_info
        self._video_clock = video_clock
        self._executor = executor
        self._max_backlog = max_backlog
        self.on_talkback = on_talkback
        self.level = level or SoundLevel()
        self._send_sound = send
        self._packetizer = AudioPacketizer(target.ssrc, 110)
        self._link = ControllerLink(
            target,
            bind_address,
            idle_timeout=None,  # the video's link decides when the controller is gone
            first_rtcp_timeout=None,
            cname=cname,
            packetizer=self._packetizer,
            on_rtp=self._on_rtp,
        )
        self._sender = self._link.sender
        self._sender.report_clock = self._report_clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._request: AudioRequest | None = None
        self._info: AudioInfo | None = None
        self._mode: AudioMode | None = None
        self._timeline: OpusTimeline | None = None
        self._encoder: OpusEncoder | None = None
        self._sub: AudioSubscription | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._inbox: collections.deque[AudioPacket] = collections.deque()
        self._job: asyncio.Future[list[OpusPacket]] | None = None
        self._last: OpusPacket | None = None  # the last packet sent
        self._started = self._closed = False
        self._packets_in = self._dropped = self._busy = self._talkback = self._muted = 0

    @property
    def port(self) -> int:
        return self._link.port

    @property
    def mode(self) -> AudioMode | None:
        return self._mode

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        req, enc, link = self._request, self._encoder, self._link
        return asdict(
            AudioStats(
                mode=self._mode,
                codec_in=self._info.codec if self._info else None,
                sample_rate=req.sample_rate if req else 0,
                packet_time_ms=req.packet_time_ms if req else 0,
                packets_in=self._packets_in,
                packets_sent=self._sender.packets_sent,
                bytes_sent=self._sender.bytes_sent,
                dropped=self._dropped + (self._sub.dropped if self._sub else 0),
                skipped_packets=self._timeline.skipped if self._timeline else 0,
                silence_ms=round(1000 * enc.silence / enc.rate) if enc else 0,
                decode_errors=enc.decode_errors if enc else 0,
                executor_busy=self._busy,
                rtcp_sent=self._sender.reports_sent,
                rtcp_received=link.rtcp_received,
                rtcp_rejected=link.rtcp_rejected,
                rtp_rejected=link.rtp_rejected,
                talkback_packets=self._talkback,
                muted=self._muted,
            )
        )

    async def start(self, request: AudioRequest) -> None:
        """Start sending. A camera whose sound is gone (or never came) leaves the session
        silent but open: the controller still gets our reports and may talk back."""
        if self._started or self._closed:
            raise RuntimeError("audio session already started or stopped")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._request = request
        self._packetizer.payload_type = request.payload_type
        self._timeline = OpusTimeline(request.sample_rate, request.frame_samples)
        try:
            await self._link.open(self._report_interval, lambda: None, lambda _: None)
        except BaseException:
            self.close()
            raise
        if not self._send_sound:
            log.info("live %s: listening for talk-back on port %d", self.name, self.port)
            return
        self._info = self._audio_info()
        try:
            if self._info is None:
                raise CameraUnavailable("the camera sends no sound now")
            self._sub = self._subscribe()
        except CameraUnavailable as exc:
            log.info("live %s: no sound: %s", self.name, exc)
            return
        log.info(
            "live %s: %s to Opus %d Hz, %d ms, %d ch, <= %d kbit/s, to %s:%d",
            self.name, self._info.describe(), request.sample_rate, request.packet_time_ms,
            request.channels, request.max_bitrate_kbps, self.target.address, self.target.port,
        )  # fmt: skip
        self._pump_task = self._loop.create_task(self._pump(self._sub), name="live-audio")

    def close(self) -> None:
        """Stop at once (sync): no more packets; the socket closes with the loop's next turn."""
        if self._closed:
            return
        self._closed = True
        task = self._pump_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if self._sub is not None:
            self._sub.close()
        self._inbox.clear()
        self._link.close()
        # Break the cycles through the link's callbacks: the session goes with its last user.
        self._sender.report_clock = None
        self._link.on_rtp = None
        if self._job is None:
            self._free_encoder()

    async def stop(self) -> None:
        """close(), then wait for what it started (the pump, a running job, the socket)."""
        self.close()
        task = self._pump_task
        if task is not None and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)
        if self._job is not None:  # its result is not wanted any more
            await asyncio.wait({self._job}, timeout=2.0)
        await self._link.wait_closed()

    def _free_encoder(self) -> None:
        """The codecs go as soon as no job uses them (here or when the last job ends)."""
        if self._encoder is not None:
            self._encoder.close()

    # -- the camera's packets ---------------------------------------------------------------

    async def _pump(self, sub: AudioSubscription) -> None:
        try:
            async for packet in sub:
                if self._closed:
                    return
                self._packets_in += 1
                if self.level.muted:
                    self._muted += 1
                    continue
                if self._mode is None:
                    self._choose(packet)
                if self._mode == "copy":
                    if self._copy(packet):
                        continue
                    self._mode = "transcode"
                self._inbox.append(packet)
                self._trim_inbox()
                self._kick()
        except SourceEnded:
            log.info("live %s: the camera's sound ended", self.name)
        except Exception:
            log.exception("live %s: audio pump failed", self.name)
        finally:
            sub.close()

    def _choose(self, packet: AudioPacket) -> None:
        assert self._info is not None and self._request is not None
        why = copy_problem(self._info, self._request, packet)
        if why is None and self.level.gain < 1.0:
            why = f"Microphone volume {self.level.volume} %"
        self._mode = "copy" if why is None else "transcode"
        log.info("live %s: audio %s%s", self.name, self._mode, f" ({why})" if why else "")

    def _copy(self, packet: AudioPacket) -> bool:
        """Send the camera's packet as it is; False when it does not fit (-> transcode)."""
        assert self._info is not None and self._request is not None
        assert self._timeline is not None
        if copy_problem(self._info, self._request, packet) is not None:
            log.info("live %s: the camera's Opus changed: transcoding from now on", self.name)
            return False
        if self.level.gain < 1.0:
            log.info("live %s: Microphone volume %d %%: transcoding from now on",
                     self.name, self.level.volume)  # fmt: skip
            return False
        timestamp = self._timeline.place(packet.pts, packet.epoch)
        self._send(OpusPacket(packet.data, timestamp, packet.pts, packet.epoch))
        return True

    def _trim_inbox(self) -> None:
        inbox = self._inbox
        while len(inbox) > 1 and inbox[-1].pts - inbox[0].pts > self._max_backlog:
            inbox.popleft()
            self._dropped += 1

    # -- transcoding on the media executor --------------------------------------------------

    def _kick(self) -> None:
        """Hand the inbox to the encoder unless a job is still running (one at a time)."""
        if self._job is not None or not self._inbox or self._closed:
            return
        assert self._loop is not None and self._info is not None and self._request is not None
        if self._encoder is None:
            assert self._timeline is not None
            self._encoder = OpusEncoder(self._info, self._request, self._timeline)
        batch = list(self._inbox)
        self._inbox.clear()
        self._encoder.gain = self.level.gain
        try:
            if self._executor is not None:
                job = self._executor.submit(self._encoder.encode, batch, what="live opus")
                self._job = asyncio.wrap_future(job, loop=self._loop)
            else:
                self._job = self._loop.run_in_executor(None, self._encoder.encode, batch)
        except MediaBusy:
            self._busy += 1
            self._inbox.extendleft(reversed(batch))  # retried with the next packet
            self._trim_inbox()
            return
        self._job.add_done_callback(self._encoded)

    def _encoded(self, job: asyncio.Future[list[OpusPacket]]) -> None:
        self._job = None
        exc = None if job.cancelled() else job.exception()  # always retrieved
        if self._closed or job.cancelled():
            self._free_encoder()
            return
        if exc is not None:
            log.error("live %s: Opus encoding failed, sound stops: %r", self.name, exc)
            self._mode = None
            self.close()
            return
        for packet in job.result():
            self._send(packet)
        self._kick()

    # -- the network --------------------------------------------------------------------------

    def _send(self, packet: OpusPacket) -> None:
        if self._sender.send_audio(packet.payload, packet.timestamp, packet.pts, packet.epoch):
            self._last = packet

    def _report_interval(self) -> float:
        request = self._request
        if request is None or self._sender.reports_sent == 0:
            return FIRST_REPORT_AFTER
        return request.rtcp_interval

    def _report_clock(self, now: float) -> int | None:
        """Our RTP time for wall time `now`, on the video's mapping (None: not yet)."""
        last, request = self._last, self._request
        video = self._video_clock(now)
        if last is None or request is None or video is None or video[1] != last.epoch:
            return None
        return last.timestamp + round((video[0] - last.pts) * request.sample_rate)

    def _on_rtp(self, plain: bytes) -> None:
        self._talkback += 1
        payload = rtp_payload(plain)
        if self.on_talkback is not None and payload:
            try:
                self.on_talkback(payload)
            except Exception:
                log.exception("live %s: talk-back consumer failed", self.name)
