"""PCM in, RTP packets for a camera's back channel out: resampling, G.711 or AAC, RTP framing.

Pure and synchronous (no sockets, clocks or logging): the back channel (backchannel.py) runs
`BackChannelEncoder.encode` on the media executor, one call at a time, so each encoder's codec
state stays on one thread at a time.

Why G.711 by our own table and not `audioop`: audioop is gone from Python 3.13, and a 64 KiB
lookup table built once with numpy (ITU-T G.711's segment rules for every int16 value) encodes
20 ms in microseconds. tests/test_backchannel.py checks both laws against FFmpeg for all 65536
inputs: the same code, or at a segment boundary the neighbouring level (FFmpeg rounds to the
nearest level, G.711's rules truncate; every decoder plays both). Resampling is libswresample's
(PyAV), which keeps its filter state between calls, so 20 ms chunks join without clicks.

Timing: RTP timestamps count samples at the camera's clock, so they advance exactly by the
packet time per packet, whatever size the chunks we are given. When nothing came for longer than
`GAP_SECONDS` (the user let go of the talk button and pressed it again on an open channel), the
timestamp jumps by the wall-clock gap and the packet carries the marker bit (a new talk spurt,
RFC 3551 §4.1), and the stale sub-packet remainder of the previous spurt is dropped.
"""

from __future__ import annotations

import os

import av
import av.audio.codeccontext
import numpy as np

from bridge.media.resample import Resampler

#: Codecs we can send, by their SDP encoding name.
SUPPORTED = ("PCMU", "PCMA", "MPEG4-GENERIC")
GAP_SECONDS = 0.3
AAC_FRAME = 1024


def _mulaw_table() -> np.ndarray:
    # G.711 µ-law: magnitude of the 14-bit sample plus bias 33, clipped; the segment is the
    # position of its highest bit above bit 5; 4 mantissa bits follow it; all bits inverted.
    x = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), 8159) + 33
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), mag)
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _alaw_table() -> np.ndarray:
    # G.711 A-law: 13-bit sample; the segment is the position of the highest bit above bit 4
    # (the first two segments are linear); 4 mantissa bits; even bits inverted (0x55), sign set
    # for positive samples.
    x = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(x >= 0, 0xD5, 0x55)
    mag = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), mag)
    shift = np.where(seg < 2, 1, seg)
    code = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> shift) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8)


_TABLES: dict[str, np.ndarray] = {}


def g711_encode(samples: np.ndarray, law: str) -> bytes:
    """int16 samples -> G.711 bytes ("PCMU" µ-law or "PCMA" A-law)."""
    table = _TABLES.get(law)
    if table is None:
        table = _TABLES[law] = _mulaw_table() if law == "PCMU" else _alaw_table()
    index = samples.astype(np.int32) + 32768
    return table[index].tobytes()


def as_planar_float(pcm: np.ndarray) -> np.ndarray:
    """float32 (channels, n) in [-1, 1] from int16 or float samples, (n,) or (channels, n)."""
    a = np.asarray(pcm)
    if a.ndim == 1:
        a = a[np.newaxis, :]
    if a.ndim != 2:
        raise ValueError(f"PCM must be (n,) or (channels, n), got shape {a.shape}")
    if a.dtype == np.int16:
        return a.astype(np.float32) / 32768.0
    return np.clip(a.astype(np.float32), -1.0, 1.0)


def rtp_packet(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool) -> bytes:
    header = bytes((0x80, (0x80 if marker else 0) | pt))
    return (
        header
        + (seq & 0xFFFF).to_bytes(2, "big")
        + (ts & 0xFFFFFFFF).to_bytes(4, "big")
        + ssrc.to_bytes(4, "big")
        + payload
    )


