"""The iPhone's side of talk-back: a voice (a tone) as Opus RTP over SRTP, at real-time pace.

While the talk button is held, iOS sends the user's voice as Opus at the negotiated rate and
packet time to the accessory's audio port, in the stream's audio SRTP key. This sends a sine
tone the same way (16 kHz, 20 ms packets, payload type 110) through a Viewer's audio socket.
"""

from __future__ import annotations

import asyncio
import time

import av
import av.audio.codeccontext
import numpy as np

from tests.peers.viewer import Viewer


class Voice:
    """The iPhone's side of talk-back: a tone as 20 ms Opus packets at 16 kHz, real time."""

    RATE, FRAME = 16000, 320

    def __init__(self, tone_hz: float = 660.0) -> None:
        self.tone_hz = tone_hz
        enc = av.CodecContext.create("libopus", "w")
        assert isinstance(enc, av.audio.codeccontext.AudioCodecContext)
        enc.sample_rate, enc.layout, enc.format = self.RATE, "mono", "s16"
        enc.bit_rate = 24000
        enc.options = {"application": "voip", "frame_duration": "20"}
        enc.open()
        self._enc = enc
        self._n = 0

    def packets(self, count: int) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < count:
            t = (self._n + np.arange(self.FRAME)) / self.RATE
            pcm = (0.5 * 32767 * np.sin(2 * np.pi * self.tone_hz * t)).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts = self.RATE, self._n
            self._n += self.FRAME
            out += [bytes(p) for p in self._enc.encode(frame)]
        return out

    async def talk(self, viewer: Viewer, seconds: float) -> None:
        assert viewer.audio is not None
        target = ("127.0.0.1", viewer.accessory_audio_port)
        start = time.monotonic()
        for i, payload in enumerate(self.packets(round(seconds * 50))):
            viewer.audio.send_rtp(target, payload, i * self.FRAME, 110)
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.monotonic()))
