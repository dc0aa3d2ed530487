"""The HomeKit Data Stream listener: prepared sessions, identification, lifetimes (docs/hds.md).

A hub asks for a data stream by writing SetupDataStreamTransport on its (verified) HAP
connection. ``prepare`` derives that session's keys from the connection's pair-verify secret,
picks the accessory salt and returns the TCP port to answer with. One listener serves every
prepared session; it binds where the HAP server does, so the hub reaches it on the address it
used for HAP, and it starts with the HAP server because the setter that prepares a session must
answer synchronously. A new TCP connection says nothing in clear, so its first frame is tried
against each prepared session's controller key (trial decryption); the one that opens it wins.
A prepared session
not claimed within PREPARE_TIMEOUT expires; one whose HAP connection closes goes with it, and
so do the sessions it already opened.

Floods are bounded: at most MAX_PREPARED waiting sessions (the oldest is dropped), MAX_SESSIONS
open ones (a new connection beyond that is closed), and a connection that sends no identifiable
first frame within FIRST_FRAME_TIMEOUT is closed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from .frames import (
    FRAME_HEADER_SIZE,
    TAG_SIZE,
    FrameOpener,
    HDSFrameError,
    SessionKeys,
    parse_frame_header,
    session_keys,
)
from .session import ClientAddr, DataSendHandler, DataStreamSession

logger = logging.getLogger(__name__)

PREPARE_TIMEOUT = 10.0
FIRST_FRAME_TIMEOUT = 10.0
MAX_PREPARED = 16
MAX_SESSIONS = 32
SALT_SIZE = 32

Derive = Callable[[bytes, bytes], bytes]


@dataclass(eq=False)
class _Prepared:
    keys: SessionKeys
    owner: ClientAddr | None
    handler: DataSendHandler
    name: str
    expiry: asyncio.TimerHandle | None = None


class DataStreamServer:
    """All data streams of one HAP server. ``stop()`` closes listeners and sessions."""

    def __init__(self, address: str, *, prepare_timeout: float = PREPARE_TIMEOUT) -> None:
        self.address = address
        self.port = 0
        self._prepare_timeout = prepare_timeout
        self._server: asyncio.Server | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._prepared: list[_Prepared] = []
        self.sessions: set[DataStreamSession] = set()
        self._stopped = False
        self.refused = 0
        self.expired = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, self.address, 0, backlog=16)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.debug("data streams listen on %s:%d", self.address, self.port)

    def prepare(
        self,
        *,
        derive: Derive,
        controller_salt: bytes,
        owner: ClientAddr | None,
        handler: DataSendHandler,
        name: str = "hds",
    ) -> tuple[int, bytes]:
        """Prepare a session; returns (TCP port, accessory salt) for the write response."""
        if self._stopped or self._server is None:
            raise ConnectionError("data stream server is not running")
        accessory_salt = secrets.token_bytes(SALT_SIZE)
        keys = session_keys(derive, controller_salt, accessory_salt)
        prepared = _Prepared(keys, owner, handler, name)
        prepared.expiry = asyncio.get_running_loop().call_later(
            self._prepare_timeout, self._expire, prepared
        )
        self._prepared.append(prepared)
        while len(self._prepared) > MAX_PREPARED:
            self._drop(self._prepared[0])
        return self.port, accessory_salt

    def _expire(self, prepared: _Prepared) -> None:
        if prepared in self._prepared:
            self.expired += 1
            logger.info("%s: prepared data stream not used within %gs", prepared.name,
                        self._prepare_timeout)  # fmt: skip
            self._drop(prepared)

    def _drop(self, prepared: _Prepared) -> None:
        if prepared.expiry is not None:
            prepared.expiry.cancel()
        if prepared in self._prepared:
            self._prepared.remove(prepared)

    # ---- new connections ----

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._identify(reader, writer))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _identify(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(self.sessions) >= MAX_SESSIONS or self._stopped:
            self.refused += 1
            logger.warning(
                "data stream from %s refused: %d sessions open", peer, len(self.sessions)
            )
            writer.close()
            return
        try:
            async with asyncio.timeout(FIRST_FRAME_TIMEOUT):
                head = await reader.readexactly(FRAME_HEADER_SIZE)
                length = parse_frame_header(head)
                body = await reader.readexactly(length + TAG_SIZE)
        except (TimeoutError, asyncio.IncompleteReadError, HDSFrameError, OSError) as exc:
            self.refused += 1
            logger.info("data stream from %s closed before it was identified: %s", peer,
                        exc.__class__.__name__)  # fmt: skip
            writer.close()
            return
        for prepared in list(self._prepared):
            opener = FrameOpener(prepared.keys.controller_to_accessory)
            try:
                payload = opener.open(head, body)
            except HDSFrameError:
                continue
            self._drop(prepared)
            self._start_session(prepared, opener, payload, reader, writer)
            return
        self.refused += 1
        logger.warning("data stream from %s matches no prepared session: closed", peer)
        writer.close()

    def _start_session(
        self,
        prepared: _Prepared,
        opener: FrameOpener,
        first_payload: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        session = DataStreamSession(
            reader, writer, prepared.keys, opener,
            owner=prepared.owner, handler=prepared.handler,
            on_closed=self.sessions.discard, name=prepared.name,
        )  # fmt: skip
        self.sessions.add(session)
        logger.info("%s: data stream connected", prepared.name)
        session.start(first_payload)

    # ---- lifetimes ----

    def connection_closed(self, owner: ClientAddr) -> None:
        """The HAP connection ``owner`` is gone: its prepared and open sessions end too."""
        for prepared in [p for p in self._prepared if p.owner == owner]:
            self._drop(prepared)
        for session in [s for s in self.sessions if s.owner == owner]:
            session.close("its HAP connection closed")

    async def stop(self) -> None:
        self._stopped = True
        for prepared in list(self._prepared):
            self._drop(prepared)
        sessions = list(self.sessions)
        for session in sessions:
            session.close("the bridge is stopping")
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*(s.wait_closed() for s in sessions), return_exceptions=True)
        if self._server is not None:
            self._server.close()
            try:
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            except TimeoutError:
                pass
            self._server = None

    def stats(self) -> dict[str, object]:
        return {
            "sessions": len(self.sessions),
            "prepared": len(self._prepared),
            "refused": self.refused,
            "expired": self.expired,
            "port": self.port,
        }
