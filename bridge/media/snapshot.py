"""JPEG snapshots of a camera's newest frame at the size a controller asks for.

Why the renderer copies the frame first: the decoder thread shares its newest frame with every
reader (snapshots, detection, a clip's poster). PyAV's `frame.reformat` uses a swscale context
cached *in the frame object*, and swscale is not safe to share: eight threads scaling one decoded
frame to eight sizes left seven hung for good in `sws_scale_frame` (and, on a cold decoder, the
bridge crashed). Even a scaler of our own writes to the source frame while it works (PyAV blanks
and restores its colour tags around the scale). So a render never touches the shared frame
except to read its pixels: it copies the planes into a private frame, scales that with a swscale
context owned by the rendering thread (one per thread, single-threaded inside: the parallelism
is the media pool's, not swscale's own thread pool), and encodes the result. The copy costs
~1 ms at 720p (a 640x360 JPEG ~6 ms in all). PyAV does not expose the frame's chroma siting, so
the copy's is unspecified: chroma may move by half a chroma pixel (mean 0.2 levels of 255 on a
photo), invisible in a thumbnail.

Why requests are coalesced: an iPhone, an iPad and a hub refreshing tiles ask for the same few
sizes at the same moment; a request that finds an unfinished render of the same size, begun
less than `COALESCE_SECONDS` ago, shares its answer. A finished render is never reused, so this
only matters while renders wait: when the pool is loaded, exactly when fewer renders help. The
shared picture is then up to that much older than a render of its own would have been (Home app
tiles refresh every ~10 s). A storm of 50 requests at 5 sizes costs 5 renders when they arrive
together; spread out by HAP connections that answer one request at a time, ~35 renders per 100
requests in tests/test_snapshot_storm.py.

Waiting for a fresh frame happens on the event loop (a short poll), not in a worker thread: with
a cold decoder, a storm would otherwise park every media worker for up to the frame timeout.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from typing import Any

import av.video.frame
import numpy as np
from av.video.reformatter import VideoReformatter

from accessories.backend import CameraUnavailable
from bridge.media.executor import MediaBusy, MediaExecutor
from bridge.media.frames import FrameTap

# Home app tiles refresh roughly every 10 s while visible: keep the decoder warm that long so
# the next snapshot is a frame that is already decoded.
SNAPSHOT_LEASE_SECONDS = 30.0
# An unfinished render of the same size that started this recently answers a new request too.
COALESCE_SECONDS = 1.0
FRAME_POLL_SECONDS = 0.005  # a fresh frame is picked up within 5 ms of its decoding
MAX_WIDTH, MAX_HEIGHT = 7680, 4320

_local = threading.local()


def _scaler() -> VideoReformatter:
    """This thread's own swscale context (never shared: swscale is not thread-safe)."""
    scaler = getattr(_local, "scaler", None)
    if scaler is None:
        scaler = _local.scaler = VideoReformatter()
    return scaler


def private_copy(frame: av.video.frame.VideoFrame) -> av.video.frame.VideoFrame:
    """A new frame with a copy of `frame`'s pixels and colour description; reads `frame` only."""
    if frame.width <= 0 or frame.height <= 0:
        raise ValueError("empty frame")
    copy = av.video.frame.VideoFrame(frame.width, frame.height, frame.format.name)
    for src, dst in zip(frame.planes, copy.planes, strict=True):
        if src.line_size <= 0 or dst.line_size <= 0:
            raise ValueError(f"unsupported frame layout ({frame.format.name})")
        rows = min(src.height, dst.height)
        row_bytes = min(src.line_size, dst.line_size)
        source = np.frombuffer(src, np.uint8, src.line_size * rows).reshape(rows, src.line_size)
        target = np.frombuffer(dst, np.uint8, dst.line_size * rows).reshape(rows, dst.line_size)
        target[:, :row_bytes] = source[:, :row_bytes]
    copy.colorspace = frame.colorspace
    copy.color_range = frame.color_range
    return copy


