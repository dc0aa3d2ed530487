"""Nobody on the LAN can lock the paired controllers out of the HAP port, or fill the disk.

- RateLimitFilter (bridge/logs.py) collapses repeats, keeps redaction, and the accept loop's
  EMFILE is one line;
- ConnectionGuard's admission policy, on its own (which connection goes when one must);
- an in-process HAP server: a socket that never pair-verifies is closed at the (shortened)
  deadline, a paired controller's quiet connection is not;
- the real `obscura run` under RLIMIT_NOFILE 256, flooded with 400 idle connections from 20
  loopback addresses and a steady stream of new ones: a paired aiohomekit controller still
  connects, reads and streams, the status API answers, the log stays small.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from accessories.bridge import HomeKitBridge
from accessories.hap_connections import ConnectionGuard, ConnectionLimits
from bridge.config import ConfigError, parse_config
from bridge.logs import RateLimitFilter, RedactingFilter, loop_exception_handler
from tests.peers.bridge_process import BridgeProcess, CameraSpec
from tests.peers.camera_tlv import VideoSelection
from tests.peers.homekit import (
    find_aid,
    find_characteristic,
    pair,
    reconnect,
    stream_management,
)
from tests.peers.viewer import Viewer

SETUP_CODE = "482-91-375"

# --------------------------------------------------------------------------------------------
# Rate-limited logging
# --------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def logger_with_limiter(clock: Clock) -> tuple[logging.Logger, io.StringIO, RateLimitFilter]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    limiter = RateLimitFilter(window=60.0, per_site=10, clock=clock).attach(handler)
    log = logging.getLogger(f"test.flood.{random.random()}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log, stream, limiter


def test_identical_errors_collapse_into_one_line_and_a_count() -> None:
    clock = Clock()
    log, stream, _ = logger_with_limiter(clock)
    error = OSError(errno.EMFILE, "Too many open files")
    for _ in range(1000):
        try:
            raise error
        except OSError:
            log.exception("socket.accept() out of system resource")
        clock.now += 0.01  # 1,000 in 10 s
    out = stream.getvalue()
    assert out.count("Traceback") == 1 and out.count("out of system resource") == 1
    clock.now += 55.0  # the window has passed: the next record brings the summary
    log.warning("something else")
    out = stream.getvalue()
    assert "out of system resource … repeated 999 times in the last 60 s" in out
    assert out.count("Traceback") == 1
    assert out.rstrip().endswith("something else")
    # After the window the same message is logged again (once), then counted again.
    for _ in range(5):
        log.error("socket.accept() out of system resource")
    assert stream.getvalue().count("ERROR test") == 2 + 1  # first, its summary, the new first


def test_messages_from_one_line_of_code_are_bounded_too() -> None:
    clock = Clock()
    log, stream, limiter = logger_with_limiter(clock)
    for i in range(300):
        log.info("connection from 10.0.%d.%d", i // 250, i % 250)  # all different
    log.debug("debug is never held back %d", 1)
    log.debug("debug is never held back %d", 1)
    log.info("another line of code passes")
    lines = stream.getvalue().splitlines()
    assert sum("connection from" in line for line in lines) == 10
    assert sum("debug is never" in line for line in lines) == 2
    assert lines[-1].endswith("another line of code passes")
    limiter.flush()
    last = stream.getvalue().splitlines()[-1]
    assert "connection from 10.0.0.10 … and similar messages repeated 290 times" in last


def test_summaries_keep_credentials_out() -> None:
    clock = Clock()
    log, stream, limiter = logger_with_limiter(clock)
    for _ in range(50):
        log.error("cannot open rtsp://admin:hunter2@192.0.2.7/stream1: refused")
    limiter.flush()
    out = stream.getvalue()
    assert "hunter2" not in out and "rtsp://***@192.0.2.7" in out
    assert "repeated 49 times" in out


def test_emfile_on_accept_is_one_line_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        with caplog.at_level(logging.WARNING):
            loop_exception_handler(
                loop,
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                    "socket": sock,
                },
            )
    finally:
        sock.close()
        loop.close()
    [record] = caplog.records
    assert record.exc_info is None
    assert "Too many open files (EMFILE)" in record.getMessage()
    assert f"cannot accept connections on 127.0.0.1:{port}" in record.getMessage()


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    script = (
        "import resource, logging\n"
        "logging.basicConfig(level=logging.DEBUG, format='%(message)s')\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))\n"
        "from bridge.service import raise_open_files_limit\n"
        "raise_open_files_limit()\n"
        "raise_open_files_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[1], check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "(4096, 4096)"
    assert out.stderr.count("open files limit raised from 256 to 4096") == 1, out.stderr


# --------------------------------------------------------------------------------------------
# Admission policy
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class FakeConn:
    verified: bool = False
    last_seen: float = 0.0
    evicted: bool = field(default=False)

    def evict(self) -> None:
        self.evicted = True


def admit(guard: ConnectionGuard, address: str, conn: FakeConn | None = None) -> FakeConn:
    conn = conn or FakeConn()
    conn.admitted = guard.admit(conn, (address, 40000))  # type: ignore[attr-defined]
    return conn


def test_per_address_cap_evicts_that_address_oldest_unverified() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_connections=64, max_per_address=4))
    controller = admit(guard, "10.0.0.2")
    controller.verified = True
    flood = [admit(guard, "10.0.0.9") for _ in range(10)]
    assert all(c.admitted for c in flood)  # type: ignore[attr-defined]
    assert [c.evicted for c in flood] == [True] * 6 + [False] * 4
    assert not controller.evicted and len(guard) == 5
    # The same host also holds a verified controller: its unverified sockets go first.
    mixed = ConnectionGuard(ConnectionLimits(max_connections=64, max_per_address=3))
    old, new, third = (admit(mixed, "10.0.0.3") for _ in range(3))
    old.verified, old.last_seen = True, 5.0
    admit(mixed, "10.0.0.3")
    assert new.evicted and not old.evicted and not third.evicted
    # All of an address's connections verified: its least recently active one goes.
    crowd = ConnectionGuard(ConnectionLimits(max_connections=64, max_per_address=3))
    conns = [admit(crowd, "10.0.0.4") for _ in range(3)]
    for conn, seen in zip(conns, (7.0, 2.0, 9.0), strict=True):
        conn.verified, conn.last_seen = True, seen
    admit(crowd, "10.0.0.4")
    assert [c.evicted for c in conns] == [False, True, False]


def test_total_cap_takes_from_the_busiest_address_never_a_verified_controller() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_connections=8, max_per_address=8))
    hub = admit(guard, "10.0.0.2")
    hub.verified = True
    phone = admit(guard, "10.0.0.3")  # pending pair-verify, alone at its address
    rng = random.Random(8)
    flood = [admit(guard, f"10.0.1.{rng.randrange(1, 4)}") for _ in range(200)]
    assert all(c.admitted for c in flood)  # type: ignore[attr-defined]
    assert not hub.evicted and not phone.evicted
    assert len(guard) == 8 and guard.totals["evicted"] == 200 - 6
    # A new controller arriving during the flood gets a slot too.
    tablet = admit(guard, "10.0.0.4")
    assert tablet.admitted and not tablet.evicted  # type: ignore[attr-defined]


def test_only_when_every_slot_is_verified_is_a_newcomer_refused() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_connections=4, max_per_address=2))
    controllers = [admit(guard, f"10.0.0.{i}") for i in range(4)]
    for c in controllers:
        c.verified = True
    late = admit(guard, "10.0.0.9")
    assert not late.admitted and not late.evicted  # type: ignore[attr-defined]
    assert guard.totals["refused"] == 1 and not any(c.evicted for c in controllers)
    guard.release(controllers[0])
    assert admit(guard, "10.0.0.9").admitted  # type: ignore[attr-defined]
    assert guard.stats() == {
        "open": 4, "verified": 3, "max": 4, "refused_total": 1, "evicted_total": 0,
        "timed_out_total": 0,
    }  # fmt: skip


def test_ipv4_mapped_addresses_count_as_ipv4() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_connections=64, max_per_address=1))
    first = admit(guard, "10.0.0.5")
    admit(guard, "::ffff:10.0.0.5")
    assert first.evicted


@pytest.mark.parametrize(
    ("hap", "key"),
    [
        ({"max_connections": 4}, "hap.max_connections"),
        ({"max_connections": 5000}, "hap.max_connections"),
        (
            {"max_connections": 8, "max_connections_per_address": 9},
            "hap.max_connections_per_address",
        ),
        ({"max_connections_per_address": 0}, "hap.max_connections_per_address"),
        ({"max_connections": "64"}, "hap.max_connections"),
    ],
)
def test_connection_caps_in_the_configuration(hap: dict[str, object], key: str) -> None:
    path = Path("obscura.toml")
    cameras = [{"name": "A", "source": "demo:"}]
    with pytest.raises(ConfigError) as err:
        parse_config({"hap": hap, "cameras": cameras}, path)
    assert err.value.key == key
    caps = {"max_connections": 8, "max_connections_per_address": 8}
    ok = parse_config({"hap": caps, "cameras": cameras}, path)
    assert (ok.hap.max_connections, ok.hap.max_connections_per_address) == (8, 8)


# --------------------------------------------------------------------------------------------
# In-process HAP server: the pair-verify deadline
# --------------------------------------------------------------------------------------------


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_a_socket_that_never_pair_verifies_is_closed_and_a_controller_is_not(
    tmp_path: Path,
) -> None:
    limits = ConnectionLimits(verify_timeout=0.5, pairing_timeout=20.0)
    homekit = HomeKitBridge(
        name="Flood Test", address="127.0.0.1", port=0, setup_code=SETUP_CODE,
        state_dir=tmp_path, advertise=False, cameras=[], connection_limits=limits,
    )  # fmt: skip
    await homekit.start()
    controller = None
    try:
        controller = await pair(homekit.port, SETUP_CODE)  # unpaired: 20 s for pair-setup
        accessories = await controller.pairing.list_accessories_and_characteristics()
        name = find_characteristic(accessories, "Name", aid=1).key
        silent = socket.create_connection(("127.0.0.1", homekit.port))
        talker = socket.create_connection(("127.0.0.1", homekit.port))
        started = time.monotonic()
        # A plaintext request is answered (401, -70401: not verified), but buys no time.
        talker.sendall(b"GET /accessories HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.2)
        assert b" 401 " in talker.recv(4096)
        results = await asyncio.gather(
            asyncio.to_thread(closed_within, silent, 10),
            asyncio.to_thread(closed_within, talker, 10),
        )
        elapsed = time.monotonic() - started
        assert results == [True, True]
        assert 0.4 <= elapsed < 8, elapsed
        silent.close()
        talker.close()
        await asyncio.sleep(1.0)  # the controller's connection is quiet for twice the deadline
        stats = homekit.connection_stats()
        assert stats["timed_out_total"] == 2 and stats["open"] == 1 and stats["verified"] == 1
        chars = await controller.pairing.get_characteristics([name])
        assert chars[name]["value"] == "Flood Test"  # served on the same, still open connection
        assert homekit.connection_stats()["open"] == 1
    finally:
        if controller is not None:
            await controller.unpair()
        await homekit.stop()


# --------------------------------------------------------------------------------------------
# The real bridge under a flood
# --------------------------------------------------------------------------------------------

FLOOD_ADDRESSES = [f"127.0.0.{i}" for i in range(1, 21)]  # loopback, 20 source addresses


def open_flood(
    port: int, count: int, rng: random.Random, sources: list[str] = FLOOD_ADDRESSES
) -> list[socket.socket]:
    """``count`` idle connections, spread over ``sources`` (the bridge may drop them)."""
    socks = []
    for _ in range(count):
        source = rng.choice(sources)
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), 2, (source, 0)))
        except OSError:  # a full accept queue: the flood is doing its job
            pass
    return socks


class Churn(threading.Thread):
    """New idle connections at a steady rate from addresses other than the controller's, the
    last ``keep`` of them held open, until stopped."""

    def __init__(self, port: int, per_second: float, keep: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.port, self.interval, self.keep = port, 1.0 / per_second, keep
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.opened = 0

    def run(self) -> None:
        held: deque[socket.socket] = deque()
        while not self.stopping.wait(self.interval):
            held.extend(open_flood(self.port, 1, self.rng, FLOOD_ADDRESSES[1:]))
            self.opened += 1
            while len(held) > self.keep:
                held.popleft().close()
        for s in held:
            s.close()


async def test_a_flood_of_idle_connections_locks_no_controller_out(tmp_path: Path) -> None:
    rng = random.Random(1100)
    bridge = BridgeProcess(
        tmp_path,
        [CameraSpec("Porch", "demo:", {"width": 640, "height": 360, "fps": 15})],
        nofile=256,  # 400 idle connections would need more than this without the cap
    )
    bridge.start()
    flood: list[socket.socket] = []
    churn = Churn(bridge.hap_port, per_second=100, keep=150, seed=7)
    paired = fresh = None
    viewer = None
    try:
        bridge.wait_camera("Porch")
        paired = await pair(bridge.hap_port, bridge.setup_code)
        accessories = await paired.pairing.list_accessories_and_characteristics()
        porch = find_aid(accessories, "Porch")
        name = find_characteristic(accessories, "Name", aid=porch).key

        flood = await asyncio.to_thread(open_flood, bridge.hap_port, 400, rng)
        assert len(flood) >= 300
        churn.start()
        await asyncio.sleep(1.0)
        hap = bridge.status()["hap"]["connections"]  # the status API answers during the flood
        assert hap["open"] <= 64 and hap["evicted_total"] >= 400 - 64
        assert hap["verified"] == 1  # the controller that was there before the flood
        assert len(os.listdir(f"/proc/{bridge.proc.pid}/fd")) < 200  # type: ignore[union-attr]

        # The controller that was connected keeps working...
        assert (await paired.pairing.get_characteristics([name]))[name]["value"] == "Porch"
        # ... and one that connects now (a new session: pair-verify through the flood) too.
        fresh = await reconnect(paired.pairing_data, alias="after-flood")
        accessories = await fresh.pairing.list_accessories_and_characteristics()
        sm = stream_management(accessories, porch)[0]
        viewer = await Viewer.open(fresh, sm)
        await viewer.start(VideoSelection(640, 360, 15, max_bitrate_kbps=800))
        assert await viewer.receiver.wait_for(lambda r: len(r.frames) >= 10, 15)
        assert viewer.receiver.auth_failures == 0
        assert bridge.status()["hap"]["connections"]["verified"] == 2
        await viewer.stop()
    finally:
        churn.stopping.set()
        if churn.is_alive():
            churn.join(10)
        for s in flood:
            s.close()
        if viewer is not None:
            viewer.close()
        if fresh is not None:
            await fresh.close()
        if paired is not None:
            await paired.unpair()
        code = bridge.stop()
    log = bridge.log_text()
    assert code == 0, log[-4000:]
    assert churn.opened >= 50  # new connections kept arriving while the controller worked
    assert len(log.encode()) < 50_000, f"{len(log)} bytes of log:\n{log[-4000:]}"
    assert "Traceback" not in log and "Too many open files" not in log, log[-4000:]
