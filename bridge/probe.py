"""`obscura camera probe SOURCE`: what a camera delivers, before adding it to the config."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from accessories.backend import CameraUnavailable
from bridge.config import CameraConfig, ConfigError, source_problem
from bridge.media.snapshot import snapshot_jpeg
from bridge.redact import redact_url
from bridge.sources.base import CameraSource, RetryPolicy
from bridge.sources.factory import make_source


async def _probe(source_url: str, snapshot: str | None, seconds: float) -> int:
    source = make_source(
        CameraConfig(name="probe", source=source_url), RetryPolicy(initial=3600, jitter=0)
    )
    started = time.monotonic()
    source.start()
    try:
        while source.state in ("starting", "connecting"):  # noqa: ASYNC110 - polling a state
            await asyncio.sleep(0.05)
        if not source.available:
            print(f"FAILED  {redact_url(source_url)}: {source.last_error}")
            return 1
        connect = time.monotonic() - started
        talkback = asyncio.create_task(_talkback_line(source_url))  # while we watch
        await asyncio.sleep(seconds)
        info = source.info
        assert info is not None
        status = source.status()
        kbps = status["bytes"] * 8 / 1000 / max(seconds, 0.001)
        print(f"OK      {redact_url(source_url)}")
        print(f"  video     H.264 {info.profile}, {info.width}x{info.height} @ {info.fps:g} fps")
        print(f"  audio     {_audio_line(source)}")
        print(f"  talk-back {await talkback}")
        print(f"  connect   {connect:.2f} s")
        print(f"  received  {status['packets']} packets, ~{kbps:.0f} kbit/s")
        print(f"  keyframes prebuffer holds {status['prebuffer_seconds']:.1f} s from a keyframe")
        if snapshot:
            try:
                jpeg = await snapshot_jpeg(source.frames, True, info.width, info.height)
            except CameraUnavailable as exc:
                print(f"  snapshot  failed: {exc}")
                return 1
            await asyncio.to_thread(Path(snapshot).write_bytes, jpeg)
            print(f"  snapshot  {snapshot} ({len(jpeg)} bytes)")
        return 0
    finally:
        await source.stop()


def _audio_line(source: CameraSource) -> str:
    audio = source.audio_info
    if audio is None:
        why = source.audio_problem
        return f"not usable: {why} (video alone)" if why else "none"
    return f"{audio.describe()}, {source.audio_packets} packets"


async def _talkback_line(source_url: str) -> str:
    """The camera's ONVIF back channel, from one DESCRIBE on a connection of its own."""
    if source_url.split(":", 1)[0].lower() not in ("rtsp", "rtsps"):
        return "none (talk-back needs an RTSP camera's ONVIF back channel)"
    from bridge.sources.backchannel import probe_backchannel

    info, why = await probe_backchannel(source_url)
    return f"ONVIF back channel, {why}" if info else f"none: {why}"


def probe_camera(source: str, snapshot: str | None, seconds: float) -> int:
    if problem := source_problem(source):
        raise ConfigError("command line", "source", problem)
    return asyncio.run(_probe(source, snapshot, seconds))
