"""Does a camera have sound the bridge can carry? Asked once at start for `audio = "auto"`.

HomeKit numbers an accessory's services once, when it is built, and controllers remember them
by number: the Microphone service must be there (or not) before the accessory exists, which is
before the camera's own connection is up. So for `audio = "auto"` the bridge opens the camera
once, in a thread, reads which streams it offers and closes it again: ~0.1-0.3 s for an RTSP
camera (the same fast open as the source's, sources/av_input.py), in parallel for every
camera, bounded by `timeout`. A camera that does not answer in time gets no Microphone until
the next start (its sound, if any, still reaches recordings: carrying audio does not depend
on the Microphone); `audio = true` in its table gives it one regardless.

`demo:` always has its beep, and a V4L2 device is never opened twice (a second open of a
capture device fails or steals it), so neither is probed. A camera with `audio_device` has the
sound of that ALSA capture device: it has a Microphone when the device opens at start.
"""

from __future__ import annotations

import asyncio
import logging

from bridge.config import CameraConfig
from bridge.media.packet import AudioInfo
from bridge.sources.base import describe_error, run_in_thread
from bridge.sources.factory import input_factory

log = logging.getLogger(__name__)

PROBE_SECONDS = 4.0


async def probe_sound(
    cam: CameraConfig, timeout: float = PROBE_SECONDS
) -> tuple[AudioInfo | None, str]:
    """(what the camera's sound is, None when it has none we carry; a one-line reason)."""
    scheme = cam.source.split(":", 1)[0].lower()
    if cam.audio == "off":
        return None, "audio = false in its configuration"
    if cam.audio_device:
        return await _probe_alsa(cam, timeout)
    if scheme == "v4l2":
        return None, "a V4L2 device has no sound of its own (audio_device names a microphone)"
    source_input = input_factory(cam)()

    def opened() -> tuple[AudioInfo | None, str]:
        try:
            source_input.open()
            info: AudioInfo | None = getattr(source_input, "audio_info", None)
            problem: str | None = getattr(source_input, "audio_problem", None)
        finally:
            source_input.close()
        if info is not None:
            return info, info.describe()
        return None, f"its sound is {problem}" if problem else "it has no sound"

    future = run_in_thread(opened, f"audio-probe:{cam.name}")
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        # The thread closes the input when its open returns; nobody waits for it.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return None, f"no answer within {timeout:g} s"
    except Exception as exc:
        from bridge.redact import redact_url

        return None, describe_error(exc, redact_url(cam.source))


async def _probe_alsa(cam: CameraConfig, timeout: float) -> tuple[AudioInfo | None, str]:
    """The camera's sound is its ALSA capture device's: does that open? (The video is not
    opened: a V4L2 device is never opened twice, and a file or the demo has pictures anyway.)
    The device is closed again before the camera's source starts, so a `hw:` device that
    takes one reader at a time is free for it."""
    from bridge.sources.alsa_device import CaptureError, CaptureFormat, open_capture

    fmt = CaptureFormat(cam.audio_device or "", cam.audio_rate, cam.audio_channels)
    future = run_in_thread(lambda: open_capture(fmt).close(), f"audio-probe:{cam.name}")
    try:
        await asyncio.wait_for(asyncio.shield(future), timeout)
    except TimeoutError:
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return None, f"ALSA device {fmt.device!r} did not open within {timeout:g} s (busy?)"
    except CaptureError as exc:
        return None, str(exc)
    return fmt.info, f"ALSA device {fmt.device!r}: {fmt.info.describe()}"
