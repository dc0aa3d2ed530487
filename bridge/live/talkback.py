"""Talk-back for one camera: the controller's Opus in, decoded, to the camera's back channel.

While the user holds the talk button, the controller sends Opus over SRTP on the live stream's
audio port. The live audio session (bridge/live/audio.py) authenticates and unwraps those
packets and hands each RTP payload to `feed_opus`; from there on it is this module's:

    feed_opus / feed_pcm -> bounded queue (drops the OLDEST) -> decode + gain (media executor)
                         -> BackChannel.send (bridge/sources/backchannel.py)

Why these choices:
- **Opened on demand, closed when quiet.** A camera's back channel is a second RTSP session
  and, on many cameras, exclusive (one talker at a time). So it opens on the first packet of a
  talk, and closes `idle_close` seconds after the last one: a user who pauses and talks again
  within that window keeps the open channel; one who let go frees the camera.
- **Drop the oldest.** Talk-back is live speech: after a stall (opening the channel, a slow
  camera) the freshest audio matters, not the backlog. The queue holds `max_frames` packets
  (0.5 s of 20 ms Opus, 1.5 s of 60 ms) while the channel opens; what overflows is counted.
- **A refusal is a log line, not a crash.** A camera that refuses (no back channel, wrong
  credentials, gone mid-talk) ends this talk with one warning; further audio is dropped
  (counted) for `retry_after` seconds, so a held button does not hammer a broken camera with
  RTSP sessions, then the next talk tries again.
- **Codec work off the loop.** Opus decoding (PyAV's libopus) runs on the media executor (or
  asyncio's default one without it), one job at a time per talk, so the decoder stays on one
  thread at a time; the back channel encodes the same way.

The Speaker's Mute and Volume (a SoundLevel the accessory writes) apply per packet: Volume
scales the samples, Mute drops them (counted).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import av
import av.audio.codeccontext
import numpy as np

from accessories.backend import SoundLevel
from bridge.config import CameraConfig
from bridge.media.executor import MediaBusy, MediaExecutor
from bridge.sources.backchannel import BackChannel, BackChannelError, OnvifBackChannel

log = logging.getLogger(__name__)

IDLE_CLOSE_SECONDS = 3.0
RETRY_AFTER_SECONDS = 15.0
MAX_FRAMES = 25
GATHER_SECONDS = 0.04  # latency added to let packets batch up (two of 20 ms)

Item = tuple[bytes, None] | tuple[np.ndarray, int]  # (Opus payload, None) or (PCM, rate)


class OpusDecoder:
    """Opus RTP payloads -> float32 mono PCM at 48 kHz (libopus's output rate). One thread at
    a time; a damaged packet is skipped (counted), never fatal."""

    RATE = 48000

    def __init__(self) -> None:
        ctx = av.CodecContext.create("libopus", "r")
        assert isinstance(ctx, av.audio.codeccontext.AudioCodecContext)
        ctx.layout = "mono"  # the controller talks mono; libopus downmixes anything else
        self._ctx = ctx
        self.errors = 0

    def decode(self, payload: bytes) -> np.ndarray:
        try:
            frames = self._ctx.decode(av.Packet(payload))
        except (av.error.FFmpegError, ValueError):
            self.errors += 1
            return np.zeros(0, np.float32)
        parts = []
        for frame in frames:
            a = frame.to_ndarray()
            if frame.format.is_packed:
                a = a.reshape(-1, frame.layout.nb_channels).T
            if a.dtype == np.int16:
                a = a.astype(np.float32) / 32768.0
            parts.append(a.astype(np.float32).mean(axis=0))  # mono
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class TalkBack:
    """One camera's talk-back. Call `feed_*` from the loop; `stop()` when the camera goes."""

    def __init__(
        self,
        camera: str,
        open_channel: Callable[[], BackChannel],
        *,
        media: MediaExecutor | None = None,
        idle_close: float = IDLE_CLOSE_SECONDS,
        retry_after: float = RETRY_AFTER_SECONDS,
        max_frames: int = MAX_FRAMES,
        level: SoundLevel | None = None,
        gather: float = GATHER_SECONDS,
    ) -> None:
        self.camera = camera
        self._open_channel = open_channel
        self._media = media
        self.idle_close, self.retry_after = idle_close, retry_after
        self.gather = gather
        self.level = level or SoundLevel()  # the Speaker's Mute and Volume
        self._queue: collections.deque[Item] = collections.deque(maxlen=max_frames)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._stopped = False
        self.state = "idle"  # idle | opening | talking | unavailable
        self.codec = ""
        self.last_error: str | None = None
        self.frames_in = self.frames_sent = 0
        self.dropped_overflow = self.dropped_unavailable = self.dropped_muted = 0
        self.dropped_busy = 0
        self.talks = self.failures = 0

    # -- input (from the loop) ----------------------------------------------------------------
    def feed_opus(self, payload: bytes) -> None:
        """One Opus RTP payload from the controller (already authenticated)."""
        self._feed((payload, None))

    def feed_pcm(self, pcm: np.ndarray, rate: int) -> None:
        """PCM (int16 or float, mono or (channels, n)) at `rate` Hz."""
        self._feed((pcm, rate))

    def _feed(self, item: Item) -> None:
        self.frames_in += 1
        if self._stopped:
            return
        if self.level.muted:
            self.dropped_muted += 1
            return
        if self._task is None and time.monotonic() < self._retry_at:
            self.dropped_unavailable += 1
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped_overflow += 1  # the deque drops the oldest on append
        self._queue.append(item)
        self._wake.set()
        if self._task is None:
            self._start()

    def _start(self) -> None:
        self.state = "opening"
        self._task = asyncio.create_task(self._talk(), name=f"talkback:{self.camera}")

    # -- the talk -----------------------------------------------------------------------------
    async def _talk(self) -> None:
        channel: BackChannel | None = None
        try:
            channel = self._open_channel()
            await channel.open()
            self.codec = f"{channel.codec}/{channel.sample_rate}"
            self.state = "talking"
            self.talks += 1
            log.info("talk-back to %s: back channel open (%s)", self.camera, self.codec)
            await self._pump(channel)
            log.info(
                "talk-back to %s: quiet for %g s, back channel closed", self.camera, self.idle_close
            )
        except BackChannelError as exc:
            self._fail(str(exc))
        except MediaBusy as exc:  # creating the decoder found no room
            self._fail(f"media pool busy ({exc})")
        except Exception as exc:  # a bug must end this talk, not the bridge
            log.exception("talk-back to %s failed", self.camera)
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            self._wake.clear()
            if channel is not None:
                await channel.close()
            self._task = None
            if self.state == "unavailable" or self._stopped:
                self._queue.clear()
            else:
                self.state = "idle"
                if self._queue:  # the user spoke again while the channel closed
                    self._start()

    async def _pump(self, channel: BackChannel) -> None:
        decoder: OpusDecoder | None = None
        while True:
            if not self._queue:
                self._wake.clear()
                try:  # not wait_for: that costs a task per packet
                    async with asyncio.timeout(self.idle_close):
                        await self._wake.wait()
                except TimeoutError:
                    return
                # Let a few packets gather: one job and one write per GATHER_SECONDS rather
                # than per 20 ms packet (a talk's CPU is mostly per-job overhead, BENCHMARKS).
                await asyncio.sleep(self.gather)
            items = list(self._queue)
            self._queue.clear()
            if decoder is None and any(rate is None for _, rate in items):
                decoder = await self._run(OpusDecoder)
            try:
                chunks = await self._run(self._decode, decoder, items, self.level.gain)
            except MediaBusy:
                self.dropped_busy += len(items)  # a moment of silence, the talk goes on
                continue
            for pcm, rate in chunks:
                await channel.send(pcm, rate)
            self.frames_sent += len(items)

    @staticmethod
    def _decode(
        decoder: OpusDecoder | None, items: list[Item], gain: float
    ) -> list[tuple[np.ndarray, int]]:
        out: list[tuple[np.ndarray, int]] = []
        for data, rate in items:
            if rate is None:
                assert decoder is not None and isinstance(data, bytes)
                pcm, rate = decoder.decode(data), OpusDecoder.RATE
            else:
                pcm = np.asarray(data)
                pcm = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm
            if not pcm.size:
                continue
            pcm = np.asarray(pcm, np.float32) * gain
            if out and out[-1][1] == rate and out[-1][0].ndim == pcm.ndim == 1:
                out[-1] = (np.concatenate([out[-1][0], pcm]), rate)  # one send for the batch
            else:
                out.append((pcm, rate))
        return out

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._media is not None:
            return await self._media.run(fn, *args, what="talkback-decode")
        return await asyncio.to_thread(fn, *args)

    def _fail(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        self.state = "unavailable"
        self._retry_at = time.monotonic() + self.retry_after
        log.warning(
            "talk-back to %s: %s (audio dropped; next try in %g s)",
            self.camera,
            why,
            self.retry_after,
        )

    # -- lifetime -----------------------------------------------------------------------------
    async def stop(self) -> None:
        """End a talk in progress (its channel closes, TEARDOWN sent); idempotent."""
        self._stopped = True
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def status(self) -> dict[str, Any]:
        if self.state == "unavailable" and time.monotonic() >= self._retry_at:
            self.state = "idle"
        return {
            "state": self.state,
            "codec": self.codec or None,
            "talks": self.talks,
            "failures": self.failures,
            "last_error": self.last_error,
            "frames_in": self.frames_in,
            "frames_sent": self.frames_sent,
            "dropped_overflow": self.dropped_overflow,
            "dropped_unavailable": self.dropped_unavailable,
            "dropped_muted": self.dropped_muted,
            "dropped_busy": self.dropped_busy,
            "volume": self.level.volume,
            "muted": self.level.muted,
        }


def camera_talkback(
    cam: CameraConfig, media: MediaExecutor | None = None, level: SoundLevel | None = None
) -> TalkBack:
    """A camera's talk-back to its ONVIF back channel (its source URL, credentials included)."""
    return TalkBack(
        cam.name, lambda: OnvifBackChannel(cam.source, media=media), media=media, level=level
    )
