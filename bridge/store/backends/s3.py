"""S3 (and any obstore store) as a Bucket: `s3://bucket/prefix?endpoint=…&region=…`.

obstore (Rust object_store) signs requests (SigV4), streams a file from disk as a multipart upload
in parts of PART_SIZE (bounded memory: PART_SIZE x PART_CONCURRENCY), and sends `If-None-Match: *`
for create-only PUTs. Credentials are always handed over explicitly through a credential provider,
so object_store never falls back to the environment, a profile or the EC2/ECS metadata services.
Its own retries are kept short: the uploader owns the long backoff.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import SplitResult, parse_qsl, urlsplit

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    UnauthenticatedError,
)

from bridge.redact import redact
from bridge.store.bucket import (
    Bucket,
    BucketConfigError,
    BucketError,
    Data,
    ObjectInfo,
    check_name,
    check_prefix,
)
from bridge.store.credentials import S3Credentials, s3_credentials

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Credential

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
PART_CONCURRENCY = 4
RETRY_CONFIG: dict[str, Any] = {
    "max_retries": 2,
    "retry_timeout": timedelta(seconds=30),
    "backoff": {
        "init_backoff": timedelta(milliseconds=200),
        "max_backoff": timedelta(seconds=2),
        "base": 2,
    },
}
CLIENT_OPTIONS: dict[str, Any] = {"connect_timeout": "5s", "timeout": "120s"}
_S3_QUERY = {"endpoint", "region", "virtual_hosted", "verify_etag"}


def short_error(e: BaseException) -> str:
    """First line of an obstore error (they carry a long debug dump), with URLs redacted."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return redact(text)[:300]


def _flag(query: dict[str, str], key: str, default: bool) -> bool:
    value = query.get(key)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise BucketConfigError(f"bucket URL: {key}={value!r} must be true or false")


def url_query(parts: SplitResult, allowed: set[str]) -> dict[str, str]:
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise BucketConfigError(f"bucket URL: unknown option {', '.join(unknown)} (known: {known})")
    return query


def check_endpoint(endpoint: str) -> bool:
    """Validate a URL's `endpoint=` option; True if it is plain http (object_store's
    allow_http), which is only said loudly, not refused, when it is not loopback."""
    ep = urlsplit(endpoint)
    if ep.scheme not in ("http", "https") or not ep.hostname:
        raise BucketConfigError(
            f"bucket URL: endpoint must be http(s)://host[:port][/path], got {endpoint!r}"
        )
    if ep.username or ep.password or ep.query or ep.fragment:
        raise BucketConfigError("bucket URL: the endpoint must not carry credentials or a query")
    plain_http = ep.scheme == "http"
    if plain_http and ep.hostname not in ("127.0.0.1", "localhost", "::1"):
        # Requests are signed, and clips are ciphertext, but the signatures and the object
        # names travel in the clear: allowed (LAN NAS), said loudly.
        log.warning("bucket endpoint %s is plain http (not loopback)", endpoint)
    return plain_http


