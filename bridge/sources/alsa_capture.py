"""An ALSA capture device on a thread of its own: 20 ms PCM packets stamped on the monotonic clock.

A USB camera's microphone (or one beside a camera that has none) is a separate ALSA capture
device, read here with FFmpeg's `alsa` demuxer (PyAV). What it gives needs three fixes before
it can ride beside a camera's video:

- Packet sizes follow the device's period, which FFmpeg sets to the smallest the device allows:
  ONE frame (2 bytes) with alsa-lib's `file` and `null` plugins (measured: 16000 packets/s at
  16 kHz, ~11 % of a core for the read loop alone), some milliseconds on sound cards.
  `Chunker` cuts the sound into packets of `CHUNK_SECONDS`, so the camera's loop sees 50
  packets a second whatever the device does.
- Time: FFmpeg stamps each packet with the wall clock (`av_gettime()`, CLOCK_REALTIME) at the
  read, less what the device still buffers, smoothed by its time filter: the capture instant
  of the packet's first sample. `monotonic_of` puts such a stamp on the monotonic clock (the
  video's too, alsa_input.py), and `Chunker` gives packet k of a run the pts `start + k x 20
  ms` from the device's own sample count, with `start` slewed gently towards the stamps (a
  sound card's crystal drifts from the system clock by up to ~0.01 %). A jump of more than
  `RESYNC` (samples lost to an overrun, a device that stalled) starts a new run at the stamp.
- Failures: a device that does not open (not plugged in, a wrong name, busy) or dies mid-stream
  (unplugged) leaves the video alone: the thread says why (`problem`), retries with the
  source's capped backoff, and the sound comes back when the device does. A device that gives
  sound much faster than real time (a `null` device, a plugin reading a file) is a failure too:
  it would flood the bridge with overlapping packets and burn a core.

The open (alsa_device.py) runs on the thread as well: nothing of the camera waits for a device.

Format: the bridge carries what `CaptureFormat` asks (pcm_s16le at `rate`, `channels`), from
the first packet to the last, so consumers never see it change when a device is re-plugged.
`plughw:` devices convert in alsa-lib; a `hw:` device that can only do another rate or channel
count is converted here (bridge/media/resample.py).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import av.container
import numpy as np

from bridge.media.resample import Resampler
from bridge.sources.alsa_device import CaptureError, CaptureFormat, open_capture
from bridge.sources.base import RetryPolicy

log = logging.getLogger(__name__)

CHUNK_SECONDS = 0.02  # the packets handed on
RESYNC = 0.1  # seconds between a device's stamp and its sample count that start a new run
SLEW_SECONDS = 2.0  # the sample count's start follows the stamps with this time constant
STAMP_WINDOW = 10.0  # seconds a stamp may lie before its arrival and still be on a known clock
FLOOD = 2.0  # sound faster than this x real time is a broken device...
FLOOD_SLACK = 1.0  # ...beyond a burst of this many seconds (a read thread that was held up)
QUEUE_SECONDS = 5.0  # packets kept for the camera's thread (the oldest dropped beyond)


@dataclass(frozen=True, slots=True)
class Chunk:
    data: bytes  # pcm_s16le, interleaved
    at: float  # the monotonic time its first sample was captured
    duration: float


def monotonic_of(stamp: float, arrival: float) -> float | None:
    """`stamp`, a device's time (seconds) of something that arrived at monotonic `arrival`, on
    the monotonic clock; None when it is on neither the monotonic nor the wall clock."""
    if arrival - STAMP_WINDOW <= stamp <= arrival + 1.0:
        return stamp
    wall_minus_mono = time.time() - time.monotonic()
    if arrival - STAMP_WINDOW <= stamp - wall_minus_mono <= arrival + 1.0:
        return stamp - wall_minus_mono
    return None


class Chunker:
    """Device packets of any size -> CHUNK_SECONDS packets, timed by the device's sample count
    from the start of a run (module docstring)."""

    def __init__(self, rate: int, channels: int) -> None:
        self.rate = rate
        self.frame_bytes = 2 * channels
        self.chunk_bytes = round(rate * CHUNK_SECONDS) * self.frame_bytes
        self._buf = bytearray()
        self._start: float | None = None  # monotonic time of the run's first sample
        self._fed = 0  # samples of the run received (emitted + in _buf)
        self._emitted = 0
        self.resyncs = 0

    def feed(self, data: bytes, at: float) -> Iterator[Chunk]:
        """`data`: samples whose first was captured at monotonic `at`."""
        samples = len(data) // self.frame_bytes
        if self._start is None:
            self._start = at
        else:
            error = at - (self._start + self._fed / self.rate)
            if abs(error) > RESYNC:
                yield from self.flush()
                self.resyncs += 1
                self._start, self._fed, self._emitted = at, 0, 0
            else:
                self._start += error * min(1.0, samples / self.rate / SLEW_SECONDS)
        self._buf += data[: samples * self.frame_bytes]
        self._fed += samples
        while len(self._buf) >= self.chunk_bytes:
            yield self._take(self.chunk_bytes)

    def flush(self) -> Iterator[Chunk]:
        """What is buffered, as one shorter packet (before a new run)."""
        if self._buf:
            yield self._take(len(self._buf))

    def _take(self, size: int) -> Chunk:
        assert self._start is not None
        data = bytes(self._buf[:size])
        del self._buf[:size]
        samples = size // self.frame_bytes
        at = self._start + self._emitted / self.rate
        self._emitted += samples
        return Chunk(data, at, samples / self.rate)


class _Converter:
    """s16 of the device's rate and channels -> s16 of the format's (a `hw:` device that
    cannot do what was asked)."""

    def __init__(self, rate: int, channels: int, fmt: CaptureFormat) -> None:
        self.rate, self.layout = rate, _layout(channels)
        self._resampler = Resampler("s16", _layout(fmt.channels), fmt.rate)

    def __call__(self, data: bytes) -> bytes:
        samples = np.frombuffer(data, "<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout=self.layout)
        frame.sample_rate = self.rate
        return b"".join(f.to_ndarray().tobytes() for f in self._resampler.resample(frame))


def _layout(channels: int) -> str:
    return "mono" if channels == 1 else "stereo"


class AlsaCapture:
    """The device read on its own thread into a bounded queue that `take()` empties.

    `problem` is None while sound flows (or before the first open has finished), else one line
    for /status. Once `report()` has been called (the camera's open has read the first state
    and CameraSource logged it), changes are logged here and passed to `on_problem`.
    """

    def __init__(
        self,
        fmt: CaptureFormat,
        camera: str,
        *,
        retry: RetryPolicy | None = None,
        on_problem: Callable[[str | None], None] | None = None,
    ) -> None:
        self.fmt, self.camera = fmt, camera
        self.retry = retry or RetryPolicy()
        self.problem: str | None = None
        self.first_attempt = threading.Event()  # set once the first open succeeded or failed
        self.chunks: collections.deque[Chunk] = collections.deque(
            maxlen=round(QUEUE_SECONDS / CHUNK_SECONDS)
        )
        self.received = 0
        self.dropped = 0  # chunks the camera's thread did not take in time
        self.opens = 0
        self._on_problem = on_problem
        self._reporting = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_at: float | None = None  # monotonic, while the device is failing

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"alsa:{self.camera}", daemon=True)
        self._thread.start()

    def stop(self, wait: float = 1.0) -> None:
        """Stop reading; the thread closes the device. It is left to end on its own (daemon)
        when a read or an open blocks longer than `wait`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait)

    def report(self) -> str | None:
        """The problem now; from here on, changes are logged and reported."""
        with self._lock:
            self._reporting = True
            return self.problem

    def take(self) -> list[Chunk]:
        out: list[Chunk] = []
        while True:
            try:
                out.append(self.chunks.popleft())
            except IndexError:
                return out

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.opens += 1
                container = open_capture(self.fmt)
            except CaptureError as exc:
                self._set_problem(str(exc))
            else:
                try:
                    self._set_problem(None)
                    self._read(container)
                    if self._stop.is_set():
                        break
                    raise CaptureError(f"ALSA device {self.fmt.device!r}: the capture ended")
                except CaptureError as exc:
                    self._set_problem(str(exc))
                except Exception as exc:
                    why = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
                    self._set_problem(f"ALSA device {self.fmt.device!r} failed: {why}")
                finally:
                    container.close()
                if time.monotonic() - started >= self.retry.healthy_after:
                    failures = 0
            self.first_attempt.set()
            if self._stop.wait(self.retry.delay(failures)):
                break
            failures += 1
        self.first_attempt.set()

    def _read(self, container: av.container.InputContainer) -> None:
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        if ctx.name != "pcm_s16le":
            raise CaptureError(f"ALSA device {self.fmt.device!r} gives {ctx.name}, not pcm_s16le")
        fmt = self.fmt
        convert = None
        if (ctx.sample_rate, ctx.channels) != (fmt.rate, fmt.channels):
            convert = _Converter(ctx.sample_rate, ctx.channels, fmt)
        source_frame = 2 * ctx.channels
        tb = float(stream.time_base or 0) or 1e-6
        chunker = Chunker(fmt.rate, fmt.channels)
        window_start, window_samples = time.monotonic(), 0
        self.first_attempt.set()
        for packet in container.demux(stream):
            if self._stop.is_set():
                return
            if packet.size == 0:
                continue
            arrival = time.monotonic()
            data = bytes(packet)
            samples = len(data) // source_frame
            stamp = None if packet.pts is None else monotonic_of(packet.pts * tb, arrival)
            at = stamp if stamp is not None else arrival - samples / ctx.sample_rate
            window_samples += samples
            elapsed = arrival - window_start
            if window_samples > ctx.sample_rate * (FLOOD * elapsed + FLOOD_SLACK):
                raise CaptureError(
                    f"ALSA device {fmt.device!r} gives sound faster than real time "
                    f"({window_samples / ctx.sample_rate:.1f} s of it in {elapsed:.2f} s)"
                )
            if elapsed >= 2.0:
                window_start, window_samples = arrival, 0
            for chunk in chunker.feed(convert(data) if convert else data, at):
                if len(self.chunks) == self.chunks.maxlen:
                    self.dropped += 1
                self.chunks.append(chunk)
                self.received += 1

    def _set_problem(self, problem: str | None) -> None:
        problem = None if problem is None else f"unavailable: {problem}"
        with self._lock:
            if problem == self.problem:
                return
            self.problem = problem
            reporting = self._reporting
        if reporting:
            self._log_change(problem)
            if self._on_problem is not None:
                self._on_problem(problem)
        if problem is not None and self._failed_at is None:
            self._failed_at = time.monotonic()
        elif problem is None:
            self._failed_at = None

    def _log_change(self, problem: str | None) -> None:
        if problem is None:
            down = time.monotonic() - self._failed_at if self._failed_at is not None else 0.0
            log.info("camera %r: sound from ALSA device %r again (after %.1f s)",
                     self.camera, self.fmt.device, down)  # fmt: skip
        else:
            log.warning("camera %r: its sound is %s; video goes on, retrying with backoff",
                        self.camera, problem)  # fmt: skip
