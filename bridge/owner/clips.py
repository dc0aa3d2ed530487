"""`obscura clips list|get|verify` (and share|delete, clips_write.py): the owner's tools over the
bucket (docs/manifest.md)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bridge.owner.audit import GONE, BridgeView, Owner, OwnerError, report_problems
from bridge.owner.clips_play import add_play_parser
from bridge.owner.clips_write import cmd_delete, cmd_share
from bridge.owner.events import Event, decrypt_event, events, find_event
from crypto.age import AgeError, decrypt_file
from crypto.manifest_report import local_time

#: How `clips list` and `clips verify` name a deletion's reason (docs/manifest.md §4).
DELETED = {
    "owner": "deleted by the owner",
    "retention": "deleted by retention",
    "evicted": "never uploaded (spool full)",
}


#: Local time with its UTC offset, everywhere (list, get, verify and the verifier's messages).
_when = local_time


def parse_since(text: str) -> float:
    """'2h', '30m', '3d', '45s' ago, or an ISO date/time (local time unless it says)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return time.time() - float(m.group(1)) * unit
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: use e.g. 2h, 3d or 2026-11-25T08:00"
        ) from None
    return (dt if dt.tzinfo else dt.astimezone()).timestamp()


def _recipients(owner: Owner, recipients: tuple[str, ...]) -> list[dict]:
    return [{"recipient": r, "yours": r in owner.mine} for r in recipients]


def _clip_dict(owner: Owner, v: BridgeView, c: Event) -> dict:
    poster = c.poster
    return {
        "bridge": v.bridge_id,
        "id": c.id,
        "camera": c.camera,
        "start": _when(c.start_ms),
        "end": _when(c.end_ms),
        "start_ms": c.start_ms,
        "end_ms": c.end_ms,
        "duration_s": c.duration_s,
        "subjects": list(c.subjects),
        "size": c.size,
        "poster": poster.thumb if poster else None,
        "poster_deleted": None if poster or not c.parts[0].thumb else c.parts[0].thumb_deleted,
        "deleted": c.deleted,
        # The parts it was sealed in (docs/clip-format.md §8) and whether its last one is there.
        "parts": [
            {"id": p.id, "part": p.part, "final": p.final, "deleted": p.deleted,
             "start_ms": p.start_ms, "end_ms": p.end_ms, "size": p.size}
            for p in c.parts
        ],
        "state": c.state(),
        "missing_parts": c.missing,
        "shares": [
            {"copy": s.copy, "recipient": s.recipient, "deleted": s.deleted, "source": s.source}
            for s in c.shares
        ],
        # Who can open this clip (the set when it was recorded), and the bridge's set now.
        "recipients": _recipients(owner, c.recipients),
        "bridge_recipients": _recipients(owner, v.report.recipients),
    }


def cmd_list(args: argparse.Namespace) -> int:
    owner = Owner(args)
    try:
        views = owner.all(deep=False)
        report_problems(views, strict=True)
    finally:
        owner.close()
    since_ms = int(args.since * 1000) if args.since is not None else None
    rows = [
        (v, c)
        for v in views
        for c in events(v)
        if (args.all or not c.deleted)
        and (args.camera is None or c.camera == args.camera)
        and (args.subject is None or args.subject in c.subjects)
        and (since_ms is None or c.end_ms >= since_ms)
    ]
    # A bridge whose objects all vanished has no clips to show, but it is not forgotten.
    status = 1 if any(p.kind == GONE for v in views for p in v.report.problems) else 0
    if args.json:
        print(json.dumps([_clip_dict(owner, v, c) for v, c in rows], indent=2))
        return status
    for v in views:
        if v.report.recipients:
            prefix = f"bridge {v.bridge_id} " if len(views) > 1 else ""
            print(f"{prefix}clips are encrypted to: {owner.describe(v.report.recipients)}")
    if not rows:
        print("no clips" + (" match" if args.camera or args.subject or args.since else ""))
    hidden = sum(1 for v in views for c in events(v) if c.deleted and not args.all)
    if hidden:
        print(f"({hidden} deleted clip(s) not shown: --all lists them)", file=sys.stderr)
    for v, c in rows:
        seconds = c.duration_s
        subjects = ",".join(c.subjects) or "-"
        first = c.parts[0]
        extra = f"  {_deleted(c.deleted)}" if c.deleted else (
            f"  {_poster_gone(first.thumb_deleted)}" if first.thumb_deleted and not c.poster
            else ""
        )
        extra += _parts_note(c)
        print(
            f"{c.id}  {_when(c.start_ms)}  {seconds:5.1f}s  {c.camera!r:<20} {subjects:<12} "
            f"{c.size / 1e6:6.2f} MB{extra}" + (f"  bridge {v.bridge_id}" if len(views) > 1 else "")
        )
        if c.recipients and set(c.recipients) != set(v.report.recipients):
            print(f"    encrypted to: {owner.describe(c.recipients)}")
        for s in c.shares:
            gone = f" (copy {_deleted(s.deleted)})" if s.deleted else ""
            # A share of an event is one copy of all its parts joined, recorded against a part.
            part = next((p for p in c.parts if s.source in (p.id, p.thumb)), None)
            what = "" if part is not None and s.source == part.id else (
                " (its poster)" if part is not None else f" (re-shared copy {s.source})"
            )
            print(f"    shared with {s.recipient} as {s.copy}{what}{gone}")
    return status


