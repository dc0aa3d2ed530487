"""One outgoing SRTP stream: packetize, stamp, protect, send; plus its RTCP sender reports.

Video (`send_frame`: H.264 access units, 90 kHz) and audio (`send_audio`: one encoded packet
per RTP packet, at the negotiated rate) share the sending and the reports. A report maps "RTP
time now" to the wall clock. For video that is the last frame's RTP time, extrapolated from
when it was sent. Audio must map to the same timeline or the controller cannot line sound up
with pictures, so its sender takes `report_clock` (bridge/live/audio.py derives it from the
video sender's `media_time`: which pts the video's reports say is "now").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bridge.live import rtcp
from bridge.live.rtp import CLOCK_RATE, RTP_HEADER_SIZE, AudioPacketizer, H264Packetizer, RtpClock
from bridge.live.srtp import AUTH_TAG_SIZE, MAX_PLAIN_PACKET, SrtpContext
from bridge.media.h264 import has_parameter_sets, rtp_nals, split_annexb


def rtp_packet_limit(max_mtu: int) -> int:
    """Largest plain RTP packet (header included) for a HomeKit max MTU.

    HAP-NodeJS hands the controller's MTU to FFmpeg as the srtp:// `pkt_size`, the size of the
    whole UDP payload; SRTP appends a 10-byte auth tag after packetizing, so the RTP packet
    must leave room for it. pylibsrtp caps plain packets at 1356 bytes, below HAP's 1378 default.
    """
    return min(max_mtu - AUTH_TAG_SIZE, MAX_PLAIN_PACKET)


class RtpSender:
    """Keeps SSRC, sequence numbers and the RTP clock across copy/transcode switches.

    `packetizer`: H264Packetizer by default (video); an AudioPacketizer for audio, with its
    `clock_rate` and a `report_clock(now) -> unwrapped RTP ticks | None` for its reports.
    """

    def __init__(
        self,
        srtp: SrtpContext,
        ssrc: int,
        remote: tuple[str, int],
        *,
        payload_type: int = 99,
        max_mtu: int = 1378,
        cname: str = "obscura",
        clock: Callable[[], float] = time.time,
        clock_rate: int = CLOCK_RATE,
        packetizer: H264Packetizer | AudioPacketizer | None = None,
    ) -> None:
        self._srtp = srtp
        self.ssrc = ssrc & 0xFFFFFFFF
        self._remote = remote
        self._cname = cname
        self._wall = clock
        self.clock_rate = clock_rate
        self.packetizer = packetizer or H264Packetizer(
            self.ssrc, payload_type, rtp_packet_limit(max_mtu)
        )
        self.rtp_clock = RtpClock()
        self.report_clock: Callable[[float], int | None] | None = None
        self.last_pts: float | None = None  # media time of the last frame / packet sent
        self.last_epoch = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.packets_sent = 0
        self.payload_octets = 0  # RTP payload bytes, as the SR octet count wants
        self.bytes_sent = 0  # UDP payload bytes on the wire (SRTP included)
        self.frames_sent = 0
        self.keyframes_sent = 0
        self.reports_sent = 0
        self._last_frame_wall: float | None = None

    def configure(self, payload_type: int, max_mtu: int) -> None:
        self.packetizer.payload_type = payload_type
        if isinstance(self.packetizer, H264Packetizer):
            self.packetizer.max_packet_size = rtp_packet_limit(max_mtu)

    @property
    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    def send_frame(
        self,
        access_unit: bytes,
        pts: float,
        epoch: int,
        frame_ticks: int,
        *,
        keyframe: bool,
        compress: bool = False,
        parameter_sets: bytes | None = None,
    ) -> int:
        """Send one access unit; returns the number of RTP packets sent."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return 0
        nals = rtp_nals(access_unit)
        if not nals:
            return 0
        if keyframe and parameter_sets and not has_parameter_sets(nals):
            nals = split_annexb(parameter_sets) + nals
        assert isinstance(self.packetizer, H264Packetizer)
        timestamp = self.rtp_clock.stamp(pts, epoch, frame_ticks, compress=compress)
        packets = self.packetizer.packetize(nals, timestamp)
        self._send(transport, packets)
        self.keyframes_sent += keyframe
        self.last_pts, self.last_epoch = pts, epoch
        return len(packets)

    def send_audio(self, payload: bytes, timestamp: int, pts: float, epoch: int) -> bool:
        """One audio packet at this (wrapped) RTP timestamp; pts is the media time it starts."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        assert isinstance(self.packetizer, AudioPacketizer)
        self._send(transport, [self.packetizer.packetize_one(payload, timestamp)])
        self.last_pts, self.last_epoch = pts, epoch
        return True

    def _send(self, transport: asyncio.DatagramTransport, packets: list[bytes]) -> None:
        for packet in packets:
            protected = self._srtp.protect(packet)
            transport.sendto(protected, self._remote)
            self.packets_sent += 1
            self.payload_octets += len(packet) - RTP_HEADER_SIZE
            self.bytes_sent += len(protected)
        self.frames_sent += 1
        self._last_frame_wall = self._wall()

    def media_time(self, now: float) -> tuple[float, int] | None:
        """(pts, epoch) this stream's reports map to wall time `now` (None before a frame):
        the last frame's pts plus the time since it was sent, as send_report() extrapolates."""
        if self._last_frame_wall is None or self.last_pts is None:
            return None
        return self.last_pts + (now - self._last_frame_wall), self.last_epoch

    def send_report(self) -> bool:
        """An SRTCP-protected SR + SDES; nothing before the first frame (we aren't a sender yet)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._last_frame_wall is None:
            return False
        now = self._wall()
        rtp_now = self._rtp_now(now)
        if rtp_now is None:
            return False  # nothing to line the report up with yet
        report = rtcp.sender_report(self.ssrc, now, rtp_now, self.packets_sent, self.payload_octets)
        report += rtcp.sdes_cname(self.ssrc, self._cname)
        transport.sendto(self._srtp.protect_rtcp(report), self._remote)
        self.reports_sent += 1
        return True

    def _rtp_now(self, now: float) -> int | None:
        """The (wrapped) RTP timestamp that wall time `now` maps to in our reports."""
        if self.report_clock is not None:
            ticks = self.report_clock(now)
            return None if ticks is None else ticks & 0xFFFFFFFF
        assert self._last_frame_wall is not None
        # Extrapolate from the last frame sent, as if it was captured then.
        elapsed = round((now - self._last_frame_wall) * self.clock_rate)
        return self.rtp_clock.to_rtp(self.rtp_clock.last_ticks + elapsed)

    def send_bye(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._last_frame_wall is None:
            return
        now = self._wall()
        rtp_now = self._rtp_now(now)
        packet = b""
        if rtp_now is not None:
            packet = rtcp.sender_report(
                self.ssrc, now, rtp_now, self.packets_sent, self.payload_octets
            )
        else:  # an RR without report blocks opens the compound packet (RFC 3550 6.1)
            packet = rtcp.empty_receiver_report(self.ssrc)
        packet += rtcp.sdes_cname(self.ssrc, self._cname) + rtcp.bye(self.ssrc)
        transport.sendto(self._srtp.protect_rtcp(packet), self._remote)
