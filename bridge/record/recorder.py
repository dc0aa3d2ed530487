"""Events → clips, per camera: pre-roll from the prebuffer, the event, a post-roll.

The event loop only decides what goes into which clip; each clip's bytes are produced by its
own worker thread (bridge.record.clip) and handed to its sink as they are made.

An event is recorded in consecutive *parts* of about `part_length` seconds, each cut at a
keyframe and sealed (a complete age file holding a complete fragmented MP4) as soon as it ends.
A clip becomes durable only when sealed, so a crash, a power cut or a SIGKILL loses at most the
part being written: ~`part_length` s of the event, not all of it (docs/clip-format.md §8). Parts
share the event's id and timeline, and the owner's tools show them as one event. An event longer
than `max_length` goes on as a new event.

Timing is measured on the camera's packet clock (exact), while events carry wall-clock times:
the two are tied together by `offset = wall - pts`, estimated as the smallest arrival delay
seen (packets arrive late, never early).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from accessories.backend import CameraUnavailable
from bridge.detect.types import TrackEvent
from bridge.media.fanout import PacketSubscription, SourceEnded
from bridge.media.packet import StreamInfo, VideoPacket
from bridge.media.prebuffer import Prebuffer
from bridge.record.clip import ClipMeta, ClipSink, ClipWorker
from bridge.record.clip_audio import EventAudio

log = logging.getLogger(__name__)

STALL_SECONDS = 1.0  # without packets, post-roll ends by the wall clock this long after its end


class RecordingSource(Protocol):
    """What a recorder needs of a camera (bridge.sources.base.CameraSource)."""

    name: str
    prebuffer: Prebuffer
    info: StreamInfo | None

    def subscribe(
        self, *, from_prebuffer: bool = ..., maxsize: int = ...
    ) -> PacketSubscription: ...


@dataclass(frozen=True, slots=True)
class RecordSettings:
    pre_roll: float = 4.0
    post_roll: float = 5.0
    max_length: float = 60.0  # longer events go on as a new event
    part_length: float = 4.0  # seal the event in parts this long (at keyframes): a crash loses
    # at most about this much
    poster_width: int = 640


@dataclass(slots=True)
class _Event:
    """What the parts of one event share."""

    id: str
    origin: float | None = None  # source pts of the event's first keyframe: its timeline's 0
    posted_score: float | None = None  # score of the detection whose poster was sealed
    best: TrackEvent | None = None  # the event's best detection so far
    audio: EventAudio | None = None  # its sound (a camera with audio), started at `origin`

    def note(self, event: TrackEvent) -> None:
        if self.best is None or event.best_score > self.best.best_score:
            self.best = event


@dataclass(slots=True)
class _Clip:
    worker: ClipWorker
    event: _Event
    part: int
    info: StreamInfo
    subjects: set[str] = field(default_factory=set)
    best: TrackEvent | None = None
    first_pts: float | None = None
    last_key_pts: float | None = None
    gop: float = 0.0  # length of the last complete GOP

    def note(self, event: TrackEvent) -> None:
        self.subjects.add(event.subject)
        self.event.note(event)
        if self.best is None or event.best_score > self.best.best_score:
            self.best = event


class Recorder:
    """Records one camera's events as clips; feed it `on_event` (DetectionService listener)."""

    def __init__(
        self,
        source: RecordingSource,
        sink_factory: Callable[[], ClipSink],
        settings: RecordSettings | None = None,
        *,
        pad: Callable[[int], bytes] | None = None,
        subjects: Collection[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`sink_factory()` runs in the clip's worker thread when its first keyframe is ready.
        `pad(n)` (worker thread) returns the bytes to append to an n-byte MP4, e.g. a `free`
        box up to the Padmé size. `subjects`: record only these (None: every event)."""
        self.source = source
        self.sink_factory = sink_factory
        self.settings = settings or RecordSettings()
        self.pad = pad
        self.subjects = None if subjects is None else frozenset(subjects)
        self.clock = clock
        self.clips_finished = 0
        self.clips_failed = 0
        self.last_sound: dict[str, Any] | None = None  # how the last event's sound was recorded
        # Only the end time: the clip's metadata and poster must not outlive it in memory.
        self.last_clip_end: float | None = None
        self.last_error: str | None = None
        self._tracks: dict[int, TrackEvent] = {}  # live tracks → their latest event
        self._last_seen: float | None = None  # newest end of a track since the last start
        self._clip: _Clip | None = None
        self._session: asyncio.Task[None] | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        self._offset: float | None = None  # wall - pts

    # -- events (on the loop) --------------------------------------------------------------

    def on_event(self, event: TrackEvent) -> None:
        if event.camera != self.source.name:
            return
        if self.subjects is not None and event.subject not in self.subjects:
            return
        if event.kind == "end":
            if self._tracks.pop(event.track_id, None) is None:
                return  # a track we never saw start (recorder started later): no clip
            ended = event.ended_at if event.ended_at is not None else event.time
            self._last_seen = ended if self._last_seen is None else max(self._last_seen, ended)
        else:
            # An update of an unknown track also starts recording (its start may have come
            # while the camera was down).
            if not self._tracks:
                self._last_seen = None
            self._tracks[event.track_id] = event
        if self._clip is not None:
            self._clip.note(event)
        if event.kind != "end" and not self.recording:
            self._session = asyncio.create_task(
                self._record(event), name=f"record:{self.source.name}"
            )

    @property
    def recording(self) -> bool:
        return self._session is not None and not self._session.done()

    # -- lifecycle ---------------------------------------------------------------------------

    async def stop(self) -> None:
        """Finish the current clip with what it has, then wait for every clip to be handed
        to its sink."""
        if self._session is not None and not self._session.done():
            self._session.cancel()
            await asyncio.gather(self._session, return_exceptions=True)
        await self.wait_idle()

    async def wait_idle(self) -> None:
        """Until no clip is being recorded or finished."""
        while self.recording or self._finishing:
            if self.recording:
                assert self._session is not None
                await asyncio.gather(self._session, return_exceptions=True)
            if self._finishing:
                await asyncio.gather(*self._finishing, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        return {
            "recording": self.recording,
            "clips": self.clips_finished,
            "failed": self.clips_failed,
            "last_error": self.last_error,
            "last_clip_end": self.last_clip_end,
            "last_clip_sound": self.last_sound,  # None: silent (or no clip yet)
        }

    # -- one recording session (possibly several consecutive clips) -------------------------

    async def _record(self, first: TrackEvent) -> None:
        source = self.source
        try:
            # Both in the same loop turn: the subscription's backlog (from the newest
            # keyframe) is then exactly the tail of this snapshot, and live packets follow it.
            subscription = source.subscribe(from_prebuffer=True)
            buffered = source.prebuffer.packets()
            info = source.info
        except CameraUnavailable as exc:
            log.warning("camera %r: event not recorded: %s", source.name, exc)
            return
        assert info is not None
        self._offset = None
        if buffered:
            self._offset = self.clock() - buffered[-1].pts
        clip = self._open_clip(info, self._new_event(), 0)
        reason = "stopped"
        try:
            for packet in self._pre_roll(buffered, first):
                clip = self._add(clip, packet)
            reason = await self._follow(subscription)
        finally:  # also when cancelled (stop): the clip keeps what it has
            subscription.close()
            self._close_clip(self._clip or clip, reason)

    def _pre_roll(self, buffered: list[VideoPacket], first: TrackEvent) -> list[VideoPacket]:
        """Buffered packets before the subscription's backlog, from the newest keyframe at
        least `pre_roll` before the event started (or the oldest one buffered)."""
        keys = [i for i, p in enumerate(buffered) if p.keyframe]
        if not keys or self._offset is None:
            return []
        target = first.started_at - self._offset - self.settings.pre_roll
        chosen = keys[0]
        for i in keys:
            if buffered[i].pts <= target:
                chosen = i
        return buffered[chosen : keys[-1]]

    async def _follow(self, subscription: PacketSubscription) -> str:
        """Live packets into the clip (and its successors) until the post-roll is over."""
        while True:
            try:
                async with asyncio.timeout(STALL_SECONDS):
                    packet = await anext(subscription)
            except SourceEnded:
                return "source_ended"
            except TimeoutError:
                # No packets (a stalled camera): end the post-roll by the wall clock.
                if self._post_roll_over(self.clock() - STALL_SECONDS):
                    return "post_roll"
                continue
            arrival = self.clock() - packet.pts
            self._offset = arrival if self._offset is None else min(self._offset, arrival)
            if self._offset is not None and self._post_roll_over(packet.pts + self._offset):
                return "post_roll"
            assert self._clip is not None
            self._add(self._clip, packet)

    def _post_roll_over(self, wall: float) -> bool:
        if self._tracks or self._last_seen is None:
            return False
        return wall >= self._last_seen + self.settings.post_roll

    def _too_long(self, since: float | None, gop: float, pts: float, limit: float) -> bool:
        """At a keyframe: would the GOP it starts take what began at `since` past `limit`?"""
        if since is None:
            return False
        return pts - since + gop > limit + 1e-3

    def _add(self, clip: _Clip, packet: VideoPacket) -> _Clip:
        """Put `packet` in `clip`, or first end the clip at this keyframe and put it in the next
        part (or, past max_length, in a new event). Returns the clip it went into."""
        if packet.keyframe and clip.first_pts is not None:
            event, gop = clip.event, clip.gop
            if self._too_long(event.origin, gop, packet.pts, self.settings.max_length):
                self._close_clip(clip, "max_length")
                clip = self._open_clip(clip.info, self._new_event(), 0)
            elif clip.worker.failed or self._too_long(
                clip.first_pts, gop, packet.pts, self.settings.part_length
            ):
                # A part whose sink failed (a full spool) is cut at once: the next part, from
                # this keyframe on, tries again, so little is lost once space is back.
                self._close_clip(clip, "part", until=packet.pts)
                clip = self._open_clip(clip.info, event, clip.part + 1)
            clip.gop = gop
        if clip.first_pts is None:
            if not packet.keyframe:
                return clip
            clip.first_pts = packet.pts
            if clip.event.origin is None:
                clip.event.origin = packet.pts
                if clip.event.audio is not None:  # its sound from the same picture on
                    clip.event.audio.start(packet.pts)
        if packet.keyframe:
            if clip.last_key_pts is not None:
                clip.gop = packet.pts - clip.last_key_pts
            clip.last_key_pts = packet.pts
        clip.worker.put(packet)
        return clip

    # -- clips -------------------------------------------------------------------------------

    def _new_event(self) -> _Event:
        audio = EventAudio.for_source(self.source)
        self.last_sound = audio.describe() if audio is not None else None
        return _Event(uuid.uuid4().hex, audio=audio)

    def _open_clip(self, info: StreamInfo, event: _Event, part: int) -> _Clip:
        worker = ClipWorker(
            self.source.name, info, self.sink_factory, self.pad, asyncio.get_running_loop(),
            timeline=(event.origin, part), audio=event.audio,
        )
        clip = _Clip(worker, event, part, info)
        for event in self._tracks.values():  # what is still in view belongs to this clip too
            clip.note(event)
        self._clip = clip
        return clip

    def _close_clip(self, clip: _Clip, reason: str, until: float | None = None) -> None:
        """`until`: the pts where the event's next part starts (reason "part")."""
        if self._clip is clip:
            self._clip = None
        clip.worker.close(self._poster_frame(clip, reason), self.settings.poster_width, until)
        task = asyncio.get_running_loop().create_task(self._finish(clip, reason, self._offset))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    @staticmethod
    def _poster_frame(clip: _Clip, reason: str) -> object:
        """The frame for this part's poster, or None. An event's first sealed part gets the
        best detection so far (a crash later still leaves the event a poster); its last part
        gets the event's best if it is better than that one; parts in between get none (one
        poster object per few seconds would only cost uploads and storage)."""
        event = clip.event
        best = event.best if reason != "part" else (clip.best or event.best)
        if best is None or clip.worker.failed:  # a failed part stores no poster: the next may
            return None
        if event.posted_score is not None and (
            reason == "part" or best.best_score <= event.posted_score
        ):
            return None
        event.posted_score = best.best_score
        return best.best_frame

    async def _finish(self, clip: _Clip, reason: str, offset: float | None) -> None:
        name = self.source.name
        try:
            written = await clip.worker.done
        except Exception as exc:
            self._failed(
                f"clip of camera {name!r} failed while recording: {exc!r}",
                # Conditions the store reports itself (a full spool, once per episode).
                quiet=bool(getattr(exc, "reported", False)),
            )
            return
        finally:
            if reason != "part" and clip.event.audio is not None:
                clip.event.audio.close()  # the event's last part has all its sound
        if written is None:
            return  # no keyframe ever arrived: nothing was written, no sink was made
        if offset is not None:
            start = written.first_pts + offset
        else:
            start = self.clock() - written.duration
        best = clip.best
        meta = ClipMeta(
            camera=name,
            event_id=clip.event.id,
            part=clip.part,
            start=start,
            end=start + written.duration,
            duration=written.duration,
            subjects=tuple(sorted(clip.subjects)),
            best_score=best.best_score if best else 0.0,
            poster=written.poster,
            width=clip.info.width,
            height=clip.info.height,
            frames=written.frames,
            media_bytes=written.media_bytes,
            size=written.size,
            reason=reason,
            final=reason != "part",
        )
        try:
            await written.sink.finish(meta)
        except Exception as exc:
            try:
                written.sink.abort()
            except Exception:
                log.exception("clip sink abort failed")
            self._failed(f"clip of camera {name!r} could not be stored: {exc!r}")
            return
        self.clips_finished += 1
        self.last_clip_end = meta.end
        # What a clip shows (subjects) stays in the encrypted manifest; the log, which a thief
        # of the bridge could read, says only that one was stored (see the threat model).
        log.log(
            logging.DEBUG if reason == "part" else logging.INFO,
            "camera %r: clip stored (part %d, %.0f s, %s)", name, meta.part, meta.duration, reason,
        )

    def _failed(self, message: str, *, quiet: bool = False) -> None:
        self.clips_failed += 1
        self.last_error = message
        log.log(logging.DEBUG if quiet else logging.ERROR, "%s", message)
