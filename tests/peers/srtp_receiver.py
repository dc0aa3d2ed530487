"""A controller-side SRTP/H.264 receiver for live-view tests and benchmarks (and its audio).

Written independently of bridge/live (it shares no code with the packetizer) so that tests
check interoperability: SRTP verification with the key the test chose, RFC 6184 depacketizing
(single NAL, STAP-A, FU-A), and real decoding with FFmpeg's H.264 decoder via PyAV. Decoding
runs on a thread so a benchmark's event loop (shared with the session under test) stays free.

`SrtpAudioReceiver` is the controller's audio port: SRTP/SRTCP verification with the audio
key, every RTP packet kept (timestamps, SSRC, payload), sender reports, Opus decoding with
FFmpeg's libopus; `rtp_to_ntp` maps a timestamp to wall time through a stream's reports.

Usage:
    rx = SrtpReceiver(key, salt)
    port = await rx.start()
    ... point a session at 127.0.0.1:port ...
    await rx.wait_for(lambda r: len(r.frames) >= 10, within=5)
    rx.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import av.error
import pylibsrtp

_START = b"\x00\x00\x00\x01"
_NTP_UNIX_OFFSET = 2_208_988_800


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_time: float  # unix seconds
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    arrived: float


@dataclass(frozen=True, slots=True)
class ReceivedFrame:
    width: int
    height: int
    key_frame: bool
    rtp_timestamp: int
    arrived: float  # when the last packet of its access unit arrived
    decoded: float


@dataclass(slots=True)
class _AccessUnit:
    timestamp: int
    nals: list[bytes] = field(default_factory=list)
    fragment: bytearray | None = None
    broken: bool = False


class SrtpReceiver(asyncio.DatagramProtocol):
    def __init__(
        self,
        key: bytes,
        salt: bytes,
        *,
        host: str = "127.0.0.1",
        decode: bool = True,
        on_frame: Callable[[av.VideoFrame], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        keep_nals: bool = False,
    ) -> None:
        """keep_nals: keep every access unit's NAL units (`units`), e.g. to find which of the
        camera's frames it is; on_frame(frame) runs on the decode thread just before the frame
        is added to `frames` (same order)."""
        profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        self._rx = pylibsrtp.Session(
            pylibsrtp.Policy(key + salt, pylibsrtp.Policy.SSRC_ANY_INBOUND, 0, profile)
        )
        self._tx = pylibsrtp.Session(
            pylibsrtp.Policy(key + salt, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, 0, profile)
        )
        self.host = host
        self.clock = clock
        self.ssrc = int.from_bytes(os.urandom(4), "big")  # ours, for receiver reports
        self.transport: asyncio.DatagramTransport | None = None
        self._decode = decode
        self._on_frame = on_frame  # called on the decode thread, e.g. to inspect pixels
        self._queue: queue.Queue[tuple[bytes, int, float] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._rr_task: asyncio.Task[None] | None = None
        self._au: _AccessUnit | None = None
        self._last_seq: int | None = None
        # What the tests look at.
        self.datagrams = 0
        self.rtp_packets = 0
        self.auth_failures = 0
        self.rtcp_auth_failures = 0
        self.ssrcs: set[int] = set()
        self.payload_types: set[int] = set()
        self.max_datagram = 0
        self.sequence_gaps = 0
        self.packet_kinds: Counter[str] = Counter()  # single / stap-a / fu-a
        self.nal_types: Counter[int] = Counter()
        self.access_units = 0
        self.au_timestamps: list[int] = []
        self.broken_access_units = 0
        self.decode_errors = 0
        self.frames: list[ReceivedFrame] = []
        self._keep_nals = keep_nals
        self.units: list[tuple[int, list[bytes]]] = []  # (RTP timestamp, NAL units)
        self.sender_reports: list[SenderReport] = []
        self.byes = 0
        self.first_packet_at: float | None = None
        self.first_keyframe_at: float | None = None  # arrival of the first decodable keyframe
        self.last_packet_at: float | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # Keyframe bursts are ~100 packets; a loop busy sending them reads nothing meanwhile.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((self.host, 0))
        sock.setblocking(False)
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        if self._decode:
            self._thread = threading.Thread(target=self._decode_loop, daemon=True)
            self._thread.start()
        return self.port

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self._rr_task is not None:
            self._rr_task.cancel()
        if self.transport is not None:
            self.transport.close()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)
            self._thread = None

    async def wait_for(self, predicate: Callable[[SrtpReceiver], bool], within: float) -> bool:
        deadline = time.monotonic() + within
        while not predicate(self):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # -- receiving -----------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams += 1
        self.max_datagram = max(self.max_datagram, len(data))
        if len(data) >= 2 and 192 <= data[1] <= 223:
            self._on_rtcp(data)
        else:
            self._on_rtp(data)

    def _on_rtcp(self, data: bytes) -> None:
        try:
            plain = self._rx.unprotect_rtcp(data)
        except pylibsrtp.Error:
            self.rtcp_auth_failures += 1
            return
        now = self.clock()
        pos = 0
        while pos + 4 <= len(plain):
            _, pt, words = struct.unpack_from("!BBH", plain, pos)
            if pt == 200 and pos + 28 <= len(plain):
                ssrc, sec, frac, rtp_ts, count, octets = struct.unpack_from(
                    "!IIIIII", plain, pos + 4
                )
                ntp = sec - _NTP_UNIX_OFFSET + frac / 2**32
                self.sender_reports.append(SenderReport(ssrc, ntp, rtp_ts, count, octets, now))
            elif pt == 203:
                self.byes += 1
            pos += (words + 1) * 4

    def _on_rtp(self, data: bytes) -> None:
        try:
            plain = self._rx.unprotect(data)
        except pylibsrtp.Error:
            self.auth_failures += 1
            return
        now = self.clock()
        if self.first_packet_at is None:
            self.first_packet_at = now
        self.last_packet_at = now
        self.rtp_packets += 1
        b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", plain)
        assert b0 >> 6 == 2, "RTP version"
        offset = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:  # header extension
            (ext_words,) = struct.unpack_from("!H", plain, offset + 2)
            offset += 4 + 4 * ext_words
        end = len(plain) - (plain[-1] if b0 & 0x20 else 0)
        payload = plain[offset:end]
        marker = bool(b1 & 0x80)
        self.ssrcs.add(ssrc)
        self.payload_types.add(b1 & 0x7F)
        if self._last_seq is not None and seq != (self._last_seq + 1) & 0xFFFF:
            self.sequence_gaps += 1
            if self._au is not None:
                self._au.broken = True
        self._last_seq = seq

        if self._au is not None and self._au.timestamp != ts:
            self._finish_au(now)  # previous AU lost its marker packet
        if self._au is None:
            self._au = _AccessUnit(ts)
        self._depacketize(self._au, payload)
        if marker:
            self._finish_au(now)

    def _depacketize(self, au: _AccessUnit, payload: bytes) -> None:
        kind = payload[0] & 0x1F
        if 1 <= kind <= 23:
            self.packet_kinds["single"] += 1
            au.nals.append(payload)
        elif kind == 24:
            self.packet_kinds["stap-a"] += 1
            pos = 1
            while pos + 2 <= len(payload):
                (size,) = struct.unpack_from("!H", payload, pos)
                au.nals.append(payload[pos + 2 : pos + 2 + size])
                pos += 2 + size
        elif kind == 28:
            self.packet_kinds["fu-a"] += 1
            fu_header = payload[1]
            if fu_header & 0x80:
                au.fragment = bytearray([(payload[0] & 0xE0) | (fu_header & 0x1F)])
            if au.fragment is None:
                au.broken = True
                return
            au.fragment += payload[2:]
            if fu_header & 0x40:
                au.nals.append(bytes(au.fragment))
                au.fragment = None
        else:
            self.packet_kinds[f"type-{kind}"] += 1

    def _finish_au(self, now: float) -> None:
        au, self._au = self._au, None
        if au is None:
            return
        self.access_units += 1
        self.au_timestamps.append(au.timestamp)
        if au.broken or au.fragment is not None:
            self.broken_access_units += 1
        for nal in au.nals:
            self.nal_types[nal[0] & 0x1F] += 1
        if self._keep_nals:
            self.units.append((au.timestamp, list(au.nals)))
        if self._decode and au.nals:
            self._queue.put((b"".join(_START + nal for nal in au.nals), au.timestamp, now))

    def _decode_loop(self) -> None:
        decoder = av.CodecContext.create("h264", "r")
        while True:
            item = self._queue.get()
            if item is None:
                return
            data, timestamp, arrived = item
            try:
                frames = decoder.decode(av.Packet(data))
            except av.error.FFmpegError:
                self.decode_errors += 1
                continue
            for frame in frames:
                decoded = self.clock()
                if self._on_frame is not None:
                    self._on_frame(frame)
                self.frames.append(
                    ReceivedFrame(
                        frame.width,
                        frame.height,
                        bool(frame.key_frame),
                        timestamp,
                        arrived,
                        decoded,
                    )
                )
                if frame.key_frame and self.first_keyframe_at is None:
                    self.first_keyframe_at = arrived

    # -- sending RTCP back ---------------------------------------------------------------

    def send_receiver_report(self, addr: tuple[str, int], media_ssrc: int | None = None) -> None:
        """An SRTCP RR (one report block for media_ssrc, if given) to the sender's port."""
        assert self.transport is not None
        blocks = b""
        if media_ssrc is not None:
            highest = self._last_seq or 0
            blocks = struct.pack("!IIIIII", media_ssrc, 0, highest, 0, 0, 0)
        count = len(blocks) // 24
        body = struct.pack("!I", self.ssrc) + blocks
        header = struct.pack("!BBH", 0x80 | count, 201, len(body) // 4)
        self.transport.sendto(self._tx.protect_rtcp(header + body), addr)

    def start_receiver_reports(self, addr: tuple[str, int], interval: float = 0.2) -> None:
        async def loop() -> None:
            while True:
                media = next(iter(self.ssrcs), None)
                self.send_receiver_report(addr, media)
                await asyncio.sleep(interval)

        self._rr_task = asyncio.get_running_loop().create_task(loop())

    def stop_receiver_reports(self) -> None:
        if self._rr_task is not None:
            self._rr_task.cancel()
            self._rr_task = None


# -- audio -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioRtp:
    sequence: int
    timestamp: int
    ssrc: int
    payload_type: int
    marker: bool
    payload: bytes
    arrived: float


class SrtpAudioReceiver(asyncio.DatagramProtocol):
    """The controller's audio port: SRTP-verifies RTP and SRTCP with the audio key the test
    chose, keeps every packet (header fields + payload) and sender report, and decodes the
    payloads as Opus with FFmpeg's libopus (PyAV) at the rate the test negotiated."""

    def __init__(
        self, key: bytes, salt: bytes, *, host: str = "127.0.0.1",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        self._rx = pylibsrtp.Session(
            pylibsrtp.Policy(key + salt, pylibsrtp.Policy.SSRC_ANY_INBOUND, 0, profile)
        )
        self._tx = pylibsrtp.Session(
            pylibsrtp.Policy(key + salt, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, 0, profile)
        )
        self.host, self.clock = host, clock
        self.ssrc = int.from_bytes(os.urandom(4), "big")
        self.transport: asyncio.DatagramTransport | None = None
        self._rr_task: asyncio.Task[None] | None = None
        self._talk_seq = int.from_bytes(os.urandom(2), "big")
        self.datagrams = 0
        self.auth_failures = 0
        self.rtcp_auth_failures = 0
        self.packets: list[AudioRtp] = []
        self.sender_reports: list[SenderReport] = []
        self.byes = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((self.host, 0))
        sock.setblocking(False)
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        return self.port

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        self.stop_receiver_reports()
        if self.transport is not None:
            self.transport.close()

    async def wait_for(self, predicate: Callable[[SrtpAudioReceiver], bool], within: float) -> bool:
        deadline = time.monotonic() + within
        while not predicate(self):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams += 1
        if len(data) >= 2 and 192 <= data[1] <= 223:
            try:
                plain = self._rx.unprotect_rtcp(data)
            except pylibsrtp.Error:
                self.rtcp_auth_failures += 1
                return
            self.sender_reports.extend(_sender_reports(plain, self.clock()))
            self.byes += _count_packets(plain, 203)
            return
        try:
            plain = self._rx.unprotect(data)
        except pylibsrtp.Error:
            self.auth_failures += 1
            return
        b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", plain)
        offset = 12 + 4 * (b0 & 0x0F)
        end = len(plain) - (plain[-1] if b0 & 0x20 else 0)
        self.packets.append(
            AudioRtp(seq, ts, ssrc, b1 & 0x7F, bool(b1 & 0x80), plain[offset:end], self.clock())
        )

    def decode(self, channels: int = 1) -> list[tuple[int, Any]]:
        """Each packet's (RTP timestamp, float32 samples (channels, n) at 48 kHz) by libopus,
        in sequence order. An Opus stream decodes at any rate; FFmpeg's libopus wrapper always
        gives 48 kHz (so n = packet time x 48 kHz, whatever rate the RTP clock runs at)."""
        import numpy as np

        decoder = av.CodecContext.create("libopus", "r")
        decoder.sample_rate = 48000  # type: ignore[attr-defined]
        decoder.layout = "mono" if channels == 1 else "stereo"  # type: ignore[attr-defined]
        out = []
        for p in sorted(self.packets, key=lambda p: _unwrap_seq(p.sequence, self.packets)):
            blocks = []
            for frame in decoder.decode(av.Packet(p.payload)):
                pcm = frame.to_ndarray()
                if not frame.format.is_planar:
                    pcm = pcm.reshape(-1, channels).T
                if pcm.dtype == np.int16:
                    pcm = pcm / 32768.0
                blocks.append(pcm.astype(np.float32))
            if blocks:
                out.append((p.timestamp, np.concatenate(blocks, axis=1)))
        return out

    # -- what a controller sends back ----------------------------------------------------------

    def send_receiver_report(self, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        media = self.packets[-1].ssrc if self.packets else None
        blocks = b"" if media is None else struct.pack("!IIIIII", media, 0, 0, 0, 0, 0)
        body = struct.pack("!I", self.ssrc) + blocks
        header = struct.pack("!BBH", 0x80 | (len(blocks) // 24), 201, len(body) // 4)
        self.transport.sendto(self._tx.protect_rtcp(header + body), addr)

    def start_receiver_reports(self, addr: tuple[str, int], interval: float = 0.5) -> None:
        async def loop() -> None:
            while True:
                self.send_receiver_report(addr)
                await asyncio.sleep(interval)

        self._rr_task = asyncio.get_running_loop().create_task(loop())

    def stop_receiver_reports(self) -> None:
        if self._rr_task is not None:
            self._rr_task.cancel()
            self._rr_task = None

    def send_rtp(self, addr: tuple[str, int], payload: bytes, timestamp: int, pt: int) -> None:
        """One SRTP packet to the accessory's audio port (what talk-back sends)."""
        assert self.transport is not None
        header = struct.pack("!BBHII", 0x80, pt & 0x7F, self._talk_seq, timestamp, self.ssrc)
        self._talk_seq = (self._talk_seq + 1) & 0xFFFF
        self.transport.sendto(self._tx.protect(header + payload), addr)


def _sender_reports(plain: bytes, now: float) -> list[SenderReport]:
    out, pos = [], 0
    while pos + 4 <= len(plain):
        _, pt, words = struct.unpack_from("!BBH", plain, pos)
        if pt == 200 and pos + 28 <= len(plain):
            ssrc, sec, frac, rtp_ts, count, octets = struct.unpack_from("!IIIIII", plain, pos + 4)
            ntp = sec - _NTP_UNIX_OFFSET + frac / 2**32
            out.append(SenderReport(ssrc, ntp, rtp_ts, count, octets, now))
        pos += (words + 1) * 4
    return out


def _count_packets(plain: bytes, packet_type: int) -> int:
    count, pos = 0, 0
    while pos + 4 <= len(plain):
        _, pt, words = struct.unpack_from("!BBH", plain, pos)
        count += pt == packet_type
        pos += (words + 1) * 4
    return count


def _unwrap_seq(seq: int, packets: list[AudioRtp]) -> int:
    first = packets[0].sequence
    return (seq - first) & 0xFFFF


def rtp_to_ntp(timestamp: int, reports: list[SenderReport], rate: int) -> float:
    """Wall time (unix seconds) an RTP timestamp stands for, by the sender report closest in
    RTP time (RFC 3550 6.4.1: NTP and RTP timestamps of one instant)."""
    if not reports:
        raise ValueError("no sender report")

    def distance(r: SenderReport) -> int:
        d = (timestamp - r.rtp_timestamp) & 0xFFFFFFFF
        return min(d, 0x100000000 - d)

    sr = min(reports, key=distance)
    delta = (timestamp - sr.rtp_timestamp) & 0xFFFFFFFF
    if delta >= 0x80000000:
        delta -= 0x100000000
    return sr.ntp_time + delta / rate
