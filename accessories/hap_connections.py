"""Connection hygiene for the HAP port: caps, a pair-verify deadline, eviction, TCP keepalive.

Why: HAP-python 5.2 accepts every connection and keeps it for IDLE_CONNECTION_TIMEOUT_SECONDS
(90 hours), checked every 5 minutes, whether or not it ever proved a pairing. 1,100 idle TCP
connections from one host on the LAN used up the 1,024 file descriptors of a default service:
paired controllers timed out, the status API too, and asyncio's accept loop logged an EMFILE
traceback per attempt. A HAP connection is unauthenticated until pair-verify succeeds (then
HAP-python switches it to its encrypted session, ``hap_crypto``); only then do we know a paired
controller is on the other end. So unverified connections are cheap to drop and verified ones
are not: a Home hub keeps one connection open for days to receive events, and it may carry no
traffic for hours (HAP-NodeJS sets no timeout at all on verified sessions; HAP-python's 90 h is
"the longest we expect a user to be away"). We keep HAP-python's idle timeout for them and turn
on TCP keepalive instead, which finds a controller that left the network without cutting one
that is only quiet.

Limits (defaults, configurable in ``[hap]``):
- 64 connections in all. A home with four people (iPhone, iPad, Mac, Watch through the phone),
  a few Home hubs (every HomePod and Apple TV connects on its own) and Home Assistant is some 20
  controllers, each with one connection per accessory server and briefly two while it
  reconnects: 64 leaves twice that (small accessories serve 5 to 12). 64 descriptors
  are nothing next to the 1,024 of the smallest default limit.
- 16 per remote address. One device normally holds one or two; a NAT or a host running several
  controllers may hold more. A single attacking host can hold a quarter of the slots at most.
- 10 s to finish pair-verify (two round trips, milliseconds on a LAN; aiohomekit and iOS send
  M1 right after connecting). While the accessory is not paired yet, a pair-setup may wait for a
  person to type the setup code: 120 s then.

When a new connection does not fit, a slot is taken from an unverified connection, never from
a verified one of another address: over the per-address cap, the oldest unverified connection of
that address goes (or, if all of them are verified, its least recently active one: a controller
that opens its 17th connection has left stale ones behind); over the total cap, the oldest
unverified connection of the address holding the most unverified connections goes, so a
controller's single pending connection outlives a flood from any address that holds more. Only
when every slot holds a verified controller is the newcomer refused (closed at once). A
refused, evicted or timed-out connection is counted, not logged; the counts are logged at most
once a minute and shown in /status.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pyhap.hap_protocol import HAPServerProtocol
from pyhap.hap_server import HAPServer

if TYPE_CHECKING:
    from pyhap.accessory_driver import AccessoryDriver

logger = logging.getLogger(__name__)

# listen() backlog, and how many connections asyncio accepts per loop turn. A refused or evicted
# connection's descriptor is released two or three loop turns after its accept, so a connection
# storm holds up to ~3 x backlog descriptors beyond the cap for a moment (HAP-python's 100 made
# that 300: EMFILE under a 256 limit). 32 pending connections is still more than a home sends at
# once, e.g. every controller reconnecting after a restart.
ACCEPT_BACKLOG = 32
REPORT_INTERVAL = 60.0  # seconds between two summaries of refused/evicted/timed-out connections
# TCP keepalive on every HAP connection: a controller that left without a FIN is found within
# KEEPIDLE + KEEPINTVL * KEEPCNT = 10 minutes; a quiet one answers the probes and stays.
KEEPIDLE, KEEPINTVL, KEEPCNT = 300, 60, 5


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Caps and deadlines for one HAP server (see the module docstring for the reasons)."""

    max_connections: int = 64
    max_per_address: int = 16
    verify_timeout: float = 10.0  # seconds to complete pair-verify once paired
    pairing_timeout: float = 120.0  # the same while not paired (a person types the code)

    def __post_init__(self) -> None:
        if self.max_connections < 1 or not 1 <= self.max_per_address <= self.max_connections:
            raise ValueError("need 1 <= max_per_address <= max_connections")
        if self.verify_timeout <= 0 or self.pairing_timeout <= 0:
            raise ValueError("timeouts must be positive")


class Guarded(Protocol):
    """What the guard needs of a connection."""

    @property
    def verified(self) -> bool: ...

    @property
    def last_seen(self) -> float: ...

    def evict(self) -> None: ...


@dataclass(slots=True)
class _Slot:
    address: str
    opened: float


