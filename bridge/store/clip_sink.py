"""A recorder's ClipSink that encrypts as it goes: fMP4 bytes → age → spool (ciphertext only).

Created in the clip's worker thread; every write encrypts one more piece straight into the
spool file, so no plaintext ever reaches the disk. `finish` seals the clip, encrypts the padded
poster as its own object, and hands both (with the clip's metadata) to `on_sealed`, which logs
them in the manifest. Both are committed *held*: the vault releases them for upload only once
the segment logging them is saved, so a crash in between never puts an unlogged object in the
bucket (the owner's verify would call it forged for good; manifest.md §6 rule 1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bridge.record.clip import ClipMeta
from bridge.store.bucket import BucketLayout
from bridge.store.spool import Spool, SpoolFull, SpoolItem
from crypto.age import AgeWriter
from crypto.age_keys import X25519Recipient
from crypto.padding import pad_jpeg

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SealedClip:
    meta: ClipMeta
    clip: SpoolItem
    poster: SpoolItem | None


class EncryptedClipSink:
    def __init__(
        self,
        spool: Spool,
        layout: BucketLayout,
        recipients: Sequence[X25519Recipient],
        on_sealed: Callable[[SealedClip], Awaitable[None]],
    ) -> None:
        self._spool = spool
        self._layout = layout
        self._recipients = recipients
        self._on_sealed = on_sealed
        self._entry = spool.create()
        try:
            self._writer: AgeWriter | None = AgeWriter(recipients, self._entry)
        except BaseException:
            self._entry.abort()
            raise

    def write(self, data: bytes, /) -> object:
        assert self._writer is not None
        return self._writer.write(data)

    async def finish(self, meta: ClipMeta) -> None:
        sealed = await asyncio.to_thread(self._seal, meta)
        await self._on_sealed(sealed)

    def _seal(self, meta: ClipMeta) -> SealedClip:
        assert self._writer is not None
        self._writer.close()  # the last chunk; the clip's file key is gone from here on
        self._writer = None
        clip = self._entry.commit(self._layout.clip_name(), "clip", hold=True)
        poster = None
        if meta.poster:
            try:
                poster = self._seal_poster(meta.poster, clip)
            except (SpoolFull, OSError) as exc:
                # The clip is committed: log it without a poster rather than lose it.
                log.warning("clip %s: its poster could not be spooled: %s", clip.object_name, exc)
            except Exception:  # e.g. a poster that is no JPEG: the clip must still be logged
                log.exception("clip %s: its poster could not be sealed; logged without it",
                              clip.object_name)
        return SealedClip(meta, clip, poster)

    def _seal_poster(self, jpeg: bytes, clip: SpoolItem) -> SpoolItem:
        entry = self._spool.create()
        try:
            writer = AgeWriter(self._recipients, entry)
            writer.write(pad_jpeg(jpeg))
            writer.close()
            # meta names the clip: spool eviction drops a clip and its poster together.
            return entry.commit(
                self._layout.thumbnail_name(), "thumbnail", {"clip": clip.object_name}, hold=True
            )
        except BaseException:
            entry.abort()
            raise

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self._entry.abort()
