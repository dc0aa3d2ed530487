"""What an append interrupted by a failure or a crash leaves behind, and how ClipVault undoes it
(docs/manifest.md §6 rule 1).

An append spools its segment *held* (with the names of the held clips and posters it logs),
saves the state, then releases them all. A failure before the state is saved rolls back
(`unsave_state`); a crash leaves held entries that start-up sorts out (`resolve_held`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from bridge.store.bucket import BucketLayout
from bridge.store.spool import Spool, SpoolItem
from bridge.store.vault_deletions import write_private
from crypto.manifest import ManifestState

log = logging.getLogger(__name__)


def unsave_state(path: Path, new: ManifestState, before: ManifestState | None) -> None:
    """The save failed after the rename (a failed directory fsync): put the old state back, so
    the file never names a segment that was dropped."""
    try:
        if path.read_text() == new.to_json():
            if before is None:
                path.unlink()
            else:
                write_private(path, before.to_json())
    except FileNotFoundError:  # never saved: nothing to undo
        pass
    except OSError as exc:
        log.error("cannot put the manifest state back after a failed save (%s): %s may name "
                  "segment %d, which was dropped; the next successful append replaces it, but a "
                  "restart before that leaves a segment missing from the chain", exc, path,
                  new.seq)


def resolve_held(
    spool: Spool, layout: BucketLayout, state: ManifestState | None, indexed: set[str]
) -> None:
    """At start-up, before any upload: release what the saved state accounts for, drop the
    rest. `indexed`: the names in the saved retention index, which names
    only logged objects (ClipVault._admit).

    A segment newer than the state was spooled by an append that crashed before saving it:
    never upload it (the next append takes its seq; both in the bucket would be a fork). A held
    clip or poster that neither a kept segment (its spool record lists what it logs) nor the
    index names was sealed just before a crash: its entry (camera, times) was in memory only
    and can never be logged, so drop it rather than upload an object the owner's verify would
    call forged. Either record alone would do, nearly: the segment of a logged clip normally
    uploads after it (the spool goes oldest first), unless the clock stepped back; the index
    save may fail after the state's."""
    release: list[SpoolItem] = []
    logged: set[str] = set()
    for item in [*spool.held(), *spool.ready()]:  # ready: a segment spooled by older versions
        seq = item.meta.get("seq")
        if item.kind != "manifest" or not isinstance(seq, int):
            continue
        if state is None or seq > state.seq or (
            seq == state.seq and layout.object_id(item.object_name) != state.segment
        ):
            log.warning("dropping manifest segment %d from the spool: an append crashed before "
                        "saving it", seq)
            spool.discard(item)
        else:
            release.append(item)
            logged.update(str(n) for n in item.meta.get("objects") or ())
    for item in spool.held():
        if item.kind == "manifest":
            continue  # kept above (the others are gone)
        if item.object_name in logged or item.object_name in indexed:
            release.append(item)
            continue
        log.warning(
            "dropping %s %s from the spool, never uploaded: it was sealed just before a crash, "
            "before its manifest entry was saved (that entry was only in memory)",
            "poster" if item.kind == "thumbnail" else item.kind, layout.object_id(item.object_name),
        )
        spool.discard(item)
    spool.unhold(*release)
