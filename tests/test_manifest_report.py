"""What the verifier's report tells the owner beyond tampering: who the clips are encrypted
to and when that changed, an identity that is no recipient, where an unpinned walk broke, every
share under its clip; and that a deep verify reads no more of an object than was signed."""

from __future__ import annotations

import hashlib
import io

from crypto.age import X25519Identity, share_copy
from crypto.manifest import (
    DeleteEntry,
    ManifestState,
    ManifestVerifier,
    ManifestWriter,
    ShareEntry,
    new_object_id,
)
from tests.test_manifest import HEAD, PERIOD, Bridge, bridge, kinds, messages

__all__ = ["bridge"]  # the fixture, shared with tests/test_manifest.py


def restart_with(bridge: Bridge, *recipients: X25519Identity) -> None:
    """The bridge restarted with another [storage] recipients list."""
    state = ManifestState.from_json(bridge.writer.state.to_json())  # type: ignore[union-attr]
    bridge.writer = ManifestWriter(bridge.key, [r.recipient for r in recipients], state,
                                   period_s=PERIOD, clock=lambda: bridge.now / 1000)
    bridge.heartbeat()


def test_recipient_changes_since_the_last_verified_seq(bridge: Bridge) -> None:
    first = bridge.verify()
    assert first.state is not None and first.recipient_changes == []
    owner, staff = str(bridge.owner.recipient), X25519Identity.generate()
    restart_with(bridge, bridge.owner, staff)  # someone added a key on the bridge
    new = bridge.record()
    report = bridge.verify(first.state)
    assert report.ok, messages(report)
    assert report.recipients == (owner, str(staff.recipient))
    [change] = report.new_recipient_changes
    assert (change.seq, change.added, change.removed) == (3, (str(staff.recipient),), ())
    clips = {c.id: c for c in report.clips}
    assert clips[new.object].recipients == (owner, str(staff.recipient))
    assert all(c.recipients == (owner,) for c in report.clips if c.id != new.object)
    # Seen once verified; a first run (no state) has nothing to compare with.
    assert report.state is not None
    assert bridge.verify(report.state).new_recipient_changes == []
    assert bridge.verify().new_recipient_changes == []
    # Added and taken away again between two runs: both changes are reported.
    restart_with(bridge, bridge.owner)
    restart_with(bridge, bridge.owner, staff)
    restart_with(bridge, bridge.owner)
    later = bridge.verify(report.state)
    assert [(c.added, c.removed) for c in later.new_recipient_changes] == [
        ((), (str(staff.recipient),)), ((str(staff.recipient),), ()), ((), (str(staff.recipient),))
    ]
    assert later.recipients == (owner,)


def test_an_identity_that_is_no_recipient_is_told_so(bridge: Bridge) -> None:
    report = ManifestVerifier(
        [X25519Identity.generate()], head_id=HEAD, get=bridge.bucket.get,
        list=lambda: [(k, len(v)) for k, v in bridge.bucket.items()],
        pinned_key=bridge.key.public,
    ).verify()
    assert report.not_recipient and kinds(report) == ["head"]
    assert "none of these identities is one of its recipients" in messages(report)[0]
    bridge.bucket[HEAD] = bridge.bucket[HEAD][:-20]  # damaged, not someone else's
    assert not bridge.verify().not_recipient


def test_without_a_pin_a_broken_chain_names_the_gap(bridge: Bridge) -> None:
    middle = bridge.history[1].segment_id
    assert middle is not None
    del bridge.bucket[middle]
    assert messages(bridge.verify(pinned=None)) == [
        f"segment 1 (object {middle}) is missing from the bucket",
        "no pinned bridge key, and segment 0 (which holds it) was not reached: the chain "
        "breaks at segment 1",
    ]


