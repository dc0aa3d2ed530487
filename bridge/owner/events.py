"""The owner's view of events: the parts of one event (docs/clip-format.md §8) as one clip.

The bridge seals an event in parts of a few seconds so that a crash loses at most the part it
was writing. The manifest logs each part as a `clip` entry with the event's id and the part's
number; the owner's tools group them back: `clips list` shows one line per event, `get` and
`play` join the parts into one MP4, `share` and `delete` act on every part. An event is named by
the id of its first part, and any of its parts' ids (or a unique prefix) names it too.

An event whose last part is missing was cut short: the bridge stopped (or crashed) while
recording it, or it is still being recorded. Parts missing in the middle were lost to a crash
before they were sealed or to a full spool; the parts around them still play.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bridge.media.mp4boxes import EventJoiner, Mp4Error
from bridge.owner.audit import BridgeView, Owner, OwnerError
from crypto.age import AgeError, AgeReader
from crypto.manifest_report import ClipInfo, ShareInfo

#: An event without its last part whose newest part ended longer ago than this was cut short
#: (the bridge seals a part every few seconds while it records).
IN_PROGRESS_MS = 120_000


@dataclass(slots=True)
class Event:
    view: BridgeView
    parts: list[ClipInfo] = field(default_factory=list)  # in part order

    @property
    def id(self) -> str:
        return self.parts[0].id

    @property
    def live(self) -> list[ClipInfo]:
        return [p for p in self.parts if not p.deleted]

    @property
    def camera(self) -> str:
        return self.parts[0].camera

    @property
    def start_ms(self) -> int:
        return min(p.start_ms for p in self.shown)

    @property
    def end_ms(self) -> int:
        return max(p.end_ms for p in self.shown)

    @property
    def duration_s(self) -> float:
        return sum(p.end_ms - p.start_ms for p in self.shown) / 1000

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(sorted({s for p in self.shown for s in p.subjects}))

    @property
    def size(self) -> int:
        return sum(p.size for p in self.shown)

    @property
    def shown(self) -> list[ClipInfo]:
        """The parts that make the event as listed: the live ones, or all once all are gone."""
        return self.live or self.parts

    @property
    def deleted(self) -> str | None:
        """The delete reason once every part is deleted."""
        return None if self.live else self.parts[-1].deleted

    @property
    def complete(self) -> bool:
        return any(p.final for p in self.parts)

    def state(self, now_ms: int | None = None) -> str:
        """"complete", "recording" (last part not logged yet, recent) or "cut short"."""
        if self.complete:
            return "complete"
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return "recording" if now - self.end_ms < IN_PROGRESS_MS else "cut short"

    @property
    def missing(self) -> list[int]:
        """Part numbers absent from the manifest (lost before they were sealed)."""
        have = {p.part for p in self.parts}
        return [n for n in range(max(have) + 1) if n not in have]

    @property
    def poster(self) -> ClipInfo | None:
        """The part whose poster shows the event: the newest one still there."""
        for p in reversed(self.live):
            if p.thumb and not p.thumb_deleted:
                return p
        return None

    @property
    def shares(self) -> list[ShareInfo]:
        return [s for p in self.parts for s in p.shares]

    @property
    def recipients(self) -> tuple[str, ...]:
        return self.parts[0].recipients


def events(view: BridgeView) -> list[Event]:
    """The view's clips grouped into events, by start time."""
    groups: dict[str, Event] = {}
    for clip in view.report.clips:
        key = clip.event or clip.id
        groups.setdefault(key, Event(view)).parts.append(clip)
    for e in groups.values():
        e.parts.sort(key=lambda p: (p.part, p.start_ms))
    return sorted(groups.values(), key=lambda e: (e.parts[0].start_ms, e.id))


def find_event(views: list[BridgeView], wanted: str) -> Event:
    """The live event that `wanted` (an id of any of its parts, or a unique prefix) names."""
    q = wanted.lower()
    hits: dict[int, Event] = {}
    for v in views:
        for e in events(v):
            if any(p.id.startswith(q) for p in e.parts):
                hits[id(e)] = e
    if not hits:
        raise OwnerError(f"no clip {wanted} in the manifest (see `obscura clips list`)")
    if len(hits) > 1:
        raise OwnerError(f"clip id {wanted} is ambiguous: give more digits")
    (event,) = hits.values()
    if event.deleted:
        raise OwnerError(f"clip {event.id} was deleted ({event.deleted})")
    return event


def decrypt_event(
    owner: Owner, event: Event, tmp: Path, emit: Callable[[bytes], object], label: str
) -> None:
    """Download each live part (checked against the manifest) into `tmp` and pass the event's
    plaintext to `emit` chunk by chunk: a one-part event exactly as stored, several parts joined
    into one MP4 (bridge.media.mp4boxes). Raises OwnerError if a part does not decrypt."""
    parts = event.live
    joiner = EventJoiner(emit) if len(parts) > 1 else None
    root = event.view.layout.root
    for n, part in enumerate(parts):
        enc = tmp / f"part-{n}.age"
        what = label if len(parts) == 1 else f"{label} part {n + 1}/{len(parts)}"
        owner.download(f"{root}/{part.id}", part.sha256, part.size, enc, what)
        try:
            with enc.open("rb") as src:
                if joiner is not None:
                    joiner.start_part()
                for chunk in AgeReader(owner.identities, src).chunks():
                    if joiner is None:
                        emit(chunk)
                    else:
                        joiner.feed(chunk)
        except AgeError as e:
            raise OwnerError(f"{what}: cannot decrypt ({e})") from None
        except Mp4Error as e:
            raise OwnerError(f"{what}: not a clip of this event ({e})") from None
        finally:
            enc.unlink(missing_ok=True)
    if joiner is not None:
        try:
            joiner.close()
        except Mp4Error as e:
            raise OwnerError(f"{label}: the last part ends mid-box ({e})") from None
