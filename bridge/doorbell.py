"""Doorbell cameras on the bridge's side: the ring token, rate limiting, and what a ring does.

A ring comes from `obscura ring CAMERA` or from a button or home-automation system through
the local API (bridge/doorbell_api.py), both authenticated with one random token per bridge
kept in ``state_dir/doorbell.token`` (mode 0600, created on the first start, never logged):
whoever may read that file may ring, which is the owner of the bridge's state directory.

One ring (``Doorbell.ring``), at most one per ``MIN_INTERVAL`` per camera (a stuck button or a
flood must not make the iPhone ring on and on; the others are counted as suppressed):
- HomeKit: the camera accessory's ProgrammableSwitchEvent goes out at once, and an HKSV
  recording's trigger stays on for a few seconds (accessories/doorbell.py);
- clips: with [storage], the camera's Recorder is fed a track event of subject "doorbell"
  (``DOORBELL_SUBJECT``), started at the ring and ended ``RING_HOLD`` seconds later: the clip
  is the pre-roll, those seconds and the post-roll, like any event. The Recorder needs no new
  API for it: it records the subjects it is given, and the service adds "doorbell" to a
  doorbell camera's list. The poster is the camera's picture at the ring (frames are decoded
  for a few seconds after it, as for a snapshot);
- /status and `obscura doctor`: rings, the last one's time and the suppressed count.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from accessories.doorbell import RING_HOLD
from bridge.detect.types import Box, TrackEvent

log = logging.getLogger(__name__)

TOKEN_FILE = "doorbell.token"
MIN_INTERVAL = 2.0  # seconds between two rings of one camera; rings in between are suppressed
DOORBELL_SUBJECT = "doorbell"
_TOKEN_BYTES = 32
_MIN_TOKEN_CHARS = 32  # a shorter (hand-edited, truncated) token is replaced


def token_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / TOKEN_FILE


def load_or_create_token(state_dir: Path | str) -> str:
    """The bridge's ring token: read from state_dir/doorbell.token, created (0600) when absent
    or unusable. Its mode is forced to 0600: it is a secret."""
    path = token_path(state_dir)
    try:
        if path.is_symlink():
            raise OSError(f"{path} is a symbolic link")
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
        token = path.read_text(encoding="ascii").strip()
        if len(token) >= _MIN_TOKEN_CHARS and token.isascii() and token.isprintable():
            return token
        log.warning("%s is not a usable ring token: writing a new one", path)
    except FileNotFoundError:
        pass
    except UnicodeDecodeError:
        log.warning("%s is not a usable ring token: writing a new one", path)
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    log.info("doorbell ring token written to %s", path)  # the path only, never the token
    return token


def read_token(state_dir: Path | str) -> str:
    """The token for a client (`obscura ring`); OSError when there is none yet."""
    return token_path(state_dir).read_text(encoding="ascii").strip()


class Ringable(Protocol):
    """What a ring needs of the camera accessory (accessories.camera.CameraAccessory)."""

    def ring(self) -> None: ...


EventSink = Callable[[TrackEvent], None]
FramePeek = Callable[[], Any]  # the camera's newest decoded frame, or None


@dataclass(frozen=True, slots=True)
class RingResult:
    outcome: Literal["rang", "suppressed"]
    retry_after: float = 0.0  # suppressed: seconds until a ring would go through


class Doorbell:
    """One doorbell camera: rate limit, counters, and the ring's effects (module doc)."""

    _ids = itertools.count(-1, -1)  # track ids of rings: negative, never a tracker's

    def __init__(
        self,
        name: str,
        accessory: Ringable,
        *,
        min_interval: float = MIN_INTERVAL,
        hold: float = RING_HOLD,
        frames: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._accessory = accessory
        self._min_interval = min_interval
        self._hold = hold
        self._frames = frames  # bridge.media.frames.FrameTap (posters), or None
        self._clock = clock
        self.recorder: EventSink | None = None  # set once recording starts
        self.rings = 0
        self.suppressed = 0
        self.last_ring_at: float | None = None  # wall clock
        self._last_ring: float | None = None  # self._clock
        self._ends: dict[int, asyncio.TimerHandle] = {}  # ring track id -> its end

    def ring(self) -> RingResult:
        now = self._clock()
        if self._last_ring is not None and now - self._last_ring < self._min_interval:
            self.suppressed += 1
            return RingResult("suppressed", self._min_interval - (now - self._last_ring))
        self._last_ring = now
        self.rings += 1
        self.last_ring_at = time.time()
        log.info("camera %r: doorbell rang", self.name)
        self._accessory.ring()
        if self.recorder is not None:
            self._record()
        return RingResult("rang")

    def _record(self) -> None:
        assert self.recorder is not None
        if self._frames is not None:
            self._frames.lease(self._hold + 1.0)  # a picture for the poster
        start = self._event("start", time.time())
        self.recorder(start)
        loop = asyncio.get_running_loop()
        self._ends[start.track_id] = loop.call_later(self._hold, self._end, start)

    def _end(self, start: TrackEvent) -> None:
        self._ends.pop(start.track_id, None)
        if self.recorder is not None:
            self.recorder(self._event("end", time.time(), start))

    def _event(
        self, kind: Literal["start", "end"], now: float, start: TrackEvent | None = None
    ) -> TrackEvent:
        frame = self._poster_frame()
        whole = Box(0.0, 0.0, 1.0, 1.0)
        return TrackEvent(
            kind=kind, camera=self.name,
            track_id=start.track_id if start else next(self._ids),
            label=DOORBELL_SUBJECT, subject=DOORBELL_SUBJECT,
            # The poster is the best-scoring frame: a picture beats none (start or end).
            score=1.0, best_score=1.0 if frame is not None else 0.0, box=whole,
            time=now, started_at=start.started_at if start else now,
            ended_at=now if kind == "end" else None, best_box=whole, best_frame=frame,
        )  # fmt: skip

    def _poster_frame(self) -> Any:
        if self._frames is None:
            return None
        try:
            found = self._frames.peek(fresh_within=1.0)
        except Exception:  # a clip without its poster beats no clip
            log.debug("camera %r: no frame for the ring's poster", self.name, exc_info=True)
            return None
        if found is None or not found[2]:
            return None
        return found[0]

    def cancel(self) -> None:
        for timer in self._ends.values():
            timer.cancel()
        self._ends.clear()

    def status(self) -> dict[str, Any]:
        return {
            "rings": self.rings,
            "last_ring_at": self.last_ring_at,
            "suppressed": self.suppressed,
        }


class Doorbells:
    """The bridge's doorbell cameras by name (case-insensitive, as names are unique so);
    ``cameras``: every camera's name, to tell "not a doorbell" from "no such camera"."""

    def __init__(self, token: str, cameras: Iterable[str] = ()) -> None:
        self.token = token
        self._by_name: dict[str, Doorbell] = {}
        self._cameras = {name.casefold() for name in cameras}
        self.refused = 0  # ring requests without the right token

    def add(self, doorbell: Doorbell) -> None:
        self._by_name[doorbell.name.casefold()] = doorbell

    def get(self, name: str) -> Doorbell | None:
        return self._by_name.get(name.casefold())

    def is_camera(self, name: str) -> bool:
        return name.casefold() in self._cameras or name.casefold() in self._by_name

    def __iter__(self) -> Iterator[Doorbell]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def token_matches(self, presented: str) -> bool:
        return secrets.compare_digest(presented.encode(), self.token.encode())

    def stop(self) -> None:
        for doorbell in self._by_name.values():
            doorbell.cancel()
