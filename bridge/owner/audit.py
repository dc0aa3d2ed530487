"""The owner's view of the bucket: every bridge in it, verified against its manifest.

Per bridge id the owner keeps the pinned bridge key and the verifier state (docs/manifest.md
§7-8) in `state_dir/<bridge_id>.json`, with the bucket it was verified in, so a rollback or fork
is noticed across runs, and so is a bridge whose objects all vanished from that bucket.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from bridge.config import Config, ConfigError, ConfigNotFound, find_config, load_config
from bridge.owner.sync_bucket import CHUNK, READAHEAD_MAX_OBJECT, SyncBucket
from bridge.store.bucket import BucketLayout, open_bucket
from crypto.age_keys import X25519Identity, load_identities
from crypto.manifest_format import FormatError
from crypto.manifest_report import RecipientChange, local_time
from crypto.manifest_verify import (
    MAX_MANIFEST_OBJECT,
    ClipInfo,
    ManifestVerifier,
    Problem,
    Report,
    VerifierState,
)
from crypto.signing import BridgeKeyError, BridgePublicKey

HEAD = "manifest-head"
#: Problems that make the manifest itself untrustworthy: commands that act on it refuse to go on.
FATAL = {"head", "key", "signature", "fork", "rollback", "segment"}
#: A remembered bridge with no object left in the bucket: reported, but other bridges' clips
#: can still be listed and fetched.
GONE = "gone"
_STATE_NAME = re.compile(r"^[0-9a-f]{16}\.json$")
_OBJECT_ID = re.compile(r"^[0-9a-f]{32}$")


class OwnerError(Exception):
    """A failure to report in one line (exit status 1)."""


def default_state_dir() -> Path:
    env = os.environ.get("OBSCURA_OWNER_STATE_DIR")
    return Path(env) if env else Path(platformdirs.user_state_dir("obscura")) / "owner"


@dataclass
class BridgeView:
    bridge_id: str
    layout: BucketLayout
    report: Report
    state_path: Path
    identity: str = ""  # the identity file, for messages
    #: Loud, not fatal: recipient changes since the owner last verified.
    warnings: list[str] = field(default_factory=list)

    def not_recipient(self) -> str:
        return (
            f"{self.identity or 'this identity'} is not a recipient of bridge {self.bridge_id}: "
            "it opens none of its manifest (wrong --identity, or the bridge no longer encrypts "
            "to this key)"
        )


class Owner:
    """The bucket of the config's [storage], the owner's identities and the local state."""

    def __init__(self, args: argparse.Namespace) -> None:
        # `--bucket URL` (the review app) needs no config file: it reads the bucket, and the
        # bridge is reached only for shares and deletions (then through --url or the config).
        bucket_url: str | None = getattr(args, "bucket", None)
        credentials: Path | None = getattr(args, "credentials_file", None)
        self.config: Config | None = None
        if bucket_url is None or getattr(args, "config", None):
            path = find_config(args.config)
            if path is None or not path.exists():
                raise ConfigNotFound(args.config, "its [storage] table names the bucket")
            # Only [storage].bucket is needed: these tools read with the identity, and the
            # recipients (maybe none, with recording off) are the bridge's business.
            config = load_config(path)
            if config.storage is None and bucket_url is None:
                raise ConfigError(path, "storage", "no [storage] table: there is no bucket to read")
            self.config = config
            if bucket_url is None:
                assert config.storage is not None
                bucket_url, credentials = config.storage.bucket, config.storage.credentials_file
        assert bucket_url is not None
        self.bucket_url = bucket_url
        self.identity_file = str(args.identity)
        self.identities: list[X25519Identity] = load_identities(args.identity)
        self.mine = {str(i.recipient) for i in self.identities}
        self.bucket = SyncBucket(open_bucket(bucket_url, credentials))
        self.state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
        self.pin: str | None = getattr(args, "bridge_key", None)
        self.only: str | None = getattr(args, "bridge", None)

    def close(self) -> None:
        self.bucket.close()

    def remembered(self) -> set[str]:
        """Bridges verified before in this bucket: still audited when none of their objects
        is listed any more (deleting a whole prefix must not make a bridge vanish quietly)."""
        out = set()
        for path in self.state_dir.glob("*.json") if self.state_dir.is_dir() else ():
            if _STATE_NAME.match(path.name) and self._load_state(path)[1] == self.bucket_url:
                out.add(path.stem)
        return out

    def bridges(self) -> list[str]:
        listed = BucketLayout.bridge_ids([n for n, _ in self.bucket.list("")])
        ids = sorted(listed | self.remembered())
        if self.only:
            if self.only not in ids:
                raise OwnerError(f"bridge {self.only} has no objects in the bucket")
            ids = [self.only]
        if self.pin and len(ids) > 1:
            raise OwnerError(
                "--bridge-key pins one bridge: several are in the bucket, "
                f"choose one with --bridge ({', '.join(ids)})"
            )
        return ids

    def _load_state(self, path: Path) -> tuple[VerifierState | None, str | None]:
        """The verifier state and the bucket it was verified in (None: an older file)."""
        try:
            text = path.read_text()
            state = VerifierState.from_json(text)
            bucket = json.loads(text).get("bucket")
        except FileNotFoundError:
            return None, None
        except FormatError as e:
            raise OwnerError(f"{path}: {e}") from None
        return state, bucket if isinstance(bucket, str) else None

    def _save_state(self, path: Path, state: VerifierState) -> None:
        _write_json(path, {**json.loads(state.to_json()), "bucket": self.bucket_url})

    def _chain_guess(self, path: Path) -> list[str]:
        """The segment ids of the chain verified last time in this bucket, newest first: what
        the next walk will most likely read, in its order (only a guess: see sync_bucket)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return []  # none yet, or unreadable: the walk reads one segment at a time
        if not isinstance(data, dict) or data.get("bucket") != self.bucket_url:
            return []
        ids = data.get("segments")
        if not isinstance(ids, list):
            return []
        return [i for i in ids if isinstance(i, str) and _OBJECT_ID.match(i)]

    def _save_chain_guess(self, path: Path, ids: dict[int, str]) -> None:
        newest_first = [ids[seq] for seq in sorted(ids, reverse=True)]
        _write_json(path, {"bucket": self.bucket_url, "segments": newest_first})

    def verify(
        self, bridge_id: str, deep: bool, on_walk: Callable[[BridgeView], None] | None = None
    ) -> BridgeView:
        """The bridge's manifest verified; `on_walk` is given views of the newest segments
        while the walk goes on (ManifestVerifier's on_walk), for a page that shows them early."""
        layout = BucketLayout(bridge_id)
        head_id = layout.object_id(layout.well_known_name(HEAD))
        assert head_id is not None
        state_path = self.state_dir / f"{bridge_id}.json"
        state = self._load_state(state_path)[0]
        pin: BridgePublicKey | None = None
        if self.pin:
            try:
                pin = BridgePublicKey.parse(self.pin)
            except BridgeKeyError as e:
                raise OwnerError(f"--bridge-key: {e}") from None
            if state is not None and state.bridge_key != str(pin):
                raise OwnerError(
                    f"bridge {bridge_id}: {state_path} pins {state.bridge_key}, not {pin}. "
                    "If the bridge really was re-keyed, remove that file and pin again."
                )

        def listing() -> list[tuple[str, int]]:
            out = []
            for name, size in self.bucket.list(layout.root):
                oid = layout.object_id(name)
                if oid is not None:
                    out.append((oid, size))
            return out

        objects = listing()
        if not objects and state is not None:
            gone = self._gone(state, state_path)
            return BridgeView(bridge_id, layout, gone, state_path, self.identity_file)
        chain_path = self.state_dir / f"{bridge_id}.chain"
        # Only what the listing says is segment-sized is fetched ahead: the operator sets object
        # sizes, and a window of large objects held at once would be theirs to choose.
        small = {oid for oid, size in objects if size <= READAHEAD_MAX_OBJECT}
        guess = [f"{layout.root}/{oid}" for oid in self._chain_guess(chain_path) if oid in small]
        # Manifest objects only; the verifier refuses anything this large.
        with self.bucket.readahead(guess, MAX_MANIFEST_OBJECT + 1) as segments:
            report = ManifestVerifier(
                self.identities,
                head_id=head_id,
                list=lambda: objects,
                pinned_key=pin,
                state=state,
                get=lambda oid: segments.get(f"{layout.root}/{oid}"),
                hasher=lambda oid, limit: self.bucket.sha256(f"{layout.root}/{oid}", limit),
                deep=deep,
                on_walk=None if on_walk is None else lambda partial: on_walk(BridgeView(
                    bridge_id, layout, partial, state_path, self.identity_file
                )),
            ).verify()
        if report.state is not None:
            if state is None:
                report.notices.append(
                    f"bridge {bridge_id}: pinned key {report.state.bridge_key} in {state_path}"
                )
            self._save_state(state_path, report.state)
            self._save_chain_guess(chain_path, report.segment_ids)
        warnings = [self.change_line(c) for c in report.new_recipient_changes]
        return BridgeView(bridge_id, layout, report, state_path, self.identity_file, warnings)

    @staticmethod
    def _gone(state: VerifierState, state_path: Path) -> Report:
        return Report(problems=[Problem(GONE, (
            f"head missing (all its objects are gone?): the bucket lists none of its objects; "
            f"last verified at seq {state.seq}, heartbeat {local_time(state.time_ms)}. If you "
            f"retired this bridge on purpose, delete {state_path}"
        ))], verified_seq=state.seq)

    def describe(self, recipients: tuple[str, ...]) -> str:
        """Recipients, each key the owner's identities do not hold marked as such."""
        if not recipients:
            return "(none recorded)"
        return ", ".join(
            r if r in self.mine else f"{r} (not one of your identities)" for r in recipients
        )

    def change_line(self, c: RecipientChange) -> str:
        parts = [f"added {self.describe(c.added)}" if c.added else "",
                 f"removed {self.describe(c.removed)}" if c.removed else ""]
        return (
            f"recipients changed at seq {c.seq} ({local_time(c.time_ms)}), since you last "
            f"verified: {'; '.join(p for p in parts if p)}. Clips from then on are encrypted "
            f"to {self.describe(c.after)}"
        )

    def all(self, deep: bool = False) -> list[BridgeView]:
        return [self.verify(b, deep) for b in self.bridges()]

    def find_clip(self, views: list[BridgeView], clip_id: str) -> tuple[BridgeView, ClipInfo]:
        hits = [(v, c) for v in views for c in v.report.clips if c.id.startswith(clip_id.lower())]
        if not hits:
            raise OwnerError(f"no clip {clip_id} in the manifest (see `obscura clips list`)")
        if len(hits) > 1:
            raise OwnerError(f"clip id {clip_id} is ambiguous: give more digits")
        view, clip = hits[0]
        if clip.deleted:
            raise OwnerError(f"clip {clip.id} was deleted ({clip.deleted})")
        return view, clip

    def download(self, name: str, sha256: str, size: int, dst: Path, label: str) -> None:
        """Object `name` into `dst` in chunks, checked against the manifest's SHA-256 and size
        (which the bridge signed); a progress bar on stderr for large objects."""
        h = hashlib.sha256()
        n = 0
        show = size >= CHUNK
        with open(dst, "wb") as out:
            while n < size:
                data = self.bucket.run(self.bucket.bucket.get_range(name, n, min(size, n + CHUNK)))
                if data is None:
                    raise OwnerError(f"{label}: object {name} is missing from the bucket")
                if not data:
                    break
                out.write(data)
                h.update(data)
                n += len(data)
                if show:
                    _progress(label, n, size)
        if show:
            print(file=sys.stderr)
        if n < size:
            raise OwnerError(f"{label}: object {name} is truncated ({n} of {size} bytes)")
        info = self.bucket.run(self.bucket.bucket.head(name))
        if info is not None and info.size != size:
            raise OwnerError(
                f"{label}: object {name} is {info.size} bytes, not the recorded "
                f"{size} (swapped or altered)"
            )
        if h.hexdigest() != sha256:
            raise OwnerError(f"{label}: object {name}: SHA-256 mismatch (swapped or altered)")


def _write_json(path: Path, data: object) -> None:
    """Atomically, mode 0600 (mkstemp's), in a 0700 folder: the owner's state is private."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(data, sort_keys=True) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def report_problems(views: list[BridgeView], strict: bool) -> None:
    """Notices and problems on stderr; with `strict`, stop if a manifest is untrustworthy."""
    for v in views:
        for notice in v.report.notices:
            print(f"note: {notice}", file=sys.stderr)
        if v.report.not_recipient:
            if strict:
                raise OwnerError(v.not_recipient())
            print(f"warning: {v.not_recipient()}", file=sys.stderr)
            continue
        for p in v.report.problems:
            print(f"warning: bridge {v.bridge_id}: {p.message}", file=sys.stderr)
        for w in v.warnings:
            print(f"WARNING: bridge {v.bridge_id}: {w}", file=sys.stderr)
        if strict and any(p.kind in FATAL for p in v.report.problems):
            raise OwnerError(
                f"bridge {v.bridge_id}: the manifest does not verify; run `obscura clips verify`"
            )


def _progress(label: str, done: int, total: int, width: int = 30) -> None:
    filled = width * done // max(total, 1)
    bar = "#" * filled + "-" * (width - filled)
    print(
        f"\r{label} [{bar}] {done >> 20}/{total >> 20} MiB {100 * done // max(total, 1):3d}%",
        end="",
        file=sys.stderr,
        flush=True,
    )
