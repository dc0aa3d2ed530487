"""One outgoing SRTP video stream: packetize, stamp, protect, send; plus its RTCP reports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bridge.live import rtcp
from bridge.live.rtp import RTP_HEADER_SIZE, H264Packetizer, RtpClock
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
    """Keeps SSRC, sequence numbers and the RTP clock across copy/transcode switches."""

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
    ) -> None:
        self._srtp = srtp
        self.ssrc = ssrc & 0xFFFFFFFF
        self._remote = remote
        self._cname = cname
        self._wall = clock
        self.packetizer = H264Packetizer(self.ssrc, payload_type, rtp_packet_limit(max_mtu))
        self.rtp_clock = RtpClock()
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
        timestamp = self.rtp_clock.stamp(pts, epoch, frame_ticks, compress=compress)
        packets = self.packetizer.packetize(nals, timestamp)
        for packet in packets:
            protected = self._srtp.protect(packet)
            transport.sendto(protected, self._remote)
            self.packets_sent += 1
            self.payload_octets += len(packet) - RTP_HEADER_SIZE
            self.bytes_sent += len(protected)
        self.frames_sent += 1
        self.keyframes_sent += keyframe
        self._last_frame_wall = self._wall()
        return len(packets)

    def send_report(self) -> bool:
        """An SRTCP-protected SR + SDES; nothing before the first frame (we aren't a sender yet)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._last_frame_wall is None:
            return False
        now = self._wall()
        # RTP time "now": extrapolate from the last frame sent, as if it was captured then.
        ticks = self.rtp_clock.last_ticks + round((now - self._last_frame_wall) * 90_000)
        report = rtcp.sender_report(
            self.ssrc, now, self.rtp_clock.to_rtp(ticks), self.packets_sent, self.payload_octets
        )
        report += rtcp.sdes_cname(self.ssrc, self._cname)
        transport.sendto(self._srtp.protect_rtcp(report), self._remote)
        self.reports_sent += 1
        return True

    def send_bye(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self._last_frame_wall is None:
            return
        packet = rtcp.sender_report(
            self.ssrc,
            self._wall(),
            self.rtp_clock.to_rtp(self.rtp_clock.last_ticks),
            self.packets_sent,
            self.payload_octets,
        )
        packet += rtcp.sdes_cname(self.ssrc, self._cname) + rtcp.bye(self.ssrc)
        transport.sendto(self._srtp.protect_rtcp(packet), self._remote)
