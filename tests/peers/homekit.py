"""The controller side of HomeKit for tests: aiohomekit plus our own camera TLV8 codec.

Tests play Apple's Home app against the bridge, so everything a controller writes is built here,
independently of the bridge's own codec (a shared codec would hide a shared bug).

Pairing without mDNS (loopback has no multicast): an `IpController` is created inside the running
loop without `async_start()`, and an `IpDiscovery` is built from a hand-made `HomeKitService`.

Camera characteristics (HAP spec, "IP Cameras"; numbers cross-checked with HAP-NodeJS's
RTPStreamManagement and HAP-python's camera):
- SetupEndpoints (118) is written with a write-response ("r": true): aiohomekit's
  `put_characteristics` can neither ask for one nor return its value, so `write_with_response`
  sends the PUT through `pairing.connection.put_json` itself. Accessories that ignore "r"
  (HAP-python's stock Camera) publish the answer as the characteristic's value instead:
  `setup_endpoints` then reads it back, unless `require_write_response=True`.
- aiohomekit's decoded TLV views keep only the last of repeated entries, so every parser here works
  on raw bytes (get_characteristics gives TLV8 values as base64 strings).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohomekit.characteristic_cache import CharacteristicCacheMemory
from aiohomekit.controller.ip import IpController, IpDiscovery, IpPairing
from aiohomekit.model import Categories
from aiohomekit.model.characteristics import CharacteristicsTypes
from aiohomekit.model.feature_flags import FeatureFlags
from aiohomekit.model.services import ServicesTypes
from aiohomekit.model.status_flags import StatusFlags
from aiohomekit.uuid import normalize_uuid
from aiohomekit.zeroconf import HomeKitService

# --------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------


def format_setup_code(code: str | bytes) -> str:
    """'03145154', b'031-45-154' or '031 45 154' -> '031-45-154' (the form aiohomekit checks)."""
    if isinstance(code, bytes):
        code = code.decode()
    digits = re.sub(r"\D", "", code)
    if len(digits) != 8:
        raise ValueError(f"a setup code has 8 digits, got {code!r}")
    return f"{digits[:3]}-{digits[3:5]}-{digits[5:]}"


def _service_description(address: str, port: int, device_id: str) -> HomeKitService:
    # What mDNS would have told us. Only address/port matter for pairing; feature_flags=0 selects
    # pair-setup without MFi authentication, as HAP-python and our bridge expect.
    return HomeKitService(
        name="obscura-under-test",
        id=device_id.lower(),
        model="Bridge",
        feature_flags=FeatureFlags(0),
        status_flags=StatusFlags(1),  # 1 = not paired
        config_num=1,
        state_num=1,
        category=Categories.BRIDGE,
        protocol_version="1.1",
        type="_hap._tcp.local.",
        address=address,
        addresses=[address],
        port=port,
    )


@dataclass
class Paired:
    """A live pairing: the aiohomekit objects a test needs, and how to tear them down."""

    controller: IpController
    pairing: IpPairing
    alias: str

    @property
    def pairing_data(self) -> dict[str, Any]:
        """Long-term keys and address; `reconnect()` takes it to open a new session later."""
        return dict(self.pairing.pairing_data)

    @property
    def controller_id(self) -> str:
        """Our pairing identifier as the accessory knows it (iOSPairingId)."""
        return str(self.pairing.pairing_data["iOSPairingId"])

    async def unpair(self) -> None:
        """Remove our own pairing on the accessory (it forgets us), then close."""
        try:
            await self.pairing.remove_pairing(self.controller_id)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the HAP session. Idempotent; never raises for an already-dead accessory."""
        # shutdown() marks the pairing so aiohomekit's reconnect loop does not revive it, then
        # closes the connection. async_stop() must not be called: it needs async_start()'s browser.
        with contextlib.suppress(Exception):
            await self.pairing.shutdown()
        self.controller.pairings.pop(self.alias, None)
        self.controller.aliases.pop(self.alias, None)


async def pair(
    port: int,
    setup_code: str | bytes,
    *,
    address: str = "127.0.0.1",
    alias: str = "obscura-test",
    device_id: str = "00:00:00:00:00:00",
    timeout_s: float = 30.0,
) -> Paired:
    """Pair with the accessory at address:port (must run inside the event loop)."""
    controller = IpController(char_cache=CharacteristicCacheMemory(), zeroconf_instance=None)
    discovery = IpDiscovery(controller, _service_description(address, port, device_id))
    try:
        async with asyncio.timeout(timeout_s):
            finish = await discovery.async_start_pairing(alias)
            pairing = await finish(format_setup_code(setup_code))
    finally:
        # finish() closes the discovery's plain connection on success, not on failure.
        await discovery.close()
    return Paired(controller, pairing, alias)


async def reconnect(pairing_data: dict[str, Any], *, alias: str = "obscura-test") -> Paired:
    """A new controller session from stored pairing data (e.g. after the bridge restarted)."""
    controller = IpController(char_cache=CharacteristicCacheMemory(), zeroconf_instance=None)
    pairing = controller.load_pairing(alias, dict(pairing_data))
    if pairing is None:
        raise ValueError("not IP pairing data")
    return Paired(controller, pairing, alias)


