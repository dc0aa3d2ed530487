"""`obscura clips share|delete`: changes the running bridge records in the manifest, asked for
with a proof of the owner's identity (bridge/owner/proof.py)."""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
import tempfile
from pathlib import Path

from bridge.owner.audit import CHUNK, BridgeView, Owner, OwnerError, report_problems
from bridge.owner.bridge_client import BridgeClient
from crypto.age import AgeError, AgeReader, AgeWriter, encrypted_size
from crypto.age_keys import X25519Identity, X25519Recipient
from crypto.manifest_report import ClipInfo


def _target(owner: Owner, args: argparse.Namespace) -> tuple[BridgeView, ClipInfo, BridgeClient]:
    """The clip, from the verified manifest, and the bridge that must record the change."""
    views = owner.all(deep=False)
    report_problems(views, strict=True)
    view, clip = owner.find_clip(views, args.id)
    client = BridgeClient(owner.config, owner.identities, args.url)
    client.check(view.bridge_id)
    return view, clip, client


def cmd_share(args: argparse.Namespace) -> int:
    try:
        recipient = str(X25519Recipient.parse(args.to.strip()))
    except AgeError as e:
        raise OwnerError(f"--to {args.to!r} is not an age recipient: {e}") from None
    owner = Owner(args)
    try:
        view, clip, client = _target(owner, args)
        root = view.layout.root
        with tempfile.TemporaryDirectory(prefix="obscura-share-") as tmp:
            enc, copy = Path(tmp) / "clip.age", Path(tmp) / "copy.age"
            owner.download(f"{root}/{clip.id}", clip.sha256, clip.size, enc, f"clip {clip.id[:8]}")
            try:
                size, sha = _reencrypt(owner.identities, enc, copy, recipient)
            except AgeError as e:
                raise OwnerError(f"clip {clip.id}: cannot decrypt ({e}); nothing shared") from None
            copy_id = secrets.token_hex(16)
            name = f"{root}/{copy_id}"
            owner.bucket.run(owner.bucket.bucket.put(name, copy))
        body = {"object": clip.id, "copy": copy_id, "recipient": recipient, "sha256": sha,
                "size": size}
        try:
            # The challenge is asked for only now: re-encrypting and uploading may take longer
            # than it lives.
            seq = client.post("/shares", body).get("seq")
        except OwnerError as e:
            owner.bucket.run(owner.bucket.bucket.delete(name))  # never leave an unrecorded copy
            raise OwnerError(f"the share was not recorded, its copy is removed: {e}") from None
    finally:
        owner.close()
    print(f"Shared clip {clip.id} with {recipient}: object {name} (manifest seq {seq}).")
    print(f"They run: age -d -i THEIR.key -o clip.mp4 {copy_id}.age   (after fetching {name})")
    print("A share cannot be revoked once downloaded; it is listed by `obscura clips list`.")
    return 0


def _reencrypt(
    identities: list[X25519Identity], src: Path, dst: Path, recipient: str
) -> tuple[int, str]:
    """Re-encrypt `src` for `recipient` into `dst` as a stream; (size, SHA-256) of the copy,
    checked as clip-format.md §7 step 3 says.

    A fresh file key, not share_copy's re-wrap: the copy is unlinkable to its source (the
    operator cannot see *that* a clip was shared) and age's "one file key per file" holds."""
    written = hashlib.sha256()
    with open(src, "rb") as inp, open(dst, "wb") as out:

        class Tee:
            def write(self, data: bytes | bytearray | memoryview) -> int:
                written.update(data)
                out.write(data)
                return len(memoryview(data))

        with AgeWriter([recipient], Tee()) as writer:
            for chunk in AgeReader(identities, inp).chunks():
                writer.write(chunk)
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


def cmd_delete(args: argparse.Namespace) -> int:
    owner = Owner(args)
    try:
        _, clip, client = _target(owner, args)
        copies = [s.copy for s in clip.shares if not s.deleted]
        objects = [clip.id, *([clip.thumb] if clip.thumb else []), *copies]
        what = f"clip {clip.id} ({clip.camera!r})" + (
            f" and its {len(copies)} share cop{'y' if len(copies) == 1 else 'ies'}"
            if copies else ""
        )
        if not args.yes and not _confirm(f"Delete {what} from the bucket for good?"):
            print("Nothing deleted.")
            return 1
        answer = client.post("/deletions", {"objects": objects})
    finally:
        owner.close()
    print(f"Deleted {what}: {len(objects)} object(s) (manifest seq {answer.get('seq')}).")
    if pending := answer.get("pending"):
        print(
            f"warning: {len(pending)} object(s) are recorded as deleted but still in the bucket; "
            "the bridge removes them on its next retention pass",
            file=sys.stderr,
        )
    print("`obscura clips list --all` and `clips verify` show it as deleted by the owner.")
    return 0
