"""Start and stop a real RTSP camera (tests/peers/rtsp_server.py) from tests and benchmarks.

The server runs under Debian's /usr/bin/python3 (GStreamer's GObject bindings are Debian packages,
not in the venv), so it is always a child process:

    with RtspCamera(width=640, height=360, fps=15) as cam:
        container = av.open(cam.url, options={"rtsp_transport": "tcp"})
        ...
        cam.kill()      # SIGKILL: the camera drops dead mid-stream
        cam.restart()   # same port and mount, a fresh encoder

A camera with sound: `RtspCamera(audio="aac", tone_hz=440)` serves a sine tone as a second
stream (pay1): "aac" (16 kHz unless `audio_rate`), "alaw" / "mulaw" (G.711, 8 kHz), "opus"
(48 kHz), "mp3", or "siren" (a payload FFmpeg's RTSP demuxer does not know: a camera whose sound
cannot be used).

A camera you can talk to: `RtspCamera(backchannel="pcmu", backchannel_file=path)` is an ONVIF
camera whose back channel ("pcmu", "pcma" or "aac" at `backchannel_rate`) decodes what a client
sends and appends it to `path` as raw S16LE mono (`read_backchannel()` returns it as int16).
`user`/`password` (`auth="digest"` or "basic") make it ask for credentials; `log_requests=True`
logs each RTSP request's method to its stderr ("rtsp_server: request TEARDOWN");
`session_timeout` expires a session that many seconds after its last request.

Without an explicit port the first start asks the server for port 0 and reads the bound port back
from its READY line (no race with other tests for a "free" port); restarts reuse that port.
"""

from __future__ import annotations

import asyncio
import collections
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

import numpy as np

SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
# videotestsrc settings: the default moving ball encodes to ~90 kbit/s at 720p (cheap for
# functional tests); scrolling SMPTE bars fill the configured bitrate like a real camera
# (~2.6 Mbit/s at bitrate_kbps=2000, ~11% of a core at 720p15): use it in benchmarks.
CHEAP_PATTERN = "ball"
REALISTIC_PATTERN = "smpte horizontal-speed=4"
# Overridable for machines whose GStreamer bindings live elsewhere.
SYSTEM_PYTHON = os.environ.get("OBSCURA_GST_PYTHON", "/usr/bin/python3")


class RtspCameraError(RuntimeError):
    """The server did not come up (the message carries its stderr)."""


