"""ClipVault's deletions (retention and the owner's) and the owner's requests.

Every deletion follows docs/manifest.md §6 rule 4: append the `delete` entries, publish them
(segment and head in the bucket), then delete the objects. Names logged as deleted but maybe
still in the bucket are "doomed" (`state_dir/owner-deletions.json`, names only) and retried by
retention. The retention index keeps each live object's name, the hour it was recorded
(rounded up) and its kind (clip, poster, share copy: only a clip can be shared), no exact time,
camera or subjects: a disk thief learns no timeline of events.

    retention-index.json: {"<bucket name>": [hour, "clip" | "poster" | "copy"], ...}

An index written before kinds were kept has a bare hour per name: those load with kind None.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from bridge.store.bucket import Bucket, BucketLayout
from bridge.store.retention import delete_objects
from bridge.store.spool import SpoolItem
from crypto.manifest import DeleteEntry, Entry, ShareEntry

log = logging.getLogger(__name__)

HOUR = 3600
CLIP, POSTER, COPY = "clip", "poster", "copy"
_KINDS = (CLIP, POSTER, COPY)


class Live(NamedTuple):
    """A live object in the retention index."""

    hour: int  # when it was recorded, rounded up to the hour
    kind: str | None  # CLIP, POSTER or COPY; None: indexed by an older version


def dump_index(index: dict[str, Live]) -> str:
    return json.dumps({n: [e.hour, e.kind] for n, e in index.items()}, sort_keys=True)


def _live(value: Any) -> Live:
    if isinstance(value, list):  # [hour, kind]
        hour, kind = value
        return Live(hour_up(float(hour)), kind if kind in _KINDS else None)
    return Live(hour_up(float(value)), None)  # a bare hour (or an exact time, older still)


def hour_up(t: float) -> int:
    """Recorded times are kept to the hour, rounded up so retention never deletes early."""
    return math.ceil(t / HOUR) * HOUR


def write_private(path: Path, text: str) -> None:
    """Atomic and durable: the manifest state must survive a crash before its segment uploads.
    A temp file of its own (mode 0600) per call: concurrent writers never share one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temps(*paths: Path) -> None:
    """At start-up: temp files of `write_private` for `paths` left by a crash mid-save."""
    for path in paths:
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