@contextlib.asynccontextmanager
async def paired(
    port: int, setup_code: str | bytes, *, unpair: bool = False, **kwargs: Any
) -> AsyncIterator[Paired]:
    """`async with paired(port, code) as p:` pair, and close (or unpair) on the way out."""
    p = await pair(port, setup_code, **kwargs)
    try:
        yield p
    finally:
        if unpair:
            with contextlib.suppress(Exception):
                await p.unpair()
        await p.close()


# --------------------------------------------------------------------------------------------
# Finding characteristics in /accessories
# --------------------------------------------------------------------------------------------


# HAP-python's (and the spec's) names where aiohomekit's constants differ.
_NAME_ALIASES = {"SUPPORTED_AUDIO_STREAM_CONFIGURATION": "SUPPORTED_AUDIO_CONFIGURATION"}


def hap_uuid(type_or_name: str) -> str:
    """Normalize 'SetupEndpoints', 'SETUP_ENDPOINTS', 'setup-endpoints', '118', '00000118-...'
    (a characteristic or service) to the full upper-case UUID aiohomekit uses."""
    s = type_or_name.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{1,8}", s) or re.fullmatch(r"[0-9A-Fa-f-]{36}", s):
        return normalize_uuid(s)
    # CamelCase -> UPPER_SNAKE, keeping acronyms whole ("CameraRTPStream" -> CAMERA_RTP_STREAM)
    const = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", s)
    const = const.replace("-", "_").replace(" ", "_").upper()
    const = _NAME_ALIASES.get(const, const)
    for table in (CharacteristicsTypes, ServicesTypes):
        value = getattr(table, const, None)
        if isinstance(value, str):
            return normalize_uuid(value)
    raise KeyError(f"unknown HAP characteristic/service {type_or_name!r}")


@dataclass(frozen=True)
class CharRef:
    """Where one characteristic lives, with what /accessories said about it."""

    aid: int
    iid: int
    type: str
    service_type: str
    service_iid: int
    perms: tuple[str, ...]
    format: str | None
    value: Any

    @property
    def key(self) -> tuple[int, int]:
        return (self.aid, self.iid)


def iter_characteristics(accessories: Sequence[dict[str, Any]]) -> Iterable[CharRef]:
    for acc in accessories:
        for svc in acc["services"]:
            for ch in svc["characteristics"]:
                yield CharRef(
                    aid=acc["aid"],
                    iid=ch["iid"],
                    type=normalize_uuid(ch["type"]),
                    service_type=normalize_uuid(svc["type"]),
                    service_iid=svc["iid"],
                    perms=tuple(ch.get("perms", ())),
                    format=ch.get("format"),
                    value=ch.get("value"),
                )


def find_characteristics(
    accessories: Sequence[dict[str, Any]],
    char_type: str,
    *,
    service_type: str | None = None,
    aid: int | None = None,
) -> list[CharRef]:
    """All characteristics of a type (name or UUID), optionally within one service type/aid."""
    want = hap_uuid(char_type)
    want_svc = hap_uuid(service_type) if service_type else None
    return [
        c
        for c in iter_characteristics(accessories)
        if c.type == want
        and (want_svc is None or c.service_type == want_svc)
        and (aid is None or c.aid == aid)
    ]


def find_characteristic(
    accessories: Sequence[dict[str, Any]],
    char_type: str,
    *,
    service_type: str | None = None,
    aid: int | None = None,
) -> CharRef:
    """Exactly one match, else LookupError listing what there was."""
    found = find_characteristics(accessories, char_type, service_type=service_type, aid=aid)
    if len(found) != 1:
        raise LookupError(
            f"{len(found)} characteristics of type {char_type!r} "
            f"(service={service_type!r}, aid={aid}): {[c.key for c in found]}"
        )
    return found[0]


def find_aid(accessories: Sequence[dict[str, Any]], name: str) -> int:
    """The aid of the accessory whose AccessoryInformation Name is `name` (bridged cameras)."""
    for c in find_characteristics(accessories, "NAME", service_type="ACCESSORY_INFORMATION"):
        if c.value == name:
            return c.aid
    raise LookupError(f"no accessory named {name!r}")


@dataclass(frozen=True)
class StreamManagement:
    """One CameraRTPStreamManagement service of a camera accessory."""

    aid: int
    service_iid: int
    setup_endpoints: CharRef
    selected_config: CharRef
    streaming_status: CharRef
    supported_video: CharRef
    supported_audio: CharRef
    supported_rtp: CharRef
    active: CharRef | None


