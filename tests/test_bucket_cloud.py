"""az:// against a real Azure Blob server (Azurite, tests/peers/azurite.py): the Bucket contract
of tests/test_store.py, credentials and the environment, the uploader (size verification, an
outage), and a ClipVault whose clip decrypts and whose manifest verifies with the owner's key.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.store.bucket import Bucket, BucketConfigError, BucketError, BucketLayout, open_bucket
from bridge.store.config import StorageConfig
from bridge.store.credentials import CredentialsError
from bridge.store.spool import Spool
from bridge.store.uploader import Uploader
from bridge.store.vault import ClipVault
from crypto.age import decrypt
from crypto.age_keys import generate_identity
from crypto.manifest import ManifestVerifier
from tests import test_store as contract
from tests.peers.azurite import Azurite, AzuriteError
from tests.test_retention import meta, seal
from tests.test_uploader import bucket_contents, eventually, fill_spool

MiB = 1 << 20
_MD5 = re.compile(r"^[0-9a-f]{32}(-\d+)?$")


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    try:
        server = Azurite(containers=("obscura", "other"))
    except AzuriteError as e:
        if os.environ.get("OBSCURA_SKIP_NPM") == "1":
            pytest.skip(f"OBSCURA_SKIP_NPM=1 and {e}")
        raise
    with server:
        yield server


@pytest.fixture
async def bucket(azurite: Azurite) -> AsyncIterator[Bucket]:
    b = open_bucket(azurite.url(prefix=secrets.token_hex(6)), environ=azurite.env)
    yield b
    await b.close()


# The Bucket contract (file:// and s3:// in tests/test_store.py), collected here with the az://
# `bucket` above: put/get/get_range/head/delete, a multipart upload (Azure: blocks + block list),
# put_if_absent (If-None-Match: *), a listing of several pages, invalid names.
test_put_get_head_delete = contract.test_put_get_head_delete
test_large_file_put_is_multipart_and_intact = contract.test_large_file_put_is_multipart_and_intact
test_put_if_absent = contract.test_put_if_absent
test_list_pages_through_everything = contract.test_list_pages_through_everything
test_invalid_names_rejected = contract.test_invalid_names_rejected


def credentials_file(path: Path, az: Azurite, *, account: bool = True, mode: int = 0o600) -> Path:
    lines = ["# Azure test keys", f'AZURE_STORAGE_ACCOUNT_KEY="{az.key}"']
    if account:
        lines.append(f"AZURE_STORAGE_ACCOUNT_NAME={az.account}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(mode)
    return path


# ------------------------------------------------------------------------------------------
# URL, credentials, environment
# ------------------------------------------------------------------------------------------


async def test_credentials_file_wins_and_bad_keys_fail_cleanly(
    tmp_path: Path, azurite: Azurite
) -> None:
    creds = credentials_file(tmp_path / "azure.env", azurite)
    url = f"az://obscura/credfile?endpoint={azurite.endpoint}"  # the account from the file
    wrong = base64.b64encode(os.urandom(64)).decode()
    b = open_bucket(url, creds, environ={"AZURE_STORAGE_ACCOUNT_KEY": wrong})
    await b.put("x", b"1")
    assert await b.get("x") == b"1"
    assert azurite.key not in repr(b.__dict__) and azurite.account in b.describe()

    creds.chmod(0o640)
    with pytest.raises(CredentialsError, match="group or others"):
        open_bucket(url, creds, environ={})

    b = open_bucket(azurite.url(), environ={"AZURE_STORAGE_ACCOUNT_KEY": wrong})
    with pytest.raises(BucketError) as info:
        await b.put("x", b"1")
    assert "403" in str(info.value) and wrong not in str(info.value)


def test_bad_azure_urls_and_keys(azurite: Azurite) -> None:
    env = azurite.env
    with pytest.raises(CredentialsError, match="AZURE_STORAGE_ACCOUNT_KEY"):
        open_bucket(azurite.url(), environ={})
    with pytest.raises(CredentialsError, match="not base64"):
        open_bucket(azurite.url(), environ={"AZURE_STORAGE_ACCOUNT_KEY": "not a key!"})
    with pytest.raises(BucketConfigError, match="no storage account name"):
        open_bucket("az://c/p?account=Not_An_Account", environ=env)
    with pytest.raises(BucketConfigError, match="unknown option"):
        open_bucket(azurite.url() + "&use_emulator=true", environ=env)
    with pytest.raises(BucketConfigError, match="endpoint must be"):
        open_bucket("az://c/p?account=abc&endpoint=127.0.0.1:10000/abc", environ=env)
    with pytest.raises(BucketConfigError, match="must name a container"):
        open_bucket("az:///p?account=abc", environ=env)


async def test_ambient_azure_environment_is_ignored(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Variables object_store reads by itself (a token, the emulator switch, another endpoint,
    managed identity) point at a loopback decoy: the explicit key and endpoint win, and the
    decoy is never contacted."""
    decoy = socket.socket()
    decoy.bind(("127.0.0.1", 0))
    decoy.listen(8)
    decoy.setblocking(False)
    url = f"http://127.0.0.1:{decoy.getsockname()[1]}"
    for var, value in {
        "AZURE_STORAGE_TOKEN": "decoy", "AZURE_CREDENTIAL_TYPE": "bearer_token",
        "AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": url,
        "AZURE_STORAGE_ENDPOINT": url, "AZURE_ENDPOINT": url, "AZURE_SKIP_SIGNATURE": "true",
        "AZURE_MSI_ENDPOINT": url, "IDENTITY_ENDPOINT": url, "AZURE_USE_AZURE_CLI": "true",
    }.items():
        monkeypatch.setenv(var, value)
    try:
        b = open_bucket(azurite.url(prefix="ambient"), environ=azurite.env)
        await b.put("x", b"1")
        assert await b.head("x") is not None
        assert [n async for n, _ in b.list()] == ["x"]
        with pytest.raises(BlockingIOError):
            decoy.accept()
    finally:
        decoy.close()


