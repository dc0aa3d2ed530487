"""The bridge's clip vault: encrypted clips and their manifest, durable until in the bucket.

Recorder → EncryptedClipSink (age, into the spool, held) → `on_sealed` → a manifest `clip` entry
(signed, hash-chained, encrypted: crypto/manifest.py) → its segment spooled, the state saved →
clip, poster and segment released together → Uploader → bucket. Nothing reaches the bucket
before the entry that logs it is saved, and the head object is uploaded only once the segments
it names are in the bucket, so a verifier never sees a head that points at nothing. The bridge
keeps public keys, its signing key, the manifest state and a retention index (object name, kind
and the hour it was recorded, rounded up; no camera names, subjects or exact times: a disk thief
gets no timeline) — no secret that opens a clip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge.store.bucket import BucketLayout, load_bridge_id, open_bucket
from bridge.store.clip_sink import EncryptedClipSink, SealedClip
from bridge.store.config import StorageConfig
from bridge.store.retention import RetentionTask
from bridge.store.spool import Spool, SpoolItem
from bridge.store.uploader import Uploader
from bridge.store.vault_deletions import (
    CLIP,
    POSTER,
    Deletions,
    LatestFile,
    Live,
    dump_index,
    hour_up,
    remove_stale_temps,
    write_private,
)
from bridge.store.vault_recovery import resolve_held, unsave_state
from crypto.age_keys import X25519Recipient
from crypto.manifest import (
    ClipEntry,
    DeleteEntry,
    Entry,
    ManifestOutput,
    ManifestState,
    ManifestWriter,
)
from crypto.signing import BridgeKey

log = logging.getLogger(__name__)

MiB = 1024 * 1024
HEAD = "manifest-head"
Held = tuple[SpoolItem, Live]  # a held clip or poster, and its retention index entry


class ClipVault(Deletions):
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
        self._doomed_file = LatestFile(state_dir / "owner-deletions.json")
        remove_stale_temps(self._state_path, self._index_path, self._doomed_file.path)
        state = (
            ManifestState.from_json(self._state_path.read_text())
            if self._state_path.exists()
            else None
        )
        self.writer = ManifestWriter(
            self.key, self.recipients, state, period_s=int(storage.heartbeat_seconds)
        )
        self._index = self._load_index()  # object name -> (hour recorded, kind)
        resolve_held(self.spool, self.layout, state, set(self._index))
        # Deleted in the log but maybe still in the bucket: retention retries them. A name still
        # in the index may have crashed before its deletion was logged: it is not doomed.
        self._doomed: set[str] = self._load_doomed() - set(self._index)
        self._lost: set[str] = set()  # evicted before their clip entry entered the writer
        # Held clips and posters whose entries are in the writer (appended, or queued by a
        # failed append): released once a segment holding those entries is saved.
        self._unlogged: dict[str, SpoolItem] = {}
        self._lock = asyncio.Lock()
        self._head: bytes | None = None
        self._head_version = 0  # bumped by every commit, after `_head` is set
        self._published_version = 0  # the newest head version known to be in the bucket
        self._published = asyncio.Condition()
        self._head_event = asyncio.Event()
        self._retry = asyncio.Event()  # a failed append left entries queued: retry soon
        self._tasks: list[asyncio.Task[Any]] = []
        self._head_task: asyncio.Task[None] | None = None
        self._head_put: asyncio.Task[Any] | None = None  # the head loop's upload under way
        self._appends: set[asyncio.Future[None]] = set()
        self.retention = RetentionTask(
            self.bucket, storage.retention_days, self._retention_entries, self._gone,
            record=self._retention_record,
        )
        self.publish_timeout = 30.0  # how long a deletion waits for its log to be in the bucket
        self.clips_sealed = 0  # parts of events (docs/clip-format.md §8)
        self.events_sealed = 0  # events whose last part is sealed
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
            event=meta.event_id,
            part=meta.part,
            final=meta.final,
        )
        hour = hour_up(meta.start)
        held = [(clip, Live(hour, CLIP)), *([(poster, Live(hour, POSTER))] if poster else [])]
        # Spooled held: they upload once this entry is saved (or a retry of it, if it fails).
        await self.append([entry], keep=True, held=held)
        self.clips_sealed += 1
        self.events_sealed += meta.final
        # No camera or subjects: the log lives on the bridge's disk too.
        log.log(
            logging.INFO if meta.final else logging.DEBUG,  # a part every few seconds
            "clip %s sealed (%d bytes encrypted)", entry.object, clip.size,
        )

    def _id(self, item: SpoolItem) -> str:
        object_id = self.layout.object_id(item.object_name)
        assert object_id is not None
        return object_id

    # -- manifest ------------------------------------------------------------------------

    async def append(
        self, entries: list[Entry], *, keep: bool = False, held: Sequence[Held] = ()
    ) -> None:
        """Log `entries` in a new segment, atomically for the chain: if the segment cannot be
        spooled or the state saved (a full disk), the writer goes back to where it was, so no
        later segment chains to the lost one. `keep`: the entries stay queued for the next
        append (the objects they describe exist anyway); else the caller undoes its side.
        `held`: held spool entries that `entries` log, with their index entries; they are
        offered for upload once a segment with the entries is saved (needs `keep`). Runs to the
        end even if the caller is cancelled."""
        assert keep or not held
        await asyncio.shield(self._advance(entries, keep, held))

    async def heartbeat(self) -> None:
        await asyncio.shield(self._advance(None, True))

    async def _advance(
        self, entries: list[Entry] | None, keep: bool, held: Sequence[Held] = ()
    ) -> None:
        async with self._lock:
            await self._append_locked(entries, keep, held)

    async def _append_locked(
        self, entries: list[Entry] | None, keep: bool, held: Sequence[Held] = ()
    ) -> None:
        """`_advance` with `_lock` held: a caller that changes the index for these entries
        (deletions, shares) does it under the same lock, so the index saved here matches."""
        before, queued = self.writer.state, self.writer.pending
        if entries is not None and held:
            entries = [*entries, *self._admit(held)]
        # Every append writes all queued entries: it releases every held object they log.
        releasing = list(self._unlogged.values())
        try:
            out = self.writer.heartbeat() if entries is None else self.writer.append(entries)
        except BaseException as exc:  # entries it cannot encode: never queued, never released
            self.writer.restore(before, queued)
            await self._unadmit(held)
            self.last_error = f"manifest append: {exc}"
            log.error("cannot log %d manifest entr%s: %s", len(entries or ()),
                      "y" if len(entries or ()) == 1 else "ies", exc)
            raise
        # A snapshot taken on the loop (a shallow copy: entries are immutable), encoded in the
        # thread: with ~17,000 retained objects json.dumps takes ~64 ms, a stall of the loop
        # (live view, HAP) on every part sealed; the copy takes 0.3 ms.
        index = dict(self._index)
        try:
            await asyncio.to_thread(self._commit, out, before, index, releasing)
        except BaseException as exc:
            kept = [*queued, *(entries if keep and entries else [])]
            self.writer.restore(before, kept)
            self.last_error = f"manifest append: {exc}"
            if kept:
                log.warning("manifest append failed (%s); %d entr%s queued for the next one",
                            exc, len(kept), "y" if len(kept) == 1 else "ies")
                self._retry.set()
            raise
        for item in releasing:
            self._unlogged.pop(item.id, None)

    def _admit(self, held: Sequence[Held]) -> list[Entry]:
        """Index held objects in the step their entry enters the writer, so a saved index names
        only logged objects (start-up trusts it: vault_recovery.py); one the spool evicted
        before that is logged as evicted instead, right after its entry."""
        deletes: list[Entry] = []
        for item, live in held:
            self._unlogged[item.id] = item
            if item.object_name in self._lost:
                self._lost.discard(item.object_name)
                deletes.append(DeleteEntry(self._id(item), "evicted"))
            else:
                self._index[item.object_name] = live
        return deletes

    async def _unadmit(self, held: Sequence[Held]) -> None:
        """Undo `_admit` for entries the writer refused: never logged, their objects leave the
        index and the spool (uploaded, verify would call them forged)."""
        for item, _ in held:
            self._unlogged.pop(item.id, None)
            self._index.pop(item.object_name, None)
        with contextlib.suppress(OSError):  # still held: start-up drops them
            for item, _ in held:
                await asyncio.to_thread(self.spool.discard, item)

    def _commit(
        self,
        out: ManifestOutput,
        before: ManifestState | None,
        index: dict[str, Live],
        release: list[SpoolItem],
    ) -> None:
        """Spool the segment held back from upload, save the state, then release the segment
        with the clips and posters it logs, in one step: the state is durable before anything
        it logs can upload (manifest.md §6 rule 1), and a failure before it is saved leaves
        nothing behind. A crash in between leaves held entries the state does not account for:
        start-up sorts them out (vault_recovery.py). The uploader takes entries oldest first, so
        the clip and poster go before their segment, and the head waits for the segment."""
        item = self._spool_segment(out, release) if out.segment is not None else None
        try:
            write_private(self._state_path, out.state.to_json())
        except BaseException:
            unsave_state(self._state_path, out.state, before)
            if item is not None:
                self.spool.discard(item)
            raise
        try:
            write_private(self._index_path, dump_index(index))
        except OSError as exc:  # retention's own bookkeeping: the next append saves it again
            log.warning("cannot save the retention index yet: %s", exc)
        self.spool.unhold(*([item] if item is not None else []), *release)
        self._head = out.head
        self._head_version += 1  # after _head: a reader of this version gets that head or newer
        self._loop.call_soon_threadsafe(self._head_event.set)
        self.uploader.wake()

    def _spool_segment(self, out: ManifestOutput, release: list[SpoolItem]) -> SpoolItem:
        assert out.segment is not None and out.segment_id is not None
        # `objects`: the held objects this segment logs, so start-up can tell them from
        # objects sealed just before a crash (names only: the metadata stays encrypted).
        meta = {"seq": out.state.seq, "objects": [i.object_name for i in release]}
        entry = self.spool.create(use_reserve=True)  # small: gets through a full disk
        try:
            entry.write(out.segment)
            name = f"{self.layout.root}/{out.segment_id}"
            return entry.commit(name, "manifest", meta, hold=True)
        except BaseException:
            entry.abort()
            raise

    async def _head_loop(self) -> None:
        """Upload the newest head once every segment before it is in the bucket."""
        failures, logged = 0, 0.0
        while True:
            await self._head_event.wait()
            self._head_event.clear()
            # Read before looking at the spool: `_commit` releases a segment before it sets the
            # head naming it, so every segment this head names is ready (or uploaded) by now.
            version, head = self._head_version, self._head
            if head is None:
                continue
            # Polling the spool: segments leave it as the uploader confirms them.
            while any(i.kind == "manifest" for i in self.spool.ready()):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            try:
                # Shielded: `stop` waits for an upload under way (or it could land after the
                # final head, an older head overwriting a newer one: manifest.md §6 rule 3).
                self._head_put = asyncio.ensure_future(self.bucket.put(self.head_name, head))
                await asyncio.shield(self._head_put)
                if failures:
                    log.info("manifest head uploaded again after %d failed attempts", failures)
                failures = 0
                async with self._published:
                    self._published_version = max(self._published_version, version)
                    self._published.notify_all()
            except Exception as exc:  # bucket down: try again with backoff
                failures += 1
                self.last_error = f"head upload: {exc}"
                if failures == 1 or time.monotonic() - logged >= 60.0:
                    logged = time.monotonic()
                    log.warning("manifest head upload failed (%d in a row): %s", failures, exc)
                # The uploader probes the bucket meanwhile: its return ends the wait early.
                self.uploader.suspect(self.head_name)
                await self.uploader.pause(min(60.0, 2**failures) * random.uniform(0.8, 1.2))
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
        failures = 0
        while True:
            # Entries queued by a failed append (a full disk) are retried soon, with backoff.
            delay = min(period, 2.0 * 2**failures) if self.writer.pending else period
            self._retry.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry.wait(), delay)
            if self._retry.is_set():
                continue  # an append just failed: wait `delay` from now
            try:
                await self.heartbeat()
                failures = 0
            except Exception as exc:
                failures += 1
                self.last_error = f"heartbeat: {exc}"
                log.warning("manifest heartbeat failed: %s", exc)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.heartbeat()  # records the start (and init/recipients for a new log)
        self.uploader.start()
        self.retention.start()
        self._head_task = asyncio.create_task(self._head_loop(), name="vault:head")
        self._tasks += [
            self._head_task,
            asyncio.create_task(self._heartbeat_loop(), name="vault:heartbeat"),
        ]
        log.info(
            "clips go to %s, encrypted to %d recipient(s); bridge key %s",
            self.bucket.describe(),
            len(self.recipients),
            self.key.public,
        )

    async def stop(self, drain_seconds: float = 4.0) -> None:
        # A clean shutdown leaves the bucket consistent: what was sealed is uploaded and the
        # head names it (else the owner's audit would see objects the manifest does not).
        # `drain_seconds` bounds the whole drain: the spool keeps whatever is left for the next
        # start, and the process must exit well within the shutdown watchdog's grace
        # (bridge/shutdown.py) and systemd's TimeoutStopSec, even with the bucket down.
        deadline = asyncio.get_running_loop().time() + drain_seconds

        def left() -> float:
            return max(0.1, deadline - asyncio.get_running_loop().time())

        for task in self._tasks:  # no new heartbeat or retry; one under way (shielded) goes on
            if task is not self._head_task:
                task.cancel()
        await asyncio.gather(*self._appends, return_exceptions=True)
        async with self._lock:  # after an append under way: it empties `pending` before its
            pending = len(self.writer.pending)  # segment is spooled, the drain would miss it
        if pending:  # queued by a failed append: a last try
            try:
                await self.heartbeat()
            except Exception as exc:  # in memory only: the owner's verify will show the gap
                log.error("stopping with %d manifest entr%s never logged (%s): their clips and "
                          "posters were never uploaded and the next start drops them; an "
                          "eviction among them will show as missing", pending,
                          "y" if pending == 1 else "ies", exc)
        idle = await self.uploader.wait_idle(timeout=left())
        await self._stop_head_loop(left())  # no older head may land after the last one
        if not idle:
            log.warning(
                "stopping with %d object(s) still in the spool (%d held back, never logged); "
                "the others upload on the next start",
                self.spool.pending_count, len(self._unlogged),
            )
        elif self._head is not None:
            try:
                await asyncio.wait_for(self.bucket.put(self.head_name, self._head), left())
            except Exception as exc:
                log.warning("could not upload the manifest head on the way out: %s", exc)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.retention.stop()
        await self.uploader.stop()
        await self.bucket.close()

    async def _stop_head_loop(self, timeout: float) -> None:
        if self._head_task is not None:
            self._head_task.cancel()
            await asyncio.gather(self._head_task, return_exceptions=True)
        if (put := self._head_put) is not None and not put.done():
            with contextlib.suppress(Exception):  # it no longer matters: the final head follows
                await asyncio.wait_for(put, timeout)

    def status(self) -> dict[str, Any]:
        state = self.writer.state
        return {
            "bucket": self.bucket.describe(),
            "bridge_id": self.bridge_id,
            "bridge_key": str(self.key.public),
            "recipients": [str(r) for r in self.recipients],
            "clips_sealed": self.clips_sealed,
            "events_sealed": self.events_sealed,
            "manifest_seq": state.seq if state else None,
            "uploads": self.uploader.status().as_dict(),
            "spool": self.spool.status(),  # its disk: free space, a full disk and its drops
            "last_error": self.last_error,
            "checked_at": time.time(),
        }