def test_deep_verify_never_reads_past_the_signed_sizes(bridge: Bridge) -> None:
    """An operator can serve an object of any size: hash as a stream, stop at what the bridge
    signed (the largest live object, plus one byte to see it is longer)."""
    clips = bridge.verify().clips
    largest = max(c.size for c in clips)
    victim = clips[0]
    bridge.bucket[victim.id] += bytes(8 << 20)
    asked: list[int] = []

    def hasher(oid: str, limit: int) -> tuple[str, int] | None:
        asked.append(limit)
        data = bridge.bucket.get(oid)
        if data is None:
            return None
        f, h, n = io.BytesIO(data), hashlib.sha256(), 0
        while n < limit and (piece := f.read(min(65536, limit - n))):
            h.update(piece)
            n += len(piece)
        return h.hexdigest(), n

    report = ManifestVerifier(
        [bridge.owner], head_id=HEAD, get=bridge.bucket.get,
        list=lambda: [(k, len(v)) for k, v in bridge.bucket.items()],
        pinned_key=bridge.key.public, hasher=hasher, clock=lambda: bridge.now / 1000,
    ).verify()
    assert messages(report) == [f"object {victim.id}: SHA-256 mismatch (swapped or altered)"]
    assert set(asked) == {largest + 1}


def test_every_share_is_shown_under_its_clip(bridge: Bridge) -> None:
    """A share of a poster, or of a share copy, is listed under the clip it shows; a share of
    something no clip accounts for is a problem, never silently left out."""
    clip = bridge.verify().clips[0]
    assert clip.thumb is not None
    engineer = X25519Identity.generate()

    def share(source: str) -> str:
        copy = io.BytesIO()
        share_copy([bridge.owner], io.BytesIO(bridge.bucket[clip.id]), copy, [engineer.recipient])
        cid, data = new_object_id(), copy.getvalue()
        bridge.bucket[cid] = data
        bridge.publish(bridge.writer.append([ShareEntry(
            source, cid, str(engineer.recipient), hashlib.sha256(data).hexdigest(), len(data)
        )]))
        return cid

    of_poster = share(clip.thumb)
    of_copy = share(of_poster)
    stray = share(new_object_id())
    report = bridge.verify()
    [listed] = [c for c in report.clips if c.id == clip.id]
    assert [(s.copy, s.source) for s in listed.shares] == [
        (of_poster, clip.thumb), (of_copy, of_poster)
    ]
    assert kinds(report) == ["share"] and stray in messages(report)[0]


def test_a_poster_evicted_after_its_clip_uploaded_leaves_the_clip_live(bridge: Bridge) -> None:
    """Regression: a long outage fills the spool after a clip went up but before its poster
    did; the spool evicts the poster alone (`delete`, reason "evicted"). The verifier marked
    nothing, so `clips delete` asked the bridge to delete the poster too, and the bridge refused
    the whole request (404, not a live object): the clip could never be deleted."""
    from bridge.owner.clips_write import clip_objects

    clip = bridge.verify().clips[1]
    assert clip.thumb is not None
    engineer = X25519Identity.generate()
    copy = io.BytesIO()
    share_copy([bridge.owner], io.BytesIO(bridge.bucket[clip.id]), copy, [engineer.recipient])
    cid, data = new_object_id(), copy.getvalue()
    bridge.bucket[cid] = data
    bridge.publish(bridge.writer.append([ShareEntry(
        clip.id, cid, str(engineer.recipient), hashlib.sha256(data).hexdigest(), len(data)
    )]))
    del bridge.bucket[clip.thumb]  # never uploaded
    bridge.publish(bridge.writer.append([DeleteEntry(clip.thumb, "evicted")]))

    report = bridge.verify()
    assert report.ok, messages(report)  # deleted in the log: not missing
    [after] = [c for c in report.clips if c.id == clip.id]
    assert (after.deleted, after.thumb, after.thumb_deleted) == (None, clip.thumb, "evicted")
    assert all(c.thumb_deleted is None for c in report.clips if c.id != clip.id)
    # The owner's deletion names only what the bridge still holds.
    assert clip_objects(after) == [clip.id, cid]
    others = [c for c in report.clips if c.id != clip.id]
    assert all(clip_objects(c) == [c.id, c.thumb] for c in others)
    # A clip deleted whole (retention) is the clip's deletion, not a poster's alone.
    gone = others[0]
    assert gone.thumb is not None
    bridge.publish(bridge.writer.append(
        [DeleteEntry(gone.id, "retention"), DeleteEntry(gone.thumb, "retention")]
    ))
    [gone] = [c for c in bridge.verify().clips if c.id == gone.id]
    assert gone.deleted == "retention"
