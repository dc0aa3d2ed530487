"""`obscura clips share|delete`: changes the running bridge records in the manifest, asked for
with a proof of the owner's identity (bridge/owner/proof.py)."""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bridge.owner.audit import CHUNK, BridgeView, Owner, OwnerError, report_problems
from bridge.owner.bridge_client import BridgeClient, BridgeError
from bridge.owner.events import Event, decrypt_event, events, find_event
from crypto.age import AgeError, AgeWriter, encrypted_size
from crypto.age_keys import X25519Recipient
from crypto.manifest_report import ClipInfo


def _target(owner: Owner, args: argparse.Namespace) -> tuple[BridgeView, Event, BridgeClient]:
    """The event, from the verified manifest, and the bridge that must record the change."""
    views = owner.all(deep=False)
    report_problems(views, strict=True)
    event = find_event(views, args.id)
    client = BridgeClient(owner.config, owner.identities, args.url)
    client.check(event.view.bridge_id)
    return event.view, event, client


def cmd_share(args: argparse.Namespace) -> int:
    try:
        recipient = str(X25519Recipient.parse(args.to.strip()))
    except AgeError as e:
        raise OwnerError(f"--to {args.to!r} is not an age recipient: {e}") from None
    owner = Owner(args)
    try:
        _, event, client = _target(owner, args)
        shared = share_event(owner, event, client, recipient)
    finally:
        owner.close()
    clip, name, copy_id, answer = shared.clip, shared.name, shared.copy_id, shared.answer
    seq = answer.get("seq")
    print(f"Shared clip {clip.id} with {recipient}: object {name} (manifest seq {seq}).")
    print(f"They run: {shared.command}   (after fetching {name})")
    print("A share cannot be revoked once downloaded; it is listed by `obscura clips list`, and "
          f"`obscura clips delete {copy_id}` removes the copy.")
    if answer.get("published") is False:
        print(
            f"warning: the bridge recorded the share (manifest seq {seq}) but could not get its "
            "new manifest head into the bucket within 30 s. Until it does, `clips list` does "
            f"not show the share and `clips verify` reports {copy_id} as a forged object: do "
            "not remove it. The bridge keeps trying; `obscura doctor` on the bridge checks the "
            "bucket.",
            file=sys.stderr,
        )
    return 0


@dataclass
class Shared:
    clip: ClipInfo  # the share's source in the manifest (the event's first live part)
    recipient: str
    name: str  # the copy's object name in the bucket
    copy_id: str
    answer: dict  # the bridge's: seq, published

    @property
    def command(self) -> str:
        return f"age -d -i THEIR.key -o clip.mp4 {self.copy_id}.age"


def share_event(owner: Owner, event: Event, client: BridgeClient, recipient: str) -> Shared:
    """Re-encrypt `event` to `recipient`, upload the copy and have the bridge record the share
    (the copy is removed again when the bridge certainly did not). Raises OwnerError."""
    clip = event.live[0]  # the share's source in the manifest; the copy holds the event
    root = event.view.layout.root
    with tempfile.TemporaryDirectory(prefix="obscura-share-") as tmp:
        copy = Path(tmp) / "copy.age"
        try:
            size, sha = _reencrypt(owner, event, Path(tmp), copy, recipient)
        except OwnerError as e:
            raise OwnerError(f"{e}; nothing shared") from None
        copy_id = secrets.token_hex(16)
        name = f"{root}/{copy_id}"
        owner.bucket.run(owner.bucket.bucket.put(name, copy))
    body = {"object": clip.id, "copy": copy_id, "recipient": recipient, "sha256": sha,
            "size": size}
    try:
        # The challenge is asked for only now: re-encrypting and uploading may take longer
        # than it lives.
        answer = client.post("/shares", body)
    except BridgeError as e:
        if not e.refused:
            # It may be recording the share right now (re-reading the copy takes a while):
            # removing the copy could leave a share in the log whose copy is missing.
            raise OwnerError(_unsure_share(e, clip, recipient, name, copy_id)) from None
        try:
            owner.bucket.run(owner.bucket.bucket.delete(name))  # never an unrecorded copy
        except Exception as gone:
            raise OwnerError(
                f"the share was not recorded: {e}. Its copy {name} could not be removed "
                f"({gone}): `obscura clips delete {copy_id}` removes it"
            ) from None
        raise OwnerError(f"the share was not recorded, its copy is removed: {e}") from None
    return Shared(clip, recipient, name, copy_id, answer)


