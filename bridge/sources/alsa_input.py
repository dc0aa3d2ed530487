"""A camera's video with the sound of an ALSA capture device (`audio_device` in its table).

A USB camera's microphone is a device of its own (ALSA, not V4L2), and a camera without one can
have a microphone beside it. `AlsaInput` wraps the camera's video Input, unchanged, and hands
out the device's sound (alsa_capture.py: its own thread, 20 ms pcm_s16le packets stamped on the
monotonic clock) among the video as AudioPacket, so everything downstream (prebuffer, live
Opus, clip and HKSV AAC, the Microphone service) works as it does for an RTSP camera's sound.

One clock: an AudioPacket's pts must be on the video's clock (the video Input's pts, which it
rebases to start at 0). `VideoClock` learns where that clock is on the monotonic one:

- V4L2: the kernel stamps each buffer with its capture time (UVC: CLOCK_MONOTONIC; a few old
  drivers: the wall clock), and FFmpeg's v4l2 demuxer passes the stamp on as the packet's pts
  (its default `ts` mode converts nothing). `StampedAVInput` keeps what AVInput subtracts
  from it, so video pts + that offset is the frame's capture time, on the same clock as the
  sound's capture time: no guess at latencies on either side.
- file:// and demo: are paced to real time by the monotonic clock (AVInput's `realtime`, the
  demo's frame timer): a frame is handed over when it is due, so the smallest (arrival - pts)
  seen so far is where pts 0 is, give or take the few milliseconds of the fastest hand-over.
- any other stamp that is on neither clock: the same arrival rule.

The sound goes out after each video item, so it reaches the loop within one frame time of its
capture (its pts, not its arrival, places it). The sound replaces the source's own (a file's
track, the demo's beep): the video Input is opened without audio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import av

from bridge.media.packet import AudioInfo, AudioPacket, StreamInfo
from bridge.sources.alsa_capture import AlsaCapture, monotonic_of
from bridge.sources.alsa_device import CaptureFormat
from bridge.sources.av_input import AVInput
from bridge.sources.base import Input, RetryPolicy

FIRST_OPEN_WAIT = 1.0  # seconds open() waits for the device's first open (it may block: busy)
STOP_WAIT = 1.0  # seconds close() waits for the capture thread


class StampedAVInput(AVInput):
    """AVInput that also tells where its pts are on the demuxer's own clock: `stamp_offset`
    (seconds) = the demuxer's timestamp of a frame - its pts. For V4L2 that is the kernel's
    capture clock, constant for the whole connection."""

    stamp_offset: float | None = None

    def _convert(self, packet: av.Packet, pts: float) -> Iterator[tuple[bytes, float, bool]]:
        if packet.pts is not None and packet.time_base:
            self.stamp_offset = float(packet.pts * packet.time_base) - pts
        return super()._convert(packet, pts)


class VideoClock:
    """Where the video's pts 0 is on the monotonic clock (`origin`), from each frame's stamp
    when the input has one on a known clock, else from arrival times (module docstring)."""

    def __init__(self) -> None:
        self.origin: float | None = None
        self.basis = ""  # "capture" (the device's stamps) or "arrival"

    def frame(self, pts: float, arrival: float, stamp: float | None) -> None:
        if stamp is not None and (captured := monotonic_of(stamp, arrival)) is not None:
            self.origin, self.basis = captured - pts, "capture"
        elif self.basis != "capture":
            origin = arrival - pts
            if self.origin is None or origin < self.origin:
                self.origin = origin
            self.basis = "arrival"


class AlsaInput:
    """Input: the `video` Input's pictures, and the sound of an ALSA capture device."""

    def __init__(
        self,
        video: Input,
        fmt: CaptureFormat,
        camera: str,
        *,
        on_problem: Callable[[str | None], None] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.video = video
        self.fmt = fmt
        self.capture = AlsaCapture(fmt, camera, retry=retry, on_problem=on_problem)
        self.clock = VideoClock()
        # Always the format asked for: consumers keep working across a re-plugged device.
        self.audio_info: AudioInfo | None = None
        self.audio_problem: str | None = None
        self._started = False

    def open(self) -> StreamInfo:
        info = self.video.open()
        self.capture.start()
        self._started = True
        self.audio_info = self.fmt.info
        opened = self.capture.first_attempt.wait(FIRST_OPEN_WAIT)
        self.audio_problem = self.capture.report()
        if not opened and self.audio_problem is None:
            self.audio_problem = (
                f"unavailable: ALSA device {self.fmt.device!r} has not opened within "
                f"{FIRST_OPEN_WAIT:g} s (busy?)"
            )
        return info

    def packets(self) -> Iterator[tuple[bytes, float, bool] | AudioPacket]:
        clock, capture = self.clock, self.capture
        for item in self.video.packets():
            if isinstance(item, AudioPacket):
                continue  # the device's sound replaces the source's own
            offset = getattr(self.video, "stamp_offset", None)
            pts = item[1]
            clock.frame(pts, time.monotonic(), None if offset is None else pts + offset)
            yield item
            origin = clock.origin
            assert origin is not None
            for chunk in capture.take():
                yield AudioPacket(chunk.data, chunk.at - origin, chunk.duration)

    def close(self) -> None:
        if self._started:
            self.capture.stop(STOP_WAIT)
        self.video.close()
