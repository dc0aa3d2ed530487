"""An AAC-LC track on the video's timeline: PCM in (silence today), AAC access units out.

HomeKit Secure Video wants an audio track in every recording, in the format the hub selected
(AAC-LC, its sample rate, channels and bitrate), even from a camera without a microphone. Our
sources are video-only today, so the input is silence; a camera's audio will plug in as an
`AudioInput`, which is asked for samples by their position on the recording's timeline.

One clock: sample `n` of the timeline is `n / sample_rate` seconds after the recording's first
video frame, and the n-th MP4 audio sample sits at position n. Positions are counted in whole
frames (1024 samples), never summed from rounded durations, so audio cannot drift from video
however long a recording runs. FFmpeg's encoder delays its output by one frame (the AAC
priming); with no edit list (fragmented MP4 written without one) a player would hear the input
one frame late, so the encoder is fed the timeline from `frame_size` samples on: the priming
frame then plays over the first frame's slot and everything after lines up.

Not thread-safe: one encoder context, used from one thread (the recording's worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
import av.audio.codeccontext
import av.audio.frame
import av.audio.stream
import av.container
import numpy as np

#: The sample rates HomeKit's recording configuration can select (TLV values 0..5).
SAMPLE_RATES = (8000, 16000, 24000, 32000, 44100, 48000)


class AudioInput(Protocol):
    """Where the track's sound comes from (a camera's audio, later)."""

    def read(self, start: int, count: int) -> np.ndarray | None:
        """Samples [start, start + count) of the timeline as float32, shape (channels, count),
        or None for silence. `start` may be negative (before the first video frame)."""


class Silence:
    """The input of a camera without audio, and of a recording with audio turned off."""

    def read(self, start: int, count: int) -> np.ndarray | None:
        return None


@dataclass(frozen=True, slots=True)
class AacPacket:
    data: bytes
    position: int  # in samples, on the track's timeline (its MP4 decode time)
    duration: int  # samples


class AacTrack:
    """Encodes the timeline frame by frame, as far as the video has got."""

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        bitrate_kbps: int,
        source: AudioInput | None = None,
    ) -> None:
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"unsupported AAC sample rate {sample_rate}")
        if channels not in (1, 2):
            raise ValueError(f"unsupported channel count {channels}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.bitrate = bitrate_kbps * 1000
        self.layout = "mono" if channels == 1 else "stereo"
        self.source: AudioInput = source or Silence()
        #: Subtracted from track positions when asking the input (the video's B-frame lead).
        self.input_offset = 0
        self._encoder = self._open()
        self.frame_size = self._encoder.frame_size or 1024
        self._silence = np.zeros((channels, self.frame_size), np.float32)
        self._fed = 0  # frames given to the encoder
        self._made = 0  # packets out of it (one frame behind while priming)

    def _open(self) -> av.audio.codeccontext.AudioCodecContext:
        encoder = av.CodecContext.create("aac", "w")
        assert isinstance(encoder, av.audio.codeccontext.AudioCodecContext)
        self._configure(encoder)
        encoder.time_base = Fraction(1, self.sample_rate)
        encoder.open()
        return encoder

    def _configure(self, ctx: av.audio.codeccontext.AudioCodecContext) -> None:
        ctx.sample_rate = self.sample_rate
        ctx.layout = self.layout
        ctx.format = "fltp"
        ctx.bit_rate = self.bitrate

    def add_stream(self, container: av.container.OutputContainer) -> av.audio.stream.AudioStream:
        """A stream for this track's packets in `container`, with the same parameters (hence
        the same AudioSpecificConfig in the `esds`) as the track's own encoder."""
        stream = container.add_stream("aac", rate=self.sample_rate, layout=self.layout)
        self._configure(stream.codec_context)
        stream.time_base = Fraction(1, self.sample_rate)
        return stream

    @property
    def position(self) -> int:
        """Samples of the track encoded so far (where the next packet starts)."""
        return self._made * self.frame_size

    def encode_until(self, end: int) -> list[AacPacket]:
        """Every packet that starts before sample `end` and was not returned yet."""
        n = self.frame_size
        out: list[AacPacket] = []
        while self._made * n < end:
            # The encoder's first packet is its priming: feed the timeline one frame ahead.
            start = (self._fed + 1) * n - self.input_offset
            pcm = self.source.read(start, n)
            frame = av.audio.frame.AudioFrame.from_ndarray(
                self._silence if pcm is None else np.ascontiguousarray(pcm, np.float32),
                format="fltp",
                layout=self.layout,
            )
            frame.sample_rate = self.sample_rate
            frame.pts = self._fed * n
            frame.time_base = Fraction(1, self.sample_rate)
            self._fed += 1
            for packet in self._encoder.encode(frame):
                out.append(AacPacket(bytes(packet), self._made * n, n))
                self._made += 1
        return out