def _parts_note(c: Event) -> str:
    """How the event's parts stand, when that is worth a word."""
    notes = []
    state = c.state()
    if state != "complete":
        notes.append("still recording" if state == "recording" else
                     "cut short (the bridge stopped while recording it)")
    if c.missing:
        notes.append(f"{len(c.missing)} part(s) lost")
    gone = [p for p in c.parts if p.deleted] if not c.deleted else []
    if gone:
        notes.append(f"{len(gone)} part(s) {_deleted(gone[0].deleted or '')}")
    return "".join(f"  [{n}]" for n in notes)


def _deleted(reason: str) -> str:
    return DELETED.get(reason, f"deleted ({reason})")


def _poster_gone(reason: str) -> str:
    """A live clip whose poster alone was deleted: the spool evicted it (an outage long enough
    to fill it) after the clip had uploaded."""
    return f"poster {_deleted(reason)}"


def _fetch_and_decrypt(owner: Owner, name: str, sha: str, size: int, out: Path, label: str) -> int:
    out = out.resolve()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".obscura-") as tmp:
        enc = Path(tmp) / "object.age"
        owner.download(name, sha, size, enc, label)
        try:
            # Plaintext into a temp file next to `out`, renamed only once fully authenticated.
            return decrypt_file(owner.identities, enc, out)
        except AgeError as e:
            raise OwnerError(f"{label}: cannot decrypt ({e})") from None


def _save_event(owner: Owner, event: Event, out: Path) -> int:
    """The event's parts, joined, into `out` (a temp file beside it, renamed once complete)."""
    out = out.resolve()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".obscura-") as tmp:
        plain = Path(tmp) / "clip.mp4"
        with plain.open("wb") as f:
            decrypt_event(owner, event, Path(tmp), f.write, f"clip {event.id[:8]}")
        n = plain.stat().st_size
        plain.replace(out)
    return n


