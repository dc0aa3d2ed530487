"""The bucket interface, its URL forms and the opaque per-bridge object layout.

URL forms (the part after the bucket/container is a prefix inside it, applied by the Bucket, so
object names below are relative to it):

    file:///var/lib/obscura/bucket
    s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1
    gs://bucket/prefix[?endpoint=…]    (credentials_file = a service-account JSON key, required)
    az://container/prefix?account=NAME[&endpoint=…]  (AZURE_STORAGE_ACCOUNT_KEY, file or env)

(backends/s3.py and backends/cloud.py document each form's options.)

S3, GCS and Azure go through obstore (Rust object_store); `file://` is our own backend because it
must fsync. Credentials never come from a URL and never from a cloud metadata service.

Object names: `{prefix}{bridge_id}/{hex32}` — a random 16-hex bridge id (several bridges may share
one bucket) and a random 128-bit id per object. No camera names, times or labels, ever.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bridge.redact import redact

Data = bytes | bytearray | memoryview | Path

# Segments may not start with "." (no "..", no hidden temp files of the file backend).
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
_NAME = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})*$")
_BRIDGE_ID = re.compile(r"^[0-9a-f]{16}$")
_OBJECT_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_NAME = 1024
PROBE_INTERVAL = 2.0  # seconds between probes while the bucket fails
PROBE_TIMEOUT = 3.0  # a probe that takes longer counts as failed

log = logging.getLogger(__name__)


class BucketError(Exception):
    """A bucket operation failed; the message is safe to log (no secrets)."""


class BucketConfigError(BucketError, ValueError):
    """The bucket URL or its credentials are unusable (a configuration problem, not an outage)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    etag: str | None  # as the server reports it, without quotes; None when the backend has none


def check_name(name: str) -> str:
    if len(name) > MAX_NAME or not _NAME.match(name):
        raise BucketError(f"invalid object name {name!r}")
    return name


def check_prefix(prefix: str) -> str:
    """'' or a name ending with '/' … as list() takes it: '' means everything."""
    prefix = prefix.strip("/")
    return check_name(prefix) if prefix else ""


