"""JPEG snapshots of a camera's newest frame at the size a controller asks for."""

from __future__ import annotations

import asyncio
import io

import av.video.frame

from accessories.backend import CameraUnavailable
from bridge.media.frames import FrameTap

# Home app tiles refresh roughly every 10 s while visible: keep the decoder warm that long so
# the next snapshot is a frame that is already decoded.
SNAPSHOT_LEASE_SECONDS = 30.0


def frame_to_jpeg(
    frame: av.video.frame.VideoFrame, width: int, height: int, quality: int = 80
) -> bytes:
    """Scale (cropping the centre when the aspect ratio differs) to exactly width x height."""
    src_w, src_h = frame.width, frame.height
    scale = max(width / src_w, height / src_h)
    scaled_w, scaled_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
    # swscale does the resize in one pass (much cheaper than PIL on a full-size RGB frame).
    rgb = frame.reformat(scaled_w - scaled_w % 2, scaled_h - scaled_h % 2, "rgb24").to_image()
    if rgb.size != (width, height):
        left = (rgb.width - width) // 2
        top = (rgb.height - height) // 2
        rgb = rgb.crop((left, top, left + width, top + height))
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality)
    return out.getvalue()


async def snapshot_jpeg(
    frames: FrameTap, available: bool, width: int, height: int, timeout: float = 3.0
) -> bytes:
    if not available:
        raise CameraUnavailable("camera is not streaming")
    if width <= 0 or height <= 0 or width > 7680 or height > 4320:
        raise ValueError(f"unsupported snapshot size {width}x{height}")
    frames.lease(SNAPSHOT_LEASE_SECONDS)

    def render() -> bytes:
        latest = frames.latest(timeout)
        if latest is None:
            raise CameraUnavailable("no decoded frame yet")
        return frame_to_jpeg(latest[0], width, height)

    return await asyncio.to_thread(render)

