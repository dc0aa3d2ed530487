"""One entry of the spool while it is written, and a committed entry (see spool.py).

    entry = spool.create()              # dir/incoming/<id>.part, mode 0600
    entry.write(chunk) ...              # hashed (SHA-256, and the S3 ETag) as it goes
    item = entry.commit(name, "clip")   # fsync, sidecar, atomic renames into ready/
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from bridge.store.backends.file import fsync_dir
from bridge.store.bucket import check_name
from bridge.store.digests import Hasher, file_digests

if TYPE_CHECKING:
    from bridge.store.spool import Spool

log = logging.getLogger(__name__)

KINDS = frozenset({"clip", "thumbnail", "manifest"})
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class SpoolFull(RuntimeError):
    """The spool's disk is full: the entry being written was dropped, nothing else was touched."""


@dataclass(frozen=True, slots=True)
class SpoolItem:
    """A committed entry, ready for upload."""

    id: str
    object_name: str
    kind: str
    size: int
    sha256: str
    committed_at: float
    attempts: int = 0
    last_error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    data_path: Path = Path()
    # The S3 ETag hashed while the entry was written, for buckets split in parts of
    # etag_part_size (None: one PUT): lets the uploader verify without re-reading the file.
    etag: str | None = None
    etag_part_size: int | None = None
    # Committed with hold=True: held again after a restart until its owner releases it
    # (releasing is not written to disk; see spool.py).
    held: bool = False

    def sidecar(self) -> dict[str, Any]:
        return {
            "v": 1,
            "object": self.object_name,
            "kind": self.kind,
            "size": self.size,
            "sha256": self.sha256,
            "committed_at": self.committed_at,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "meta": self.meta,
            "etag": self.etag,
            "etag_part_size": self.etag_part_size,
            "held": self.held,
        }


def is_full(e: OSError) -> bool:
    return e.errno in _FULL_ERRNOS


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write and fsync a new small file (O_EXCL: never through an existing one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, json.dumps(obj, separators=(",", ":")).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolEntry:
    """A file being written into the spool: a binary sink (write/flush) that hashes as it goes."""

    def __init__(self, spool: Spool, entry_id: str) -> None:
        self._spool = spool
        self.id = entry_id
        self.path = spool.incoming / f"{entry_id}.part"
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        self._hasher = Hasher(spool.etag_part_size, with_md5=spool.etag_md5)
        self.size = 0
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._fd is None:
            raise ValueError("spool entry is closed")
        try:
            _write_all(self._fd, data)
        except OSError as e:
            if is_full(e):
                written = self.size
                self.abort()
                raise self._spool.full_error(f"after {written} bytes of this entry") from e
            raise
        n = len(memoryview(data).cast("B"))
        self._hasher.update(data)
        self.size += n
        self._spool._incoming_grew(n)
        return n

    def flush(self) -> None:
        """Data goes straight to the file (no user-space buffer); commit() fsyncs it."""

    def tell(self) -> int:
        return self.size

    def commit(
        self, object_name: str, kind: str, meta: dict[str, Any] | None = None, *, hold: bool = False
    ) -> SpoolItem:
        """Make the entry durable and ready for upload under `object_name` (fixed from now on:
        every retry, even after a crash, re-uploads the same name). `hold`: not offered for
        upload until `spool.unhold(item)`, after a restart too (spool.py)."""
        if self._done or self._fd is None:
            raise ValueError("spool entry already committed or aborted")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        check_name(object_name)
        spool = self._spool
        if spool.has_object(object_name):  # one name, one object: a reuse would overwrite
            raise ValueError(f"{object_name} is already waiting in the spool")
        sidecar_tmp = spool.incoming / f"{self.id}.json"
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            size = self.path.stat().st_size
            # Someone wrote to entry.path directly: hash what is on disk instead.
            digests = (
                self._hasher.digests()
                if size == self.size
                else file_digests(self.path, spool.etag_part_size, spool.etag_md5)
            )
            item = SpoolItem(
                id=self.id,
                object_name=object_name,
                kind=kind,
                size=size,
                sha256=digests.sha256,
                # Rounded up to the hour: only an age for status and logs (no timeline on disk).
                committed_at=float(-(-int(time.time()) // 3600) * 3600),
                meta=dict(meta or {}),
                data_path=spool.ready_dir / f"{self.id}.data",
                etag=digests.etag,
                etag_part_size=spool.etag_part_size if digests.etag else None,
                held=hold,
            )
            write_json(sidecar_tmp, item.sidecar())
            spool._hook("before-data-rename")
            os.rename(self.path, item.data_path)
            spool._hook("before-sidecar-rename")
            os.rename(sidecar_tmp, spool.ready_dir / f"{self.id}.json")  # the commit point
            fsync_dir(spool.ready_dir)
            fsync_dir(spool.incoming)
        except BaseException as e:
            # Before the commit point nothing is in ready/; after it (a failed directory fsync)
            # the caller is told "not committed", so the entry must go too.
            self._cleanup(
                sidecar_tmp,
                spool.ready_dir / f"{self.id}.json",
                spool.ready_dir / f"{self.id}.data",
            )
            if isinstance(e, OSError) and is_full(e):
                raise spool.full_error("while committing") from e
            raise
        self._done = True
        spool._committed(item, self.size, hold)
        return item

    def abort(self) -> None:
        """Drop the entry (idempotent)."""
        if self._done:
            return
        self._cleanup()

    def _cleanup(self, *extra: Path) -> None:
        self._done = True
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        for p in (self.path, *extra):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self._spool._incoming_gone(self.size)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self.abort()
