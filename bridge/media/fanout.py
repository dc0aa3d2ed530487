"""Fan-out of a source's packets to any number of asyncio consumers.

The source's demux thread hands packets to the event loop once; every consumer (live view,
recorder) gets its own bounded queue. A consumer that falls behind loses packets up to the next
keyframe instead of stalling the camera or growing memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable

from bridge.media.packet import VideoPacket

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


class PacketFanout:
    """Distributes packets to subscriptions; all methods run on the event loop."""

    def __init__(self) -> None:
        self._subs: list[PacketSubscription] = []

    def subscribe(
        self, backlog: Iterable[VideoPacket] = (), maxsize: int = 300
    ) -> PacketSubscription:
        sub = PacketSubscription(self, maxsize)
        for packet in backlog:
            sub._offer(packet)
        self._subs.append(sub)
        return sub

    def publish(self, packet: VideoPacket) -> None:
        for sub in list(self._subs):
            sub._offer(packet)

    def end_all(self) -> None:
        """The source went down: every current consumer's iteration ends with SourceEnded."""
        for sub in list(self._subs):
            sub._offer(_END)
        self._subs.clear()

    def _remove(self, sub: PacketSubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def __len__(self) -> int:
        return len(self._subs)
