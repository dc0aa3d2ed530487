"""A bucket in a local directory (a NAS mount, a USB disk, tests).

Every write goes to `<root>/.tmp/`, is fsync'd, then renamed (or, for put_if_absent, hard-linked:
link(2) fails if the name exists, an atomic create-only) into place, and the directory is fsync'd:
after put() returns the object survives a power cut, and readers never see half an object. Blocking
file I/O runs in threads so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from bridge.store.bucket import (
    Bucket,
    BucketConfigError,
    BucketError,
    Data,
    ObjectInfo,
    check_name,
    check_prefix,
)

_COPY_CHUNK = 1 << 20
_LIST_BATCH = 1000


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBucket(Bucket):
    part_size = None
    md5_etags = False  # head() reports no ETag: the uploader verifies the size only

    def __init__(self, root: Path) -> None:
        if not root.is_absolute():
            raise BucketConfigError(f"file bucket path must be absolute, got {root}")
        self.root = root
        self._tmp = root / ".tmp"
        self._ready = False

    def describe(self) -> str:
        return f"file://{self.root}"

    # -- helpers (run in threads) ------------------------------------------------------------

    def _setup(self) -> None:
        if not self._ready:
            self._tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._ready = True

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def _write_temp(self, data: Data) -> Path:
        self._setup()
        tmp = self._tmp / f"{secrets.token_hex(8)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                if isinstance(data, Path):
                    with data.open("rb") as src:
                        shutil.copyfileobj(src, out, _COPY_CHUNK)
                else:
                    out.write(data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        return tmp

    def _publish(self, tmp: Path, dest: Path, *, replace: bool) -> bool:
        created_dirs = not dest.parent.exists()
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            if replace:
                os.replace(tmp, dest)
            else:
                try:
                    os.link(tmp, dest)
                except FileExistsError:
                    return False
                finally:
                    tmp.unlink()
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(dest.parent)
        if created_dirs:  # make the new directories themselves durable
            parent = dest.parent
            while parent != self.root:
                parent = parent.parent
                fsync_dir(parent)
        return True

    def _put(self, name: str, data: Data, replace: bool) -> bool:
        dest = self._path(name)
        try:
            return self._publish(self._write_temp(data), dest, replace=replace)
        except OSError as e:
            raise BucketError(f"{self.describe()}: cannot write {name}: {e.strerror}") from e

    def _get(self, name: str, start: int | None, end: int | None) -> bytes | None:
        try:
            with self._path(name).open("rb") as f:
                if start is None:
                    return f.read()
                f.seek(start)
                return f.read(max(0, (end or 0) - start))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as e:
            raise BucketError(f"{self.describe()}: cannot read {name}: {e.strerror}") from e

    def _head(self, name: str) -> ObjectInfo | None:
        try:
            st = self._path(name).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(size=st.st_size, etag=None)

    def _delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            if e.errno == errno.EISDIR:
                return
            raise BucketError(f"{self.describe()}: cannot delete {name}: {e.strerror}") from e
        fsync_dir(path.parent)

    def _probe(self) -> None:
        """The root itself (a HEAD of a missing name says nothing about it): a directory we may
        write to, or not there yet (the first put creates it). A dead NAS mount fails or hangs
        here (the caller's timeout)."""
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            return
        except OSError as e:
            raise BucketError(f"{self.describe()}: {e.strerror}") from e
        if not stat.S_ISDIR(st.st_mode):
            raise BucketError(f"{self.describe()}: not a directory")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise BucketError(f"{self.describe()}: not writable")

    def _walk(self, prefix: str) -> Iterator[tuple[str, int]]:
        top = self.root / prefix if prefix else self.root
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            for fn in filenames:
                if fn.startswith("."):
                    continue
                name = fn if rel == "." else f"{rel}/{fn}"
                try:
                    size = os.stat(os.path.join(dirpath, fn)).st_size
                except FileNotFoundError:  # deleted while listing
                    continue
                yield name.replace(os.sep, "/"), size

    # -- Bucket ------------------------------------------------------------------------------

    async def put(self, name: str, data: Data) -> str | None:
        await asyncio.to_thread(self._put, name, data, True)
        return None  # no ETags: the uploader verifies sizes and re-hashes the local copy

    async def put_if_absent(self, name: str, data: Data) -> bool:
        return await asyncio.to_thread(self._put, name, data, False)

    async def get(self, name: str) -> bytes | None:
        return await asyncio.to_thread(self._get, name, None, None)

    async def get_range(self, name: str, start: int, end: int) -> bytes | None:
        return await asyncio.to_thread(self._get, name, start, end)

    async def head(self, name: str) -> ObjectInfo | None:
        return await asyncio.to_thread(self._head, name)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self._delete, name)

    async def probe(self, name: str) -> None:
        await asyncio.to_thread(self._probe)

    async def list(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]:
        walker = self._walk(check_prefix(prefix))

        def batch() -> list[tuple[str, int]]:
            out: list[tuple[str, int]] = []
            for item in walker:
                out.append(item)
                if len(out) >= _LIST_BATCH:
                    break
            return out

        while items := await asyncio.to_thread(batch):
            for item in items:
                yield item