class BackChannelEncoder:
    """PCM at any rate -> RTP packets in the back channel's codec, payload type and clock."""

    def __init__(
        self,
        codec: str,
        payload_type: int,
        clock_rate: int,
        channels: int = 1,
        ptime_ms: int = 20,
    ) -> None:
        codec = codec.upper()
        if codec not in SUPPORTED:
            raise ValueError(f"cannot send {codec} (we send {', '.join(SUPPORTED)})")
        self.codec, self.payload_type = codec, payload_type
        self.clock_rate, self.channels = clock_rate, max(1, channels)
        self.aac = codec == "MPEG4-GENERIC"
        if not self.aac:
            self.channels = 1
        self.samples_per_packet = AAC_FRAME if self.aac else clock_rate * ptime_ms // 1000
        self.ssrc = int.from_bytes(os.urandom(4), "big")
        self.seq = int.from_bytes(os.urandom(2), "big")
        self.ts = int.from_bytes(os.urandom(4), "big")
        self.packets = 0
        self._layout = "mono" if self.channels == 1 else "stereo"
        self._resampler: Resampler | None = None
        self._in_rate = 0
        self._pending = np.zeros((self.channels, 0), np.float32)
        self._last: float | None = None
        self._marker = True
        self._aac_ctx: av.audio.codeccontext.AudioCodecContext | None = None
        self._aac_pts = 0

    def encode(self, pcm: np.ndarray, rate: int, now: float) -> list[bytes]:
        """RTP packets for `pcm` (int16 or float, mono (n,) or (channels, n)) at `rate` Hz,
        received at monotonic time `now`; a remainder shorter than a packet waits."""
        if self._last is not None and now - self._last > GAP_SECONDS:
            self.ts += round((now - self._last) * self.clock_rate)
            self._pending = self._pending[:, :0]
            self._resampler = None  # its filter still holds the end of the last spurt
            self._marker = True
        self._last = now
        samples = self._resample(as_planar_float(pcm), rate)
        if samples.shape[1]:
            self._pending = np.concatenate([self._pending, samples], axis=1)
        out: list[bytes] = []
        n = self.samples_per_packet
        while self._pending.shape[1] >= n:
            chunk, self._pending = self._pending[:, :n], self._pending[:, n:]
            out += self._aac(chunk) if self.aac else [self._g711(chunk)]
        return out

    def _resample(self, planar: np.ndarray, rate: int) -> np.ndarray:
        if self._resampler is None or rate != self._in_rate:
            self._resampler = Resampler("fltp", self._layout, self.clock_rate)
            self._in_rate = rate
        layout = "mono" if planar.shape[0] == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(planar[:2]), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        parts = [f.to_ndarray() for f in self._resampler.resample(frame)]
        if not parts:
            return np.zeros((self.channels, 0), np.float32)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def _next(self, payload: bytes, samples: int, marker: bool) -> bytes:
        packet = rtp_packet(self.payload_type, self.seq, self.ts, self.ssrc, payload, marker)
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + samples) & 0xFFFFFFFF
        self.packets += 1
        return packet

    def _g711(self, chunk: np.ndarray) -> bytes:
        pcm16 = np.clip(np.round(chunk[0] * 32767.0), -32768, 32767).astype(np.int16)
        marker, self._marker = self._marker, False
        return self._next(g711_encode(pcm16, self.codec), len(pcm16), marker)

    def _aac(self, chunk: np.ndarray) -> list[bytes]:
        # RFC 3640 AAC-hbr: a 16-bit AU-headers-length (16 bits), one AU header (13-bit size,
        # 3-bit index 0), the access unit; the marker bit ends each (whole) AU.
        if self._aac_ctx is None:
            ctx = av.CodecContext.create("aac", "w")
            assert isinstance(ctx, av.audio.codeccontext.AudioCodecContext)
            ctx.sample_rate, ctx.layout, ctx.format = self.clock_rate, self._layout, "fltp"
            ctx.bit_rate = 32000 * self.channels
            ctx.open()
            self._aac_ctx = ctx
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), "fltp", self._layout)
        frame.sample_rate, frame.pts = self.clock_rate, self._aac_pts
        self._aac_pts += AAC_FRAME
        out = []
        for packet in self._aac_ctx.encode(frame):
            au = bytes(packet)
            if len(au) >= 1 << 13:
                continue  # cannot be described by a 13-bit size (never at these bitrates)
            payload = b"\x00\x10" + (len(au) << 3).to_bytes(2, "big") + au
            out.append(self._next(payload, AAC_FRAME, True))
        self._marker = False
        return out
