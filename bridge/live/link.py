"""The network side of a live session: one UDP socket, SRTP, our RTCP out, the controller's in.

The socket is bound when the link is created (the accessory needs the port for the
SetupEndpoints response) and serves both directions: we send RTP and SRTCP sender reports to
the controller's port, and the controller sends its receiver reports to ours. Those reports are
how we notice a controller that went away without stopping the stream.

One link per stream: video (`RtpTarget.video`, H.264, 90 kHz) and, for a camera with a
Microphone, audio (`RtpTarget.audio`: its own port, key, SSRC, an AudioPacketizer at the
negotiated rate). RTP arriving on a link is the controller talking back (the audio port); with
an `on_rtp` hook it is SRTP-authenticated and handed over, without one it only proves the
controller is alive. Either way it never reaches the sending side.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from accessories.backend import StreamEndpoints
from bridge.live import rtcp
from bridge.live.rtp import CLOCK_RATE, AudioPacketizer, H264Packetizer
from bridge.live.sender import RtpSender
from bridge.live.srtp import SrtpContext, SrtpError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class RtpTarget:
    """Where one stream goes and how it is keyed: the controller's address and port for it,
    its SRTP master key and salt, and our SSRC."""

    address: str
    port: int
    key: bytes
    salt: bytes
    ssrc: int

    @classmethod
    def video(cls, e: StreamEndpoints) -> RtpTarget:
        return cls(e.controller_address, e.controller_video_port, e.srtp_key, e.srtp_salt,
                   e.video_ssrc)  # fmt: skip

    @classmethod
    def audio(cls, e: StreamEndpoints) -> RtpTarget:
        return cls(e.controller_address, e.controller_audio_port, e.audio_srtp_key,
                   e.audio_srtp_salt, e.audio_ssrc)  # fmt: skip


class ControllerLink:
    def __init__(
        self,
        target: StreamEndpoints | RtpTarget,
        bind_address: str,
        *,
        idle_timeout: float | None,
        first_rtcp_timeout: float | None,
        cname: str,
        clock_rate: int = CLOCK_RATE,
        packetizer: H264Packetizer | AudioPacketizer | None = None,
        on_rtp: Callable[[bytes], None] | None = None,
    ) -> None:
        """A StreamEndpoints means its video stream. on_rtp: gets each authenticated RTP
        packet the controller sends to this port (decrypted, header included)."""
        if isinstance(target, StreamEndpoints):
            target = RtpTarget.video(target)
        self._idle_timeout = idle_timeout
        self._first_rtcp_timeout = first_rtcp_timeout
        self._srtp = SrtpContext(target.key, target.salt)
        self._controller_ip = _ip(target.address)
        family = ipaddress.ip_address(target.address.split("%", 1)[0])
        self._sock = bind_udp(bind_address, family)
        self.port: int = self._sock.getsockname()[1]
        self.sender = RtpSender(
            self._srtp,
            target.ssrc,
            (target.address, target.port),
            cname=cname,
            clock_rate=clock_rate,
            packetizer=packetizer,
        )
        self.on_rtp = on_rtp
        self.rtcp_received = 0  # authenticated controller RTCP
        self.rtcp_rejected = 0  # RTCP-looking datagrams that failed SRTCP authentication
        self.rtp_received = 0  # authenticated controller RTP (with an on_rtp hook)
        self.rtp_rejected = 0  # other datagrams that failed SRTP authentication (idem)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._closed_future: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_heard: float | None = None
        self._closed = False

    async def open(
        self,
        interval: Callable[[], float],
        on_tick: Callable[[], None],
        on_gone: Callable[[str], None],
    ) -> None:
        """Start the transport and the RTCP loop.

        Every interval() seconds: send an SR, call on_tick (the session's watchdog), and call
        on_gone(reason) if the controller has been silent for too long.
        """
        loop = self._loop = asyncio.get_running_loop()
        self._closed_future = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=self._sock)
        self._transport = transport
        self.sender.transport = transport
        self._task = loop.create_task(self._rtcp_loop(interval, on_tick, on_gone), name="live-rtcp")

    def close(self) -> None:
        """Stop at once (a best-effort RTCP BYE goes out first); the socket is freed when the
        loop processes the close, see wait_closed()."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        if self._transport is not None:
            with contextlib.suppress(OSError):
                self.sender.send_bye()
            self._transport.close()
        else:
            self._sock.close()

    async def wait_closed(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            await asyncio.gather(self._task, return_exceptions=True)
        if self._transport is not None and self._closed_future is not None:
            await self._closed_future

    async def _rtcp_loop(
        self,
        interval: Callable[[], float],
        on_tick: Callable[[], None],
        on_gone: Callable[[str], None],
    ) -> None:
        assert self._loop is not None
        started = self._loop.time()
        while not self._closed:
            await asyncio.sleep(min(max(interval(), 0.05), 5.0))
            if self._closed:
                return
            self.sender.send_report()
            on_tick()
            now = self._loop.time()
            if self._last_heard is None:
                limit, since = self._first_rtcp_timeout, started
            else:
                limit, since = self._idle_timeout, self._last_heard
            if limit is not None and now - since > limit and not self._closed:
                on_gone(f"nothing heard from the controller for {now - since:.1f} s")
                return

    def _on_datagram(self, data: bytes, addr: tuple[str, ...]) -> None:
        if self._closed or self._loop is None:
            return
        if rtcp.is_rtcp(data):
            try:
                plain = self._srtp.unprotect_rtcp(data)
            except SrtpError:
                self.rtcp_rejected += 1
            else:
                self.rtcp_received += 1
                self._last_heard = self._loop.time()
                log.debug("rtcp from controller: %s", rtcp.parse_compound(plain))
                return
        elif self.on_rtp is not None:
            try:
                plain = self._srtp.unprotect(data)
            except SrtpError:
                self.rtp_rejected += 1
            else:
                self.rtp_received += 1
                self._last_heard = self._loop.time()
                self.on_rtp(plain)
                return
        # Anything from the controller's address proves it is still there, even if we can't
        # authenticate it: a wrong guess about its keying must not cut a working stream.
        if _same_ip(addr[0], self._controller_ip):
            self._last_heard = self._loop.time()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, link: ControllerLink) -> None:
        self._link = link

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._link._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # e.g. ICMP port unreachable while the controller sets up: not fatal, RTCP decides.
        log.debug("live session socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        fut = self._link._closed_future
        if fut is not None and not fut.done():
            fut.set_result(None)


def bind_udp(bind_address: str, controller: IPAddress) -> socket.socket:
    """A non-blocking UDP socket on an ephemeral port, in the controller's address family."""
    v6 = controller.version == 6
    host = bind_address
    if host in ("", "0.0.0.0", "::"):
        host = "::" if v6 else "0.0.0.0"
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # keyframe bursts: ~100 packets at once
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _ip(address: str) -> IPAddress:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # scope ids don't matter for matching
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _same_ip(address: str, expected: IPAddress) -> bool:
    try:
        return _ip(address) == expected
    except ValueError:
        return False