def address_key(peername: Any) -> str:
    """The remote address a connection counts against (IPv4-mapped IPv6 as plain IPv4)."""
    host = peername[0] if isinstance(peername, tuple) and peername else str(peername)
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class ConnectionGuard:
    """Admission control for one server's connections; knows nothing of sockets.

    ``admit`` is called as a connection arrives and says whether to keep it, evicting another
    one if that makes room; ``release`` when it ends (idempotent). Insertion order is age."""

    def __init__(
        self, limits: ConnectionLimits, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._open: dict[Guarded, _Slot] = {}
        self.totals = {"refused": 0, "evicted": 0, "timed_out": 0}
        self._pending = dict.fromkeys(self.totals, 0)
        self._report: asyncio.TimerHandle | None = None
        self._last_report = float("-inf")

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, conn: Guarded, peername: Any) -> bool:
        address = address_key(peername)
        mine = [c for c, s in self._open.items() if s.address == address]
        victim: Guarded | None = None
        if len(mine) >= self.limits.max_per_address:
            victim = self._oldest_unverified(mine) or min(mine, key=lambda c: c.last_seen)
        elif len(self._open) >= self.limits.max_connections:
            victim = self._from_busiest_address()
            if victim is None:  # every slot holds a verified controller
                self.count("refused")
                return False
        if victim is not None:
            self.release(victim)
            self.count("evicted")
            victim.evict()
        self._open[conn] = _Slot(address, self._clock())
        return True

    def release(self, conn: Guarded) -> None:
        self._open.pop(conn, None)

    def _oldest_unverified(self, conns: list[Guarded]) -> Guarded | None:
        return next((c for c in conns if not c.verified), None)  # dict order: oldest first

    def _from_busiest_address(self) -> Guarded | None:
        by_address: dict[str, list[Guarded]] = {}
        for conn, slot in self._open.items():
            if not conn.verified:
                by_address.setdefault(slot.address, []).append(conn)
        if not by_address:
            return None
        # Most unverified connections first; among equals, the one holding the oldest.
        busiest = max(
            by_address.values(), key=lambda conns: (len(conns), -self._open[conns[0]].opened)
        )
        return busiest[0]

    def count(self, what: str) -> None:
        """Count a refused/evicted/timed-out connection; log the counts at most once a minute."""
        self.totals[what] += 1
        self._pending[what] += 1
        if self._report is not None:
            return
        delay = self._last_report + REPORT_INTERVAL - self._clock()
        if delay <= 0:
            self._log_counts()
        else:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # counted outside a loop (unit tests): log at the next count
                return
            self._report = loop.call_later(delay, self._log_counts)

    def _log_counts(self) -> None:
        self._report = None
        self._last_report = self._clock()
        pending = {k: v for k, v in self._pending.items() if v}
        self._pending = dict.fromkeys(self.totals, 0)
        if pending:
            logger.warning(
                "HAP connections: %s (%d open, at most %d, %d per address)",
                ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in pending.items()),
                len(self._open), self.limits.max_connections, self.limits.max_per_address,
            )  # fmt: skip

    def stats(self) -> dict[str, int]:
        verified = sum(1 for c in self._open if c.verified)
        return {
            "open": len(self._open),
            "verified": verified,
            "max": self.limits.max_connections,
            **{f"{k}_total": v for k, v in self.totals.items()},
        }

    def close(self) -> None:
        if self._report is not None:
            self._report.cancel()
            self._log_counts()


class GuardedProtocol(HAPServerProtocol):
    """HAPServerProtocol that asks the guard before serving and drops itself if pair-verify does
    not complete in time. A refused connection is aborted before HAP-python sees it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connections: dict[tuple[str, int], HAPServerProtocol],
        driver: AccessoryDriver,
        guard: ConnectionGuard,
    ) -> None:
        super().__init__(loop, connections, driver)
        self._guard = guard
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def verified(self) -> bool:
        return self.hap_crypto is not None

    @property
    def last_seen(self) -> float:
        return self.last_activity or 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self, transport.get_extra_info("peername")):
            self._refused = True
            assert isinstance(transport, asyncio.Transport)
            transport.abort()  # an RST now: the descriptor is free on the next loop turn
            return
        super().connection_made(transport)
        _keepalive(transport.get_extra_info("socket"))
        limits = self._guard.limits
        paired = self.accessory_driver.state.paired
        timeout = limits.verify_timeout if paired else limits.pairing_timeout
        self._deadline = self.loop.call_later(timeout, self._verify_deadline)

    def _verify_deadline(self) -> None:
        self._deadline = None
        if not self.verified and self.transport is not None and not self.transport.is_closing():
            self._guard.count("timed_out")
            self.evict()

    def evict(self) -> None:
        """Drop at once (RST): the guard has already given the slot away."""
        self._guard.release(self)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._guard.release(self)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)


class GuardedHAPServer(HAPServer):
    """HAPServer whose connections go through a ConnectionGuard."""

    def __init__(
        self,
        addr_port: tuple[str, int | None],
        accessory_handler: AccessoryDriver,
        limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(addr_port, accessory_handler)
        self.guard = ConnectionGuard(limits or ConnectionLimits())

    async def async_start(self, loop: asyncio.AbstractEventLoop) -> None:
        # HAPServer.async_start with our protocol; its idle clean-up of verified connections
        # (HAP-python's 90 h) is kept.
        self.loop = loop
        self.server = await loop.create_server(
            lambda: GuardedProtocol(loop, self.connections, self.accessory_handler, self.guard),
            self._addr_port[0],
            self._addr_port[1],
            backlog=ACCEPT_BACKLOG,
        )
        self.async_cleanup_connections()

    def async_stop(self) -> None:
        super().async_stop()
        self.guard.close()


def _keepalive(sock: Any) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", KEEPIDLE), ("TCP_KEEPINTVL", KEEPINTVL), ("TCP_KEEPCNT", KEEPCNT)
        ):  # fmt: skip
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:  # the peer is already gone; HAP-python finds out on its own
        pass
