"""RTCP (RFC 3550 section 6): the sender reports we send and the reports a controller sends us."""

from __future__ import annotations

import struct
from dataclasses import dataclass

SR = 200
RR = 201
SDES = 202
BYE = 203
APP = 204

_NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
_SDES_CNAME = 1


def is_rtcp(datagram: bytes) -> bool:
    """RTP and RTCP share the port (RFC 5761 demultiplexing by the second byte)."""
    return len(datagram) >= 8 and (datagram[0] >> 6) == 2 and 192 <= datagram[1] <= 223


def ntp_timestamp(unix_time: float) -> tuple[int, int]:
    """64-bit NTP timestamp as (seconds, fraction)."""
    seconds = int(unix_time)
    fraction = int((unix_time - seconds) * (1 << 32)) & 0xFFFFFFFF
    return (seconds + _NTP_EPOCH_OFFSET) & 0xFFFFFFFF, fraction


def sender_report(
    ssrc: int, unix_time: float, rtp_timestamp: int, packet_count: int, octet_count: int
) -> bytes:
    """An SR without report blocks (we receive no RTP from the controller on this stream)."""
    ntp_sec, ntp_frac = ntp_timestamp(unix_time)
    return struct.pack(
        "!BBHIIIIII",
        0x80,  # V=2, P=0, RC=0
        SR,
        6,  # length in 32-bit words minus one
        ssrc,
        ntp_sec,
        ntp_frac,
        rtp_timestamp & 0xFFFFFFFF,
        packet_count & 0xFFFFFFFF,
        octet_count & 0xFFFFFFFF,
    )


def empty_receiver_report(ssrc: int) -> bytes:
    """An RR without report blocks: opens a compound packet when no SR can be given."""
    return struct.pack("!BBHI", 0x80, RR, 1, ssrc)


def sdes_cname(ssrc: int, cname: str) -> bytes:
    """SDES with one CNAME chunk; RFC 3550 wants it in every compound packet."""
    text = cname.encode()[:255]
    chunk = struct.pack("!IBB", ssrc, _SDES_CNAME, len(text)) + text + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)  # end item(s) pad the chunk to a 32-bit boundary
    return struct.pack("!BBH", 0x81, SDES, len(chunk) // 4) + chunk


def bye(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x81, BYE, 1, ssrc)


@dataclass(frozen=True, slots=True)
class RtcpPacket:
    packet_type: int
    ssrc: int  # sender SSRC (the first SSRC for BYE)


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """The packets of a decrypted compound RTCP datagram; stops at the first malformed one."""
    out: list[RtcpPacket] = []
    pos = 0
    while pos + 8 <= len(data):
        first, packet_type, words = struct.unpack_from("!BBH", data, pos)
        size = (words + 1) * 4
        if first >> 6 != 2 or pos + size > len(data):
            break
        (ssrc,) = struct.unpack_from("!I", data, pos + 4)
        out.append(RtcpPacket(packet_type, ssrc))
        pos += size
    return out
