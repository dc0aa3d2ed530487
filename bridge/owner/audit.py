"""The owner's view of the bucket: every bridge in it, verified against its manifest.

Per bridge id the owner keeps the pinned bridge key and the verifier state (docs/manifest.md
§7-8) in `state_dir/<bridge_id>.json`, so a rollback or fork is noticed across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

from bridge.config import ConfigError, find_config, load_config
from bridge.store.bucket import Bucket, BucketLayout, open_bucket
from crypto.age_keys import X25519Identity, load_identities
from crypto.manifest import ClipInfo, ManifestVerifier, Report, VerifierState
from crypto.manifest_format import FormatError
from crypto.signing import BridgeKeyError, BridgePublicKey

T = TypeVar("T")
HEAD = "manifest-head"
CHUNK = 4 << 20
#: Problems that make the manifest itself untrustworthy: commands that act on it refuse to go on.
FATAL = {"head", "key", "signature", "fork", "rollback", "segment"}


class OwnerError(Exception):
    """A failure to report in one line (exit status 1)."""


def default_state_dir() -> Path:
    env = os.environ.get("OBSCURA_OWNER_STATE_DIR")
    return Path(env) if env else Path(platformdirs.user_state_dir("obscura")) / "owner"


class SyncBucket:
    """The async Bucket driven from synchronous code (the verifier's get/list are sync)."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self._loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def list(self, prefix: str = "") -> list[tuple[str, int]]:
        async def collect() -> list[tuple[str, int]]:
            return [item async for item in self.bucket.list(prefix)]

        return self.run(collect())

    def get(self, name: str) -> bytes | None:
        return self.run(self.bucket.get(name))

    def close(self) -> None:
        self.run(self.bucket.close())
        self._loop.close()


@dataclass
class BridgeView:
    bridge_id: str
    layout: BucketLayout
    report: Report
    state_path: Path


class Owner:
    """The bucket of the config's [storage], the owner's identities and the local state."""

    def __init__(self, args: argparse.Namespace) -> None:
        path = find_config(args.config)
        if path is None or not path.exists():
            raise ConfigError(args.config or "obscura.toml", "", "no configuration file")
        config = load_config(path)
        if config.storage is None:
            raise ConfigError(path, "storage", "no [storage] table: there is no bucket to read")
        self.config = config
        self.identities: list[X25519Identity] = load_identities(args.identity)
        self.bucket = SyncBucket(
            open_bucket(config.storage.bucket, config.storage.credentials_file)
        )
        self.state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
        self.pin: str | None = getattr(args, "bridge_key", None)
        self.only: str | None = getattr(args, "bridge", None)

    def close(self) -> None:
        self.bucket.close()

    def bridges(self) -> list[str]:
        ids = sorted(BucketLayout.bridge_ids([n for n, _ in self.bucket.list("")]))
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

    def _load_state(self, path: Path) -> VerifierState | None:
        try:
            return VerifierState.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except FormatError as e:
            raise OwnerError(f"{path}: {e}") from None

    def _save_state(self, path: Path, state: VerifierState) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as out:
            out.write(state.to_json() + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    def verify(self, bridge_id: str, deep: bool) -> BridgeView:
        layout = BucketLayout(bridge_id)
        head_id = layout.object_id(layout.well_known_name(HEAD))
        assert head_id is not None
        state_path = self.state_dir / f"{bridge_id}.json"
        state = self._load_state(state_path)
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

        report = ManifestVerifier(
            self.identities,
            head_id=head_id,
            list=listing,
            pinned_key=pin,
            state=state,
            get=lambda oid: self.bucket.get(f"{layout.root}/{oid}"),
            deep=deep,
        ).verify()
        if report.state is not None:
            if state is None:
                report.notices.append(
                    f"bridge {bridge_id}: pinned key {report.state.bridge_key} in {state_path}"
                )
            self._save_state(state_path, report.state)
        return BridgeView(bridge_id, layout, report, state_path)

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


def report_problems(views: list[BridgeView], strict: bool) -> None:
    """Notices and problems on stderr; with `strict`, stop if a manifest is untrustworthy."""
    for v in views:
        for notice in v.report.notices:
            print(f"note: {notice}", file=sys.stderr)
        for p in v.report.problems:
            print(f"warning: bridge {v.bridge_id}: {p.message}", file=sys.stderr)
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
