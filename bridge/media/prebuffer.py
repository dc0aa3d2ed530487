"""The last few seconds of a camera's encoded packets, always starting at a keyframe.

Live view starts from its newest keyframe (a picture at once instead of waiting for the next
GOP); the recorder (#4) takes the whole buffer as pre-roll.

The camera's audio packets are kept beside the video over the same time window: whatever the
video trim drops (whole GOPs from the front), the audio before the new first frame goes too, so a
recording's pre-roll has sound from its first picture on. One packet more is kept in front
(pre-roll: an AAC decoder's first frame is only the second half of an overlap, so the packet
sounding at the first picture decodes right only after the one before it). Audio may arrive
before the first keyframe (a camera's keyframe is held while its pieces are joined): up to
`AUDIO_EARLY` seconds of it wait for the video. Audio is capped on its own clock too (`seconds`
+ `AUDIO_SLACK`), so a camera whose video stalls while its audio flows stays bounded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from bridge.media.packet import AudioPacket, VideoPacket

#: Audio is also trimmed to this much more than `seconds` behind the newest audio packet.
AUDIO_SLACK = 30.0
#: Audio kept while no video is buffered (waiting for the first keyframe), in seconds.
AUDIO_EARLY = 1.0


class Prebuffer:
    def __init__(self, seconds: float = 4.0, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self._packets: deque[VideoPacket] = deque()
        self._keyframes: deque[VideoPacket] = deque()  # the keyframes among _packets, in order
        self._bytes = 0
        self._audio: deque[AudioPacket] = deque()
        self._audio_bytes = 0

    def append(self, packet: VideoPacket) -> None:
        if not self._packets and not packet.keyframe:
            return  # a buffer must start at a keyframe to be decodable
        if self._packets and packet.epoch != self._packets[-1].epoch:
            audio = [a for a in self._audio if a.epoch == packet.epoch]  # the new epoch's
            self.clear()
            for early in audio:
                self.append_audio(early)
            if not packet.keyframe:
                return
        first = not self._packets
        self._packets.append(packet)
        if packet.keyframe:
            self._keyframes.append(packet)
        self._bytes += len(packet.data)
        if first:
            self._drop_audio(lambda a: a.epoch != packet.epoch)
            self._trim_audio(packet.pts)
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
            self._trim_audio(second.pts)

    def append_audio(self, packet: AudioPacket) -> None:
        """Keep an audio packet with the video it plays over."""
        if self._packets:
            if packet.epoch != self._packets[-1].epoch:
                return  # late, from before a reconnect
            start = max(self._packets[0].pts, packet.pts - self.seconds - AUDIO_SLACK)
        else:
            self._drop_audio(lambda a: a.epoch != packet.epoch)
            start = packet.pts - AUDIO_EARLY  # waiting for the first keyframe
        self._audio.append(packet)
        self._audio_bytes += len(packet.data)
        self._trim_audio(start)

    def _trim_audio(self, start: float) -> None:
        # Keep the packet that sounds at `start` and one before it (pre-roll).
        audio = self._audio
        while len(audio) >= 2 and audio[1].pts + audio[1].duration <= start:
            self._audio_bytes -= len(audio.popleft().data)

    def _drop_audio(self, stale: Callable[[AudioPacket], bool]) -> None:
        if any(stale(a) for a in self._audio):
            self._audio = deque(a for a in self._audio if not stale(a))
            self._audio_bytes = sum(len(a.data) for a in self._audio)

    def clear(self) -> None:
        self._packets.clear()
        self._keyframes.clear()
        self._bytes = 0
        self._audio.clear()
        self._audio_bytes = 0

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

    def audio_packets(self, since: float | None = None) -> list[AudioPacket]:
        """The buffered audio, oldest first (one packet of pre-roll before the first picture);
        with `since`, what still sounds from then on and one packet before it."""
        if since is None:
            return list(self._audio)
        packets = list(self._audio)
        first = next((i for i, p in enumerate(packets) if p.pts + p.duration > since), None)
        return [] if first is None else packets[max(0, first - 1) :]

    @property
    def audio_duration(self) -> float:
        if not self._audio:
            return 0.0
        return self._audio[-1].pts + self._audio[-1].duration - self._audio[0].pts

    @property
    def duration(self) -> float:
        if not self._packets:
            return 0.0
        return self._packets[-1].pts - self._packets[0].pts

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def audio_nbytes(self) -> int:
        return self._audio_bytes

    def __len__(self) -> int:
        return len(self._packets)
