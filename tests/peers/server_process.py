"""What the tests' server peers (SeaweedFS, Azurite, fake-gcs-server) share: a child process in
its own session on free loopback ports, its log in its own directory, start/stop/kill/restart
and a context manager. A subclass says how to spawn and when it is ready.

    class MyServer(ServerProcess):
        def _pick_ports(self) -> None: ...          # fresh free ports (first start only)
        def _spawn(self) -> None: self._popen([...])
        def _wait_ready(self) -> None: ...          # raise PortTaken to retry on new ports
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self


class PortTaken(Exception):
    """Another process got a picked port first: start again on fresh ones."""


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ServerProcess:
    name = "server"
    error: type[RuntimeError] = RuntimeError

    def __init__(self, root: Path | None, log_name: str, start_timeout: float) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.name}-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / log_name
        self._log_offset = 0
        self._has_ports = False

    # -- for subclasses ----------------------------------------------------------------------

    def _pick_ports(self) -> None:
        raise NotImplementedError

    def _spawn(self) -> None:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        raise NotImplementedError

    def _popen(self, args: list[str], env: Mapping[str, str] | None = None) -> None:
        """Start `args` in a new session (killed as a group), output appended to the log."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=self.root,
                env=None if env is None else dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _poll_ready(self, ready: Callable[[], object], port_taken: str | None) -> None:
        """Call `ready()` until it returns instead of raising, or fail with the log's tail (the
        usual body of `_wait_ready`). `port_taken`: the log line that means PortTaken."""
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            if port_taken and port_taken in self._log_text():
                raise PortTaken
            if self.proc is None or self.proc.poll() is not None:
                raise self.error(f"{self.name} exited at start\n" + self.log_tail())
            try:
                ready()
                return
            except Exception as e:  # not up yet: connection refused, 503, …
                last = str(e).splitlines()[0] if str(e) else type(e).__name__
            time.sleep(0.1)
        self._terminate(signal.SIGKILL)
        raise self.error(
            f"{self.name} not ready in {self.start_timeout} s ({last})\n" + self.log_tail()
        )

    # -- life cycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start; a restart keeps the ports (and the data directory) of the first start."""
        if self.running:
            return
        fresh = not self._has_ports
        for _ in range(3 if fresh else 1):
            if fresh:
                self._pick_ports()
                self._has_ports = True
            self._spawn()
            try:
                self._wait_ready()
                return
            except PortTaken:
                self._terminate(signal.SIGKILL)
        raise self.error(f"{self.name}: its ports kept being taken\n" + self.log_tail())

    def stop(self) -> None:
        """A clean shutdown (SIGTERM, then SIGKILL after 15 s)."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        self._terminate(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _terminate(self, sig: int) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- diagnostics -------------------------------------------------------------------------

    def _log_text(self) -> str:
        """What the server logged since its last start."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._log_text().splitlines()[-lines:])
