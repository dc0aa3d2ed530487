"""Google Cloud Storage and Azure Blob buckets through obstore.

    gs://bucket/prefix[?endpoint=URL]
        credentials_file (else GOOGLE_APPLICATION_CREDENTIALS): a service-account JSON key
    az://container/prefix?account=NAME[&endpoint=URL]
        credentials_file (else the environment): AZURE_STORAGE_ACCOUNT_KEY=… and, when the URL
        has no ?account=, AZURE_STORAGE_ACCOUNT_NAME=…

`endpoint` is only for something other than the public cloud: for GCS the server of the XML API
(default https://storage.googleapis.com), for Azure the account's blob endpoint (default
https://NAME.blob.core.windows.net; Azurite's is http://127.0.0.1:10000/NAME).

Credentials are explicit and handed over through object_store's credential provider, which
outranks everything it would otherwise discover: GOOGLE_BEARER_TOKEN, AZURE_STORAGE_TOKEN and the
like in the environment, the Azure CLI, the metadata services at 169.254.169.254. The endpoint is
always passed too, so GOOGLE_BASE_URL or AZURE_STORAGE_USE_EMULATOR cannot redirect uploads. For
GCS the key signs a self-signed JWT (https://google.aip.dev/auth/4111), exactly as object_store
would: no OAuth token exchange, no request but to the bucket's endpoint.

Neither service's ETags are S3-style MD5s, so the uploader verifies the size and re-hashes its
local copy. Azure is tested against Azurite (tests/test_bucket_cloud.py), GCS only for reads
(tests/test_bucket_gcs.py: no emulator to be had accepts object_store's XML-API uploads).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import SplitResult

from bridge.store.backends.s3 import (
    CLIENT_OPTIONS,
    RETRY_CONFIG,
    ObstoreBucket,
    check_endpoint,
    short_error,
    url_query,
)
from bridge.store.bucket import Bucket, BucketConfigError, check_prefix
from bridge.store.credentials import CredentialsError, load_key_values, read_private_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from obstore.store import AzureAccessKey, ClientConfig, GCSCredential

GCS_ENDPOINT = "https://storage.googleapis.com"
GCS_SCOPE = "https://www.googleapis.com/auth/cloud-platform"  # object_store's scope
_JWT_LIFETIME = 3600
_JWT_RENEW = 300  # hand out a new token this long before the old one expires
_AZURE_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")


def _build(scheme: str, make: Callable[[], Any]) -> Any:
    """The obstore store, or a BucketConfigError (object_store also reads the environment,
    e.g. a GOOGLE_SERVICE_ACCOUNT naming a missing file)."""
    try:
        return make()
    except BucketConfigError:
        raise
    except Exception as e:
        raise BucketConfigError(f"{scheme}:// bucket: {short_error(e)}") from None


def _client_options(endpoint: str | None) -> ClientConfig:
    plain_http = check_endpoint(endpoint) if endpoint else False
    return cast("ClientConfig", {**CLIENT_OPTIONS, "allow_http": plain_http})


# ------------------------------------------------------------------------------------------
# GCS
# ------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class GcsServiceAccount:
    """Self-signed JWTs from a service-account key: header and claims as object_store makes
    them (RS256, kid = private_key_id, iss = sub = client_email, the cloud-platform scope)."""

    def __init__(self, key_json: str, source: str) -> None:
        try:
            key = json.loads(key_json)
        except ValueError:
            key = None
        if not isinstance(key, dict) or key.get("type") != "service_account":
            raise CredentialsError(f"{source} is not a service-account JSON key")
        email, pem = key.get("client_email"), key.get("private_key")
        if not isinstance(email, str) or not email or not isinstance(pem, str):
            raise CredentialsError(f"{source}: the key has no client_email or private_key")
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            private = load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError):
            raise CredentialsError(f"{source}: private_key is not a PEM private key") from None
        if not isinstance(private, rsa.RSAPrivateKey):
            raise CredentialsError(f"{source}: private_key is not an RSA key")
        self.email = email
        self.source = source
        self._key_id = str(key.get("private_key_id") or "")
        self._key: RSAPrivateKey = private

    def token(self, now: int) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "kid": self._key_id}
        claims = {
            "iss": self.email,
            "sub": self.email,
            "scope": GCS_SCOPE,
            "exp": now + _JWT_LIFETIME,
            "iat": now,
        }
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def __call__(self) -> GCSCredential:
        now = int(time.time())
        renew_at = datetime.fromtimestamp(now + _JWT_LIFETIME - _JWT_RENEW, UTC)
        return {"token": self.token(now), "expires_at": renew_at}

    def __repr__(self) -> str:
        return f"<GCS service account {self.email} from {self.source}>"


def open_gcs(parts: SplitResult, credentials_file: Path | None, env: Mapping[str, str]) -> Bucket:
    from obstore.store import GCSStore

    bucket = parts.hostname or ""
    if not bucket:
        raise BucketConfigError("gs bucket URL must name a bucket: gs://bucket/prefix")
    query = url_query(parts, {"endpoint"})
    endpoint = (query.get("endpoint") or "").rstrip("/") or None
    env_key = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    key_path = credentials_file or (Path(env_key) if env_key else None)
    if key_path is None:
        raise CredentialsError(
            "gs:// buckets need a service-account JSON key: set storage.credentials_file "
            "(the bridge never asks the GCE metadata service)"
        )
    account = GcsServiceAccount(read_private_file(key_path), str(key_path))
    prefix = check_prefix(parts.path)
    client_options = _client_options(endpoint)
    store = _build("gs", lambda: GCSStore(
        bucket,
        prefix=prefix or None,
        base_url=endpoint or GCS_ENDPOINT,
        skip_signature=False,
        credential_provider=account,
        client_options=client_options,
        retry_config=RETRY_CONFIG,  # type: ignore[arg-type]
    ))
    desc = f"gs://{bucket}/{prefix}" + (f" at {endpoint}" if endpoint else "")
    return ObstoreBucket(store, desc, md5_etags=False)


# ------------------------------------------------------------------------------------------
# Azure
# ------------------------------------------------------------------------------------------


class AzureAccountKey:
    """The storage account's shared key (object_store signs each request with it)."""

    def __init__(self, key: str, source: str) -> None:
        try:
            ok = len(base64.b64decode(key, validate=True)) > 0
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            raise CredentialsError(f"AZURE_STORAGE_ACCOUNT_KEY from {source} is not base64")
        self._key = key
        self.source = source

    def __call__(self) -> AzureAccessKey:
        return {"access_key": self._key, "expires_at": None}

    def __repr__(self) -> str:
        return f"<Azure account key from {self.source}>"


