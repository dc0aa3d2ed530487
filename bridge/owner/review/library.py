"""The review app's picture of the bucket: verified manifests, events, filters and pages.

Loading verifies every bridge's manifest exactly as `obscura clips verify --quick` does
(bridge/owner/audit.py: pinned keys, rollback checks against the owner's saved state), on the
app's one owner thread (`OwnerThread`): the Owner drives its bucket through an event loop of
its own (SyncBucket), which must not be entered from two threads at once. The page polls
`status()` while it loads.

Events are kept newest first with an index by id; a page of the timeline is a filter and a
slice from a cursor (the last shown event's start and id), so paging stays stable while a
refresh adds newer events and stays fast with thousands of them (a bisect, not a scan, for
the cursor; filters are one pass over plain tuples).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from bridge.owner.audit import FATAL, BridgeView, Owner, OwnerError
from bridge.owner.events import Event, events
from bridge.store.bucket import BucketError

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_LIMIT = 200


class NoBucket(OwnerError):
    """A file:// bucket whose folder does not exist: a typo, not an empty bucket."""


def _bridges(owner: Owner) -> list[str]:
    where = urlsplit(owner.bucket_url)
    if where.scheme == "file" and not Path(unquote(where.path)).is_dir():
        raise NoBucket(f"the bucket {owner.bucket_url} does not exist (no such folder)")
    return owner.bridges()