def cmd_get(args: argparse.Namespace) -> int:
    owner = Owner(args)
    try:
        views = owner.all(deep=False)
        report_problems(views, strict=True)
        event = find_event(views, args.id)
        root = event.view.layout.root
        if len(event.live) == 1:  # exactly the stored plaintext
            only = event.live[0]
            n = _fetch_and_decrypt(
                owner, f"{root}/{only.id}", only.sha256, only.size, Path(args.output),
                f"clip {only.id[:8]}",
            )
        else:
            n = _save_event(owner, event, Path(args.output))
        parts = f", {len(event.live)} parts joined" if len(event.live) > 1 else ""
        print(f"{args.output}: {n} bytes, {event.camera!r} {_when(event.start_ms)}{parts}")
        clip = event.poster or event.parts[0]
        if args.poster:
            if clip.thumb is None or clip.thumb_sha256 is None or clip.thumb_size is None:
                print("this clip has no poster", file=sys.stderr)
            elif clip.thumb_deleted:
                print(f"no poster saved: {_poster_gone(clip.thumb_deleted)}", file=sys.stderr)
            else:
                _fetch_and_decrypt(
                    owner,
                    f"{root}/{clip.thumb}",
                    clip.thumb_sha256,
                    clip.thumb_size,
                    Path(args.poster),
                    "poster",
                )
                print(f"{args.poster}: poster")
    finally:
        owner.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    owner = Owner(args)
    try:
        bridges = owner.bridges()
        if not bridges:
            print("the bucket holds no bridge's objects (and no bridge was verified in it before)")
            return 0
        bad = 0
        for bid in bridges:
            view = owner.verify(bid, deep=not args.quick)
            r = view.report
            for notice in r.notices:
                print(f"note: {notice}", file=sys.stderr)
            if r.not_recipient:
                print(f"bridge {bid}: {view.not_recipient()}")
                bad += 1
                continue
            for p in r.problems:
                print(f"bridge {bid}: {p.message}")
            bad += len(r.problems)
            if not r.problems:
                live = sum(1 for c in events(view) if not c.deleted)
                seq = r.head.seq if r.head else "?"
                print(f"bridge {bid}: OK ({live} clips, manifest seq {seq})")
            if r.recipients:
                print(f"bridge {bid}: clips are encrypted to: {owner.describe(r.recipients)}")
            # Recorded, not prevented (docs/threat-model.md): fail once, so a cron job tells.
            for w in view.warnings:
                print(f"bridge {bid}: WARNING: {w}")
            bad += len(view.warnings)
            # Listed, not a problem: the signed log says the owner asked for these.
            for c in events(view):
                if c.deleted == "owner":
                    print(f"bridge {bid}: clip {c.id} ({c.camera!r}, {_when(c.start_ms)}) "
                          "deleted by the owner")
    finally:
        owner.close()
    return 1 if bad else 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    clips = sub.add_parser(
        "clips", help="list, fetch, play, verify, share and delete recorded clips"
    )
    cs = clips.add_subparsers(dest="clips_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", metavar="FILE", help="configuration file ([storage])")
        p.add_argument(
            "--identity", "-i", required=True, metavar="FILE", help="the owner's age identity file"
        )
        p.add_argument(
            "--state-dir",
            metavar="DIR",
            help="pinned keys and verifier state (default: "
            "$OBSCURA_OWNER_STATE_DIR or the user state dir)",
        )
        p.add_argument("--bridge", metavar="ID", help="only this bridge id")
        p.add_argument(
            "--bridge-key",
            metavar="obscura-bridge1…",
            help="pin this bridge key (from the bridge's own log or status)",
        )
        return p

    ls = common(cs.add_parser("list", help="clips in the manifest, with their shares"))
    ls.add_argument("--camera", metavar="NAME")
    ls.add_argument("--since", type=parse_since, metavar="WHEN", help="e.g. 2h, 3d, 2026-11-25")
    ls.add_argument("--subject", metavar="LABEL", help="e.g. person, vehicle, animal")
    ls.add_argument("--all", action="store_true", help="include deleted clips")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    get = common(cs.add_parser("get", help="download and decrypt one clip"))
    get.add_argument("id", help="clip id (or a unique prefix)")
    get.add_argument("-o", "--output", required=True, metavar="FILE.mp4")
    get.add_argument("--poster", metavar="FILE.jpg", help="also save the poster image")
    get.set_defaults(func=cmd_get)
    ver = common(cs.add_parser("verify", help="full audit of the bucket against the manifest"))
    ver.add_argument("--quick", action="store_true", help="sizes only, no download of clips")
    ver.set_defaults(func=cmd_verify)
    sh = common(cs.add_parser("share", help="re-encrypt one clip for someone else's age key"))
    sh.add_argument("id", help="clip id (or a unique prefix)")
    sh.add_argument("--to", required=True, metavar="AGE1…")
    sh.set_defaults(func=cmd_share)
    rm = common(cs.add_parser(
        "delete", help="delete one clip, its poster and its share copies; or one share copy"
    ))
    rm.add_argument(
        "id",
        help="clip id: the clip, its poster and share copies; a share copy id: that copy only; "
        "the id of an object the manifest does not record (`clips verify`: forged): that object "
        "(or a unique prefix of any)",
    )
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(func=cmd_delete)
    add_play_parser(cs, common)
    for p in (sh, rm):  # the bridge records these in the manifest: it must be running
        p.add_argument(
            "--url", metavar="URL", help="the bridge's status API (default: from the config)"
        )
