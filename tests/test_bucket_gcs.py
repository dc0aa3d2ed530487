"""gs:// as far as an emulator installable here allows: fake-gcs-server (tests/peers/fake_gcs.py).

object_store speaks GCS's XML API. fake-gcs-server serves its GET, HEAD, DELETE and LIST, so
the read side is tested for real (what the owner's tools do: list, fetch, ranged reads, delete);
it does not serve the XML PUT or multipart upload, so writes are an expected failure here, strict:
the day the emulator accepts them, this file says so. The bridge's own JWT signing (it replaces
object_store's, to outrank GOOGLE_* variables) is checked against object_store's token.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.store.bucket import Bucket, BucketConfigError, BucketError, open_bucket
from bridge.store.credentials import CredentialsError
from tests.peers.fake_gcs import FakeGcs, service_account_key

MiB = 1 << 20


@pytest.fixture(scope="module")
def gcs() -> Iterator[FakeGcs]:
    with FakeGcs(buckets=("obscura",)) as server:
        yield server


async def listing(b: Bucket, prefix: str = "") -> dict[str, int]:
    return {name: size async for name, size in b.list(prefix)}


async def test_gcs_reads_lists_and_deletes(gcs: FakeGcs) -> None:
    prefix = secrets.token_hex(6)
    data = os.urandom(300_000)
    gcs.upload("obscura", f"{prefix}/a/two", data)
    gcs.upload("obscura", f"{prefix}/a/one", b"hello")
    gcs.upload("obscura", f"{prefix}/b/three", b"xyz")
    gcs.upload("obscura", f"{prefix}x/outside", b"not under the prefix")
    b = open_bucket(gcs.url(prefix=f"{prefix}/"), gcs.key_file)

    assert await b.get("a/one") == b"hello"
    assert await b.get("a/missing") is None
    info = await b.head("a/two")
    assert info is not None and info.size == len(data)
    assert await b.head("a/missing") is None
    assert await b.get_range("a/two", 1000, 1010) == data[1000:1010]
    assert await b.get_range("a/two", len(data) - 5, len(data) + 100) == data[-5:]
    assert await b.get_range("a/two", len(data), len(data) + 10) == b""
    assert await b.get_range("a/missing", 0, 10) is None
    assert await listing(b) == {"a/two": len(data), "a/one": 5, "b/three": 3}
    assert await listing(b, "a") == {"a/two": len(data), "a/one": 5}

    await b.delete("a/one")
    await b.delete("a/one")  # a missing object: not an error
    assert await b.head("a/one") is None
    assert await listing(b, "a/") == {"a/two": len(data)}


async def test_gcs_large_listing(gcs: FakeGcs) -> None:
    # 1100 objects: GCS answers in pages of 1000 (object_store follows the continuation
    # token); fake-gcs-server answers in one, so only the parsing of a long page is tested.
    prefix = secrets.token_hex(6)
    names = {f"p/{i:05d}": i % 5 for i in range(1100)}
    for name, size in names.items():
        gcs.upload("obscura", f"{prefix}/{name}", b"x" * size)
    b = open_bucket(gcs.url(prefix=prefix), gcs.key_file)
    assert await listing(b, "p") == names


@pytest.mark.xfail(
    strict=True, raises=BucketError,
    reason="fake-gcs-server has no XML-API PUT/multipart upload (its issues #331, #852)",
)
async def test_gcs_writes(gcs: FakeGcs, tmp_path: Path) -> None:
    b = open_bucket(gcs.url(prefix=secrets.token_hex(6)), gcs.key_file)
    await b.put("a", b"hello")
    assert await b.get("a") == b"hello"
    assert await b.put_if_absent("m", b"first") is True
    assert await b.put_if_absent("m", b"second") is False
    big = tmp_path / "big"
    big.write_bytes(os.urandom(9 * MiB + 1))
    await b.put("big", big)
    assert await b.get("big") == big.read_bytes()


def test_gcs_keys_and_urls(tmp_path: Path, gcs: FakeGcs) -> None:
    url = gcs.url()
    with pytest.raises(CredentialsError, match="service-account JSON key"):
        open_bucket(url, environ={})
    key = service_account_key(tmp_path / "key.json")
    key.chmod(0o644)
    with pytest.raises(CredentialsError, match="group or others"):
        open_bucket(url, key)
    key.chmod(0o600)
    open_bucket(url, environ={"GOOGLE_APPLICATION_CREDENTIALS": str(key)})  # from the env
    good = json.loads(key.read_text())
    for broken, message in (
        ({**good, "type": "authorized_user"}, "not a service-account"),
        ({**good, "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n"}, "not a PEM"),
        ({k: v for k, v in good.items() if k != "client_email"}, "no client_email"),
    ):
        key.write_text(json.dumps(broken))
        with pytest.raises(CredentialsError, match=message):
            open_bucket(url, key)
    key.write_text("{not json")
    with pytest.raises(CredentialsError, match="not a service-account"):
        open_bucket(url, key)
    with pytest.raises(BucketConfigError, match="unknown option"):
        open_bucket(url + "&region=x", gcs.key_file)
    with pytest.raises(BucketConfigError, match="endpoint must be"):
        open_bucket("gs://b/p?endpoint=localhost", gcs.key_file)


def _decode(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    def b64(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    head, claims, sig = token.split(".")
    return json.loads(b64(head)), json.loads(b64(claims)), f"{head}.{claims}".encode(), b64(sig)


class _Capture(http.server.BaseHTTPRequestHandler):
    tokens: list[str] = []

    def do_HEAD(self) -> None:
        self.tokens.append(self.headers.get("Authorization", ""))
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_gcs_jwt_is_object_stores_and_ambient_env_is_ignored(
    gcs: FakeGcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    import obstore
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from obstore.store import GCSStore

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    decoy = socket.socket()  # where GOOGLE_BASE_URL points: never contacted
    decoy.bind(("127.0.0.1", 0))
    decoy.listen(8)
    decoy.setblocking(False)
    try:
        key_json = gcs.key_file.read_text()
        # object_store's own self-signed JWT, from the same key.
        theirs = GCSStore("obscura", service_account_key=key_json, base_url=endpoint,
                          client_options={"allow_http": True})
        with pytest.raises(FileNotFoundError):
            await obstore.head_async(theirs, "x")
        # Ours, with variables in the environment that object_store would otherwise obey.
        for var, value in {
            "GOOGLE_BEARER_TOKEN": "decoy-token", "GOOGLE_SKIP_SIGNATURE": "true",
            "GOOGLE_BASE_URL": f"http://127.0.0.1:{decoy.getsockname()[1]}",
        }.items():
            monkeypatch.setenv(var, value)
        ours = open_bucket(f"gs://obscura/?endpoint={endpoint}", gcs.key_file)
        assert await ours.head("x") is None
        with pytest.raises(BlockingIOError):
            decoy.accept()
    finally:
        server.shutdown()
        server.server_close()
        decoy.close()
    their_token, our_token = (t.removeprefix("Bearer ") for t in _Capture.tokens[-2:])
    their_head, their_claims, _, _ = _decode(their_token)
    our_head, our_claims, signed, signature = _decode(our_token)
    assert our_head == their_head
    for claims in (our_claims, their_claims):
        assert claims.pop("exp") - claims.pop("iat") == 3600
    assert our_claims == their_claims
    public = serialization.load_pem_private_key(
        json.loads(key_json)["private_key"].encode(), None
    ).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())  # raises if bad
