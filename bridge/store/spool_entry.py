"""One entry of the spool while it is written, a committed entry, and the spool's disk space
(see spool.py).

    entry = spool.create()              # dir/incoming/<id>.part, mode 0600
    entry.write(chunk) ...              # hashed (SHA-256, and the S3 ETag) as it goes
    item = entry.commit(name, "clip")   # fsync, sidecar, atomic renames into ready/

Free space is asked of the filesystem (statvfs, under a microsecond) at every create and every
write, never remembered: the first entry after space comes back is written, whatever happened
before. `DiskSpace` keeps a little of the disk for manifest segments (so the entries of clips
already sealed can still be logged when clips have filled it) and says "disk full" loudly once
per episode, with counts, instead of once per refused entry.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import threading
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
MiB = 1 << 20
RESERVE = 4 * MiB  # kept for manifest segments (a few KiB each), or 1/64 of a smaller disk
_ROOM_AGAIN = 8 * MiB  # above the reserve: a status check calls the disk usable again
_LOG_EVERY = 60.0  # while the disk stays full, one reminder a minute at most


class SpoolFull(RuntimeError):
    """The spool's disk is full: the entry being written was dropped, nothing else was touched."""

    #: The spool logs each full-disk episode itself (once, loudly): callers that would log
    #: every refusal (the recorder, a part every few seconds) need not.
    reported = True


class DiskSpace:
    """Free space on the spool's filesystem and the "disk full" episodes.

    An episode starts at the first entry refused for lack of space (one ERROR: where, how much
    is free, what is dropped, what is kept) and ends when an entry that needed room commits, or
    a status check finds room again (one WARNING with the count of entries dropped meanwhile).
    Refusals in between are counted, with a reminder a minute at most. Nothing here ever
    refuses an entry by itself: every check asks the filesystem again. `f_bavail`: space an
    unprivileged process may use (the bridge runs as its own user; root's reserve stays free).
    """

    def __init__(self, directory: Path, reserve: int | None = None) -> None:
        self.dir = directory
        st = os.statvfs(directory)
        self.reserve = (
            min(RESERVE, st.f_blocks * st.f_frsize // 64) if reserve is None else reserve
        )
        self.free_bytes = st.f_bavail * st.f_frsize
        self.full_since: float | None = None  # wall clock, start of the current episode
        self.dropped = 0  # entries refused in the current episode
        self.dropped_total = 0  # since start
        self._lock = threading.Lock()
        self._since_mono = 0.0
        self._logged = -math.inf

    def free(self) -> int:
        st = os.statvfs(self.dir)
        self.free_bytes = free = st.f_bavail * st.f_frsize
        return free

    def refused(self, when: str, free: int, kept: tuple[int, int], cap_mib: int) -> str:
        """Count an entry dropped for lack of space; log it if it starts an episode (or a
        minute passed); returns the SpoolFull message."""
        count, size = kept
        message = (
            f"spool disk full at {self.dir} ({when}): {free / MiB:.1f} MiB free, "
            f"{self.reserve / MiB:.1f} MiB kept for manifest segments; this entry was dropped, "
            f"the {count} entries already spooled ({size / MiB:.1f} MiB) are intact; free space "
            f"on that disk or lower storage.spool_max_mb (now {cap_mib} MiB) below the free space"
        )
        now = time.monotonic()
        with self._lock:
            self.dropped_total += 1
            start = self.full_since is None
            if start:
                self.full_since, self._since_mono, self.dropped = time.time(), now, 0
            self.dropped += 1
            remind = not start and now - self._logged >= _LOG_EVERY
            if start or remind:
                self._logged = now
            dropped, total = self.dropped, self.dropped_total
        if start:
            log.error(
                "SPOOL DISK FULL at %s: %.1f MiB free (%.1f MiB kept for manifest segments). "
                "New clips and posters are DROPPED until there is room; the %d entries already "
                "spooled (%.1f MiB) are kept and still upload. Free space on that disk or lower "
                "storage.spool_max_mb (now %d MiB) below the free space",
                self.dir, free / MiB, self.reserve / MiB, count, size / MiB, cap_mib,
            )
        elif remind:
            log.error(
                "spool disk still full at %s (%.1f MiB free) for %.0f s: %d entries dropped in "
                "this episode (%d since start)",
                self.dir, free / MiB, now - self._since_mono, dropped, total,
            )
        return message

    def room(self, free: int) -> None:
        """An entry that needed room was committed, or `free` bytes were found: end an
        episode (said once)."""
        now = time.monotonic()
        with self._lock:
            if self.full_since is None:
                return
            self.full_since = None
            seconds, dropped = now - self._since_mono, self.dropped
        log.warning(
            "spool disk has room again at %s (%.1f MiB free) after %.0f s full: %d new "
            "entr%s dropped meanwhile; recording to the spool again",
            self.dir, free / MiB, seconds, dropped, "y was" if dropped == 1 else "ies were",
        )

    def check(self) -> int:
        """Ask the filesystem now (for status): ends an episode when there is clearly room."""
        free = self.free()
        if self.full_since is not None and free >= self.reserve + _ROOM_AGAIN:
            self.room(free)
        return free

    def status(self) -> dict[str, Any]:
        free = self.check()
        return {
            "disk_free_bytes": free,
            "disk_reserve_bytes": self.reserve,
            "disk_full": self.full_since is not None,
            "disk_full_since": self.full_since,
            "dropped_disk_full": self.dropped_total,
        }


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

    def __init__(self, spool: Spool, entry_id: str, keep: int) -> None:
        """`keep`: bytes of the disk this entry must leave free (the reserve, or 0)."""
        self._done = True  # until the file exists (__del__)
        self._spool = spool
        self.id = entry_id
        self.keep = keep
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
        n = len(memoryview(data).cast("B"))
        try:
            if (free := self._spool.space.free()) - n < self.keep:
                self._full(free, None)
            _write_all(self._fd, data)
        except OSError as e:
            if is_full(e):
                self._full(None, e)
            raise
        self._hasher.update(data)
        self.size += n
        self._spool._incoming_grew(n)
        return n

    def _full(self, free: int | None, cause: OSError | None) -> None:
        """Drop this entry (its partial file too) and raise SpoolFull."""
        written = self.size
        self.abort()
        raise self._spool.full_error(f"after {written} bytes of this entry", free) from cause

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
        if self.keep:  # an entry that needed room made it: a full disk is over
            spool.space.room(spool.space.free_bytes)
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

    def __del__(self) -> None:
        # A safety net: an entry dropped without commit() or abort() (a bug in its owner) must
        # not leave its partial file eating the disk until the next start.
        if not getattr(self, "_done", True):
            with contextlib.suppress(Exception):
                log.warning("spool entry %s dropped without commit or abort: removed", self.id)
                self._cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._done:
            self.abort()