def _unsure_share(
    e: BridgeError, clip: ClipInfo, recipient: str, name: str, copy_id: str
) -> str:
    return (
        f"{e}: the share of clip {clip.id} with {recipient} may or may not be recorded. Its "
        f"copy stays in the bucket as {name}. In a few minutes, run `obscura clips list`: if it "
        f"shows the clip shared as {copy_id}, the share is done. If not, and `obscura clips "
        f"verify` reports `forged object {copy_id}`, the bridge did not record it: run "
        f"`obscura clips delete {copy_id}` to remove the copy (or share again)"
    )


def _reencrypt(
    owner: Owner, event: Event, tmp: Path, dst: Path, recipient: str
) -> tuple[int, str]:
    """Re-encrypt the event (its parts joined into one MP4, bridge/owner/events.py) for
    `recipient` into `dst` as a stream; (size, SHA-256) of the copy, checked as clip-format.md
    §7 step 3 says.

    A fresh file key, not share_copy's re-wrap: the copy is unlinkable to its source (the
    operator cannot see *that* a clip was shared) and age's "one file key per file" holds."""
    written = hashlib.sha256()
    with open(dst, "wb") as out:

        class Tee:
            def write(self, data: bytes | bytearray | memoryview) -> int:
                written.update(data)
                out.write(data)
                return len(memoryview(data))

        with AgeWriter([recipient], Tee()) as writer:
            decrypt_event(owner, event, tmp, writer.write, f"clip {event.id[:8]}")
    reread, n = hashlib.sha256(), 0
    with open(dst, "rb") as f:  # what is uploaded must be what was written
        while data := f.read(CHUNK):
            reread.update(data)
            n += len(data)
    expected = encrypted_size(writer.plaintext_size, 1)
    if not n == writer.size == expected:
        raise OwnerError(f"the share copy is {n} bytes, not the {expected} age predicts")
    if reread.digest() != written.digest():
        raise OwnerError("the share copy changed on disk after it was written; nothing shared")
    return n, reread.hexdigest()


def _confirm(question: str) -> bool:
    if not sys.stdin or not sys.stdin.isatty():
        raise OwnerError("not deleting without confirmation: stdin is not a terminal (use --yes)")
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


@dataclass
class Deletion:
    """What `clips delete ID` removes: a clip with its poster and live share copies, one share
    copy, or one object the manifest does not record (`unrecorded`: an owner's share copy the
    bridge never recorded, reported as forged by `clips verify`)."""

    view: BridgeView
    objects: list[str]
    what: str
    unrecorded: bool = False


def clip_objects(clip: ClipInfo) -> list[str]:
    """The objects of `clip` the bridge still holds: the bridge refuses a deletion naming an
    object it no longer holds (a poster the spool evicted, a share copy deleted before)."""
    poster = [clip.thumb] if clip.thumb and not clip.thumb_deleted else []
    return [clip.id, *poster, *(s.copy for s in clip.shares if not s.deleted)]


