"""Camera source URLs → CameraSource with the right input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bridge.config import CameraConfig
from bridge.demo import demo_person
from bridge.redact import redact_url
from bridge.sources.alsa_device import CaptureFormat, prepare_alsa
from bridge.sources.alsa_input import AlsaInput, StampedAVInput
from bridge.sources.av_input import FAST_PROBE, AVInput, AVInputOptions
from bridge.sources.base import CameraSource, Input, RetryPolicy
from bridge.sources.demo import DemoInput
from bridge.sources.liveness import probe_for


def input_factory(
    cam: CameraConfig, on_audio_problem: Callable[[str | None], None] | None = None
) -> Callable[[], Input]:
    """A new Input per connection. With `audio_device`, the video Input (without its own
    sound) wrapped with the ALSA device's (alsa_input.py); `on_audio_problem` hears of that
    device failing or coming back while the camera streams."""
    if cam.audio_device and cam.audio != "off":
        prepare_alsa()  # here, before any thread opens a device (it sets an environment variable)
        fmt = CaptureFormat(cam.audio_device, cam.audio_rate, cam.audio_channels)
        video = _video_factory(cam, sound=False, stamped=True)
        return lambda: AlsaInput(video(), fmt, cam.name, on_problem=on_audio_problem)
    return _video_factory(cam, sound=cam.audio != "off")  # "auto", "on": what the camera has


def _video_factory(cam: CameraConfig, *, sound: bool, stamped: bool = False) -> Callable[[], Input]:
    """`sound`: the source's own; `stamped`: a V4L2 input that tells its capture clock."""
    scheme = cam.source.split(":", 1)[0].lower()
    if scheme == "demo":
        width, height = cam.width or 1280, cam.height or 720
        fps = cam.fps or 15.0
        person = demo_person(cam.source)  # demo:person: someone walks by now and then
        return lambda: DemoInput(width, height, fps, audio=sound, person=person)
    if scheme in ("rtsp", "rtsps"):
        opts = AVInputOptions(
            url=cam.source,
            options={
                "rtsp_transport": cam.rtsp_transport,
                # Don't buffer a second of packets before handing them over (latency).
                "fflags": "nobuffer",
                "max_delay": "500000",
                # No SETUP of metadata (ONVIF) streams; of audio only when it is wanted.
                "allowed_media_types": "video+audio" if sound else "video",
            },
            # Size, SPS/PPS and fps from the SDP and SPS: no seconds of stream analysis (see
            # av_input.py); cameras that do not describe themselves get the full probe.
            fast_options=FAST_PROBE,
            audio=sound,
        )
        return lambda: AVInput(opts)
    if scheme == "v4l2":
        device = unquote(urlsplit(cam.source).path)
        options: dict[str, str] = {}
        if cam.input_format:
            options["input_format"] = cam.input_format
        if cam.width and cam.height:
            options["video_size"] = f"{cam.width}x{cam.height}"
        if cam.fps:
            options["framerate"] = f"{cam.fps:g}"
        v4l2 = AVInputOptions(url=device, format="v4l2", options=options)
        return (lambda: StampedAVInput(v4l2)) if stamped else (lambda: AVInput(v4l2))
    if scheme == "file":
        path = Path(unquote(urlsplit(cam.source).path))
        file_opts = AVInputOptions(url=str(path), loop=True, realtime=True, audio=sound)
        return lambda: AVInput(file_opts)
    raise ValueError(f"unsupported source scheme {scheme!r}")


def make_source(cam: CameraConfig, retry: RetryPolicy | None = None) -> CameraSource:
    retry = retry or RetryPolicy()
    source: CameraSource | None = None

    def audio_problem(problem: str | None) -> None:
        # An ALSA device that fails or comes back while the video streams: CameraSource reads
        # audio_problem at each open only, /status should say it now (a str, set atomically).
        if source is not None:
            source.audio_problem = problem

    source = CameraSource(
        cam.name,
        input_factory(cam, audio_problem),
        display_url=redact_url(cam.source),
        prebuffer_seconds=cam.prebuffer_seconds,
        retry=retry,
        probe=probe_for(cam.source, retry.probe_timeout),
    )
    return source