class ObstoreBucket(Bucket):
    """A Bucket over any obstore store (S3Store, GCSStore, AzureStore)."""

    def __init__(
        self,
        store: Any,
        description: str,
        *,
        md5_etags: bool,
        part_size: int = PART_SIZE,
        concurrency: int = PART_CONCURRENCY,
    ) -> None:
        self._store = store
        self._description = description
        self.md5_etags = md5_etags
        self.part_size = self._part_size = part_size
        self._concurrency = concurrency

    def describe(self) -> str:
        return self._description

    def _fail(self, op: str, name: str, e: BaseException) -> BucketError:
        return BucketError(f"{self._description}: {op} {name}: {short_error(e)}")

    async def _put(self, name: str, data: Data, mode: str | None) -> str | None:
        check_name(name)
        payload: Any = data if isinstance(data, Path) else bytes(data)
        result = await obstore.put_async(
            self._store,
            name,
            payload,
            mode=mode,  # type: ignore[arg-type]
            # Create-only PUTs must be one request (a multipart upload cannot be conditional);
            # they are small objects (manifest segments).
            use_multipart=False if mode == "create" else None,
            chunk_size=self._part_size,
            max_concurrency=self._concurrency,
        )
        etag = result.get("e_tag")
        return etag.strip('"') if etag else None

    async def put(self, name: str, data: Data) -> str | None:
        try:
            return await self._put(name, data, None)
        except BucketError:
            raise
        except Exception as e:
            raise self._fail("PUT", name, e) from e

    async def put_if_absent(self, name: str, data: Data) -> bool:
        try:
            await self._put(name, data, "create")
            return True
        except AlreadyExistsError:
            return False
        except NotSupportedError:
            # No conditional create here: best effort (racy), which is all the contract promises.
            if await self.head(name) is not None:
                return False
            await self.put(name, data)
            return True
        except BucketError:
            raise
        except Exception as e:
            raise self._fail("PUT (create-only)", name, e) from e

    async def get(self, name: str) -> bytes | None:
        check_name(name)
        try:
            result = await obstore.get_async(self._store, name)
            return bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as e:
            raise self._fail("GET", name, e) from e

    async def get_range(self, name: str, start: int, end: int) -> bytes | None:
        check_name(name)
        if end <= start:
            return b"" if await self.head(name) is not None else None
        try:
            return bytes(await obstore.get_range_async(self._store, name, start=start, end=end))
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as e:
            # A range starting at or past the end reads like EOF. Servers answer 416 (S3), or
            # object_store refuses it itself (Azure): ask for the size rather than parse errors.
            with contextlib.suppress(BucketError):
                info = await self.head(name)
                if info is None or start >= info.size:
                    return None if info is None else b""
            raise self._fail("GET (range)", name, e) from e

    async def head(self, name: str) -> ObjectInfo | None:
        check_name(name)
        try:
            meta = await obstore.head_async(self._store, name)
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as e:
            raise self._fail("HEAD", name, e) from e
        etag = meta.get("e_tag")
        return ObjectInfo(size=int(meta["size"]), etag=etag.strip('"') if etag else None)

    async def probe(self, name: str) -> None:
        """A HEAD of `name`. Whether the server is *there* is the question: "not found" is an
        answer, and so is "forbidden" (S3 says 403 for a missing object to keys without
        s3:ListBucket, which the bridge does not need; wrong keys are the uploads' error to
        report). A refused connection, a timeout or a 5xx is not."""
        check_name(name)
        try:
            await obstore.head_async(self._store, name)
        except (NotFoundError, FileNotFoundError, PermissionDeniedError, UnauthenticatedError):
            return
        except Exception as e:
            raise self._fail("HEAD (probe)", name, e) from e

    async def list(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]:
        prefix = check_prefix(prefix)
        try:
            # object_store pages through ListObjectsV2 itself (continuation tokens).
            stream = obstore.list(self._store, prefix or None, chunk_size=1000)
            async for batch in stream:
                for meta in batch:
                    yield meta["path"], int(meta["size"])
        except Exception as e:
            raise self._fail("LIST", prefix or "/", e) from e

    async def delete(self, name: str) -> None:
        check_name(name)
        try:
            await obstore.delete_async(self._store, name)
        except (NotFoundError, FileNotFoundError):
            return
        except Exception as e:
            raise self._fail("DELETE", name, e) from e


def open_s3(parts: SplitResult, credentials_file: Path | None, env: Mapping[str, str]) -> Bucket:
    from obstore.store import S3Store

    bucket = parts.hostname or ""
    if not bucket:
        raise BucketConfigError("s3 bucket URL must name a bucket: s3://bucket/prefix?endpoint=…")
    prefix = check_prefix(parts.path)
    query = url_query(parts, _S3_QUERY)
    endpoint = query.get("endpoint") or None
    plain_http = check_endpoint(endpoint) if endpoint else False
    region = query.get("region") or "us-east-1"
    creds = s3_credentials(credentials_file, env)
    # Path-style for custom endpoints (SeaweedFS, MinIO, Ceph), virtual-hosted for AWS.
    virtual_hosted = _flag(query, "virtual_hosted", endpoint is None)
    # AWS's own endpoint is spelled out too: object_store would otherwise take AWS_ENDPOINT_URL
    # from the environment (and obstore refuses endpoint=None).
    aws = f"https://{bucket}.s3.{region}.amazonaws.com" if virtual_hosted else (
        f"https://s3.{region}.amazonaws.com"
    )
    store = S3Store(
        bucket,
        prefix=prefix or None,
        endpoint=endpoint or aws,
        region=region,
        virtual_hosted_style_request=virtual_hosted,
        skip_signature=False,
        credential_provider=_StaticCredentials(creds),
        client_options=cast("ClientConfig", {**CLIENT_OPTIONS, "allow_http": plain_http}),
        retry_config=RETRY_CONFIG,  # type: ignore[arg-type]
    )
    desc = f"s3://{bucket}/{prefix}" + (f" at {endpoint}" if endpoint else "")
    return ObstoreBucket(store, desc, md5_etags=_flag(query, "verify_etag", True))


class _StaticCredentials:
    """Explicit keys for object_store (which would otherwise look in env, profile and IMDS)."""

    def __init__(self, creds: S3Credentials) -> None:
        self._creds = creds

    def __call__(self) -> S3Credential:
        return {
            "access_key_id": self._creds.access_key_id,
            "secret_access_key": self._creds.secret_access_key,
            "token": self._creds.session_token,
            "expires_at": None,
        }

    def __repr__(self) -> str:
        return f"<static S3 credentials from {self._creds.source}>"
