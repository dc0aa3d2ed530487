"""The last few seconds of a camera's encoded packets, always starting at a keyframe.

Live view starts from its newest keyframe (a picture at once instead of waiting for the next
GOP); the recorder (#4) takes the whole buffer as pre-roll.
"""

from __future__ import annotations

from collections import deque

from bridge.media.packet import VideoPacket


class Prebuffer:
    def __init__(self, seconds: float = 4.0, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self._packets: deque[VideoPacket] = deque()
        self._keyframes: deque[VideoPacket] = deque()  # the keyframes among _packets, in order
        self._bytes = 0

    def append(self, packet: VideoPacket) -> None:
        if not self._packets and not packet.keyframe:
            return  # a buffer must start at a keyframe to be decodable
        if self._packets and packet.epoch != self._packets[-1].epoch:
            self.clear()
            if not packet.keyframe:
                return
        self._packets.append(packet)
        if packet.keyframe:
            self._keyframes.append(packet)
        self._bytes += len(packet.data)
        self._trim(packet.pts)

    def _trim(self, newest_pts: float) -> None:
        # Drop whole GOPs from the front while the rest still covers `seconds` (or memory is
        # over the cap), so the buffer keeps at least one GOP and starts at a keyframe. Runs
        # on the loop for every packet: the keyframe deque makes it O(1) per dropped packet.
        while len(self._keyframes) >= 2:
            second = self._keyframes[1]
            covers = newest_pts - second.pts >= self.seconds
            if not covers and self._bytes <= self.max_bytes:
                return
            self._keyframes.popleft()
            while self._packets[0] is not second:
                self._bytes -= len(self._packets.popleft().data)

    def clear(self) -> None:
        self._packets.clear()
        self._keyframes.clear()
        self._bytes = 0

    def packets(self) -> list[VideoPacket]:
        """Everything buffered, oldest first (starts at a keyframe)."""
        return list(self._packets)

    def from_latest_keyframe(self) -> list[VideoPacket]:
        if not self._keyframes:
            return []
        latest = self._keyframes[-1]
        out: list[VideoPacket] = []
        for packet in reversed(self._packets):  # the newest GOP is at the end: walk back to it
            out.append(packet)
            if packet is latest:
                break
        out.reverse()
        return out

    @property
    def duration(self) -> float:
        if not self._packets:
            return 0.0
        return self._packets[-1].pts - self._packets[0].pts

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._packets)