def frame_to_jpeg(
    frame: av.video.frame.VideoFrame, width: int, height: int, quality: int = 80
) -> bytes:
    """Scale (cropping the centre when the aspect ratio differs) to exactly width x height.

    Safe to call from any number of threads at once on the same frame (see the module's
    docstring): `frame` is only read."""
    src_w, src_h = frame.width, frame.height
    scale = max(width / src_w, height / src_h)
    scaled_w, scaled_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
    # swscale does the resize in one pass (much cheaper than PIL on a full-size RGB frame).
    rgb_frame = _scaler().reformat(
        private_copy(frame), scaled_w - scaled_w % 2, scaled_h - scaled_h % 2, "rgb24", threads=1
    )
    rgb = rgb_frame.to_image()  # rgb24 already: no scaling, and the frame is ours
    if rgb.size != (width, height):
        left = (rgb.width - width) // 2
        top = (rgb.height - height) // 2
        rgb = rgb.crop((left, top, left + width, top + height))
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality)
    return out.getvalue()


class Snapshots:
    """The snapshots of one camera: fresh frame, coalescing, rendering on the media pool.

    Without a pool (`obscura camera probe`, tests) renders go to asyncio's default executor."""

    def __init__(self, frames: FrameTap, media: MediaExecutor | None = None) -> None:
        self.frames = frames
        self.media = media
        self.renders = 0  # renders started (requests minus the ones that shared a render)
        self._inflight: dict[tuple[int, int], tuple[float, asyncio.Task[bytes]]] = {}

    async def jpeg(self, available: bool, width: int, height: int, timeout: float = 3.0) -> bytes:
        if not available:
            raise CameraUnavailable("camera is not streaming")
        if width <= 0 or height <= 0 or width > MAX_WIDTH or height > MAX_HEIGHT:
            raise ValueError(f"unsupported snapshot size {width}x{height}")
        self.frames.lease(SNAPSHOT_LEASE_SECONDS)
        key = (width, height)
        now = time.monotonic()
        entry = self._inflight.get(key)
        if entry is None or now - entry[0] > COALESCE_SECONDS:
            task = asyncio.ensure_future(self._render(width, height, timeout))
            task.add_done_callback(self._done(key))
            self._inflight[key] = (now, task)
            self.renders += 1
        else:
            task = entry[1]
        # Shielded: one caller giving up (the controller's timeout) leaves the others their answer.
        return await asyncio.shield(task)

    def _done(self, key: tuple[int, int]) -> Any:
        def done(task: asyncio.Task[bytes]) -> None:
            entry = self._inflight.get(key)
            if entry is not None and entry[1] is task:
                del self._inflight[key]
            if not task.cancelled():
                task.exception()  # retrieved: every caller may have gone

        return done

    async def _render(self, width: int, height: int, timeout: float) -> bytes:
        frame = await self._fresh_frame(timeout)
        what = f"snapshot {self.frames.name} {width}x{height}"
        if self.media is None:
            return await asyncio.to_thread(frame_to_jpeg, frame, width, height)
        try:
            return await self.media.run(frame_to_jpeg, frame, width, height, what=what)
        except MediaBusy as exc:
            raise CameraUnavailable(f"snapshot refused: {exc}") from None

    async def _fresh_frame(self, timeout: float) -> av.video.frame.VideoFrame:
        """The newest frame, waiting up to `timeout` s for one recent enough (polled on the
        loop: cheap, and no worker thread sits waiting for the decoder)."""
        deadline = time.monotonic() + timeout
        while True:
            newest = self.frames.peek()
            if newest is not None and newest[2]:
                return newest[0]
            if time.monotonic() >= deadline:
                if newest is None:
                    raise CameraUnavailable("no decoded frame yet")
                return newest[0]  # stale beats nothing
            await asyncio.sleep(FRAME_POLL_SECONDS)


async def snapshot_jpeg(
    frames: FrameTap,
    available: bool,
    width: int,
    height: int,
    timeout: float = 3.0,
    media: MediaExecutor | None = None,
) -> bytes:
    """One snapshot without coalescing across calls (the CLI's probe, tests)."""
    return await Snapshots(frames, media).jpeg(available, width, height, timeout)
