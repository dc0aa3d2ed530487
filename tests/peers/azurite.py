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
import email.utils
import hashlib
import hmac
import os
import secrets
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tests.peers.server_process import ServerProcess, free_ports

PEERS_DIR = Path(os.environ.get("OBSCURA_PEERS_DIR") or Path.home() / ".cache/obscura/peers")
AZURITE_BLOB = PEERS_DIR / "node_modules/azurite/dist/src/blob/main.js"
_API_VERSION = "2021-08-06"


class AzuriteError(RuntimeError):
    """Azurite is not installed or did not come up (the message carries its log's end)."""


def azurite_version() -> str:
    import json

    return str(json.loads((AZURITE_BLOB.parents[3] / "package.json").read_text())["version"])


class Azurite(ServerProcess):
    name = "azurite"
    error = AzuriteError

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
        super().__init__(root, "azurite.log", start_timeout)
        self.node = node
        self.containers = containers
        self.account = "obscura" + secrets.token_hex(4)
        self.key = base64.b64encode(secrets.token_bytes(64)).decode()
        self.port = 0
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

    # -- ServerProcess -----------------------------------------------------------------------

    def _pick_ports(self) -> None:
        (self.port,) = free_ports(1)

    def _spawn(self) -> None:
        self._popen(
            [
                self.node,
                str(AZURITE_BLOB),
                "--blobHost", "127.0.0.1",
                "--blobPort", str(self.port),
                "--location", str(self.root / "data"),
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
            ],
            env={**os.environ, "AZURITE_ACCOUNTS": f"{self.account}:{self.key}"},
        )

    def _wait_ready(self) -> None:
        self._poll_ready(
            lambda: [self.create_container(c) for c in self.containers],
            port_taken="EADDRINUSE",
        )

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
