"""The bridge's clip vault: encrypted clips and their manifest, durable until in the bucket.

Recorder → EncryptedClipSink (age, into the spool) → `on_sealed` → a manifest `clip` entry
(signed, hash-chained, encrypted: crypto/manifest.py) → spool → Uploader → bucket. The head
object is uploaded only once the segments it names are in the bucket, so a verifier never sees
a head that points at nothing. The bridge keeps public keys, its signing key, the manifest
state and a retention index (object id and time; no camera names or subjects) — no secret
that opens a clip.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from bridge.store.bucket import BucketLayout, load_bridge_id, open_bucket
from bridge.store.clip_sink import EncryptedClipSink, SealedClip
from bridge.store.config import StorageConfig
from bridge.store.retention import RetentionTask
from bridge.store.spool import Spool, SpoolItem
from bridge.store.uploader import Uploader
from crypto.age_keys import X25519Recipient
from crypto.manifest import (
    ClipEntry,
    DeleteEntry,
    Entry,
    ManifestOutput,
    ManifestState,
    ManifestWriter,
    ShareEntry,
)
from crypto.signing import BridgeKey

log = logging.getLogger(__name__)

MiB = 1024 * 1024
HEAD = "manifest-head"


def _write_private(path: Path, text: str) -> None:
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


class ClipVault:
    def __init__(self, storage: StorageConfig, state_dir: Path) -> None:
        self.storage = storage
        self.state_dir = state_dir
        self.recipients = [X25519Recipient.parse(r) for r in storage.recipients]
        self.key = BridgeKey.load_or_create(state_dir / "bridge-signing.key")
        self.bridge_id = load_bridge_id(state_dir)
        self.bucket = open_bucket(storage.bucket, storage.credentials_file)
        self.layout = BucketLayout(self.bridge_id)
        self.head_name = self.layout.well_known_name(HEAD)
        self.spool = Spool(
            storage.spool_dir or state_dir / "spool",
            storage.spool_max_mb * MiB,
            on_evict=self._evicted,
            etag_md5=self.bucket.md5_etags,
            etag_part_size=self.bucket.part_size,
        )
        self.uploader = Uploader(self.spool, self.bucket)
        self._state_path = state_dir / "manifest-state.json"
        self._index_path = state_dir / "retention-index.json"
        state = (
            ManifestState.from_json(self._state_path.read_text())
            if self._state_path.exists()
            else None
        )
        self.writer = ManifestWriter(
            self.key, self.recipients, state, period_s=int(storage.heartbeat_seconds)
        )
        self._index: dict[str, float] = self._load_index()  # object name -> recorded at
        # Deleted by the owner in the log but maybe still in the bucket: retention retries them.
        self._doomed_path = state_dir / "owner-deletions.json"
        self._doomed: set[str] = self._load_doomed()
        self._lock = asyncio.Lock()
        self._head: bytes | None = None
        self._head_version = 0  # bumped by every commit, after `_head` is set
        self._published_version = 0  # the newest head version known to be in the bucket
        self._published = asyncio.Condition()
        self._head_event = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._evictions: list[str] = []
        self.retention = RetentionTask(
            self.bucket, storage.retention_days, self._retention_entries, self._retention_deleted
        )
        self.clips_sealed = 0
        self.last_error: str | None = None
        self._loop = asyncio.get_running_loop()  # constructed by the service, on its loop

    # -- recorder side -------------------------------------------------------------------

    def sink_factory(self) -> EncryptedClipSink:
        """Called in the clip's worker thread when the clip's first keyframe is ready."""
        return EncryptedClipSink(self.spool, self.layout, self.recipients, self._on_sealed)

    async def _on_sealed(self, sealed: SealedClip) -> None:
        meta, clip, poster = sealed.meta, sealed.clip, sealed.poster
        entry = ClipEntry(
            object=self._id(clip),
            sha256=clip.sha256,
            size=clip.size,
            camera=meta.camera,
            start_ms=int(meta.start * 1000),
            end_ms=int(meta.end * 1000),
            subjects=tuple(meta.subjects),
            thumb=self._id(poster) if poster else None,
            thumb_sha256=poster.sha256 if poster else None,
            thumb_size=poster.size if poster else None,
        )
        self._index[clip.object_name] = meta.start
        if poster:
            self._index[poster.object_name] = meta.start
        await self.append([entry])
        self.clips_sealed += 1
        log.info(
            "%s: clip of %.1f s sealed (%d bytes encrypted)", meta.camera, meta.duration, clip.size
        )

    def _id(self, item: SpoolItem) -> str:
        object_id = self.layout.object_id(item.object_name)
        assert object_id is not None
        return object_id

    # -- manifest ------------------------------------------------------------------------

    async def append(self, entries: list[Entry]) -> None:
        async with self._lock:
            out = self.writer.append(entries)
            await asyncio.to_thread(self._commit, out)

    async def heartbeat(self) -> None:
        async with self._lock:
            out = self.writer.heartbeat()
            await asyncio.to_thread(self._commit, out)

    def _commit(self, out: ManifestOutput) -> None:
        # State first: after a crash the next segment must follow this one, never fork.
        _write_private(self._state_path, out.state.to_json())
        _write_private(self._index_path, json.dumps(self._index, sort_keys=True))
        if out.segment_id is not None and out.segment is not None:
            entry = self.spool.create()
            try:
                entry.write(out.segment)
                entry.commit(f"{self.layout.root}/{out.segment_id}", "manifest")
            except BaseException:
                entry.abort()
                raise
        self._head = out.head
        self._head_version += 1  # after _head: a reader of this version gets that head or newer
        self._loop.call_soon_threadsafe(self._head_event.set)
        self.uploader.wake()

    async def _head_loop(self) -> None:
        """Upload the newest head once every segment before it is in the bucket."""
        failures = 0
        while True:
            await self._head_event.wait()
            self._head_event.clear()
            # Polling the spool: segments leave it as the uploader confirms them.
            while any(i.kind == "manifest" for i in self.spool.ready()):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            version, head = self._head_version, self._head
            if head is None:
                continue
            try:
                await self.bucket.put(self.head_name, head)
                failures = 0
                async with self._published:
                    self._published_version = max(self._published_version, version)
                    self._published.notify_all()
            except Exception as exc:  # bucket down: try again with backoff
                failures += 1
                self.last_error = f"head upload: {exc}"
                await asyncio.sleep(min(60.0, 2**failures) * random.uniform(0.8, 1.2))
                self._head_event.set()

    async def wait_published(self, timeout: float = 30.0) -> bool:
        """Wait until everything appended so far is in the bucket (segments and the head naming
        them), so the owner's next `clips list`/`verify` sees it. False on timeout."""
        target = self._head_version
        try:
            async with self._published:
                await asyncio.wait_for(
                    self._published.wait_for(lambda: self._published_version >= target), timeout
                )
        except TimeoutError:
            return False
        return True

    async def _heartbeat_loop(self) -> None:
        period = self.storage.heartbeat_seconds
        while True:
            await asyncio.sleep(period)
            try:
                await self.heartbeat()
            except Exception as exc:
                self.last_error = f"heartbeat: {exc}"
                log.exception("manifest heartbeat failed")

    # -- retention and eviction ----------------------------------------------------------

    def _load_index(self) -> dict[str, float]:
        try:
            return {str(k): float(v) for k, v in json.loads(self._index_path.read_text()).items()}
        except FileNotFoundError:
            return {}

    def _load_doomed(self) -> set[str]:
        try:
            return {str(n) for n in json.loads(self._doomed_path.read_text())}
        except FileNotFoundError:
            return set()

    def _save_doomed(self) -> None:
        _write_private(self._doomed_path, json.dumps(sorted(self._doomed)))

    def _retention_entries(self) -> list[tuple[str, float]]:
        # Owner-deleted objects still in the bucket are due at once (time 0).
        return [*self._index.items(), *((name, 0.0) for name in self._doomed)]

    def _forget(self, names: list[str], reason: str) -> list[Entry]:
        """Drop objects from the retention index; the manifest entries that record why."""
        entries: list[Entry] = []
        for name in names:
            self._index.pop(name, None)
            object_id = self.layout.object_id(name)
            if object_id:
                entries.append(DeleteEntry(object_id, reason))
        return entries

    async def _retention_deleted(self, names: list[str]) -> None:
        if done := self._doomed.intersection(names):
            self._doomed -= done  # their deletion is in the log already
            await asyncio.to_thread(self._save_doomed)
        # Only what the index still holds: an owner deletion meanwhile recorded the rest.
        if entries := self._forget([n for n in names if n in self._index], "retention"):
            await self.append(entries)

    def _evicted(self, items: list[SpoolItem]) -> None:
        """Spool over its cap (called in the committing thread): record what never made it."""
        for item in items:
            if item.kind in ("clip", "thumbnail"):
                self._evictions.append(item.object_name)
        self._loop.call_soon_threadsafe(self._record_evictions)

    def _record_evictions(self) -> None:
        names, self._evictions = self._evictions, []
        if entries := self._forget(names, "evicted"):
            self._tasks.append(asyncio.ensure_future(self.append(entries)))

    # -- owner requests (bridge/owner/owner_api.py, authenticated there) ---------------------

    def is_live(self, name: str) -> bool:
        """Whether this bridge recorded `name` (clip, poster, share copy) and still holds it."""
        return name in self._index

    async def record_share(self, source_name: str, copy_name: str, entry: ShareEntry) -> bool:
        """False if the source stopped being live (deleted meanwhile): nothing recorded."""
        if source_name not in self._index or copy_name in self._index:
            return False
        self._index[copy_name] = self._index[source_name]  # retention removes it with its source
        await self.append([entry])
        return True

    async def delete_for_owner(self, names: list[str], timeout: float = 30.0) -> list[str]:
        """Record the deletions (reason `owner`), publish them, then remove the objects
        (docs/manifest.md §6 rule 4). Returns the names still in the bucket: they are in the
        log as deleted, and retention removes them once the bucket lets it."""
        saved = {name: self._index[name] for name in names}
        entries = self._forget(names, "owner")
        self._doomed.update(names)
        try:
            await asyncio.to_thread(self._save_doomed)  # before the log says "deleted"
            await self.append(entries)
        except BaseException:
            self._index.update(saved)
            self._doomed.difference_update(names)
            raise
        if not await self.wait_published(timeout):
            return list(names)
        failed: list[str] = []
        for name in names:
            try:
                await self.bucket.delete(name)
            except Exception as exc:
                log.warning("owner deletion: cannot delete %s yet: %s", name, exc)
                failed.append(name)
        self._doomed.difference_update(set(names) - set(failed))
        await asyncio.to_thread(self._save_doomed)
        return failed

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.heartbeat()  # records the start (and init/recipients for a new log)
        self.uploader.start()
        self.retention.start()
        self._tasks += [
            asyncio.create_task(self._head_loop(), name="vault:head"),
            asyncio.create_task(self._heartbeat_loop(), name="vault:heartbeat"),
        ]
        log.info(
            "clips go to %s, encrypted to %d recipient(s); bridge key %s",
            self.bucket.describe(),
            len(self.recipients),
            self.key.public,
        )

    async def stop(self, drain_seconds: float = 10.0) -> None:
        # A clean shutdown leaves the bucket consistent: what was sealed is uploaded and the
        # head names it (else the owner's audit would see objects the manifest does not).
        if not await self.uploader.wait_idle(timeout=drain_seconds):
            log.warning(
                "stopping with %d object(s) still in the spool; they upload on the next start",
                self.spool.pending_count,
            )
        elif self._head is not None:
            try:
                await asyncio.wait_for(self.bucket.put(self.head_name, self._head), drain_seconds)
            except Exception as exc:
                log.warning("could not upload the manifest head on the way out: %s", exc)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.retention.stop()
        await self.uploader.stop()
        await self.bucket.close()

    def status(self) -> dict[str, Any]:
        state = self.writer.state
        return {
            "bucket": self.bucket.describe(),
            "bridge_id": self.bridge_id,
            "bridge_key": str(self.key.public),
            "recipients": [str(r) for r in self.recipients],
            "clips_sealed": self.clips_sealed,
            "manifest_seq": state.seq if state else None,
            "uploads": self.uploader.status().as_dict(),
            "last_error": self.last_error,
            "checked_at": time.time(),
        }
