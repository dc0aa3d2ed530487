"""Opening an ALSA capture device through FFmpeg (PyAV), with the reason when it does not open.

Two things stand between an ALSA device name and its sound here:

- PyAV's wheels bundle an alsa-lib built to look for its configuration (alsa.conf, which
  defines every name, even "hw:0,0") under its build prefix (/tmp/vendor/share/alsa), which
  no system has: every open is then an "Unknown PCM". `prepare_alsa` points it at the
  system's files (ALSA_CONFIG_DIR, read once by alsa-lib at its first open; Debian's
  libasound2-data), which also read /etc/asound.conf and ~/.asoundrc.
- FFmpeg turns every ALSA error into EIO ("Input/output error"), which cannot tell a wrong name
  from a missing permission, and its blocking open of a busy `hw:` device waits until the
  device is free. `open_problem` asks alsa-lib itself first, with a non-blocking open closed at
  once (ctypes, on the same alsa-lib instance FFmpeg uses).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import av
import av.container
import av.error

from bridge.media.packet import AudioInfo

ALSA_DIRS = ("/usr/share/alsa", "/usr/local/share/alsa")


@dataclass(frozen=True, slots=True)
class CaptureFormat:
    device: str  # an ALSA PCM name: "hw:1,0", "plughw:CARD=C920,DEV=0", "default"
    rate: int = 16000
    channels: int = 1

    @property
    def info(self) -> AudioInfo:
        return AudioInfo("pcm_s16le", self.rate, self.channels)


class CaptureError(Exception):
    """A capture device that cannot be used as it is (one line, for /status)."""


def prepare_alsa() -> str | None:
    """Point alsa-lib at the system's ALSA configuration (module docstring); None, or why no
    device name will resolve. Call it before the first open, from one thread."""
    if os.environ.get("ALSA_CONFIG_DIR"):
        return None
    found = next((d for d in ALSA_DIRS if Path(d, "alsa.conf").is_file()), None)
    if found is None:
        return "no ALSA configuration on this system (Debian: apt-get install libasound2-data)"
    os.environ["ALSA_CONFIG_DIR"] = found
    return None


def open_capture(fmt: CaptureFormat) -> av.container.InputContainer:
    """Open the device; CaptureError says why not."""
    missing = prepare_alsa()
    hint = f" ({missing})" if missing else ""
    why = open_problem(fmt.device)
    if why is not None:
        if why == "no such device" and not missing:
            hint = " (`arecord -L` lists the capture devices)"
        raise CaptureError(f"ALSA device {fmt.device!r} does not open: {why}{hint}")
    options = {"sample_rate": str(fmt.rate), "channels": str(fmt.channels)}
    try:
        container = av.open(fmt.device, format="alsa", options=options)
    except av.error.FFmpegError as exc:  # FFmpeg says EIO for every ALSA error
        why = exc.strerror or type(exc).__name__
        raise CaptureError(f"ALSA device {fmt.device!r} does not open: {why}{hint}") from None
    if not container.streams.audio:
        container.close()
        raise CaptureError(f"ALSA device {fmt.device!r} gives no audio stream")
    return container


def open_problem(device: str) -> str | None:
    """Why alsa-lib would not open `device` for capture now; None when it would (or when
    alsa-lib cannot be asked)."""
    lib = _libasound()
    if lib is None:
        return None  # FFmpeg's own open says what it can
    handle = ctypes.c_void_p()
    err = lib.snd_pcm_open(ctypes.byref(handle), device.encode(), _CAPTURE, _NONBLOCK)
    if err >= 0:
        lib.snd_pcm_close(handle)
        return None
    return _ALSA_ERRORS.get(-err) or os.strerror(-err)


_CAPTURE, _NONBLOCK = 1, 1  # SND_PCM_STREAM_CAPTURE, SND_PCM_NONBLOCK
_ALSA_ERRORS = {
    errno.ENOENT: "no such device",  # an unknown name, or a card that is not there
    errno.ENODEV: "no such device",
    errno.EBUSY: "busy (another program captures from it)",
    errno.EACCES: "permission denied (the bridge's user needs the audio group)",
    errno.EPERM: "permission denied (the bridge's user needs the audio group)",
}


@functools.cache
def _libasound() -> ctypes.CDLL | None:
    """The alsa-lib that FFmpeg uses: PyAV's bundled copy (already loaded, so the same
    instance and configuration), else the system's (a PyAV built on the system's FFmpeg)."""
    bundled = sorted((Path(av.__file__).resolve().parent.parent / "av.libs").glob("libasound*"))
    path = str(bundled[0]) if bundled else ctypes.util.find_library("asound")
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    lib.snd_pcm_open.argtypes = [
        ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
    ]  # fmt: skip
    lib.snd_pcm_open.restype = ctypes.c_int
    lib.snd_pcm_close.argtypes = [ctypes.c_void_p]
    return lib
