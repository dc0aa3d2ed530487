"""HomeKit's Opus: RTP timestamps for audio packets, and the camera's sound re-encoded as Opus.

HomeKit wants what other bridges got wrong (Home Assistant #45164 #80334 #116537, go2rtc #667
#843): the RTP clock runs at the *negotiated* sample rate (16 or 24 kHz, not RFC 7587's 48 kHz)
and every packet holds exactly the packet time the controller selected (`rtp_time`: 20 ms on
Wi-Fi, 60 ms on cellular), so consecutive timestamps step by exactly packet time x rate.

`OpusTimeline` gives every packet its timestamp from the camera's pts (the video's clock) while
keeping that step: packets that follow each other get consecutive steps whatever jitter their
pts have; a gap in the camera's sound (lost packets, the oldest dropped under load) is skipped
in *whole* packets, so a step is always a multiple of the packet's; a jump beyond `MAX_JUMP`
(or backwards) is a discontinuity and the timestamps just go on.

`copy_problem` says whether the camera's own packets can go out as they are: Opus, the channel
count asked for, packets of exactly the packet time (their TOC byte says both, RFC 6716 §3.1:
no decode), at no more than `COPY_BITRATE_HEADROOM` times the controller's maximum bitrate.

`OpusEncoder` turns the camera's packets of any codec the sources carry (AAC, G.711, Opus of
another framing, MP3...) into such packets: decode, resample to the selected rate and layout,
cut into frames of exactly one packet time, libopus. Gaps up to `MAX_FILL` are filled with
silence (the decoded stream stays on the camera's timeline); longer ones start a new run. It is
plain code without threads: the session runs it on the media executor, one job at a time, so
its codec contexts are only ever used by one thread at a time. Decoder and conversion
(bridge/media/resample.py) start no FFmpeg thread pool (a few milliseconds per second of
sound). PyAV's encoder puts its own conversion graph in front of libopus, with FFmpeg's default
pool (2 threads here) that cannot be turned off from Python; `close()` frees it with the codecs
when the session ends (measured: back to the thread count before the session).
"""

from __future__ import annotations

import collections
import logging
import secrets
from dataclasses import dataclass

import av
import av.audio.codeccontext
import av.error
import numpy as np

from accessories.backend import AudioRequest
from bridge.media.packet import AudioInfo, AudioPacket
from bridge.media.resample import Resampler
from bridge.sources.audio_stream import opus_samples

log = logging.getLogger(__name__)

MAX_JUMP = 3.0  # seconds: a larger pts step (or any step back past a packet) is a discontinuity
MAX_FILL = 0.5  # seconds of missing sound filled with silence when transcoding
REANCHOR = 0.03  # seconds: smaller pts jitter between consecutive packets is ignored
APPLICATION = "audio"  # libopus mode: camera sound is not only speech
COPY_BITRATE_HEADROOM = 1.5  # a VBR camera stream may peak above the controller's maximum
_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


@dataclass(frozen=True, slots=True)
class OpusPacket:
    """One packet to send: its payload, its RTP timestamp (offset included, unwrapped), and the
    pts (video clock) of its first sample as the controller will hear it."""

    payload: bytes
    timestamp: int
    pts: float
    epoch: int


def copy_problem(info: AudioInfo, request: AudioRequest, packet: AudioPacket) -> str | None:
    """None when the camera's Opus packets fit the request as they are, else why not."""
    if info.codec not in ("opus", "libopus"):
        return f"the camera sends {info.codec}"
    if not packet.data:
        return "an empty packet"
    # The packet's own TOC says mono or stereo (an RTSP SDP always says opus/48000/2).
    channels = 2 if packet.data[0] & 0x04 else 1
    if channels != request.channels:
        return f"{channels} channel(s), {request.channels} asked"
    samples = opus_samples(packet.data)
    if samples * 1000 != request.packet_time_ms * 48000:
        return f"{samples / 48:g} ms packets, {request.packet_time_ms} ms asked"
    kbps = info.bitrate_kbps or len(packet.data) * 8 * 48 / samples
    if kbps > request.max_bitrate_kbps * COPY_BITRATE_HEADROOM:
        return f"{kbps:.0f} kbit/s, at most {request.max_bitrate_kbps} asked"
    return None