def stream_management(
    accessories: Sequence[dict[str, Any]], aid: int | None = None
) -> list[StreamManagement]:
    """Every RTP stream management service (a camera has one per simultaneous stream)."""
    svc_type = hap_uuid("110")  # CameraRTPStreamManagement
    groups: dict[tuple[int, int], dict[str, CharRef]] = {}
    for c in iter_characteristics(accessories):
        if c.service_type == svc_type and (aid is None or c.aid == aid):
            groups.setdefault((c.aid, c.service_iid), {})[c.type] = c
    out = []
    for (a, siid), chars in sorted(groups.items()):

        def get(name: str, chars: dict[str, CharRef] = chars) -> CharRef:
            return chars[hap_uuid(name)]

        out.append(
            StreamManagement(
                aid=a,
                service_iid=siid,
                setup_endpoints=get("118"),
                selected_config=get("117"),
                streaming_status=get("120"),
                supported_video=get("114"),
                supported_audio=get("115"),
                supported_rtp=get("116"),
                active=chars.get(hap_uuid("B0")),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Reads, writes with write-response, events
# --------------------------------------------------------------------------------------------


class HapStatusError(RuntimeError):
    def __init__(self, key: tuple[int, int], status: int, body: Any = None) -> None:
        super().__init__(f"HAP status {status} for {key}: {body!r}")
        self.key = key
        self.status = status


async def read_value(pairing: IpPairing, key: tuple[int, int]) -> Any:
    """One characteristic's value; raises HapStatusError on a non-zero status."""
    res = (await pairing.get_characteristics([key]))[key]
    if res.get("status", 0) != 0:
        raise HapStatusError(key, res["status"], res)
    return res.get("value")


async def read_tlv(pairing: IpPairing, key: tuple[int, int]) -> bytes:
    """A TLV8 characteristic's raw bytes (HAP JSON carries them base64-encoded)."""
    return base64.b64decode(await read_value(pairing, key))


async def write_with_response(pairing: IpPairing, key: tuple[int, int], value: Any) -> Any:
    """PUT one value with "r": true and return the value in the write response (None if the
    accessory sent none: 204, or 207 without "value")."""
    # aiohomekit's put_characteristics has no "r" flag and drops response values, so speak to
    # the secure connection directly. _ensure_connected reconnects like the public calls do.
    await pairing._ensure_connected()
    aid, iid = key
    body = {"characteristics": [{"aid": aid, "iid": iid, "value": value, "r": True}]}
    response = await pairing.connection.put_json("/characteristics", body)
    for row in (response or {}).get("characteristics", []):
        if (row.get("aid"), row.get("iid")) == key:
            if row.get("status", 0) != 0:
                raise HapStatusError(key, row["status"], row)
            return row.get("value")
    return None


async def write_value(pairing: IpPairing, key: tuple[int, int], value: Any) -> None:
    """A plain write (no write-response); raises HapStatusError on a failure status."""
    res = await pairing.put_characteristics([(key[0], key[1], value)])
    if key in res and res[key].get("status", 0) != 0:
        raise HapStatusError(key, res[key]["status"], res[key])


@dataclass
class EventLog:
    """Events the accessory pushed (EVENT/1.0 messages), in arrival order.

    It hooks `pairing.event_received`, not `dispatcher_connect`: aiohomekit also feeds its
    dispatcher with the values *we* wrote, which would hide a bridge that echoes (HAP-python
    must not, and batches events in a 0.5 s window)."""

    pairing: IpPairing
    events: list[tuple[float, tuple[int, int], Any]] = field(default_factory=list)
    _cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    _keys: set[tuple[int, int]] = field(default_factory=set)
    _orig: Callable[[dict[str, Any]], None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def subscribe(self, keys: Iterable[tuple[int, int]]) -> None:
        keys = set(keys)
        if self._orig is None:
            self._orig = self.pairing.event_received
            self.pairing.event_received = self._on_event  # type: ignore[method-assign]
        self._keys |= keys
        await self.pairing.subscribe(keys)

    def _on_event(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        for row in event.get("characteristics", []):
            if isinstance(row, dict) and "aid" in row and "iid" in row:
                self.events.append((now, (row["aid"], row["iid"]), row.get("value")))
        task = asyncio.get_running_loop().create_task(self._wake())
        self._tasks.add(task)  # keep a reference until it ran (the loop holds only a weak one)
        task.add_done_callback(self._tasks.discard)
        assert self._orig is not None
        self._orig(event)

    async def _wake(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    def values(self, key: tuple[int, int]) -> list[Any]:
        return [v for _, k, v in self.events if k == key]

    async def wait_for(
        self,
        key: tuple[int, int],
        match: Any = None,
        *,
        timeout_s: float = 10.0,
        after: int = 0,
    ) -> Any:
        """Wait for an event on `key` (the `after`-th event onwards) whose value equals `match`,
        or satisfies it when callable, or any value when None. Returns the value."""

        def ok(v: Any) -> bool:
            return match is None or (match(v) if callable(match) else v == match)

        def found() -> Any:
            seen = [v for _, k, v in self.events[after:] if k == key]
            return next(((v,) for v in seen if ok(v)), None)

        async with asyncio.timeout(timeout_s), self._cond:
            while (hit := found()) is None:
                await self._cond.wait()
        return hit[0]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.pairing.unsubscribe(self._keys)
        if self._orig is not None:
            del self.pairing.event_received  # drop the instance attribute; the method is back
            self._orig = None
