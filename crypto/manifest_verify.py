"""The owner-side manifest verifier: chain, signatures, rollback/fork, heartbeat, and the bucket
listing against the log. Checks and messages: docs/manifest.md §9.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from crypto.age import AgeError, Identity, decrypt
from crypto.age_keys import NoIdentityMatch, as_identity
from crypto.manifest_format import (
    ClipEntry,
    DeleteEntry,
    FormatError,
    Head,
    InitEntry,
    RecipientsEntry,
    Segment,
    ShareEntry,
    decode_head,
    decode_segment,
)
from crypto.manifest_report import (
    ClipInfo,
    Problem,
    RecipientChange,
    Report,
    ShareInfo,
    VerifierState,
    local_time,
)
from crypto.signing import BridgeKeyError, BridgePublicKey

__all__ = [
    "ClipInfo", "Hasher", "ManifestVerifier", "Problem", "RecipientChange", "Report",
    "ShareInfo", "VerifierState",
]

Getter = Callable[[str], bytes | None]
#: hash(id, limit) -> (SHA-256 hex, bytes read), reading at most `limit` bytes as a stream, or
#: None if the object is missing. The operator decides how large an object is, so a deep verify
#: never reads more than the largest size the bridge signed (plus one byte, to see it is longer).
Hasher = Callable[[str, int], tuple[str, int] | None]
T = TypeVar("T")
#: Segments and heads are a few KiB; anything far larger is not the bridge's (anyone can
#: encrypt to the owner) and is not downloaded into memory.
MAX_MANIFEST_OBJECT = 16 << 20
NOT_RECIPIENT = "cannot decrypt (none of these identities is one of its recipients)"
Lister = Callable[[], Iterable[tuple[str, int]]]
#: on_walk(report): the clips of the newest segments walked so far, while the walk goes on.
WalkListener = Callable[[Report], None]
#: Seconds between two on_walk calls: short at first (the newest events are what an owner looks
#: at first), then longer, as each call replays everything walked so far.
FIRST_WALK_REPORT_S, MAX_WALK_REPORT_S = 0.15, 1.0


class ManifestVerifier:
    """Verify one bridge's manifest and objects. `get` and `list` address objects by id (the
    caller maps ids to `{prefix}{bridge_id}/{id}`); `deep` hashes every live object."""

    def __init__(
        self,
        identities: Iterable[Identity],
        *,
        head_id: str,
        get: Getter,
        list: Lister,
        pinned_key: BridgePublicKey | str | None = None,
        state: VerifierState | None = None,
        deep: bool = True,
        clock: Callable[[], float] = time.time,
        hasher: Hasher | None = None,
        on_walk: WalkListener | None = None,
    ) -> None:
        self._ids = [as_identity(i) for i in identities]
        self._head_id = head_id
        self._get = get
        self._list = list
        self._hash = hasher or self._hash_from_get
        if isinstance(pinned_key, str):
            pinned_key = BridgePublicKey.parse(pinned_key)
        if pinned_key is None and state is not None:
            pinned_key = BridgePublicKey.parse(state.bridge_key)
        if pinned_key is not None and state is not None and state.bridge_key != str(pinned_key):
            raise BridgeKeyError("the verifier state belongs to another bridge key")
        self._pinned = pinned_key
        self._state = state
        self._deep = deep
        self._clock = clock
        self._listing: dict[str, int] = {}
        self._on_walk = on_walk
        self._messages: dict[int, bytes] = {}  # each segment's signed message, built once

    def verify(self) -> Report:
        r = Report(verified_seq=self._state.seq if self._state else None)
        self._listing = dict(self._list())
        head = self._read_head(r)
        if head is None:
            return r
        r.head = head
        if self._pinned is not None and not self._pinned.verify(head.sig, head.message()):
            # Nothing an unauthenticated head points at is worth walking.
            r.problems.append(Problem("head", (
                "manifest head: bad signature (forged, or the pinned key is not this bridge's)"
            ), self._head_id))
            return r
        segments, ids, complete = self._walk(head, r)
        r.segment_ids = ids
        key = self._key(segments, r)
        trusted = key is not None and self._check_chain(key, head, segments, r)
        # Rollback and heartbeat checks mean something only for an authentic head.
        head_ok = key is not None and key.verify(head.sig, head.message())
        if head_ok:
            self._check_state(head, segments, r)
        now_ms = int(self._clock() * 1000)
        if head_ok and now_ms - head.time_ms > 2 * head.period_s * 1000:
            r.problems.append(Problem("frozen", (
                f"head is frozen: last heartbeat at {local_time(head.time_ms)}, older than "
                f"2 × period ({head.period_s} s)"  # noqa: RUF001
            ), seq=head.seq))
        live, known = self._replay(segments, r)
        known |= set(ids.values()) | {self._head_id}
        self._check_objects(live, known, complete and trusted, r)
        if trusted and complete and not any(p.kind in ("rollback", "fork") for p in r.problems):
            old = self._state
            r.state = VerifierState(
                str(key), head.seq, head.hash, max(head.time_ms, old.time_ms if old else 0)
            )
        return r

    # -- the chain ------------------------------------------------------------------------

    def _load(self, oid: str, decode: Callable[[bytes], T]) -> tuple[T | None, str]:
        """(the decoded manifest object, "") or (None, why not)."""
        if self._listing.get(oid, 0) > MAX_MANIFEST_OBJECT:
            return None, "malformed (too large for a manifest object)"
        data = self._get(oid)
        if data is None:
            return None, "missing"
        if len(data) > MAX_MANIFEST_OBJECT:
            return None, "malformed (too large for a manifest object)"
        try:
            return decode(decrypt(self._ids, data)), ""
        except NoIdentityMatch:
            return None, NOT_RECIPIENT
        except AgeError as e:
            return None, f"cannot decrypt ({e})"
        except FormatError as e:
            return None, f"malformed ({e})"

    def _read_head(self, r: Report) -> Head | None:
        head, why = self._load(self._head_id, decode_head)
        if head is None:
            message = "manifest head is missing" if why == "missing" else f"manifest head: {why}"
            r.not_recipient = why == NOT_RECIPIENT
            r.problems.append(Problem("head", message, self._head_id))
        return head

    def _walk(self, head: Head, r: Report) -> tuple[dict[int, Segment], dict[int, str], bool]:
        """Segments from the head back to 0 through `prev_segment` (seq strictly decreasing,
        so this ends); complete=False if the walk stopped early.

        Each segment's hash is checked against the one after it as it is read, so on_walk is
        told only of segments that chain to the head (with a pinned key, whose signature was
        checked before the walk, that makes them authentic; signatures are checked after)."""
        segments: dict[int, Segment] = {}
        ids: dict[int, str] = {}
        seq, sid = head.seq, head.segment
        expected, linked = head.hash, True
        interval = FIRST_WALK_REPORT_S
        report_at = time.monotonic() + interval
        while True:
            seg, why = self._load(sid, decode_segment)
            if seg is None:
                message = (
                    f"segment {seq} (object {sid}) is missing from the bucket" if why == "missing"
                    else f"segment {seq}: {why}"
                )
                r.problems.append(Problem("segment", message, sid, seq))
                return segments, ids, False
            if seg.seq != seq:
                r.problems.append(Problem(
                    "segment", f"segment {seq}: seq {seg.seq} where {seq} was expected", sid, seq
                ))
                return segments, ids, False
            segments[seq], ids[seq] = seg, sid
            self._messages[seq] = message = seg.message()
            linked = linked and hashlib.sha256(message).digest() == expected
            expected = seg.prev
            if self._on_walk is not None and linked and time.monotonic() >= report_at:
                self._on_walk(self._walked(head, segments, ids))
                interval = min(2 * interval, MAX_WALK_REPORT_S)
                report_at = time.monotonic() + interval
            if seq == 0 or seg.prev_segment is None:
                return segments, ids, True
            seq, sid = seq - 1, seg.prev_segment

    def _walked(self, head: Head, segments: dict[int, Segment], ids: dict[int, str]) -> Report:
        """The clips of the segments walked so far (a shallow replay: a share or deletion of
        something older than them is not resolved yet, and their problems mean nothing)."""
        partial = Report(head=head, segment_ids=dict(ids))
        self._replay(segments, partial)
        partial.problems, partial.notices = [], []
        return partial

    def _key(self, segments: dict[int, Segment], r: Report) -> BridgePublicKey | None:
        init = segments[0].entries[0] if 0 in segments else None
        assert init is None or isinstance(init, InitEntry)
        key = self._pinned
        if key is None:
            if init is None:
                # The walk stopped at the newest segment it could not read: name that gap.
                assert r.head is not None
                stop = min(segments) - 1 if segments else r.head.seq
                where = "segment 0 is unreadable" if stop == 0 else (
                    "segment 0 (which holds it) was not reached: the chain breaks at segment "
                    f"{stop}"
                )
                r.problems.append(Problem("key", f"no pinned bridge key, and {where}"))
                return None
            try:
                key = BridgePublicKey.parse(init.bridge_key)
            except BridgeKeyError as e:
                r.problems.append(Problem("key", f"segment 0: bad bridge key ({e})", seq=0))
                return None
            r.notices.append(
                f"no pinned bridge key: trusting {key} ({key.fingerprint()}) from segment 0 "
                "(trust on first use); pin it from the bridge's own output"
            )
        elif init is not None and init.bridge_key != str(key):
            r.problems.append(
                Problem("key", "segment 0: bridge key differs from the pinned key", seq=0)
            )
            return None
        return key

    def _check_chain(
        self, key: BridgePublicKey, head: Head, segments: dict[int, Segment], r: Report
    ) -> bool:
        ok = True
        if not key.verify(head.sig, head.message()):
            r.problems.append(Problem("head", "manifest head: bad signature", self._head_id))
            ok = False
        valid = set()
        hashes: dict[int, bytes] = {}  # each segment's message is built once (it is costly)
        for seq in sorted(segments):
            message = self._messages.get(seq) or segments[seq].message()
            hashes[seq] = hashlib.sha256(message).digest()  # = Segment.hash()
            if key.verify(segments[seq].sig, message):
                valid.add(seq)
            else:
                r.problems.append(Problem("signature", f"segment {seq}: bad signature", seq=seq))
                ok = False
        # Two validly signed, different segments at one seq: the bridge's history split.
        forks = set()
        if ok and head.seq in segments and hashes[head.seq] != head.hash:
            forks.add(head.seq)
        for seq in valid:
            if seq + 1 in valid and segments[seq + 1].prev != hashes[seq]:
                forks.add(seq)
        for seq in sorted(forks):
            r.problems.append(Problem("fork", f"manifest forked at seq {seq}", seq=seq))
        return ok and not forks

    def _check_state(self, head: Head, segments: dict[int, Segment], r: Report) -> None:
        s = self._state
        if s is None:
            return
        if head.seq < s.seq:
            r.problems.append(Problem(
                "rollback", f"manifest rolled back: head seq {head.seq} < last verified {s.seq}",
                seq=head.seq,
            ))
        elif head.seq == s.seq and head.hash != s.hash:
            r.problems.append(Problem("fork", f"manifest forked at seq {s.seq}", seq=s.seq))
        elif head.seq == s.seq and head.time_ms < s.time_ms:
            r.problems.append(Problem("rollback", (
                f"manifest head replayed: heartbeat at {local_time(head.time_ms)} is older "
                f"than the last verified heartbeat at {local_time(s.time_ms)}"
            ), seq=head.seq))
        elif head.seq > s.seq and s.seq in segments and segments[s.seq].hash() != s.hash:
            r.problems.append(Problem("fork", f"manifest forked at seq {s.seq}", seq=s.seq))

    # -- the objects ----------------------------------------------------------------------

    def _replay(
        self, segments: dict[int, Segment], r: Report
    ) -> tuple[dict[str, tuple[str, int]], set[str]]:
        """Live objects {id: (sha256, size)} and every id the log accounts for."""
        live: dict[str, tuple[str, int]] = {}
        known: set[str] = set()
        clips: dict[str, ClipInfo] = {}
        shares: dict[str, ShareInfo] = {}
        clip_of: dict[str, str] = {}  # clip, poster or share copy -> the clip it shows

        def add(obj: str, sha: str, size: int, seq: int) -> None:
            if obj in known:
                r.problems.append(Problem(
                    "segment", f"segment {seq}: object {obj} recorded twice", obj, seq
                ))
            known.add(obj)
            live[obj] = (sha, size)

        for seq in sorted(segments):
            for e in segments[seq].entries:
                if isinstance(e, ClipEntry):
                    add(e.object, e.sha256, e.size, seq)
                    clip_of[e.object] = e.object
                    if e.thumb is not None:
                        assert e.thumb_sha256 is not None and e.thumb_size is not None
                        add(e.thumb, e.thumb_sha256, e.thumb_size, seq)
                        clip_of[e.thumb] = e.object
                    clips[e.object] = ClipInfo(
                        e.object, seq, e.camera, e.start_ms, e.end_ms, e.subjects, e.size,
                        e.sha256, e.thumb, e.thumb_sha256, e.thumb_size,
                        recipients=r.recipients, event=e.event, part=e.part or 0,
                        final=e.final is not False,
                    )
                elif isinstance(e, ShareEntry):
                    add(e.copy, e.sha256, e.size, seq)
                    shares[e.copy] = ShareInfo(e.copy, e.recipient, seq, source=e.object)
                    # Every share is shown under its clip, whatever was shared: one the owner
                    # cannot see is what a share behind their back would look like.
                    if (clip := clip_of.get(e.object)) is not None:
                        clip_of[e.copy] = clip
                        clips[clip].shares.append(shares[e.copy])
                    else:
                        r.problems.append(Problem("share", (
                            f"segment {seq}: share {e.copy} (to {e.recipient}) of object "
                            f"{e.object}, which the manifest records no clip for"
                        ), e.copy, seq))
                elif isinstance(e, DeleteEntry):
                    if live.pop(e.object, None) is None:
                        r.notices.append(f"segment {seq}: deletion of {e.object}, not live")
                    if e.object in clips:
                        clips[e.object].deleted = e.reason
                    elif (clip := clip_of.get(e.object)) is not None and (
                        clips[clip].thumb == e.object
                    ):
                        clips[clip].thumb_deleted = e.reason
                    if e.object in shares:
                        shares[e.object].deleted = e.reason
                elif isinstance(e, RecipientsEntry):
                    # A new set applies to what is written after it: a staff key added on the
                    # bridge shows up here (docs/threat-model.md, "Recipient substitution").
                    if r.recipients and set(e.recipients) != set(r.recipients):
                        r.recipient_changes.append(RecipientChange(
                            seq, segments[seq].time_ms, r.recipients, e.recipients
                        ))
                    r.recipients = e.recipients
        r.clips = sorted(clips.values(), key=lambda c: (c.start_ms, c.id))
        return live, known

    def _check_objects(
        self, live: dict[str, tuple[str, int]], known: set[str], complete: bool, r: Report
    ) -> None:
        listing = self._listing
        by_hash = {sha: obj for obj, (sha, _) in live.items()}
        # Enough to hash any object the bridge signed in full (so a swap names its source),
        # never more: an operator can serve an object of any size.
        limit = max((size for _, size in live.values()), default=0) + 1
        for obj, (sha, size) in sorted(live.items()):
            if obj not in listing:
                r.problems.append(Problem("missing", (
                    f"object {obj} listed in the manifest is missing from the bucket (deleted)"
                ), obj))
                continue
            if not self._deep:
                if listing[obj] < size:
                    r.problems.append(Problem("truncated", f"object {obj} is truncated", obj))
                elif listing[obj] != size:
                    r.problems.append(Problem("swapped", (
                        f"object {obj}: size {listing[obj]} differs from the recorded {size} "
                        "(swapped or altered)"
                    ), obj))
                continue
            hashed = self._hash(obj, limit)
            if hashed is None:
                r.problems.append(Problem("missing", (
                    f"object {obj} listed in the manifest is missing from the bucket (deleted)"
                ), obj))
                continue
            actual, n = hashed
            if actual == sha and n == size:
                continue
            other = by_hash.get(actual)
            if other is None and n < size:
                r.problems.append(Problem("truncated", f"object {obj} is truncated", obj))
                continue
            holds = f"; it holds object {other}'s content" if other else ""
            r.problems.append(Problem(
                "swapped", f"object {obj}: SHA-256 mismatch (swapped or altered){holds}", obj
            ))
        if not complete:
            r.notices.append("the manifest did not verify completely: forged-object check skipped")
            return
        for obj in sorted(set(listing) - known):
            r.problems.append(Problem("forged", f"forged object {obj}: not in the manifest", obj))

    def _hash_from_get(self, oid: str, limit: int) -> tuple[str, int] | None:
        """The default hasher, over `get` (in memory: for callers whose objects are bytes)."""
        data = self._get(oid)
        if data is None:
            return None
        view = memoryview(data)[:limit]
        return hashlib.sha256(view).hexdigest(), len(view)
