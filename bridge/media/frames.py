"""Decoded frames on demand: a camera decodes only while somebody leases its frames.

Copy-mode live view and recording never decode. Snapshots (and detection in #3) take a lease;
while one is held a decoder thread turns the camera's packets into frames and keeps the newest.
The first lease starts from the prebuffer's newest keyframe so a picture is ready after one GOP
of decoding at most, not after the camera's next keyframe.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import av
import av.video.frame

from bridge.media.packet import StreamInfo, VideoPacket

log = logging.getLogger(__name__)

_STOP = object()


class FrameTap:
    def __init__(self, name: str, backlog: Callable[[], list[VideoPacket]]) -> None:
        self.name = name
        self._backlog = backlog
        self._queue: queue.Queue[object] = queue.Queue(maxsize=240)
        self._lock = threading.Condition()
        self._latest: av.video.frame.VideoFrame | None = None
        self._latest_pts = -1.0
        self._newest_fed_pts = -1.0
        self._lease_until = 0.0
        self._thread: threading.Thread | None = None
        self._info: StreamInfo | None = None
        self._resync = True
        self.frames_decoded = 0
        self._listeners: list[Callable[[av.video.frame.VideoFrame, float], None]] = []

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_stream(self, info: StreamInfo) -> None:
        self._info = info

    def lease(self, seconds: float) -> None:
        """Keep decoding for at least `seconds` from now (called on the event loop)."""
        self._lease_until = max(self._lease_until, time.monotonic() + seconds)
        if not self.active and self._info is not None:
            self._resync = True
            self._drain()
            for packet in self._backlog():
                self._put(packet)
            self._thread = threading.Thread(
                target=self._decode_loop, name=f"decode:{self.name}", daemon=True
            )
            self._thread.start()

    def add_listener(self, callback: Callable[[av.video.frame.VideoFrame, float], None]) -> None:
        """callback(frame, pts) from the decoder thread for every decoded frame."""
        self._listeners.append(callback)

    def feed(self, packet: VideoPacket) -> None:
        """Called on the loop for every packet; cheap when nobody holds a lease."""
        if self.active:
            self._put(packet)

    def _put(self, packet: VideoPacket) -> None:
        try:
            self._queue.put_nowait(packet)
            self._newest_fed_pts = packet.pts
        except queue.Full:
            # The decoder can't keep up: skip to the next keyframe rather than grow memory.
            self._drain()
            self._resync = True

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def peek(
        self, fresh_within: float = 1.0
    ) -> tuple[av.video.frame.VideoFrame, float, bool] | None:
        """Non-blocking (for the loop): the newest frame, its pts and whether it is fresh, i.e.
        no older than `fresh_within` s behind the newest packet fed to the decoder.

        The frame is shared with the decoder's other readers: treat it as read-only (never call
        its `reformat`, `to_image` or `to_ndarray(**kwargs)`: they use and change state kept in
        the frame object; see bridge/media/snapshot.py)."""
        with self._lock:
            frame = self._latest
            if frame is None:
                return None
            return frame, self._latest_pts, self._latest_pts >= self._newest_fed_pts - fresh_within

    def _decode_loop(self) -> None:
        codec = av.CodecContext.create("h264", "r")
        codec.thread_type = "SLICE"  # frame threading adds a frame of latency per thread
        try:
            while time.monotonic() < self._lease_until:
                try:
                    item = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is _STOP:
                    return
                assert isinstance(item, VideoPacket)
                if self._resync:
                    if not item.keyframe:
                        continue
                    self._resync = False
                try:
                    frames = codec.decode(av.Packet(item.data))
                except av.error.FFmpegError as exc:
                    log.debug("camera %r: decode error %s", self.name, exc)
                    self._resync = True
                    continue
                for frame in frames:
                    self.frames_decoded += 1
                    with self._lock:
                        self._latest = frame
                        self._latest_pts = item.pts
                        self._lock.notify_all()
                    for listener in self._listeners:
                        listener(frame, item.pts)
        finally:
            self._thread = None

    def reset(self) -> None:
        """The camera went down: forget frames of the old connection."""
        self._drain()
        with self._lock:
            self._latest = None
            self._latest_pts = -1.0
            self._newest_fed_pts = -1.0
            self._lock.notify_all()
        self._resync = True
        self._info = None

    def close(self) -> None:
        self._lease_until = 0.0
        self._drain()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass
