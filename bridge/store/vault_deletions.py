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
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from bridge.store.bucket import Bucket, BucketLayout
from bridge.store.retention import delete_objects
from crypto.manifest import DeleteEntry, Entry, ShareEntry

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
    """Atomic and durable: the manifest state must survive a crash before its segment uploads."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Deletions:
    """Mixed into ClipVault (vault.py), which provides these."""

    bucket: Bucket
    layout: BucketLayout
    publish_timeout: float
    _index: dict[str, Live]  # live object name -> hour recorded, kind
    _index_path: Path
    _doomed: set[str]
    _doomed_path: Path

    if TYPE_CHECKING:
        async def append(self, entries: list[Entry], *, keep: bool = False) -> None: ...
        async def wait_published(self, timeout: float = 30.0) -> bool: ...

    def _load_index(self) -> dict[str, Live]:
        try:
            text = self._index_path.read_text()
        except FileNotFoundError:
            return {}
        index = {str(k): _live(v) for k, v in json.loads(text).items()}
        if (new := dump_index(index)) != text:  # older format: no exact time kept a day more
            with contextlib.suppress(OSError):
                write_private(self._index_path, new)
        return index

    def _load_doomed(self) -> set[str]:
        try:
            return {str(n) for n in json.loads(self._doomed_path.read_text())}
        except FileNotFoundError:
            return set()

    async def _save_doomed(self) -> None:
        await asyncio.to_thread(write_private, self._doomed_path, json.dumps(sorted(self._doomed)))

    def _retention_entries(self) -> list[tuple[str, float]]:
        # Objects deleted in the log but still in the bucket are due at once (time 0).
        return [
            *((name, float(e.hour)) for name, e in self._index.items()),
            *((name, 0.0) for name in self._doomed),
        ]

    def _forget(self, names: list[str], reason: str) -> list[Entry]:
        """Drop live objects from the index; the manifest entries that record why."""
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
        saved = {n: self._index[n] for n in names if n in self._index}
        if not saved:
            return
        entries = self._forget(list(saved), reason)
        self._doomed.update(saved)
        try:
            await self._save_doomed()  # before the log says "deleted"
            await self.append(entries)
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
        if source_name not in self._index or copy_name in self._index:
            return False
        # Retention removes it with its source.
        self._index[copy_name] = Live(self._index[source_name].hour, COPY)
        try:
            await self.append([entry])
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