# ------------------------------------------------------------------------------------------
# Uploader and ClipVault
# ------------------------------------------------------------------------------------------


async def test_uploader_verifies_azure_uploads_by_size(azurite: Azurite, tmp_path: Path) -> None:
    bucket = open_bucket(azurite.url(prefix="up/"), environ=azurite.env)
    assert bucket.md5_etags is False
    spool = Spool(tmp_path / "spool", 256 * MiB, etag_md5=bucket.md5_etags,
                  etag_part_size=bucket.part_size)
    layout = BucketLayout(secrets.token_hex(8))
    expected = fill_spool(spool, layout, [1, 300_000, 9 * MiB + 7])  # 9 MiB: two blocks
    up = Uploader(spool, bucket, min_backoff=0.1, max_backoff=0.5)
    up.start()
    try:
        assert await up.wait_idle(60), up.status()
    finally:
        await up.stop()
    assert await bucket_contents(bucket, layout.root) == expected
    st = up.status()
    assert st.uploaded_count == 3 and st.pending_count == 0 and st.last_error is None
    assert all(i.etag is None for i in spool.ready())  # nothing hashed for an ETag
    for name in expected:  # Azure ETags are opaque ("0x8D…"): never taken for an MD5
        info = await bucket.head(name)
        assert info is not None and info.etag and not _MD5.match(info.etag.lower())


async def test_azurite_outage_then_every_entry_arrives_once(tmp_path: Path) -> None:
    with Azurite(tmp_path / "azurite") as server:  # its own server: this test stops it
        bucket = open_bucket(server.url(prefix="outage/"), environ=server.env)
        spool = Spool(tmp_path / "spool", 256 * MiB)
        layout = BucketLayout(secrets.token_hex(8))
        up = Uploader(spool, bucket, min_backoff=0.1, max_backoff=0.5)
        up.start()
        try:
            expected = await asyncio.to_thread(fill_spool, spool, layout, [100_000, 200_000])
            assert await up.wait_idle(30), up.status()
            await asyncio.to_thread(server.stop)
            # Recording goes on while the bucket is down: the clips wait in the spool.
            expected |= await asyncio.to_thread(fill_spool, spool, layout, [9 * MiB + 1, 10])
            await eventually(lambda: up.failures >= 2, 30)
            st = up.status()
            assert st.last_error and st.pending_count == 2 and spool.pending_count == 2
            await asyncio.to_thread(server.start)  # same port, same data
            assert await up.wait_idle(60), up.status()
        finally:
            await up.stop()
        assert await bucket_contents(bucket, layout.root) == expected
        assert up.status().consecutive_failures == 0 and up.uploaded_count == 4


async def test_clip_vault_on_azure_verifies_with_the_owner_key(
    azurite: Azurite, tmp_path: Path
) -> None:
    identity = generate_identity()
    state = tmp_path / "state"
    state.mkdir()
    creds = credentials_file(tmp_path / "azure.env", azurite, account=False)
    config = StorageConfig(
        bucket=azurite.url(prefix="home/"),
        recipients=(str(identity.recipient),),
        credentials_file=creds,
        heartbeat_seconds=300,
    )
    payload = os.urandom(50_000)
    vault = ClipVault(config, state)
    await vault.start()
    try:
        await seal(vault, meta("Porch", time.time(), len(payload)), payload)
        assert vault.clips_sealed == 1
        assert await vault.uploader.wait_idle(timeout=30)
    finally:
        await vault.stop(drain_seconds=10)  # uploads the newest manifest head

    bucket = open_bucket(config.bucket, creds)
    try:
        names = [n async for n, _ in bucket.list("")]
        blobs = {n.rsplit("/", 1)[1]: await bucket.get(n) for n in names}
    finally:
        await bucket.close()
    assert all(n.startswith(vault.layout.root + "/") for n in names)
    head = vault.layout.well_known_name("manifest-head").rsplit("/", 1)[1]
    report = ManifestVerifier(
        [identity],
        head_id=head,
        get=blobs.get,
        list=lambda: [(oid, len(b or b"")) for oid, b in blobs.items()],
    ).verify()
    assert report.problems == []
    (clip,) = report.clips
    assert clip.camera == "Porch" and clip.deleted is None and clip.thumb in blobs
    ciphertext = blobs[clip.id]
    assert ciphertext is not None and payload not in ciphertext
    assert decrypt([identity], ciphertext).startswith(payload)
