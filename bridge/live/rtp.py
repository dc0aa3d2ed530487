"""RTP for H.264 (RFC 3550 header, RFC 6184 payload in packetization mode 1), and for audio.

Single NAL unit packets, STAP-A for runs of small NALs (SPS+PPS+SEI go out as one packet) and
FU-A for NALs bigger than the payload budget. Sequence numbers and SSRC belong to the
packetizer, so a reconfigured stream (copy <-> transcode) keeps one continuous RTP stream.
Audio (Opus, RFC 7587) is simpler: one encoded packet per RTP packet (`AudioPacketizer`).
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
CLOCK_RATE = 90_000  # H.264 over RTP always uses a 90 kHz clock

_STAP_A = 24
_FU_A = 28
_HEADER = struct.Struct("!BBHII")
_MIN_PAYLOAD = 32  # refuse absurd MTUs rather than emit one-byte fragments


def _initial_sequence(initial: int | None) -> int:
    # Random start (RFC 3550 5.1) makes known-plaintext attacks on SRTP harder.
    return secrets.randbits(16) if initial is None else initial & 0xFFFF


def rtp_payload(packet: bytes) -> bytes | None:
    """The payload of an RTP packet (after CSRCs and any header extension, without padding);
    None when the packet is malformed."""
    if len(packet) < RTP_HEADER_SIZE or packet[0] >> 6 != RTP_VERSION:
        return None
    start = RTP_HEADER_SIZE + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(packet) < start + 4:
            return None
        start += 4 + 4 * int.from_bytes(packet[start + 2 : start + 4], "big")
    end = len(packet) - (packet[-1] if packet[0] & 0x20 else 0)
    return packet[start:end] if start <= end else None


class AudioPacketizer:
    """One audio payload per RTP packet. The marker bit goes on the first packet of the
    stream (RFC 7587: the start of a talkspurt; we never stop sending while the stream runs)."""

    def __init__(self, ssrc: int, payload_type: int, *, initial_sequence: int | None = None):
        self.ssrc = ssrc & 0xFFFFFFFF
        self.payload_type = payload_type
        self.max_packet_size = 0  # unused: an audio packet is never split
        self._seq = _initial_sequence(initial_sequence)
        self._first = True

    @property
    def next_sequence(self) -> int:
        return self._seq

    def packetize_one(self, payload: bytes, timestamp: int) -> bytes:
        marker = 0x80 if self._first else 0
        self._first = False
        header = _HEADER.pack(
            RTP_VERSION << 6,
            marker | (self.payload_type & 0x7F),
            self._seq,
            timestamp & 0xFFFFFFFF,
            self.ssrc,
        )
        self._seq = (self._seq + 1) & 0xFFFF
        return header + payload


class H264Packetizer:
    """Turns access units (lists of NAL units) into RTP packets of at most max_packet_size."""

    def __init__(
        self,
        ssrc: int,
        payload_type: int,
        max_packet_size: int,
        *,
        initial_sequence: int | None = None,
    ) -> None:
        self.ssrc = ssrc & 0xFFFFFFFF
        self.payload_type = payload_type
        self.max_packet_size = max_packet_size
        self._seq = _initial_sequence(initial_sequence)

    @property
    def next_sequence(self) -> int:
        return self._seq

    @property
    def max_packet_size(self) -> int:
        return self._max_payload + RTP_HEADER_SIZE

    @max_packet_size.setter
    def max_packet_size(self, size: int) -> None:
        self._max_payload = max(size - RTP_HEADER_SIZE, _MIN_PAYLOAD)

    def packetize(self, nals: Sequence[bytes], timestamp: int) -> list[bytes]:
        """RTP packets for one access unit; the marker bit is set on the last one."""
        payloads = self._payloads(nals)
        packets: list[bytes] = []
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            marker = 0x80 if i == last else 0
            header = _HEADER.pack(
                RTP_VERSION << 6,
                marker | (self.payload_type & 0x7F),
                self._seq,
                timestamp & 0xFFFFFFFF,
                self.ssrc,
            )
            self._seq = (self._seq + 1) & 0xFFFF
            packets.append(header + payload)
        return packets

    def _payloads(self, nals: Sequence[bytes]) -> list[bytes]:
        budget = self._max_payload
        out: list[bytes] = []
        pending: list[bytes] = []  # small NALs waiting to be aggregated
        pending_size = 1  # STAP-A header byte

        def flush() -> None:
            nonlocal pending_size
            if len(pending) == 1:
                out.append(pending[0])
            elif pending:
                out.append(_stap_a(pending))
            pending.clear()
            pending_size = 1

        for nal in nals:
            if not nal:
                continue
            if len(nal) > budget:
                flush()
                out.extend(_fu_a(nal, budget))
                continue
            if pending_size + 2 + len(nal) > budget:
                flush()
            pending.append(nal)
            pending_size += 2 + len(nal)
        flush()
        return out


def _stap_a(nals: Sequence[bytes]) -> bytes:
    # F is the OR of the aggregated F bits, NRI their maximum (RFC 6184 5.7.1).
    forbidden = 0
    nri = 0
    parts: list[bytes] = []
    for nal in nals:
        forbidden |= nal[0] & 0x80
        nri = max(nri, nal[0] & 0x60)
        parts.append(len(nal).to_bytes(2, "big"))
        parts.append(nal)
    return bytes([forbidden | nri | _STAP_A]) + b"".join(parts)


def _fu_a(nal: bytes, budget: int) -> list[bytes]:
    indicator = (nal[0] & 0xE0) | _FU_A
    nal_type = nal[0] & 0x1F
    body = memoryview(nal)[1:]
    room = budget - 2
    # Equal-sized fragments instead of full ones plus a runt: same packet count, smoother bursts.
    count = -(-len(body) // room)
    size = -(-len(body) // count)
    out: list[bytes] = []
    for i in range(count):
        chunk = body[i * size : (i + 1) * size]
        header = nal_type
        if i == 0:
            header |= 0x80
        if i == count - 1:
            header |= 0x40
        out.append(bytes((indicator, header)) + chunk)
    return out


class RtpClock:
    """Maps media timestamps (seconds, per source epoch) to RTP timestamps.

    RTP time follows the media's own pts so frame spacing is preserved, with three exceptions:
    a random initial offset (RFC 3550), rebasing after discontinuities (camera reconnect, pts
    jumps, mode switches that repeat a pts), and `compress` for catch-up bursts, where frames
    that are already late get squeezed together so the controller plays them out quickly and
    then stays at the live edge instead of lagging by the backlog's length for the whole session.
    """

    MAX_JUMP = 3.0  # seconds; larger pts steps are treated as a discontinuity
    CATCH_UP_TICKS = 90  # 1 ms between frames of a catch-up burst

    def __init__(self, initial_offset: int | None = None) -> None:
        self._offset = secrets.randbits(32) if initial_offset is None else initial_offset
        self._base_pts = 0.0
        self._base_ticks = 0
        self._epoch: int | None = None
        self._last_pts = 0.0
        self._last_ticks = 0

    @property
    def last_ticks(self) -> int:
        """Unwrapped, offset-free RTP time of the last stamped frame."""
        return self._last_ticks

    def to_rtp(self, ticks: int) -> int:
        return (ticks + self._offset) & 0xFFFFFFFF

    def stamp(self, pts: float, epoch: int, frame_ticks: int, *, compress: bool = False) -> int:
        """The (wrapped) RTP timestamp for a frame with this pts."""
        if self._epoch is None:
            self._rebase(pts, 0, epoch)
        elif epoch != self._epoch or abs(pts - self._last_pts) > self.MAX_JUMP:
            self._rebase(pts, self._last_ticks + frame_ticks, epoch)
        elif pts == self._last_pts:
            # A different picture with the same pts (e.g. first transcoded frame after a
            # copy stream): never reuse a timestamp, receivers group packets by it.
            self._rebase(pts, self._last_ticks + frame_ticks, epoch)
        elif compress:
            self._rebase(pts, self._last_ticks + self.CATCH_UP_TICKS, epoch)
        # Small negative steps are allowed: cameras with B-frames send pts out of order.
        ticks = self._base_ticks + round((pts - self._base_pts) * CLOCK_RATE)
        self._last_pts = pts
        self._last_ticks = ticks
        return self.to_rtp(ticks)

    def _rebase(self, pts: float, ticks: int, epoch: int) -> None:
        self._base_pts = pts
        self._base_ticks = ticks
        self._epoch = epoch
