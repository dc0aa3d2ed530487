"""A real Azure Blob server for tests: Azurite, Microsoft's emulator (npm `azurite`, its blob
service only), installed by scripts/setup.sh from tests/peers/npm/ into a cache directory.

    with Azurite(containers=("obscura",)) as az:
        bucket = open_bucket(az.url("obscura", prefix="p/"), environ=az.env)
        ...
        az.stop()       # SIGTERM: a clean outage
        az.restart()    # same port, same data directory: objects written before survive

It listens on 127.0.0.1 only, on a free port picked here, with telemetry off (Azurite would
otherwise report to Application Insights), and a random account name and key of its own
(AZURITE_ACCOUNTS), not the well-known emulator key. Containers are created here with a
SharedKey-signed request (object_store does not create them).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import hmac
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.peers.seaweed import free_ports

PEERS_DIR = Path(os.environ.get("OBSCURA_PEERS_DIR") or Path.home() / ".cache/obscura/peers")
AZURITE_BLOB = PEERS_DIR / "node_modules/azurite/dist/src/blob/main.js"
_API_VERSION = "2021-08-06"


class AzuriteError(RuntimeError):
    """Azurite is not installed or did not come up (the message carries its log's end)."""


def azurite_version() -> str:
    import json

    return str(json.loads((AZURITE_BLOB.parents[3] / "package.json").read_text())["version"])


class Azurite:
    def __init__(
        self,
        root: Path | None = None,
        *,
        containers: tuple[str, ...] = ("obscura",),
        start_timeout: float = 30.0,
    ) -> None:
        node = shutil.which("node")
        if node is None or not AZURITE_BLOB.exists():
            raise AzuriteError(
                f"no Azurite at {AZURITE_BLOB} (or no node): run scripts/setup.sh, which installs "
                "it from tests/peers/npm/ with npm"
            )
        self.node = node
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="azurite-")) if root is None else root
        self.containers = containers
        self.start_timeout = start_timeout
        self.account = "obscura" + secrets.token_hex(4)
        self.key = base64.b64encode(secrets.token_bytes(64)).decode()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "azurite.log"
        self._log_offset = 0
        (self.root / "data").mkdir(parents=True, exist_ok=True)

    # -- addresses ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The account's blob endpoint (path-style, as Azurite's connection strings have it)."""
        return f"http://127.0.0.1:{self.port}/{self.account}"

    def url(self, container: str | None = None, prefix: str = "") -> str:
        container = container or self.containers[0]
        return f"az://{container}/{prefix}?account={self.account}&endpoint={self.endpoint}"

    @property
    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_ACCOUNT_KEY": self.key}

    # -- life cycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        fresh = not self.port
        for _ in range(3 if fresh else 1):
            if fresh:
                (self.port,) = free_ports(1)
            self._spawn()
            try:
                self._wait_ready()
                return
            except _PortTaken:
                self._terminate(signal.SIGKILL)
        raise AzuriteError("azurite: its port kept being taken\n" + self.log_tail())

    def _spawn(self) -> None:
        args = [
            self.node,
            str(AZURITE_BLOB),
            "--blobHost", "127.0.0.1",
            "--blobPort", str(self.port),
            "--location", str(self.root / "data"),
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
        ]
        env = {**os.environ, "AZURITE_ACCOUNTS": f"{self.account}:{self.key}"}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            if "EADDRINUSE" in self._log_text():
                raise _PortTaken
            if self.proc is None or self.proc.poll() is not None:
                raise AzuriteError("azurite exited at start\n" + self.log_tail())
            try:
                for container in self.containers:
                    self.create_container(container)
                return
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        self._terminate(signal.SIGKILL)
        raise AzuriteError(f"azurite not ready in {self.start_timeout} s ({last})\n"
                           + self.log_tail())

    def create_container(self, name: str) -> None:
        """Create `name` (an existing one is fine): SharedKey-signed Create Container."""
        path = f"/{self.account}/{name}"
        headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": _API_VERSION}
        canonical = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
        # VERB, then 11 standard headers (all empty here), the x-ms-* headers and the resource.
        to_sign = f"PUT\n{chr(10) * 11}{canonical}/{self.account}{path}\nrestype:container"
        mac = hmac.new(base64.b64decode(self.key), to_sign.encode(), hashlib.sha256).digest()
        headers["Authorization"] = f"SharedKey {self.account}:{base64.b64encode(mac).decode()}"
        request = urllib.request.Request(  # no body: urllib would add a Content-Type to sign
            f"http://127.0.0.1:{self.port}{path}?restype=container", method="PUT",
            headers={**headers, "Content-Length": "0"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5):
                pass
        except urllib.error.HTTPError as e:
            if e.code != 409:  # ContainerAlreadyExists
                detail = e.read()[:300]
                raise AzuriteError(f"create container {name}: HTTP {e.code} {detail!r}") from None

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