def free_port(host: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port that was free a moment ago. Racy by nature: prefer letting a server bind port 0."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def gst_rtsp_available(python: str = SYSTEM_PYTHON) -> bool:
    """True when `python` can import GstRtspServer (the Debian packages are installed)."""
    if not shutil.which(python) and not Path(python).exists():
        return False
    probe = (
        "import gi; gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import GstRtspServer"
    )
    r = subprocess.run([python, "-c", probe], capture_output=True, timeout=30, check=False)
    return r.returncode == 0


class RtspCamera:
    """One RTSP camera child process serving H.264 at rtsp://127.0.0.1:PORT/MOUNT."""

    def __init__(
        self,
        port: int | None = None,
        *,
        mount: str = "/cam",
        width: int = 1280,
        height: int = 720,
        fps: int = 15,
        gop: int = 15,
        bitrate_kbps: int = 2000,
        profile: Literal["baseline", "main", "high"] = "main",
        pattern: str = CHEAP_PATTERN,
        file: str | os.PathLike[str] | None = None,
        loop_file: bool = True,
        protocols: Literal["tcp", "udp", "tcp+udp"] = "tcp",
        audio: Literal["aac", "alaw", "mulaw", "opus", "mp3", "siren"] | None = None,
        tone_hz: float = 440.0,
        audio_rate: int = 16000,
        audio_channels: int = 1,
        backchannel: Literal["pcmu", "pcma", "aac"] | None = None,
        backchannel_file: str | os.PathLike[str] | None = None,
        backchannel_rate: int = 16000,
        user: str | None = None,
        password: str = "",
        auth: Literal["digest", "basic"] = "digest",
        log_requests: bool = False,
        session_timeout: int | None = None,
        ready_timeout: float = 15.0,
        python: str = SYSTEM_PYTHON,
        stderr_lines: int = 500,
    ) -> None:
        self.port: int = port or 0  # 0 until the first start when not given
        self.mount = mount if mount.startswith("/") else "/" + mount
        self.width, self.height, self.fps, self.gop = width, height, fps, gop
        self.bitrate_kbps = bitrate_kbps
        self.profile = profile
        self.pattern = pattern
        self.file = Path(file) if file is not None else None
        self.loop_file = loop_file
        self.protocols = protocols
        self.audio, self.tone_hz = audio, tone_hz
        self.audio_rate, self.audio_channels = audio_rate, audio_channels
        self.backchannel, self.backchannel_rate = backchannel, backchannel_rate
        self.backchannel_file = Path(backchannel_file) if backchannel_file is not None else None
        self.user, self.password, self.auth = user, password, auth
        self.log_requests, self.session_timeout = log_requests, session_timeout
        self.ready_timeout = ready_timeout
        self.python = python
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._readers: list[threading.Thread] = []

    # -- properties ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self.port:
            raise RtspCameraError("camera not started yet: its port is unknown")
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def stderr(self) -> str:
        """The server's stderr so far (last `stderr_lines` lines), for assertion messages."""
        return "".join(self._stderr)

    # -- lifecycle ----------------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [
            self.python,
            "-u",
            str(SERVER_SCRIPT),
            "--port",
            str(self.port),
            "--mount",
            self.mount,
            "--width",
            str(self.width),
            "--height",
            str(self.height),
            "--fps",
            str(self.fps),
            "--gop",
            str(self.gop),
            "--bitrate",
            str(self.bitrate_kbps),
            "--profile",
            self.profile,
            "--pattern",
            self.pattern,
            "--protocols",
            self.protocols,
            "--exit-on-stdin-eof",
        ]
        if self.audio is not None:
            cmd += ["--audio", self.audio, "--tone-hz", f"{self.tone_hz:g}"]
            cmd += ["--audio-rate", str(self.audio_rate)]
            cmd += ["--audio-channels", str(self.audio_channels)]
        if self.backchannel is not None:
            cmd += ["--backchannel", self.backchannel]
            cmd += ["--backchannel-rate", str(self.backchannel_rate)]
            if self.backchannel_file is not None:
                cmd += ["--backchannel-file", str(self.backchannel_file)]
        if self.user is not None:
            cmd += ["--user", self.user, "--password", self.password, "--auth", self.auth]
        if self.log_requests:
            cmd.append("--log-requests")
        if self.session_timeout is not None:
            cmd += ["--session-timeout", str(self.session_timeout)]
        if self.file is not None:
            cmd += ["--file", str(self.file)]
            if not self.loop_file:
                cmd.append("--no-loop")
        return cmd

    def start(self) -> str:
        """Spawn the server and wait for its READY line; returns the URL."""
        if self.running:
            raise RtspCameraError(f"already running (pid {self.pid})")
        self._stdout = queue.Queue()
        self._stderr.append(f"--- start {' '.join(self.command())}\n")
        # stdin is a pipe we never write: if this test process dies, the server sees EOF and
        # quits (--exit-on-stdin-eof), so no orphan keeps the port.
        proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # a Ctrl-C in the test terminal is not the server's business
        )
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._pump_stdout, args=(proc.stdout,), daemon=True),
            threading.Thread(target=self._pump_stderr, args=(proc.stderr,), daemon=True),
        ]
        for t in self._readers:
            t.start()

        deadline = time.monotonic() + self.ready_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise RtspCameraError(
                    f"no READY within {self.ready_timeout:.0f} s; stderr:\n{self.stderr}"
                )
            try:
                line = self._stdout.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the server died before listening
                rc = proc.wait()
                self._join_readers()
                raise RtspCameraError(
                    f"server exited with {rc} before READY; stderr:\n{self.stderr}"
                )
            if line.startswith("READY "):
                url = line.split(None, 1)[1].strip()
                self.port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
                return self.url

    async def astart(self) -> str:
        """start() off the event loop (it blocks for the ~0.3 s the server needs)."""
        return await asyncio.to_thread(self.start)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); the exit code, None if never started."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close(proc)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: simulate a camera that dies (or loses power) without saying goodbye."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close(proc)

    def restart(self, *, kill: bool = True) -> str:
        """Kill (or stop, with kill=False) and start again on the same port; returns the URL."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"RtspCamera({self.width}x{self.height}@{self.fps} port={self.port}, {state})"

    def read_backchannel(self) -> np.ndarray:
        """What the back channel heard so far: int16 samples (empty when nothing came)."""
        if self.backchannel_file is None or not self.backchannel_file.exists():
            return np.zeros(0, np.int16)
        data = self.backchannel_file.read_bytes()
        return np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.int16)

    # -- internals ----------------------------------------------------------------------------
    def _pump_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            self._stdout.put(line)
        self._stdout.put(None)

    def _pump_stderr(self, stream: IO[str]) -> None:
        # Drained continuously so a chatty GStreamer (GST_DEBUG=...) never blocks on a full pipe.
        for line in stream:
            self._stderr.append(line)

    def _close(self, proc: subprocess.Popen[str]) -> None:
        if proc.stdin:
            proc.stdin.close()
        self._join_readers()

    def _join_readers(self) -> None:
        for t in self._readers:
            t.join(timeout=2)
        self._readers = []
