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
import os
import re
import struct
import time
import uuid
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
    return from_b64(await read_value(pairing, key))


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


# --------------------------------------------------------------------------------------------
# TLV8: our own few lines (the peer must not share the bridge's codec)
# --------------------------------------------------------------------------------------------

TlvValue = bytes | int | str | list[tuple[int, "TlvValue"]]

SEPARATOR = 0xFF


def u8(v: int) -> bytes:
    return struct.pack("<B", v)


def u16(v: int) -> bytes:
    return struct.pack("<H", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def f32(v: float) -> bytes:
    return struct.pack("<f", v)


def tlv8_encode(items: Iterable[tuple[int, TlvValue]]) -> bytes:
    """Encode (type, value) items in order. bytes as is, int as one byte, str as UTF-8, a list
    as a nested TLV8. Values over 255 bytes are fragmented; consecutive items of the same type
    get a 0xFF separator so that readers do not merge them."""
    out = bytearray()
    prev: int | None = None
    for tag, value in items:
        if isinstance(value, list):
            data = tlv8_encode(value)
        elif isinstance(value, str):
            data = value.encode()
        elif isinstance(value, int):
            data = u8(value)
        else:
            data = bytes(value)
        if tag == prev:
            out += bytes((SEPARATOR, 0))
        chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        for chunk in chunks:
            out += bytes((tag, len(chunk))) + chunk
        prev = tag
    return bytes(out)


def tlv8_decode(data: bytes | str) -> list[tuple[int, bytes]]:
    """Decode one level into (type, value) items, order and repeats kept. A fragment of exactly
    255 bytes continues into the next item of the same type; separators are dropped."""
    if isinstance(data, str):
        data = from_b64(data)
    items: list[tuple[int, bytes]] = []
    i = 0
    continues = False
    while i < len(data):
        if i + 2 > len(data):
            raise ValueError(f"truncated TLV8 header at byte {i}")
        tag, length = data[i], data[i + 1]
        value = data[i + 2 : i + 2 + length]
        if len(value) != length:
            raise ValueError(f"truncated TLV8 value for type {tag} at byte {i}")
        i += 2 + length
        if continues and items and items[-1][0] == tag:
            items[-1] = (tag, items[-1][1] + value)
        elif tag == SEPARATOR and length == 0:
            pass
        else:
            items.append((tag, value))
        continues = length == 255
    return items


def tlv_first(items: list[tuple[int, bytes]], tag: int) -> bytes | None:
    return next((v for t, v in items if t == tag), None)


def tlv_all(items: list[tuple[int, bytes]], tag: int) -> list[bytes]:
    return [v for t, v in items if t == tag]


def tlv_req(items: list[tuple[int, bytes]], tag: int, what: str) -> bytes:
    v = tlv_first(items, tag)
    if v is None:
        raise ValueError(f"missing TLV type {tag} ({what})")
    return v


def le_int(b: bytes) -> int:
    """Little-endian integer of any width (HAP-python sends some 1-byte fields as 2 bytes)."""
    return int.from_bytes(b, "little")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def from_b64(value: str | bytes) -> bytes:
    return base64.b64decode(value) if isinstance(value, str) else bytes(value)


# --------------------------------------------------------------------------------------------
# Camera TLVs: tag numbers from the HAP spec
# --------------------------------------------------------------------------------------------

# SetupEndpoints (request and response)
SE_SESSION_ID, SE_STATUS, SE_ADDRESS, SE_VIDEO_SRTP, SE_AUDIO_SRTP = 1, 2, 3, 4, 5
SE_VIDEO_SSRC, SE_AUDIO_SSRC = 6, 7
ADDR_VERSION, ADDR_ADDRESS, ADDR_VIDEO_PORT, ADDR_AUDIO_PORT = 1, 2, 3, 4
SRTP_SUITE, SRTP_KEY, SRTP_SALT = 1, 2, 3
SRTP_AES_CM_128_HMAC_SHA1_80, SRTP_AES_256_CM_HMAC_SHA1_80, SRTP_NONE = 0, 1, 2
SETUP_SUCCESS, SETUP_BUSY, SETUP_ERROR = 0, 1, 2

# SelectedRTPStreamConfiguration
SEL_SESSION_CONTROL, SEL_VIDEO, SEL_AUDIO = 1, 2, 3
CTRL_SESSION_ID, CTRL_COMMAND = 1, 2
CMD_END, CMD_START, CMD_SUSPEND, CMD_RESUME, CMD_RECONFIGURE = 0, 1, 2, 3, 4
COMMANDS = {
    "stop": CMD_END,
    "end": CMD_END,
    "start": CMD_START,
    "suspend": CMD_SUSPEND,
    "resume": CMD_RESUME,
    "reconfigure": CMD_RECONFIGURE,
}
# video parameters (selected and supported)
V_CODEC_TYPE, V_CODEC_PARAMS, V_ATTRIBUTES, V_RTP_PARAMS = 1, 2, 3, 4
VP_PROFILE, VP_LEVEL, VP_PACKETIZATION, VP_CVO_ENABLED, VP_CVO_ID = 1, 2, 3, 4, 5
VA_WIDTH, VA_HEIGHT, VA_FPS = 1, 2, 3
RTP_PAYLOAD_TYPE, RTP_SSRC, RTP_MAX_BITRATE, RTP_MIN_RTCP_INTERVAL, RTP_MAX_MTU = 1, 2, 3, 4, 5
RTP_COMFORT_NOISE_PT = 6
CODEC_H264 = 0
PROFILES = {"baseline": 0, "main": 1, "high": 2}
LEVELS = {"3.1": 0, "3.2": 1, "4.0": 2}
# audio parameters
A_CODEC_TYPE, A_CODEC_PARAMS, A_RTP_PARAMS, A_COMFORT_NOISE = 1, 2, 3, 4
AP_CHANNELS, AP_BITRATE_MODE, AP_SAMPLE_RATE, AP_PACKET_TIME = 1, 2, 3, 4
AUDIO_CODECS = {"pcmu": 0, "pcma": 1, "aac-eld": 2, "opus": 3, "msbc": 4, "amr": 5, "amr-wb": 6}
SAMPLE_RATES = {8: 0, 16: 1, 24: 2}
# Supported*Configuration
SUP_VIDEO_CODEC_CONFIG = 1
SUP_AUDIO_CODEC_CONFIG, SUP_AUDIO_COMFORT_NOISE = 1, 2
SUP_RTP_CRYPTO_SUITE = 2
# StreamingStatus
STREAMING_STATUS = 1
STATUS_AVAILABLE, STATUS_IN_USE, STATUS_UNAVAILABLE = 0, 1, 2


@dataclass(frozen=True)
class SrtpParams:
    suite: int = SRTP_AES_CM_128_HMAC_SHA1_80
    master_key: bytes = b""
    master_salt: bytes = b""

    @classmethod
    def random(cls) -> SrtpParams:
        """AES_CM_128_HMAC_SHA1_80: a 16-byte master key and a 14-byte master salt."""
        return cls(SRTP_AES_CM_128_HMAC_SHA1_80, os.urandom(16), os.urandom(14))

    def items(self) -> list[tuple[int, TlvValue]]:
        return [
            (SRTP_SUITE, self.suite),
            (SRTP_KEY, self.master_key),
            (SRTP_SALT, self.master_salt),
        ]

    @classmethod
    def parse(cls, raw: bytes) -> SrtpParams:
        t = tlv8_decode(raw)
        return cls(
            suite=le_int(tlv_req(t, SRTP_SUITE, "crypto suite")),
            master_key=tlv_first(t, SRTP_KEY) or b"",
            master_salt=tlv_first(t, SRTP_SALT) or b"",
        )


@dataclass(frozen=True)
class Endpoint:
    address: str
    video_port: int
    audio_port: int
    ipv6: bool = False

    def items(self) -> list[tuple[int, TlvValue]]:
        return [
            (ADDR_VERSION, int(self.ipv6)),
            (ADDR_ADDRESS, self.address),
            (ADDR_VIDEO_PORT, u16(self.video_port)),
            (ADDR_AUDIO_PORT, u16(self.audio_port)),
        ]

    @classmethod
    def parse(cls, raw: bytes) -> Endpoint:
        t = tlv8_decode(raw)
        return cls(
            address=tlv_req(t, ADDR_ADDRESS, "address").decode(),
            video_port=le_int(tlv_req(t, ADDR_VIDEO_PORT, "video port")),
            audio_port=le_int(tlv_req(t, ADDR_AUDIO_PORT, "audio port")),
            ipv6=bool(le_int(tlv_req(t, ADDR_VERSION, "address version"))),
        )


@dataclass(frozen=True)
class SetupEndpointsRequest:
    """What the controller writes: where it listens and the keys it wants used."""

    session_id: bytes
    controller: Endpoint
    video_srtp: SrtpParams
    audio_srtp: SrtpParams

    @classmethod
    def new(
        cls,
        video_port: int,
        audio_port: int,
        *,
        address: str = "127.0.0.1",
        session_id: bytes | None = None,
    ) -> SetupEndpointsRequest:
        """A fresh session id and fresh SRTP keys for both streams (iOS always sends both)."""
        return cls(
            session_id=session_id or uuid.uuid4().bytes,
            controller=Endpoint(address, video_port, audio_port, ipv6=":" in address),
            video_srtp=SrtpParams.random(),
            audio_srtp=SrtpParams.random(),
        )

    def encode(self) -> bytes:
        return tlv8_encode(
            [
                (SE_SESSION_ID, self.session_id),
                (SE_ADDRESS, self.controller.items()),
                (SE_VIDEO_SRTP, self.video_srtp.items()),
                (SE_AUDIO_SRTP, self.audio_srtp.items()),
            ]
        )

    def b64(self) -> str:
        return b64(self.encode())


@dataclass(frozen=True)
class SetupEndpointsResponse:
    """What the accessory answers: its own address/ports, its keys and SSRCs."""

    session_id: bytes
    status: int
    accessory: Endpoint | None
    video_srtp: SrtpParams | None
    audio_srtp: SrtpParams | None
    video_ssrc: int | None
    audio_ssrc: int | None

    @classmethod
    def parse(cls, raw: bytes | str) -> SetupEndpointsResponse:
        t = tlv8_decode(raw)

        def opt(tag: int, conv: Callable[[bytes], Any]) -> Any:
            v = tlv_first(t, tag)
            return conv(v) if v is not None else None

        return cls(
            session_id=tlv_req(t, SE_SESSION_ID, "session id"),
            status=le_int(tlv_req(t, SE_STATUS, "status")),
            accessory=opt(SE_ADDRESS, Endpoint.parse),
            video_srtp=opt(SE_VIDEO_SRTP, SrtpParams.parse),
            audio_srtp=opt(SE_AUDIO_SRTP, SrtpParams.parse),
            video_ssrc=opt(SE_VIDEO_SSRC, le_int),
            audio_ssrc=opt(SE_AUDIO_SSRC, le_int),
        )


@dataclass(frozen=True)
class AudioSelection:
    """Selected audio parameters. Defaults are what iOS asks of a camera that offers Opus."""

    codec: str = "opus"
    channels: int = 1
    variable_bitrate: bool = True
    sample_rate_khz: int = 16
    packet_time_ms: int = 20
    payload_type: int = 110
    ssrc: int = 0x0A0B0C0D
    max_bitrate_kbps: int = 24
    rtcp_interval: float = 5.0
    comfort_noise_payload_type: int = 13
    comfort_noise: bool = False

    def items(self) -> list[tuple[int, TlvValue]]:
        return [
            (A_CODEC_TYPE, AUDIO_CODECS[self.codec.lower()]),
            (
                A_CODEC_PARAMS,
                [
                    (AP_CHANNELS, self.channels),
                    (AP_BITRATE_MODE, 0 if self.variable_bitrate else 1),
                    (AP_SAMPLE_RATE, SAMPLE_RATES[self.sample_rate_khz]),
                    (AP_PACKET_TIME, self.packet_time_ms),
                ],
            ),
            (
                A_RTP_PARAMS,
                [
                    (RTP_PAYLOAD_TYPE, self.payload_type),
                    (RTP_SSRC, u32(self.ssrc)),
                    (RTP_MAX_BITRATE, u16(self.max_bitrate_kbps)),
                    (RTP_MIN_RTCP_INTERVAL, f32(self.rtcp_interval)),
                    (RTP_COMFORT_NOISE_PT, self.comfort_noise_payload_type),
                ],
            ),
            (A_COMFORT_NOISE, int(self.comfort_noise)),
        ]


@dataclass(frozen=True)
class VideoSelection:
    """Selected video parameters (start and reconfigure). Defaults resemble an iPhone on Wi-Fi."""

    width: int = 1280
    height: int = 720
    fps: int = 30
    payload_type: int = 99
    ssrc: int = 0x01020304
    max_bitrate_kbps: int = 299
    rtcp_interval: float = 0.5
    max_mtu: int | None = 1378
    profile: str = "main"
    level: str = "4.0"
    cvo: bool = False

    def items(self) -> list[tuple[int, TlvValue]]:
        params: list[tuple[int, TlvValue]] = [
            (VP_PROFILE, PROFILES[self.profile]),
            (VP_LEVEL, LEVELS[self.level]),
            (VP_PACKETIZATION, 0),  # non-interleaved, the only mode HAP has
            (VP_CVO_ENABLED, int(self.cvo)),
        ]
        rtp: list[tuple[int, TlvValue]] = [
            (RTP_PAYLOAD_TYPE, self.payload_type),
            (RTP_SSRC, u32(self.ssrc)),
            (RTP_MAX_BITRATE, u16(self.max_bitrate_kbps)),
            (RTP_MIN_RTCP_INTERVAL, f32(self.rtcp_interval)),
        ]
        if self.max_mtu is not None:
            rtp.append((RTP_MAX_MTU, u16(self.max_mtu)))
        return [
            (V_CODEC_TYPE, CODEC_H264),
            (V_CODEC_PARAMS, params),
            (
                V_ATTRIBUTES,
                [(VA_WIDTH, u16(self.width)), (VA_HEIGHT, u16(self.height)), (VA_FPS, self.fps)],
            ),
            (V_RTP_PARAMS, rtp),
        ]


def selected_stream_config(
    command: int | str,
    session_id: bytes,
    video: VideoSelection | None = None,
    audio: AudioSelection | None = None,
) -> bytes:
    """SelectedRTPStreamConfiguration: session control, then video/audio when given."""
    cmd = COMMANDS[command] if isinstance(command, str) else command
    items: list[tuple[int, TlvValue]] = [
        (SEL_SESSION_CONTROL, [(CTRL_SESSION_ID, session_id), (CTRL_COMMAND, cmd)]),
    ]
    if video is not None:
        items.append((SEL_VIDEO, video.items()))
    if audio is not None:
        items.append((SEL_AUDIO, audio.items()))
    return tlv8_encode(items)


def start_stream_config(
    session_id: bytes, video: VideoSelection | None = None, audio: AudioSelection | None = None
) -> bytes:
    """START as iOS sends it: video and audio parameters both present."""
    return selected_stream_config(
        CMD_START, session_id, video or VideoSelection(), audio or AudioSelection()
    )


def reconfigure_stream_config(session_id: bytes, video: VideoSelection) -> bytes:
    """RECONFIGURE: new video attributes/bitrate for a running session (no audio)."""
    return selected_stream_config(CMD_RECONFIGURE, session_id, video)


def stop_stream_config(session_id: bytes) -> bytes:
    """END: session control only."""
    return selected_stream_config(CMD_END, session_id)


@dataclass(frozen=True)
class SelectedStreamConfig:
    """A parsed SelectedRTPStreamConfiguration (reading back what the accessory holds)."""

    session_id: bytes
    command: int
    video: VideoSelection | None

    @classmethod
    def parse(cls, raw: bytes | str) -> SelectedStreamConfig:
        t = tlv8_decode(raw)
        ctrl = tlv8_decode(tlv_req(t, SEL_SESSION_CONTROL, "session control"))
        video = None
        if (vraw := tlv_first(t, SEL_VIDEO)) is not None:
            v = tlv8_decode(vraw)
            params = tlv8_decode(tlv_first(v, V_CODEC_PARAMS) or b"")
            attrs = tlv8_decode(tlv_req(v, V_ATTRIBUTES, "video attributes"))
            rtp = tlv8_decode(tlv_first(v, V_RTP_PARAMS) or b"")
            profile_id = le_int(tlv_first(params, VP_PROFILE) or b"\x01")
            level_id = le_int(tlv_first(params, VP_LEVEL) or b"\x02")
            rtcp = tlv_first(rtp, RTP_MIN_RTCP_INTERVAL) or f32(0)
            mtu = tlv_first(rtp, RTP_MAX_MTU)
            video = VideoSelection(
                width=le_int(tlv_req(attrs, VA_WIDTH, "width")),
                height=le_int(tlv_req(attrs, VA_HEIGHT, "height")),
                fps=le_int(tlv_req(attrs, VA_FPS, "fps")),
                payload_type=le_int(tlv_first(rtp, RTP_PAYLOAD_TYPE) or b"\x00"),
                ssrc=le_int(tlv_first(rtp, RTP_SSRC) or b"\x00"),
                max_bitrate_kbps=le_int(tlv_first(rtp, RTP_MAX_BITRATE) or b"\x00"),
                rtcp_interval=struct.unpack("<f", rtcp)[0],
                max_mtu=le_int(mtu) if mtu is not None else None,
                profile={n: k for k, n in PROFILES.items()}.get(profile_id, str(profile_id)),
                level={n: k for k, n in LEVELS.items()}.get(level_id, str(level_id)),
            )
        return cls(
            session_id=tlv_first(ctrl, CTRL_SESSION_ID) or b"",
            command=le_int(tlv_req(ctrl, CTRL_COMMAND, "command")),
            video=video,
        )


@dataclass(frozen=True)
class VideoCodecConfig:
    """One entry of SupportedVideoStreamConfiguration."""

    codec_type: int
    profiles: list[int]
    levels: list[int]
    packetization_modes: list[int]
    resolutions: list[tuple[int, int, int]]  # (width, height, fps), in the accessory's order


def parse_supported_video(raw: bytes | str) -> list[VideoCodecConfig]:
    out = []
    for cfg in tlv_all(tlv8_decode(raw), SUP_VIDEO_CODEC_CONFIG):
        t = tlv8_decode(cfg)
        params = tlv8_decode(tlv_first(t, V_CODEC_PARAMS) or b"")
        res = []
        for a in tlv_all(t, V_ATTRIBUTES):
            at = tlv8_decode(a)
            res.append(
                (
                    le_int(tlv_req(at, VA_WIDTH, "width")),
                    le_int(tlv_req(at, VA_HEIGHT, "height")),
                    le_int(tlv_req(at, VA_FPS, "fps")),
                )
            )
        out.append(
            VideoCodecConfig(
                codec_type=le_int(tlv_req(t, V_CODEC_TYPE, "codec type")),
                profiles=[le_int(v) for v in tlv_all(params, VP_PROFILE)],
                levels=[le_int(v) for v in tlv_all(params, VP_LEVEL)],
                packetization_modes=[le_int(v) for v in tlv_all(params, VP_PACKETIZATION)],
                resolutions=res,
            )
        )
    return out


@dataclass(frozen=True)
class AudioCodecConfig:
    codec_type: int
    channels: int | None
    bitrate_modes: list[int]
    sample_rates: list[int]  # HAP enum values: 0 = 8 kHz, 1 = 16 kHz, 2 = 24 kHz


@dataclass(frozen=True)
class SupportedAudio:
    codecs: list[AudioCodecConfig]
    comfort_noise: bool


def parse_supported_audio(raw: bytes | str) -> SupportedAudio:
    t = tlv8_decode(raw)
    codecs = []
    for cfg in tlv_all(t, SUP_AUDIO_CODEC_CONFIG):
        c = tlv8_decode(cfg)
        p = tlv8_decode(tlv_first(c, A_CODEC_PARAMS) or b"")
        ch = tlv_first(p, AP_CHANNELS)
        codecs.append(
            AudioCodecConfig(
                codec_type=le_int(tlv_req(c, A_CODEC_TYPE, "audio codec")),
                channels=le_int(ch) if ch is not None else None,
                bitrate_modes=[le_int(v) for v in tlv_all(p, AP_BITRATE_MODE)],
                sample_rates=[le_int(v) for v in tlv_all(p, AP_SAMPLE_RATE)],
            )
        )
    cn = tlv_first(t, SUP_AUDIO_COMFORT_NOISE)
    return SupportedAudio(codecs, bool(le_int(cn)) if cn is not None else False)


def parse_supported_rtp(raw: bytes | str) -> list[int]:
    """The SRTP crypto suites offered (0 = AES_CM_128_HMAC_SHA1_80, 2 = none)."""
    return [le_int(v) for v in tlv_all(tlv8_decode(raw), SUP_RTP_CRYPTO_SUITE)]


def parse_streaming_status(raw: bytes | str) -> int:
    return le_int(tlv_req(tlv8_decode(raw), STREAMING_STATUS, "streaming status"))


# --------------------------------------------------------------------------------------------
# The camera conversation, end to end
# --------------------------------------------------------------------------------------------


async def setup_endpoints(
    pairing: IpPairing,
    sm: StreamManagement,
    request: SetupEndpointsRequest,
    *,
    require_write_response: bool = False,
) -> SetupEndpointsResponse:
    """Write SetupEndpoints as iOS does ("r": true) and parse the accessory's answer, taken from
    the write response or, when the accessory gave none, from a read of the characteristic."""
    value = await write_with_response(pairing, sm.setup_endpoints.key, request.b64())
    if value is None:
        if require_write_response:
            raise AssertionError("SetupEndpoints write returned no value in its write response")
        value = await read_value(pairing, sm.setup_endpoints.key)
    return SetupEndpointsResponse.parse(value)


async def select_stream(pairing: IpPairing, sm: StreamManagement, config: bytes) -> Any:
    """Write SelectedRTPStreamConfiguration (iOS asks for a write response here too); returns the
    response value, normally None."""
    return await write_with_response(pairing, sm.selected_config.key, b64(config))
