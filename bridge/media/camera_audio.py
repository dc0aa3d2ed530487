"""A camera's sound as PCM on a recording's timeline: the `AudioInput` of HKSV's AAC track.

bridge/media/aac.py asks for samples by position: sample 0 is the recording's first video frame,
at the track's rate and channel count. This input turns the camera's encoded packets (any codec
the source carries: AAC, G.711, Opus, MP3...) into exactly that:

- on the loop, `start()` subscribes to the camera's audio from the prebuffer on (the same loop
  turn as the recording's video subscription, so both cover the same window) and a pump task
  hands packets to a lock-protected inbox; nothing is decoded there;
- on the recording's worker thread, `read()` decodes what has arrived (decoder and resampler
  are created there and used only there: the worker owns every codec of its recording) to
  float32 at the track's rate and layout, and places each packet's samples at its pts:
  position = (pts - first video pts) x rate. Consecutive packets are laid end to end (a
  resampler's output does not split along packet lines); a packet more than `REANCHOR` away
  from where the last one ended (a gap, lost packets, a camera's jump) is placed at its own pts
  again. Where nothing was heard the track gets silence;
- audio may arrive a little after the video it goes with (the camera's audio encoder holds a
  frame or two): a read that reaches past the newest packet waits up to `max_wait` for it, as
  long as sound is flowing (`stale` seconds without a packet: silence at once, never a stall);
- decoding happens only while a recording runs: nothing subscribes otherwise; `close()` (on the
  loop, idempotent) ends the subscription and any wait. Bounded: the inbox keeps at most
  `max_packets` (oldest dropped, counted) and decoded PCM is dropped once read past.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable

import av
import av.audio.codeccontext
import av.audio.resampler
import av.error
import numpy as np

from bridge.media.fanout import AudioSubscription, SourceEnded
from bridge.media.packet import AudioInfo, AudioPacket
from bridge.media.resample import Resampler

log = logging.getLogger(__name__)

REANCHOR = 0.03  # seconds: a packet further than this from where it should be is re-placed
_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


class CameraAudioInput:
    """bridge.media.aac.AudioInput fed by a camera's audio subscription."""

    def __init__(
        self,
        info: AudioInfo,
        subscribe: Callable[[], AudioSubscription],
        sample_rate: int,
        channels: int,
        *,
        name: str = "",
        max_wait: float = 0.5,
        stale: float = 1.0,
        max_packets: int = 3000,
    ) -> None:
        self.info = info
        self.sample_rate = sample_rate
        self.channels = channels
        self.name = name
        self._subscribe = subscribe
        self._max_wait, self._stale = max_wait, stale
        self._inbox: collections.deque[AudioPacket] = collections.deque(maxlen=max_packets)
        self._cond = threading.Condition()
        self._newest_end: float | None = None  # pts + duration of the newest packet received
        self._last_arrival = 0.0  # monotonic
        self._ended = False
        self._origin: Callable[[], float | None] = lambda: None
        self._sub: AudioSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._epoch: int | None = None
        # worker-thread state
        self._decoder: av.audio.codeccontext.AudioCodecContext | None = None
        self._resampler: Resampler | None = None
        self._pcm: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self._next: int | None = None  # where the next decoded sample goes
        # stats
        self.received = 0
        self.dropped = 0  # packets the inbox had to let go (the worker did not read)
        self.decoded = 0
        self.decode_errors = 0
        self.waited = 0.0  # seconds read() spent waiting for late sound

    # -- loop side -----------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe (from the prebuffer) and start forwarding; raises CameraUnavailable.
        The prebuffer's packets are in the inbox when this returns: a worker that reads before
        the pump first runs (a clip's pre-roll, muxed at once) finds them."""
        if self._sub is not None:
            return
        self._sub = self._subscribe()
        try:
            while (packet := self._sub.get_nowait()) is not None and self._accept(packet):
                pass
        except SourceEnded:
            self._end()
            return
        self._task = asyncio.create_task(self._pump(), name=f"audio-input:{self.name}")

    def close(self) -> None:
        """Stop receiving; what has arrived can still be read (a finishing recording's last
        fragment), without waiting. Idempotent."""
        if self._sub is not None:
            self._sub.close()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._end()

    def follow_timeline(self, origin: Callable[[], float | None]) -> None:
        """Where sample 0 is: the pts of the recording's first video frame (None until known).
        Called by the recording's worker with its fragment writer's origin."""
        self._origin = origin

    async def _pump(self) -> None:
        sub = self._sub
        assert sub is not None
        try:
            async for packet in sub:
                if not self._accept(packet):
                    break
        except SourceEnded:
            pass
        finally:
            self._end()

    def _accept(self, packet: AudioPacket) -> bool:
        """Into the inbox; False (and not kept) once the camera reconnected: its clock
        restarted."""
        if self._epoch is None:
            self._epoch = packet.epoch
        elif packet.epoch != self._epoch:
            return False
        with self._cond:
            if len(self._inbox) == self._inbox.maxlen:
                self.dropped += 1
            self._inbox.append(packet)
            self._newest_end = packet.pts + packet.duration
            self._last_arrival = time.monotonic()
            self.received += 1
            self._cond.notify_all()
        return True

    def _end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    # -- worker side ---------------------------------------------------------------------------

    def read(self, start: int, count: int) -> np.ndarray | None:
        """Samples [start, start + count) of the timeline, (channels, count) float32, or None
        when the camera was silent (nothing arrived) over all of it."""
        origin = self._origin()
        if origin is None:
            return None
        for packet in self.packets(origin + (start + count) / self.sample_rate):
            self._decode(packet, origin)
        return self._take(start, count)

    def packets(self, until: float) -> list[AudioPacket]:
        """Every packet that has arrived, as the camera encoded it (a clip copies AAC), once
        sound has reached source pts `until` (waiting for it as `read` does)."""
        self._wait_for(until)
        with self._cond:
            packets = list(self._inbox)
            self._inbox.clear()
        return packets

    def _wait_for(self, pts: float) -> None:
        deadline = time.monotonic() + self._max_wait
        with self._cond:
            while not self._ended:
                if self._newest_end is not None and self._newest_end >= pts:
                    return
                now = time.monotonic()
                if now - self._last_arrival > self._stale or now >= deadline:
                    return  # no sound flowing (or too late): silence, not a stall
                self._cond.wait(deadline - now)
                self.waited += time.monotonic() - now

    def _open(self) -> None:
        info = self.info
        decoder = av.CodecContext.create(info.codec, "r")
        assert isinstance(decoder, av.audio.codeccontext.AudioCodecContext)
        decoder.sample_rate = info.sample_rate
        decoder.layout = _LAYOUTS.get(info.channels, "stereo")
        decoder.thread_count = 1  # a few ms per second of sound: no pool of FFmpeg threads
        if info.extradata:
            decoder.extradata = info.extradata
        decoder.open()
        self._decoder = decoder
        layout = "mono" if self.channels == 1 else "stereo"
        self._resampler = Resampler("fltp", layout, self.sample_rate)

    def _decode(self, packet: AudioPacket, origin: float) -> None:
        if self._decoder is None:
            self._open()
        assert self._decoder is not None and self._resampler is not None
        position = round((packet.pts - origin) * self.sample_rate)
        if self._next is None or abs(position - self._next) > REANCHOR * self.sample_rate:
            self._next = position
        try:
            frames = self._decoder.decode(av.Packet(packet.data))
            pcm = [f.to_ndarray() for fr in frames for f in self._resampler.resample(fr)]
        except (av.error.FFmpegError, ValueError) as exc:
            self.decode_errors += 1
            if self.decode_errors == 1:
                log.warning("camera %r: undecodable %s packet: %s", self.name, self.info.codec, exc)
            return
        for block in pcm:
            block = np.asarray(block, np.float32).reshape(self.channels, -1)
            self._pcm.append((self._next, block))
            self._next += block.shape[1]
            self.decoded += block.shape[1]

    def _take(self, start: int, count: int) -> np.ndarray | None:
        out: np.ndarray | None = None
        end = start + count
        for position, block in self._pcm:
            lo, hi = max(start, position), min(end, position + block.shape[1])
            if lo >= hi:
                continue
            if out is None:
                out = np.zeros((self.channels, count), np.float32)
            out[:, lo - start : hi - start] = block[:, lo - position : hi - position]
        # Reads move forward: what ends before this one's end is never asked for again.
        while self._pcm and self._pcm[0][0] + self._pcm[0][1].shape[1] <= end:
            self._pcm.popleft()
        return out

    def stats(self) -> dict[str, object]:
        return {
            "codec": self.info.codec,
            "received": self.received,
            "dropped": self.dropped,
            "decoded_seconds": round(self.decoded / self.sample_rate, 3),
            "decode_errors": self.decode_errors,
            "waited_seconds": round(self.waited, 3),
        }
