"""The last few seconds of a camera's encoded packets, always starting at a keyframe.

Live view starts from its newest keyframe (a picture at once instead of waiting for the next
GOP); the recorder (#4) takes the whole buffer as pre-roll.

The camera's audio packets are kept beside the video over the same time window: whatever the
video trim drops (whole GOPs from the front), the audio before the new first frame goes too, so a
recording's pre-roll has sound from its first picture on. Audio arriving while no video is
buffered is dropped (nothing could play it), and audio is capped on its own clock too
(`seconds` + `AUDIO_SLACK`), so a camera whose video stalls while its audio flows stays bounded.
"""

from __future__ import annotations

from collections import deque

from bridge.media.packet import AudioPacket, VideoPacket

#: Audio is also trimmed to this much more than `seconds` behind the newest audio packet.
AUDIO_SLACK = 30.0


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
            self._trim_audio(second.pts)

    def append_audio(self, packet: AudioPacket) -> None:
        """Keep an audio packet with the video it plays over (dropped while no video is)."""
        if not self._packets or packet.epoch != self._packets[-1].epoch:
            return
        self._audio.append(packet)
        self._audio_bytes += len(packet.data)
        self._trim_audio(max(self._packets[0].pts, packet.pts - self.seconds - AUDIO_SLACK))

    def _trim_audio(self, start: float) -> None:
        # A packet that still sounds at `start` stays (its end is after it).
        audio = self._audio
        while audio and audio[0].pts + audio[0].duration <= start:
            self._audio_bytes -= len(audio.popleft().data)

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
        """The buffered audio, oldest first; with `since`, only what still sounds from then on
        (e.g. the pts of the keyframe a video consumer starts at)."""
        if since is None:
            return list(self._audio)
        return [p for p in self._audio if p.pts + p.duration > since]

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