def open_azure(parts: SplitResult, credentials_file: Path | None, env: Mapping[str, str]) -> Bucket:
    from obstore.store import AzureStore

    container = parts.hostname or ""
    if not container:
        raise BucketConfigError("az bucket URL must name a container: az://container/prefix?account=…")
    query = url_query(parts, {"account", "endpoint"})
    values, source = load_key_values(credentials_file, env)
    account = query.get("account") or values.get("AZURE_STORAGE_ACCOUNT_NAME", "").strip()
    key = values.get("AZURE_STORAGE_ACCOUNT_KEY", "").strip()
    if not account or not key:
        raise CredentialsError(
            f"az:// buckets need ?account=NAME and AZURE_STORAGE_ACCOUNT_KEY (looked in {source})"
        )
    if not _AZURE_ACCOUNT.match(account):
        raise BucketConfigError(f"az bucket URL: {account!r} is no storage account name")
    endpoint = (query.get("endpoint") or "").rstrip("/") or None
    prefix = check_prefix(parts.path)
    credential = AzureAccountKey(key, source)
    client_options = _client_options(endpoint)
    store = _build("az", lambda: AzureStore(
        container,
        prefix=prefix or None,
        account_name=account,
        endpoint=endpoint or f"https://{account}.blob.core.windows.net",
        use_emulator=False,  # it would take its URL from AZURITE_BLOB_STORAGE_URL
        skip_signature=False,
        credential_provider=credential,
        client_options=client_options,
        retry_config=RETRY_CONFIG,  # type: ignore[arg-type]
    ))
    desc = f"az://{container}/{prefix} (account {account})"
    desc += f" at {endpoint}" if endpoint else ""
    return ObstoreBucket(store, desc, md5_etags=False)
