"""Google Cloud Storage and Azure Blob buckets through obstore (documented, not tested here).

    gs://bucket/prefix                  credentials_file = a service-account JSON key (0600)
    az://container/prefix?account=NAME AZURE_STORAGE_ACCOUNT_KEY from credentials_file or env

Credentials are required and explicit: without them object_store would probe the cloud metadata
address (169.254.169.254) or the Azure CLI. Their ETags are not S3-style MD5s, so uploads are
verified by size only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import SplitResult

from bridge.store.backends.s3 import CLIENT_OPTIONS, RETRY_CONFIG, ObstoreBucket, url_query
from bridge.store.bucket import Bucket, BucketConfigError, check_prefix
from bridge.store.credentials import CredentialsError, load_key_values, read_private_file


def open_gcs(parts: SplitResult, credentials_file: Path | None, env: Mapping[str, str]) -> Bucket:
    from obstore.store import GCSStore

    bucket = parts.hostname or ""
    if not bucket:
        raise BucketConfigError("gs bucket URL must name a bucket: gs://bucket/prefix")
    url_query(parts, set())
    env_key = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    key_path = credentials_file or (Path(env_key) if env_key else None)
    if key_path is None:
        raise CredentialsError(
            "gs:// buckets need a service-account JSON key: set storage.credentials_file "
            "(the bridge never asks the GCE metadata service)"
        )
    key = read_private_file(key_path)
    try:
        if json.loads(key).get("type") != "service_account":
            raise ValueError
    except (ValueError, AttributeError):
        raise CredentialsError(f"{key_path} is not a service-account JSON key") from None
    prefix = check_prefix(parts.path)
    store = GCSStore(
        bucket,
        prefix=prefix or None,
        service_account_key=key,
        client_options=dict(CLIENT_OPTIONS),  # type: ignore[arg-type]
        retry_config=RETRY_CONFIG,  # type: ignore[arg-type]
    )
    return ObstoreBucket(store, f"gs://{bucket}/{prefix}", md5_etags=False)


def open_azure(parts: SplitResult, credentials_file: Path | None, env: Mapping[str, str]) -> Bucket:
    from obstore.store import AzureStore

    container = parts.hostname or ""
    if not container:
        raise BucketConfigError("az bucket URL must name a container: az://container/prefix?account=…")
    query = url_query(parts, {"account"})
    values, source = load_key_values(credentials_file, env)
    account = query.get("account") or values.get("AZURE_STORAGE_ACCOUNT_NAME", "")
    key = values.get("AZURE_STORAGE_ACCOUNT_KEY", "")
    if not account or not key:
        raise CredentialsError(
            f"az:// buckets need ?account=NAME and AZURE_STORAGE_ACCOUNT_KEY (looked in {source})"
        )
    prefix = check_prefix(parts.path)
    store = AzureStore(
        container,
        prefix=prefix or None,
        account_name=account,
        account_key=key,
        client_options=dict(CLIENT_OPTIONS),  # type: ignore[arg-type]
        retry_config=RETRY_CONFIG,  # type: ignore[arg-type]
    )
    return ObstoreBucket(store, f"az://{container}/{prefix} (account {account})", md5_etags=False)
