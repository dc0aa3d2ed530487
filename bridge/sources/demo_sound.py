"""The `demo:` camera's sound: a short 440 Hz beep every 1.6 s, as AAC-LC, 16 kHz mono.

Encoded once when the demo opens (a few milliseconds) and then replayed packet by packet, so
the demo costs no audio CPU while it runs, like a camera whose packets are only copied. The
loop is 25 AAC frames (25 x 1024 samples = 1.6 s, in which 440 Hz makes exactly 704 cycles):
three loops are encoded and the middle one kept, so the encoder's start-up (priming, its first
rate decisions) is not in it and the packets join end to start without a click. The beep
starts at every multiple of 1.6 s of the demo's clock (tests measure A/V offsets with it).
"""

from __future__ import annotations

from fractions import Fraction

import av
import av.audio.codeccontext
import av.audio.frame
import numpy as np

from bridge.media.packet import AudioInfo

RATE = 16000
FRAME = 1024
LOOP_FRAMES = 25  # 1.6 s
TONE_HZ = 440.0
BEEP_SECONDS = 0.4
LEVEL = 0.3  # of full scale


def _signal() -> np.ndarray:
    """One loop of PCM: a beep with 20 ms fades (no clicks), then silence."""
    n = LOOP_FRAMES * FRAME
    t = np.arange(n) / RATE
    tone = LEVEL * np.sin(2 * np.pi * TONE_HZ * t)
    envelope = np.clip(np.minimum(t, BEEP_SECONDS - t) / 0.02, 0.0, 1.0)
    return (tone * envelope).astype(np.float32)


class DemoSound:
    """The encoded loop: `info` describes it, `packet(k)` is the k-th AAC frame of the sound."""

    frame_seconds = FRAME / RATE

    def __init__(self) -> None:
        encoder = av.CodecContext.create("aac", "w")
        assert isinstance(encoder, av.audio.codeccontext.AudioCodecContext)
        encoder.sample_rate = RATE
        encoder.layout = "mono"
        encoder.format = "fltp"
        encoder.bit_rate = 32000
        encoder.time_base = Fraction(1, RATE)
        encoder.open()
        loop = _signal()
        packets: list[bytes] = []
        for i in range(3 * LOOP_FRAMES):
            start = (i % LOOP_FRAMES) * FRAME
            frame = av.audio.frame.AudioFrame.from_ndarray(
                loop[None, start : start + FRAME], format="fltp", layout="mono"
            )
            frame.sample_rate = RATE
            frame.pts = i * FRAME
            packets += [bytes(p) for p in encoder.encode(frame)]
        # Packet j of an AAC encoder decodes to its input frame j - 1 (the priming frame comes
        # first): packets 26..50 decode to frames 25..49, i.e. loop frames 0..24, so the k-th
        # packet of the demo sounds the loop's k-th frame, at its pts.
        self._loop = packets[LOOP_FRAMES + 1 : 2 * LOOP_FRAMES + 1]
        self.info = AudioInfo("aac", RATE, 1, bytes(encoder.extradata or b""), 32)

    def packet(self, k: int) -> bytes:
        return self._loop[k % LOOP_FRAMES]
