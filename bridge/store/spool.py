"""A durable local spool of ciphertext objects waiting for upload.

    entry = spool.create()              # dir/incoming/<id>.part, mode 0600
    entry.write(chunk) ...              # e.g. AgeWriter(recipients, entry)
    item = entry.commit(name, "clip", {"seq": 7})

Layout: `incoming/<id>.part` while written; `ready/<id>.data` + `ready/<id>.json` once committed.
The sidecar JSON is the commit marker and is renamed into ready/ last, then ready/ is fsync'd:
a crash at any point leaves either no entry or a complete one. On start-up `incoming/` is emptied
(partial writes from a crash) and a `.data` without its sidecar (a crash mid-commit) is removed.

Ids start with a sequence number (no clock), so sorting by id is oldest first. Eviction (size
cap, checked at each commit) takes the oldest ready entries that the uploader has not claimed, logs
a loud warning and hands them to `on_evict(items)` (called in the committing thread) so the caller
can record that those clips are lost. Manifest segments are never evicted: they are small, and
losing one breaks the owner's hash chain for good. A clip goes with its poster (the thumbnail
whose meta names it as `clip`), so a poster does not outlive its clip by accident.

An entry committed with `hold=True` is durable but not offered for upload (`ready()`) until
`unhold(item)`, or dropped with `discard(item)`: the vault spools a manifest segment, and a clip
and its poster, held until the state that logs them is saved (see vault.py). The sidecar records
the hold, so after a restart the entry is held again (`held()`) until its owner decides; a
release is not recorded (no extra fsync). Held clips and posters count toward the cap and can be
evicted like the others (they may never be released); held segments cannot.

A full disk (spool_entry.py, DiskSpace): an entry that finds no room is dropped with its partial
file and SpoolFull is raised at once; entries already spooled are never touched for it (only the
cap above evicts). Free space is asked of the filesystem at every create and write, so the first
entry after space comes back is recorded. Clips and posters leave a small reserve free, which
manifest segments may use (`create(use_reserve=True)`): the entries of clips already sealed can
still be logged when clips have filled the disk. The disk being full is logged once per episode
(and in `status()`), not once per refused entry.

All methods block on the disk (fsync): call them from a worker thread (asyncio.to_thread), as the
recorder's encryption thread and the uploader do. The spool is thread-safe.

The sidecar's `meta` is stored in plaintext on the bridge's disk until the upload: keep it to what
the caller needs to finish the job (e.g. a manifest sequence number), not camera names or labels.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bridge.store.backends.file import fsync_dir
from bridge.store.spool_entry import (
    DiskSpace,
    SpoolEntry,
    SpoolFull,
    SpoolItem,
    is_full,
    write_json,
)

log = logging.getLogger(__name__)

__all__ = ["Spool", "SpoolEntry", "SpoolFull", "SpoolItem", "SpoolStats"]

_ID = re.compile(r"^\d{20}-[0-9a-f]{8}$")


@dataclass(slots=True)
class SpoolStats:
    evicted_count: int = 0
    evicted_bytes: int = 0
    quarantined: int = 0
    recovered_partials: int = 0


class Spool:
    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        on_evict: Callable[[list[SpoolItem]], None] | None = None,
        etag_md5: bool = False,
        etag_part_size: int | None = None,
        reserve_bytes: int | None = None,
    ) -> None:
        """etag_md5 / etag_part_size: hash each entry's S3 ETag as it is written (the bucket's
        `md5_etags` and `part_size`), so uploads are verified without a second read.
        reserve_bytes: disk space clips and posters leave for manifest segments (default 4 MiB,
        or 1/64 of a smaller filesystem)."""
        self.dir = directory
        self.etag_md5 = etag_md5
        self.etag_part_size = etag_part_size
        self.max_bytes = max_bytes
        self.incoming = directory / "incoming"
        self.ready_dir = directory / "ready"
        self.quarantine_dir = directory / "quarantine"
        self.on_evict = on_evict
        self.stats = SpoolStats()
        self._lock = threading.Lock()
        self._items: dict[str, SpoolItem] = {}
        self._claimed: set[str] = set()
        self._held: set[str] = set()
        self._over_cap = False  # warned that only unevictable entries are left above the cap
        self._incoming_bytes = 0
        self._listeners: list[Callable[[], None]] = []
        self._test_hook: Callable[[str], None] | None = None
        self._next_seq = 0
        self._recover()
        self.space = DiskSpace(self.dir, reserve_bytes)

    # -- start-up ----------------------------------------------------------------------------

    def _recover(self) -> None:
        for d in (self.dir, self.incoming, self.ready_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = 0
        for p in self.incoming.iterdir():  # a crash mid-write or mid-commit
            p.unlink()
            partial += 1
        self.stats.recovered_partials = partial
        if partial:
            log.warning("spool: removed %d partial file(s) left by an interrupted write", partial)
        names = {p.name for p in self.ready_dir.iterdir()}
        for name in names:
            stem, _, ext = name.partition(".")
            if ext == "json" and _ID.match(stem) and (item := self._load(stem)) is not None:
                self._items[stem] = item
                if item.held:  # committed held, maybe released before the restart: its owner
                    self._held.add(stem)  # decides again (vault.py start-up)
        # Ids are a sequence, not a clock: they keep the order of creation (oldest first,
        # whatever the clock does) and a disk thief learns no times from them.
        self._next_seq = 1 + max((int(i.partition("-")[0]) for i in self._items), default=-1)
        for name in names:  # everything else: uncommitted data, stale temp files, junk
            stem, _, ext = name.partition(".")
            if stem in self._items and ext in ("json", "data"):
                continue
            (self.ready_dir / name).unlink()
            if ext == "data":  # an interrupted commit (or the clean-up after an upload)
                log.info("spool: removed %s (no sidecar)", name)
        fsync_dir(self.ready_dir)
        fsync_dir(self.incoming)
        if self._items:
            log.info(
                "spool: %d entr%s (%d bytes) waiting for upload",
                len(self._items), "y" if len(self._items) == 1 else "ies", self.pending_bytes,
            )

    def _load(self, entry_id: str) -> SpoolItem | None:
        sidecar = self.ready_dir / f"{entry_id}.json"
        data = self.ready_dir / f"{entry_id}.data"
        try:
            raw = json.loads(sidecar.read_text())
            item = SpoolItem(
                id=entry_id,
                object_name=str(raw["object"]),
                kind=str(raw["kind"]),
                size=int(raw["size"]),
                sha256=str(raw["sha256"]),
                committed_at=float(raw["committed_at"]),
                attempts=int(raw.get("attempts", 0)),
                last_error=raw.get("last_error"),
                meta=dict(raw.get("meta") or {}),
                data_path=data,
                etag=raw.get("etag"),
                etag_part_size=raw.get("etag_part_size"),
                held=bool(raw.get("held", False)),
            )
            if data.stat().st_size != item.size:
                raise ValueError(f"data is {data.stat().st_size} bytes, sidecar says {item.size}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("spool: dropping unreadable entry %s: %s", entry_id, e)
            return None
        return item

    # -- writing -----------------------------------------------------------------------------

    def create(self, *, use_reserve: bool = False) -> SpoolEntry:
        """A new entry; SpoolFull at once if the disk has no room for it. `use_reserve`: for
        small entries that must get through a full disk (manifest segments)."""
        keep = 0 if use_reserve else self.space.reserve
        free = self.space.free()
        if free <= keep:
            raise self.full_error("no room for a new entry", free)
        with self._lock:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
        entry_id = f"{seq:020d}-{secrets.token_hex(4)}"
        try:
            return SpoolEntry(self, entry_id, keep)
        except OSError as e:
            if is_full(e):
                raise self.full_error("when creating an entry") from e
            raise

    def full_error(self, when: str, free: int | None = None) -> SpoolFull:
        """SpoolFull for an entry just dropped (counted, and logged once per episode)."""
        if free is None:
            try:
                free = self.space.free()
            except OSError:
                free = 0
        kept = (self.pending_count, self.pending_bytes)
        return SpoolFull(self.space.refused(when, free, kept, self.max_bytes >> 20))

    def status(self) -> dict[str, Any]:
        """The spool's disk for /status (asks the filesystem now: a statvfs)."""
        return {"dir": str(self.dir), "max_bytes": self.max_bytes, **self.space.status()}

    def _incoming_grew(self, n: int) -> None:
        with self._lock:
            self._incoming_bytes += n

    def _incoming_gone(self, n: int) -> None:
        with self._lock:
            self._incoming_bytes = max(0, self._incoming_bytes - n)

    def _committed(self, item: SpoolItem, written: int, hold: bool = False) -> None:
        with self._lock:
            self._incoming_bytes = max(0, self._incoming_bytes - written)
            self._items[item.id] = item
            if hold:
                self._held.add(item.id)
            evicted, over = self._pick_evictions(keep=item)
            self.stats.evicted_count += len(evicted)
            self.stats.evicted_bytes += sum(i.size for i in evicted)
            warn, self._over_cap = over and not self._over_cap, over
        if evicted:
            self._evict(evicted)
        if warn:
            log.warning(
                "spool over its cap (%d MiB) with nothing left to evict but manifest segments "
                "and entries being uploaded: keeping them — is the bucket reachable?",
                self.max_bytes >> 20,
            )
        if not hold:
            self._notify()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    def _pick_evictions(self, keep: SpoolItem) -> tuple[list[SpoolItem], bool]:
        """Oldest clips (with their posters) and posters until under the cap; whether the spool
        is still over it."""
        total = sum(i.size for i in self._items.values()) + self._incoming_bytes
        posters = {i.meta.get("clip"): i for i in self._items.values() if i.kind == "thumbnail"}
        out: list[SpoolItem] = []
        for entry_id in sorted(self._items):
            if total <= self.max_bytes:
                break
            item = self._items.get(entry_id)
            if item is None or item.kind == "manifest":
                continue  # gone with its clip, or part of the owner's hash chain
            group = [item]
            if item.kind == "clip" and (poster := posters.get(item.object_name)):
                group.append(poster)
            elif item.kind == "thumbnail":
                group += [i for i in self._items.values() if i.object_name == item.meta.get("clip")]
            if any(i.id == keep.id for i in group):
                continue  # the entry just committed (or its clip): it was not in time to upload
            for i in group:
                if i.id in self._claimed:
                    continue  # being uploaded: it will arrive
                del self._items[i.id]
                self._held.discard(i.id)
                out.append(i)
                total -= i.size
        return out, total > self.max_bytes

    def _evict(self, items: list[SpoolItem]) -> None:
        for item in items:
            self._unlink(item)
        size = sum(i.size for i in items)
        log.warning(
            "SPOOL FULL (cap %d MiB): evicted the %d oldest entr%s (%.1f MiB) that were never "
            "uploaded — is the bucket reachable? They are lost: %s",
            self.max_bytes >> 20, len(items), "y" if len(items) == 1 else "ies", size / (1 << 20),
            ", ".join(f"{i.kind} {i.object_name}" for i in items),
        )
        if self.on_evict is not None:
            try:
                self.on_evict(items)
            except Exception:
                log.exception("spool: on_evict callback failed")

    # -- for the uploader --------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """`callback()` runs (in the committing thread) after every commit."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def ready(self) -> list[SpoolItem]:
        """Committed entries offered for upload (not held), oldest first."""
        with self._lock:
            return [self._items[k] for k in sorted(self._items) if k not in self._held]

    def held(self) -> list[SpoolItem]:
        """Committed entries held back from upload, oldest first."""
        with self._lock:
            return [self._items[k] for k in sorted(self._items) if k in self._held]

    def unhold(self, *items: SpoolItem) -> None:
        """Offer entries committed with `hold=True` for upload, all at once: the uploader never
        sees some of them without the others (an entry gone meanwhile is ignored)."""
        with self._lock:
            self._held.difference_update(i.id for i in items)
        self._notify()

    def discard(self, item: SpoolItem) -> None:
        """Drop a committed entry that must never be uploaded (durably: the directory is
        fsync'd, so a crash cannot bring it back)."""
        with self._lock:
            self._items.pop(item.id, None)
            self._claimed.discard(item.id)
            self._held.discard(item.id)
        self._unlink(item)

    @property
    def pending_count(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            return sum(i.size for i in self._items.values())

    @property
    def held_count(self) -> int:
        """Entries among `pending_count` held back (waiting for their manifest entry)."""
        with self._lock:
            return len(self._held)

    def has_object(self, object_name: str) -> bool:
        with self._lock:
            return any(i.object_name == object_name for i in self._items.values())

    def claim(self, item: SpoolItem) -> bool:
        """Protect `item` from eviction while it is uploaded; False if it is gone already."""
        with self._lock:
            if item.id not in self._items:
                return False
            self._claimed.add(item.id)
            return True

    def release(self, item: SpoolItem) -> None:
        with self._lock:
            self._claimed.discard(item.id)

    def record_attempt(self, item: SpoolItem, error: str | None) -> SpoolItem:
        """Count a failed upload attempt in the sidecar (atomic rewrite)."""
        updated = replace(item, attempts=item.attempts + 1, last_error=error)
        tmp = self.ready_dir / f".{item.id}.{secrets.token_hex(4)}.tmp"
        try:
            write_json(tmp, updated.sidecar())
            with self._lock:  # an entry gone meanwhile (evicted, uploaded) stays gone
                if item.id not in self._items:
                    tmp.unlink()
                    return item
                os.replace(tmp, self.ready_dir / f"{item.id}.json")
                self._items[item.id] = updated
        except OSError as e:  # a full disk must not stop uploads: the count is advisory
            with contextlib.suppress(OSError):
                tmp.unlink()
            # A full disk is said by DiskSpace, once: not here at every attempt.
            log.log(logging.DEBUG if is_full(e) else logging.WARNING,
                    "spool: cannot record upload attempt for %s: %s", item.id, e.strerror)
            return item
        return updated

    def remove(self, item: SpoolItem) -> None:
        """Drop an uploaded entry: sidecar first (the commit marker), then data."""
        self.forget(item)
        self.drop_data(item)

    def forget(self, item: SpoolItem) -> None:
        """The first half of remove(): the entry is no longer pending (its sidecar is gone).
        No directory fsync: if a crash undoes the unlink, the entry is uploaded again under the
        same name (idempotent), which is cheaper than an fsync after every upload."""
        with self._lock:
            self._items.pop(item.id, None)
            self._claimed.discard(item.id)
            self._held.discard(item.id)
        with contextlib.suppress(FileNotFoundError):
            (self.ready_dir / f"{item.id}.json").unlink()

    def drop_data(self, item: SpoolItem) -> None:
        """The second half: unlinking a large, freshly written file can take ~10-60 ms on ext4,
        so the uploader does it in the background while the next upload starts. A crash
        before it leaves a .data without sidecar, which start-up removes."""
        try:
            item.data_path.unlink(missing_ok=True)
        except OSError as e:  # start-up removes it then
            log.warning("spool: cannot remove uploaded %s: %s", item.data_path.name, e.strerror)

    def quarantine(self, item: SpoolItem, reason: str) -> None:
        """Move a corrupt entry aside (never uploaded, kept for inspection)."""
        self.quarantine_dir.mkdir(exist_ok=True, mode=0o700)
        with self._lock:
            self._items.pop(item.id, None)
            self._claimed.discard(item.id)
            self._held.discard(item.id)
        for ext in ("json", "data"):
            name = f"{item.id}.{ext}"
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.ready_dir / name, self.quarantine_dir / name)
        fsync_dir(self.ready_dir)
        with self._lock:
            self.stats.quarantined += 1
        log.error("spool: quarantined %s %s (%s)", item.kind, item.object_name, reason)

    def _unlink(self, item: SpoolItem) -> None:
        for ext in ("json", "data"):
            with contextlib.suppress(FileNotFoundError):
                (self.ready_dir / f"{item.id}.{ext}").unlink()
        fsync_dir(self.ready_dir)

    def _hook(self, point: str) -> None:
        if self._test_hook is not None:
            self._test_hook(point)