def find_deletion(views: list[BridgeView], wanted: str) -> Deletion:
    """The clip, share copy or unrecorded object `wanted` (an id or a unique prefix) names."""
    q = wanted.lower()
    clip_hits = [(v, c) for v in views for c in v.report.clips if c.id.startswith(q)]
    copy_hits = [
        (v, c, s) for v in views for c in v.report.clips for s in c.shares
        if s.copy.startswith(q)
    ]
    forged = [
        (v, p.object) for v in views for p in v.report.problems
        if p.kind == "forged" and p.object and p.object.startswith(q)
    ]
    if not (clip_hits or copy_hits or forged):
        raise OwnerError(
            f"no clip, share copy or unrecorded object {wanted} in the bucket (see `obscura "
            "clips list`, and `clips verify` for objects the manifest does not record)"
        )
    if len(clip_hits) + len(copy_hits) + len(forged) > 1:
        raise OwnerError(f"id {wanted} is ambiguous: give more digits")
    if clip_hits:
        view, clip = clip_hits[0]
        event = next(e for e in events(view) if clip in e.parts)
        if event.deleted:
            raise OwnerError(f"clip {event.id} was deleted ({event.deleted})")
        copies = sum(1 for s in event.shares if not s.deleted)
        parts = len(event.live)
        what = f"clip {event.id} ({event.camera!r})" + (
            f" in {parts} parts" if parts > 1 else ""
        ) + (
            f" and its {copies} share cop{'y' if copies == 1 else 'ies'}" if copies else ""
        )
        return Deletion(view, [o for p in event.live for o in clip_objects(p)], what)
    if copy_hits:
        view, clip, share = copy_hits[0]
        if share.deleted:
            raise OwnerError(f"share copy {share.copy} was deleted ({share.deleted})")
        what = f"share copy {share.copy} (clip {clip.id} shared with {share.recipient})"
        return Deletion(view, [share.copy], what)
    view, oid = forged[0]
    return Deletion(view, [oid], f"object {oid}, which the manifest does not record",
                    unrecorded=True)


def cmd_delete(args: argparse.Namespace) -> int:
    owner = Owner(args)
    try:
        views = owner.all(deep=False)
        report_problems(views, strict=True)
        target = find_deletion(views, args.id)
        client = BridgeClient(owner.config, owner.identities, args.url)
        client.check(target.view.bridge_id)
        question = f"Delete {target.what} from the bucket for good?"
        if target.unrecorded:
            question = (
                f"{target.what} (`clips verify`: forged), e.g. the copy of a share the bridge "
                f"did not record. {question}"
            )
        if not args.yes and not _confirm(question):
            print("Nothing deleted.")
            return 1
        try:
            answer = client.post("/deletions", {"objects": target.objects})
        except BridgeError as e:
            if not e.refused:
                raise OwnerError(
                    f"{e}: the deletion may or may not be recorded. In a minute, `obscura clips "
                    "list --all` shows what was deleted by the owner; if this was not, run this "
                    "command again"
                ) from None
            # Not the bridge's either (its index is what it records): the owner's own upload.
            if not (target.unrecorded and e.status == 404 and "not a live object" in e.detail):
                raise
            [oid] = target.objects
            owner.bucket.run(owner.bucket.bucket.delete(f"{target.view.layout.root}/{oid}"))
            print(f"Deleted {target.what}: the bridge did not record it either, so there is "
                  "nothing to log; `obscura clips verify` no longer reports it.")
            return 0
    finally:
        owner.close()
    seq = answer.get("seq")
    if target.unrecorded:
        print(f"The bridge had recorded {target.objects[0]} (its manifest head was not in the "
              f"bucket yet): deleted, and recorded as deleted by the owner (manifest seq {seq}).")
    else:
        print(f"Deleted {target.what}: {len(target.objects)} object(s) (manifest seq {seq}).")
    pending = answer.get("pending") or []
    if answer.get("published") is False:
        print(
            f"warning: the bridge recorded the deletion (manifest seq {seq}) but could not get "
            "its new manifest head into the bucket within 30 s, so the objects are still there "
            "and `clips list` still shows them as live. The bridge keeps trying, and deletes "
            "them on its first retention pass after that; `obscura doctor` on the bridge checks "
            "the bucket.",
            file=sys.stderr,
        )
    elif pending:
        print(
            f"warning: {len(pending)} object(s) are recorded as deleted but still in the bucket; "
            "the bridge removes them on its next retention pass",
            file=sys.stderr,
        )
    print("`obscura clips list --all` and `clips verify` show it as deleted by the owner.")
    return 0
