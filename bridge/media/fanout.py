"""Fan-out of a source's packets to any number of asyncio consumers.

The source's demux thread hands packets to the event loop once; every consumer (live view,
recorder) gets its own bounded queue. A consumer that falls behind loses packets up to the next
keyframe instead of stalling the camera or growing memory without bound.

Audio has its own fan-out with another drop policy: there are no keyframes (every packet
decodes on its own) and for live sound latency matters more than completeness, so a consumer
whose queue is full loses its OLDEST packet, counted, and the newest goes in. Audio and video
queues are separate: a slow audio consumer never costs the video a packet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from bridge.media.packet import AudioPacket, VideoPacket

log = logging.getLogger(__name__)

_END = object()


class SourceEnded(Exception):
    """The source disconnected while a consumer was reading from it."""


class PacketSubscription:
    """An async iterator of VideoPacket for one consumer.

    Iteration starts at a keyframe (from the prebuffer when asked) and raises SourceEnded when
    the camera disconnects. Close it when done; `async with` does that.
    """

    def __init__(self, fanout: PacketFanout, maxsize: int) -> None:
        self._fanout = fanout
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self._waiting_for_keyframe = True
        self.dropped = 0
        self.closed = False

    def _offer(self, item: VideoPacket | object) -> None:
        if item is _END:
            self._force(item)
            return
        assert isinstance(item, VideoPacket)
        if self._waiting_for_keyframe:
            if not item.keyframe:
                self.dropped += 1
                return
            self._waiting_for_keyframe = False
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # Too slow: drop what is queued and restart at the next keyframe (decodable again).
            self.dropped += self._queue.qsize() + 1
            self._drain()
            self._waiting_for_keyframe = True
            if item.keyframe:
                self._waiting_for_keyframe = False
                self._queue.put_nowait(item)

    def _force(self, item: object) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    def __aiter__(self) -> AsyncIterator[VideoPacket]:
        return self

    async def __anext__(self) -> VideoPacket:
        if self.closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self.close()
            raise SourceEnded("camera disconnected")
        assert isinstance(item, VideoPacket)
        return item

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._fanout._remove(self)
            self._drain()

    async def __aenter__(self) -> PacketSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class _Subscribers:
    """What both fan-outs share: the live subscriptions, publishing, ending them all."""

    def __init__(self) -> None:
        self._subs: list[Any] = []

    def publish(self, packet: object) -> None:
        for sub in list(self._subs):
            sub._offer(packet)

    def end_all(self) -> None:
        """The source went down: every current consumer's iteration ends with SourceEnded."""
        for sub in list(self._subs):
            sub._offer(_END)
        self._subs.clear()

    def _remove(self, sub: object) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def __len__(self) -> int:
        return len(self._subs)


class PacketFanout(_Subscribers):
    """Distributes packets to subscriptions; all methods run on the event loop."""

    def subscribe(
        self, backlog: Iterable[VideoPacket] = (), maxsize: int = 300
    ) -> PacketSubscription:
        sub = PacketSubscription(self, maxsize)
        for packet in backlog:
            sub._offer(packet)
        self._subs.append(sub)
        return sub


class AudioSubscription:
    """An async iterator of AudioPacket for one consumer; full queue: the oldest is dropped.

    Raises SourceEnded when the camera disconnects; close it when done (`async with` does).
    """

    def __init__(self, fanout: AudioFanout, maxsize: int) -> None:
        self._fanout = fanout
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.closed = False

    def _offer(self, item: AudioPacket | object) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()
                if item is not _END:  # packets left behind at the end are no loss
                    self.dropped += 1
                    self._fanout.dropped += 1

    def __aiter__(self) -> AsyncIterator[AudioPacket]:
        return self

    async def __anext__(self) -> AudioPacket:
        if self.closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self.close()
            raise SourceEnded("camera disconnected")
        assert isinstance(item, AudioPacket)
        return item

    def get_nowait(self) -> AudioPacket | None:
        """The next queued packet, or None when none is queued (SourceEnded at the end)."""
        if self.closed or self._queue.empty():
            return None
        item = self._queue.get_nowait()
        if item is _END:
            self.close()
            raise SourceEnded("camera disconnected")
        assert isinstance(item, AudioPacket)
        return item

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._fanout._remove(self)
            while not self._queue.empty():
                self._queue.get_nowait()

    async def __aenter__(self) -> AudioSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AudioFanout(_Subscribers):
    """Distributes audio packets; all methods run on the event loop. `dropped` counts every
    packet any consumer lost since the start (for /status)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def subscribe(
        self, backlog: Iterable[AudioPacket] = (), maxsize: int = 250
    ) -> AudioSubscription:
        sub = AudioSubscription(self, maxsize)
        for packet in backlog:
            sub._offer(packet)
        self._subs.append(sub)
        return sub