class OpusTimeline:
    """RTP timestamps at `rate` for packets of `frame` samples, placed by their pts."""

    def __init__(self, rate: int, frame: int, *, offset: int | None = None) -> None:
        self.rate, self.frame = rate, frame
        self.offset = secrets.randbits(32) if offset is None else offset
        self._ticks = 0  # offset-free ticks of the next packet
        self._next_pts: float | None = None  # where the next packet is expected to start
        self._epoch: int | None = None
        self.skipped = 0  # packets' worth of time skipped over gaps

    def place(self, pts: float, epoch: int) -> int:
        """The timestamp of a packet whose first sample has this pts (unwrapped)."""
        step = self.frame / self.rate
        if self._next_pts is not None and epoch == self._epoch:
            gap = pts - self._next_pts
            if step / 2 < gap <= MAX_JUMP:
                whole = round(gap / step)
                self._ticks += whole * self.frame
                self.skipped += whole
        ticks = self._ticks
        self._ticks += self.frame
        self._next_pts, self._epoch = pts + step, epoch
        return ticks + self.offset


class OpusEncoder:
    """The camera's packets in, OpusPackets of one packet time out (call from one thread)."""

    def __init__(self, info: AudioInfo, request: AudioRequest, timeline: OpusTimeline) -> None:
        self.info = info
        self.request = request
        self.timeline = timeline
        self.rate, self.channels = request.sample_rate, request.channels
        self.frame = request.frame_samples
        self._decoder: av.audio.codeccontext.AudioCodecContext | None = None
        self._resampler: Resampler | None = None
        self._encoder: av.audio.codeccontext.AudioCodecContext | None = None
        self._pcm = np.zeros(0, np.int16)  # interleaved samples not yet encoded
        self._pcm_pts = 0.0  # pts of self._pcm[0]
        self._source_next: float | None = None  # pts right after the last packet taken
        self._epoch: int | None = None
        self._fed = 0  # samples given to the encoder (its pts)
        self._frames: collections.deque[tuple[int, float, int]] = collections.deque()
        self.delay: float | None = None  # the encoder's lookahead (s), learnt from its output
        self.decoded = 0  # samples at our rate
        self.silence = 0  # samples of silence put into gaps
        self.decode_errors = 0
        self.gain = 1.0  # set by the session before each job (the Microphone's Volume)

    def encode(self, packets: list[AudioPacket]) -> list[OpusPacket]:
        out: list[OpusPacket] = []
        for packet in packets:
            self._take(packet, out)
        return out

    def close(self) -> None:
        """Free the codecs (not while a job runs: the session calls it once none does)."""
        if self._resampler is not None:
            self._resampler.close()
        self._decoder = self._encoder = self._resampler = None

    # -- input ---------------------------------------------------------------------------------

    def _take(self, packet: AudioPacket, out: list[OpusPacket]) -> None:
        nxt = self._source_next
        if nxt is None or packet.epoch != self._epoch or not -MAX_JUMP < packet.pts - nxt:
            self._restart(packet, out)
        else:
            gap = packet.pts - nxt
            if gap > MAX_FILL:
                self._restart(packet, out)
            elif gap > REANCHOR:
                self._append(np.zeros(round(gap * self.rate) * self.channels, np.int16))
                self.silence += round(gap * self.rate)
        pcm = self._decode(packet)
        if pcm is None:
            return
        self._append(pcm)
        samples_in = len(pcm) // self.channels
        self._source_next = packet.pts + (packet.duration or samples_in / self.rate)
        self._encode_ready(out)

    def _restart(self, packet: AudioPacket, out: list[OpusPacket]) -> None:
        """A new run at this packet: what is left of the last one goes out padded."""
        if len(self._pcm):
            short = -(len(self._pcm) // self.channels) % self.frame
            self._append(np.zeros(short * self.channels, np.int16))
            self._encode_ready(out)
        self._pcm = np.zeros(0, np.int16)
        self._pcm_pts = packet.pts
        self._epoch = packet.epoch

    def _append(self, pcm: np.ndarray) -> None:
        self._pcm = np.concatenate([self._pcm, pcm]) if len(self._pcm) else pcm

    def _open_decoder(self) -> None:
        info = self.info
        decoder = av.CodecContext.create(info.codec, "r")
        assert isinstance(decoder, av.audio.codeccontext.AudioCodecContext)
        decoder.thread_count = 1  # no FFmpeg thread pool for a few ms per second of sound
        decoder.sample_rate = info.sample_rate
        decoder.layout = _LAYOUTS.get(info.channels, "stereo")
        if info.extradata:
            decoder.extradata = info.extradata
        decoder.open()
        self._decoder = decoder
        layout = "mono" if self.channels == 1 else "stereo"
        self._resampler = Resampler("s16", layout, self.rate)

    def _decode(self, packet: AudioPacket) -> np.ndarray | None:
        if self._decoder is None:
            self._open_decoder()
        assert self._decoder is not None and self._resampler is not None
        try:
            frames = self._decoder.decode(av.Packet(packet.data))
            blocks = [f.to_ndarray() for fr in frames for f in self._resampler.resample(fr)]
        except (av.error.FFmpegError, ValueError) as exc:
            self.decode_errors += 1
            if self.decode_errors == 1:
                log.warning("undecodable %s packet for live Opus: %s", self.info.codec, exc)
            return None
        if not blocks:
            return np.zeros(0, np.int16)
        pcm = np.concatenate([np.asarray(b, np.int16).reshape(-1) for b in blocks])
        self.decoded += len(pcm) // self.channels
        gain = self.gain
        if gain < 1.0:  # the Microphone's Volume (its Mute never gets here)
            pcm = (pcm.astype(np.float32) * gain).astype(np.int16)
        return pcm

    # -- output --------------------------------------------------------------------------------

    def _open_encoder(self) -> av.audio.codeccontext.AudioCodecContext:
        request = self.request
        encoder = av.CodecContext.create("libopus", "w")
        assert isinstance(encoder, av.audio.codeccontext.AudioCodecContext)
        encoder.thread_count = 1
        encoder.sample_rate = self.rate
        encoder.layout = "mono" if self.channels == 1 else "stereo"
        encoder.format = "s16"
        encoder.bit_rate = max(6, request.max_bitrate_kbps) * 1000
        encoder.options = {
            "application": APPLICATION,
            "frame_duration": str(request.packet_time_ms),
            "vbr": "on" if request.variable_bitrate else "off",
        }
        encoder.open()
        if encoder.frame_size != self.frame:
            raise ValueError(f"libopus frames of {encoder.frame_size} samples, not {self.frame}")
        self._encoder = encoder
        return encoder

    def _encode_ready(self, out: list[OpusPacket]) -> None:
        per_frame = self.frame * self.channels
        layout = "mono" if self.channels == 1 else "stereo"
        encoder = self._encoder or self._open_encoder()
        while len(self._pcm) >= per_frame:
            chunk, self._pcm = self._pcm[:per_frame], self._pcm[per_frame:]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout=layout)
            frame.sample_rate = self.rate
            frame.pts = self._fed
            self._frames.append((self._fed, self._pcm_pts, self._epoch or 0))
            self._fed += self.frame
            self._pcm_pts += self.frame / self.rate
            for packet in encoder.encode(frame):
                self._emit(packet, out)

    def _emit(self, packet: av.Packet, out: list[OpusPacket]) -> None:
        # One packet per frame, in order; its pts is the frame's minus the lookahead.
        if not self._frames:
            return
        fed, pts, epoch = self._frames.popleft()
        if self.delay is None and packet.pts is not None:
            self.delay = max(0, fed - packet.pts) / self.rate
        timestamp = self.timeline.place(pts, epoch)
        # What the controller hears in this packet started `delay` before the frame.
        out.append(OpusPacket(bytes(packet), timestamp, pts - (self.delay or 0.0), epoch))