class Bucket(abc.ABC):
    """Async object storage. Names are relative to the URL's prefix; see check_name()."""

    #: put(Path) of a file larger than this is a multipart upload in parts of exactly this size
    #: (None: always one request). The uploader derives the expected ETag from it.
    part_size: int | None = None
    #: Whether ETags are S3-style MD5s (plain, or md5-of-part-md5s "-N" for multipart).
    md5_etags: bool = False

    @abc.abstractmethod
    async def put(self, name: str, data: Data) -> str | None:
        """Create or replace `name` atomically (readers see the old object or the new one).
        Returns the ETag the server reported for this write, if it reports one."""

    @abc.abstractmethod
    async def put_if_absent(self, name: str, data: Data) -> bool:
        """Create `name` unless it exists; False if it did. Uses a conditional create where the
        server has one, but a server may ignore it: never rely on it for security."""

    @abc.abstractmethod
    async def get(self, name: str) -> bytes | None:
        """The whole object, or None if there is none."""

    @abc.abstractmethod
    async def get_range(self, name: str, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of the object (fewer at its end), or None if there is none."""

    @abc.abstractmethod
    async def head(self, name: str) -> ObjectInfo | None:
        """Size and ETag, or None if there is no such object."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]:
        """(name, size) of every object under the directory `prefix` ('' = all), in no
        particular order; pages through the whole listing."""

    @abc.abstractmethod
    async def delete(self, name: str) -> None:
        """Remove `name`; deleting a missing object is not an error."""

    async def probe(self, name: str) -> None:
        """Return if the bucket answers now, else raise (BucketError, OSError, …): one cheap
        request, such as a HEAD of `name` (one of ours, which may not exist). The uploader
        calls it every ~2 s while uploads fail, to notice the bucket's return; callers bound
        it with a timeout."""
        await self.head(name)

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (optional)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short description that is safe to log and show in status."""


class Superseded(Exception):
    """An attempt sent while the bucket was down was dropped: the bucket is back."""


class BucketWatch:
    """Notices a bucket's return after an outage, within ~`interval` s, without hammering it.

    After a failed request, `suspect(name)` probes the bucket (`Bucket.probe`) every `interval`
    s until it answers. A failed probe marks an outage (logged once: no line per probe); the
    first probe that then answers ends it (logged once), calls `on_back` and wakes every
    `pause()`. A probe that answers at once changes nothing: the failures were of another kind
    (a quota, a damaged local file), and the caller's backoff stands. Runs on the loop.
    """

    def __init__(
        self,
        bucket: Bucket,
        interval: float = PROBE_INTERVAL,
        *,
        on_back: Callable[[], None] | None = None,
    ) -> None:
        self.bucket = bucket
        self.interval = interval
        self.timeout = PROBE_TIMEOUT
        self.on_back = on_back
        self.unreachable_since: float | None = None  # wall clock, while a probe finds it down
        self.returns = 0  # outages ended so far
        self._back = asyncio.Event()  # set (and replaced) at each return
        self._task: asyncio.Task[None] | None = None

    def suspect(self, name: str) -> None:
        """A request failed: probe with `name` (one of ours; it need not exist) until the
        bucket answers. One prober at a time."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._probe(name), name="bucket:probe"
            )

    async def pause(self, delay: float) -> bool:
        """Sleep `delay` s, or less when the bucket comes back (True)."""
        back = self._back
        try:
            async with asyncio.timeout(delay):
                await back.wait()
        except TimeoutError:
            return False
        return True

    def answered(self) -> None:
        """A request succeeded: if the bucket was marked down, it is back."""
        if self.unreachable_since is not None:
            self._came_back()

    async def unless_back(self, attempt: Awaitable[bool]) -> bool:
        """`attempt`, unless it starts while the bucket is down and the bucket comes back first:
        a request sent to a server that was only half up can hang (SeaweedFS held one for ~20 s
        after its restart), so it is cancelled and Superseded is raised (send it again)."""
        if self.unreachable_since is None:
            return await attempt
        task = asyncio.ensure_future(attempt)
        back = asyncio.ensure_future(self._back.wait())
        try:
            await asyncio.wait({task, back}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            back.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait([task])
        log.info("bucket %s: a request sent while it was down is sent again",
                 self.bucket.describe())
        raise Superseded

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _probe(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at = max(next_at + self.interval, loop.time())  # a steady pace
            await asyncio.sleep(next_at - loop.time())
            try:
                async with asyncio.timeout(self.timeout):
                    await self.bucket.probe(name)
            except Exception as e:
                if self.unreachable_since is None:
                    self.unreachable_since = time.time()
                    lines = redact(str(e)).splitlines() or [type(e).__name__]
                    reason = "no answer in time" if isinstance(e, TimeoutError) else lines[0]
                    log.warning("bucket %s does not answer (%s): probing it every %g s",
                                self.bucket.describe(), reason[:300], self.interval)
                continue
            self.answered()
            return  # it answers (back, or the failures were of another kind)

    def _came_back(self) -> None:
        assert self.unreachable_since is not None
        log.info("bucket %s answers again after %.0f s", self.bucket.describe(),
                 time.time() - self.unreachable_since)
        self.unreachable_since = None
        self.returns += 1
        if self.on_back is not None:
            self.on_back()
        back, self._back = self._back, asyncio.Event()
        back.set()


# ------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------


def new_bridge_id() -> str:
    return secrets.token_hex(8)


def load_bridge_id(state_dir: Path) -> str:
    """The bridge's random 16-hex id from state_dir/bridge_id, created on first use."""
    path = state_dir / "bridge_id"
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if _BRIDGE_ID.match(value):
        return value
    if value:
        raise BucketConfigError(f"{path} holds no 16-hex bridge id (remove it for a new one)")
    state_dir.mkdir(parents=True, exist_ok=True)
    value = new_bridge_id()
    tmp = path.with_name(f".bridge_id.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (value + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # create-only: two racing starts agree on one id
    except FileExistsError:
        value = path.read_text().strip()
    finally:
        os.unlink(tmp)
    return value


class BucketLayout:
    """Object names of one bridge: `{prefix}{bridge_id}/{hex32}`, nothing else.

    Clips, thumbnails and manifest segments all get fresh random ids (the kinds are
    indistinguishable to the operator). A well-known object (the manifest head) gets an id derived
    from the bridge id and a purpose string, so the owner's tools find it; it looks like any other.
    """

    def __init__(self, bridge_id: str, prefix: str = "") -> None:
        if not _BRIDGE_ID.match(bridge_id):
            raise BucketConfigError(f"bridge id must be 16 lowercase hex digits, got {bridge_id!r}")
        if prefix and (not prefix.endswith("/") or not _NAME.match(prefix.rstrip("/"))):
            raise BucketConfigError(f"layout prefix must be '' or end with '/', got {prefix!r}")
        self.bridge_id = bridge_id
        self.prefix = prefix
        self.root = f"{prefix}{bridge_id}"  # list(layout.root): every object of this bridge

    def new_name(self) -> str:
        return f"{self.root}/{secrets.token_hex(16)}"

    def clip_name(self) -> str:
        return self.new_name()

    def thumbnail_name(self) -> str:
        return self.new_name()

    def manifest_name(self) -> str:
        return self.new_name()

    def well_known_name(self, purpose: str) -> str:
        digest = hashlib.sha256(f"obscura-layout-v1\0{self.bridge_id}\0{purpose}".encode())
        return f"{self.root}/{digest.hexdigest()[:32]}"

    def object_id(self, name: str) -> str | None:
        """The 32-hex id if `name` belongs to this bridge, else None."""
        head, _, tail = name.rpartition("/")
        return tail if head == self.root and _OBJECT_ID.match(tail) else None

    @staticmethod
    def bridge_ids(names: list[str], prefix: str = "") -> set[str]:
        """Bridge ids present in a listing (for owner tools reading a shared bucket)."""
        out = set()
        for name in names:
            if not name.startswith(prefix):
                continue
            bid, _, oid = name[len(prefix):].partition("/")
            if _BRIDGE_ID.match(bid) and _OBJECT_ID.match(oid):
                out.add(bid)
        return out


# ------------------------------------------------------------------------------------------
# Opening a bucket from its URL
# ------------------------------------------------------------------------------------------


def open_bucket(
    url: str,
    credentials_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Bucket:
    """A Bucket for `url`. Raises BucketConfigError (with a clear message) on a bad URL or
    missing/unsafe credentials. Does no network I/O."""
    env = os.environ if environ is None else environ
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise BucketConfigError(f"bucket URL is not a URL: {e}") from None
    scheme = parts.scheme.lower()
    if parts.username or parts.password:
        raise BucketConfigError(
            "bucket URL must not carry credentials (they would end up in logs): use "
            "storage.credentials_file or the environment"
        )
    if scheme == "file":
        from bridge.store.backends.file import FileBucket

        if parts.netloc not in ("", "localhost") or parts.query:
            raise BucketConfigError("file bucket URL must be file:///absolute/path")
        return FileBucket(Path(parts.path))
    if scheme == "s3":
        from bridge.store.backends.s3 import open_s3

        return open_s3(parts, credentials_file, env)
    if scheme in ("gs", "gcs"):
        from bridge.store.backends.cloud import open_gcs

        return open_gcs(parts, credentials_file, env)
    if scheme in ("az", "azure"):
        from bridge.store.backends.cloud import open_azure

        return open_azure(parts, credentials_file, env)
    raise BucketConfigError(
        f"unsupported bucket URL scheme {scheme!r}: use file://, s3://, gs:// or az://"
    )