class OwnerThread:
    """One thread for everything the Owner does (verify, share, delete): its bucket loop is
    not re-entrant, and the owner's state files are written by one writer."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="owner")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def close(self) -> None:
        await self.run(self.owner.close)
        self._pool.shutdown(wait=False)


@dataclass(frozen=True, slots=True)
class Query:
    cameras: frozenset[str] = frozenset()
    subjects: frozenset[str] = frozenset()
    start_ms: int | None = None  # events overlapping [start_ms, end_ms)
    end_ms: int | None = None
    before: tuple[int, str] | None = None  # the cursor: strictly older than this event
    limit: int = 50

    def wants(self, e: Event) -> bool:
        return (
            (not self.cameras or e.camera in self.cameras)
            and (not self.subjects or not self.subjects.isdisjoint(e.subjects))
            and (self.start_ms is None or e.end_ms >= self.start_ms)
            and (self.end_ms is None or e.start_ms < self.end_ms)
        )


def encode_cursor(e: Event) -> str:
    return base64.urlsafe_b64encode(f"{e.start_ms}:{e.id}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        ms, _, eid = raw.partition(":")
        return int(ms), eid
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("bad cursor") from None


def _key(e: Event) -> tuple[int, str]:
    return (e.start_ms, e.id)


@dataclass
class Library:
    owner: OwnerThread
    state: str = "loading"  # loading | ready | error
    #: While the first load walks the chain: the events of the segments verified so far.
    early: bool = False
    error: dict[str, str] | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    views: list[BridgeView] = field(default_factory=list)
    newest_first: list[Event] = field(default_factory=list)
    by_id: dict[str, Event] = field(default_factory=dict)
    cameras: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    #: Problems found while serving (a part that failed authentication), per bridge.
    served_problems: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _loading: asyncio.Task[None] | None = None

    # -- loading ------------------------------------------------------------------------------
    def refresh(self) -> asyncio.Task[None]:
        """(Re)load in the background; a refresh while one runs joins it."""
        if self._loading is None or self._loading.done():
            self._loading = asyncio.create_task(self._load(), name="review-load")
        return self._loading

    async def _load(self) -> None:
        self.state, self.error = "loading", None
        owner = self.owner.owner
        loop = asyncio.get_running_loop()
        first = not self.views  # a refresh keeps showing the last load until it is done
        try:
            ids = await self.owner.run(_bridges, owner)
            views: list[BridgeView] = []
            for n, bid in enumerate(ids):
                self.progress = {"done": n, "total": len(ids), "what": "bridges verified"}
                on_walk = None
                if first:
                    done = list(views)

                    def on_walk(v: BridgeView, done: list[BridgeView] = done, n: int = n) -> None:
                        loop.call_soon_threadsafe(self._walked, done, v, n, len(ids))

                views.append(await self.owner.run(owner.verify, bid, False, on_walk))
            self.progress = {"done": len(ids), "total": len(ids), "what": "bridges verified"}
        except (OwnerError, BucketError, OSError) as exc:
            self._fail(exc)
            return
        except Exception as exc:  # shown on the page, never a dead app
            log.exception("loading the manifest failed")
            self._fail(exc)
            return
        self._index(views)
        self.state, self.early = "ready", False
        if views and all(v.report.not_recipient for v in views):
            self.state = "error"
            self.error = {
                "kind": "not-recipient",
                "message": "this key opens none of these clips: it is not a recipient of any "
                f"bridge in the bucket ({owner.identity_file})",
            }
        log.info("review: %d bridge(s), %d event(s)", len(views), len(self.newest_first))

    def _walked(self, done: list[BridgeView], walking: BridgeView, n: int, total: int) -> None:
        """Part of the first load: the bridges verified, and the newest segments of the one
        being walked. Only events whose first part was reached are shown: an event's later
        parts, shares and deletions are in newer segments, so those events are whole."""
        if self.state != "loading":
            return  # the load ended (or failed) before this was delivered
        report = walking.report
        seqs = (report.head.seq + 1) if report.head else 0
        self.progress = {"done": n, "total": total, "what": "bridges verified",
                         "segments": len(report.segment_ids), "of_segments": seqs}  # fmt: skip
        self._index([*done, walking], whole_only=True)
        self.early = True

    def _fail(self, exc: BaseException) -> None:
        if self.early:  # what the walk had shown is not known to be whole any more
            self.newest_first, self.by_id, self.early = [], {}, False
        kind = "bucket-unreachable" if isinstance(exc, BucketError | OSError) else "error"
        kind = "no-bucket" if isinstance(exc, NoBucket) else kind
        self.state = "error"
        self.error = {"kind": kind, "message": str(exc) or type(exc).__name__}
        log.warning("review: cannot load the manifest: %s", exc)

    def _index(self, views: list[BridgeView], whole_only: bool = False) -> None:
        live = [e for v in views for e in events(v) if not e.deleted]
        if whole_only:
            live = [e for e in live if e.parts[0].part == 0]
        else:
            self.views = views  # the verdicts shown: never a partial walk's
        live.sort(key=_key, reverse=True)
        self.newest_first = live
        self.by_id = {p.id: e for e in live for p in e.parts}
        self.cameras = sorted({e.camera for e in live})  # the filters' choices, once per load
        self.subjects = sorted({s for e in live for s in e.subjects})

    # -- reading ------------------------------------------------------------------------------
    def event(self, event_id: str) -> Event | None:
        return self.by_id.get(event_id.lower())

    def page(self, q: Query) -> dict[str, Any]:
        items: Iterable[Event] = self.newest_first
        if q.before is not None:
            items = (e for e in self.newest_first if _key(e) < q.before)
        picked: list[Event] = []
        limit = max(1, min(q.limit, MAX_LIMIT))
        more = False
        for e in items:
            if q.wants(e):
                if len(picked) == limit:
                    more = True
                    break
                picked.append(e)
        return {
            "events": [event_json(e) for e in picked],
            "next": encode_cursor(picked[-1]) if more and picked else None,
            "cameras": self.cameras,
            "subjects": self.subjects,
            "total": len(self.newest_first),
            "early": self.early,  # the first load goes on: these are the newest verified so far
            # Events that match the filters (all pages): "N of M" on the page.
            "matched": (
                len(self.newest_first)
                if _unfiltered(q)
                else sum(1 for e in self.newest_first if q.wants(e))
            ),
        }

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "early": self.early,
            "progress": self.progress,
            "error": self.error,
            "bridges": [self._bridge_json(v) for v in self.views],
            "events": len(self.newest_first),
        }

    def note_problem(self, e: Event, kind: str, message: str, oid: str) -> None:
        """A part that failed while being served: shown like the verifier's problems."""
        found = self.served_problems.setdefault(e.view.bridge_id, [])
        if not any(p["object"] == oid for p in found):
            found.append({"kind": kind, "message": message, "object": oid})

    def _bridge_json(self, v: BridgeView) -> dict[str, Any]:
        r = v.report
        problems = [
            {"kind": p.kind, "message": p.message, "object": p.object, "fatal": p.kind in FATAL}
            for p in r.problems
        ] + self.served_problems.get(v.bridge_id, [])
        return {
            "bridge_id": v.bridge_id,
            "ok": not problems and not r.not_recipient,
            "seq": r.head.seq if r.head else None,
            "verified_up_to_ms": r.head.time_ms if r.head else None,
            "problems": problems,
            "warnings": list(v.warnings),
            "notices": list(r.notices),
            "not_recipient": r.not_recipient,
        }


def _unfiltered(q: Query) -> bool:
    return not (q.cameras or q.subjects) and q.start_ms is None and q.end_ms is None


def event_json(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "bridge_id": e.view.bridge_id,
        "camera": e.camera,
        "start_ms": e.start_ms,
        "end_ms": e.end_ms,
        "duration_s": round(e.duration_s, 1),
        "subjects": list(e.subjects),
        "state": e.state(),
        "parts": len(e.live),
        "part_ids": [p.id for p in e.live],  # to name the object a problem is about
        "missing_parts": e.missing,
        "size": e.size,
        "poster": e.poster is not None,
        "shared": [
            {"copy": s.copy, "recipient": s.recipient, "deleted": s.deleted} for s in e.shares
        ],
        "deleted": e.deleted,
    }