class LatestFile:
    """A file saved from several tasks: the saves are serialised, and an older snapshot never
    replaces a newer one (a save whose caller was cancelled still finishes in its thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._taken = 0  # snapshots taken (on the loop)
        self._saved = 0  # the newest one on disk

    async def save(self, text: str) -> None:
        self._taken += 1
        await asyncio.to_thread(self._write, self._taken, text)

    def _write(self, number: int, text: str) -> None:
        with self._lock:
            if number > self._saved:  # else a newer snapshot is on disk already
                write_private(self.path, text)
                self._saved = number


class Deletions:
    """Mixed into ClipVault (vault.py), which provides these."""

    bucket: Bucket
    layout: BucketLayout
    publish_timeout: float
    _index: dict[str, Live]  # live object name -> hour recorded, kind
    _index_path: Path
    _doomed: set[str]
    _doomed_file: LatestFile
    _lost: set[str]
    _appends: set[asyncio.Future[None]]
    _lock: asyncio.Lock  # the vault's append lock
    _loop: asyncio.AbstractEventLoop

    if TYPE_CHECKING:
        async def _append_locked(self, entries: list[Entry] | None, keep: bool) -> None: ...
        async def wait_published(self, timeout: float = 30.0) -> bool: ...

    def _load_index(self) -> dict[str, Live]:
        try:
            text = self._index_path.read_text()
        except FileNotFoundError:
            return {}
        try:
            index = {str(k): _live(v) for k, v in json.loads(text).items()}
        except (ValueError, TypeError, AttributeError) as exc:  # never stop the recording
            aside = self._index_path.with_name(self._index_path.name + ".bad")
            with contextlib.suppress(OSError):
                os.replace(self._index_path, aside)
            log.error("%s is unreadable (%s), moved to %s: clips recorded before now will not "
                      "expire by themselves; `obscura clips delete` removes them",
                      self._index_path, exc, aside.name)
            return {}
        if (new := dump_index(index)) != text:  # older format: no exact time kept a day more
            with contextlib.suppress(OSError):
                write_private(self._index_path, new)
        return index

    def _load_doomed(self) -> set[str]:
        path = self._doomed_file.path
        try:
            names = json.loads(path.read_text())
            if not isinstance(names, list):
                raise ValueError(f"a list of names expected, not {type(names).__name__}")
            return {str(n) for n in names}
        except FileNotFoundError:
            return set()
        except ValueError as exc:  # never stop the bridge from recording
            aside = path.with_name(path.name + ".bad")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            log.error("%s is unreadable (%s), moved to %s and ignored: objects whose deletion "
                      "was logged but not yet carried out may stay in the bucket (the owner's "
                      "verify shows them as deleted but present); delete them by hand",
                      path, exc, aside.name)
            return set()

    async def _save_doomed(self) -> None:
        await self._doomed_file.save(json.dumps(sorted(self._doomed)))

    def _retention_entries(self) -> list[tuple[str, float]]:
        # Objects deleted in the log but still in the bucket are due at once (time 0).
        return [
            *((name, float(e.hour)) for name, e in self._index.items()),
            *((name, 0.0) for name in self._doomed),
        ]

    def _forget(self, names: list[str], reason: str) -> list[Entry]:
        """Drop live objects from the index; the manifest entries that record why. Only in the
        locked append step that logs them, so a saved index always matches the saved state."""
        entries: list[Entry] = []
        for name in names:
            object_id = self.layout.object_id(name)
            if self._index.pop(name, None) is not None and object_id:
                entries.append(DeleteEntry(object_id, reason))
        return entries

    async def _record_deletions(self, names: list[str], reason: str) -> None:
        """Log the deletion of the live objects among `names`; they stay doomed (retried by
        retention) until they are gone from the bucket. On failure nothing is logged."""
        await asyncio.shield(self._record_deletions_now(names, reason))

    async def _record_deletions_now(self, names: list[str], reason: str) -> None:
        async with self._lock:  # no other append saves the index between the two steps
            saved = {n: self._index[n] for n in names if n in self._index}
            if not saved:
                return
            entries = self._forget(list(saved), reason)
            self._doomed.update(saved)
            try:
                await self._save_doomed()  # before the log says "deleted"
                await self._append_locked(entries, keep=False)
            except BaseException:
                self._index.update(saved)
                self._doomed.difference_update(saved)
                with contextlib.suppress(OSError):
                    await self._save_doomed()
                raise

    async def _retention_record(self, names: list[str]) -> list[str]:
        """Expired (or doomed) `names`: log them as deleted, publish the log, and only then
        return them for deletion (manifest.md §6 rule 4). Nothing while the head cannot go up:
        they stay doomed, for the next pass."""
        await self._record_deletions(names, "retention")
        return names if await self.wait_published(self.publish_timeout) else []

    async def _gone(self, names: list[str]) -> None:
        """Deleted from the bucket: no longer doomed."""
        if done := self._doomed.intersection(names):
            self._doomed -= done
            await self._save_doomed()

    # -- eviction (a full spool) ----------------------------------------------------------

    def _evicted(self, items: list[SpoolItem]) -> None:
        """Spool over its cap (called in the committing thread): record what never made it."""
        names = [i.object_name for i in items if i.kind in ("clip", "thumbnail")]
        self._loop.call_soon_threadsafe(self._record_evictions, names)

    def _record_evictions(self, names: list[str]) -> None:
        # Not indexed yet (sealed, entry not in the writer): `_admit` logs it with its entry.
        self._lost.update(n for n in names if n not in self._index)
        if any(n in self._index for n in names):
            task = asyncio.ensure_future(asyncio.shield(self._log_evictions(names)))
            self._appends.add(task)
            task.add_done_callback(self._appends.discard)
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # logged by append

    async def _log_evictions(self, names: list[str]) -> None:
        async with self._lock:  # out of the index in the step that logs it
            if entries := self._forget(names, "evicted"):
                await self._append_locked(entries, keep=True)

    # -- owner requests (bridge/owner/owner_api.py authenticates them) -----------------------

    def is_live(self, name: str) -> bool:
        """Whether this bridge recorded `name` (clip, poster, share copy) and still holds it."""
        return name in self._index

    def is_clip(self, name: str) -> bool:
        """Whether `name` is live and a clip (not a poster or a share copy). An object indexed
        before kinds were kept counts as a clip: the bridge cannot tell, and refusing would stop
        the owner from sharing any clip recorded before the upgrade."""
        entry = self._index.get(name)
        return entry is not None and entry.kind in (CLIP, None)

    async def record_share(self, source_name: str, copy_name: str, entry: ShareEntry) -> bool:
        """False if the source stopped being live (deleted meanwhile): nothing recorded."""
        return await asyncio.shield(self._record_share_now(source_name, copy_name, entry))

    async def _record_share_now(self, source_name: str, copy_name: str, entry: ShareEntry) -> bool:
        async with self._lock:  # indexed in the step that logs it
            if source_name not in self._index or copy_name in self._index:
                return False
            # Retention removes it with its source.
            self._index[copy_name] = Live(self._index[source_name].hour, COPY)
            try:
                await self._append_locked([entry], keep=False)
            except BaseException:
                self._index.pop(copy_name, None)  # not in the log: not live
                raise
        return True

    async def delete_for_owner(self, names: list[str], timeout: float | None = None) -> list[str]:
        """Record the deletions (reason `owner`), publish them, then remove the objects.
        Returns the names still in the bucket: they are in the log as deleted, and retention
        removes them once the bucket lets it."""
        await self._record_deletions(names, "owner")
        if not await self.wait_published(self.publish_timeout if timeout is None else timeout):
            return list(names)
        gone = set(await delete_objects(self.bucket, names, why="owner deletion"))
        await self._gone(list(gone))
        return [n for n in names if n not in gone]
