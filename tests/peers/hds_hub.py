"""A test home hub for HomeKit Secure Video: aiohomekit for pairing, our own HDS and TLVs.

No packaged controller speaks HDS, so the HKSV tests play an Apple home hub with this: HAP
(pair, /accessories, reads, writes, write-responses, timed writes, events) goes through
aiohomekit as tests/peers/homekit.py does (loopback, no mDNS); HDS is tests/peers/hds_wire.py
and hds_stream.py, the recording TLVs recording_tlv_peer.py - none of it shares code with the
product's accessories/ (a shared codec would hide a shared bug).

HDS keys come from the pair-verify X25519 shared secret of the HAP connection that wrote
SetupDataStreamTransport, which aiohomekit drops: pair_verify_secret.py keeps it.

Usage (end-to-end HKSV tests)::

    async with TestHub.start(bridge) as hub:            # pairs; unpairs on exit
        cam = await hub.camera("Gate")                  # by name or aid
        sup = await cam.supported()                     # 205/206/207 parsed from raw bytes
        await cam.select_recording(resolution=(1280, 720, 24))   # writes 209
        await cam.set_mode(homekit_active=True, recording_active=True)  # timed where "tw"
        await cam.set_mode(audio_active=True, timed=False)      # force a plain write
        await cam.watch_motion()                        # MotionDetected + StatusActive events
        ds = await cam.data_stream()                    # 131 write-response, TCP, keys, hello
        rec = await ds.record(stream_id=1, until_end=True, timeout_s=60)
        assert rec.problems == [] and rec.end == "endOfStream"
        t_motion = await cam.wait_motion(True)          # time.monotonic() of the event
        # rec.init / rec.media: Fragment(kind, sequence, data, chunks, started_at, completed_at)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Protocol

from aiohomekit.controller.ip import IpPairing

from tests.peers import hap_raw
from tests.peers import recording_tlv_peer as rt
from tests.peers.hds_stream import DataStream
from tests.peers.hds_wire import HdsKeys
from tests.peers.homekit import (
    CharRef,
    EventLog,
    HapStatusError,
    Paired,
    find_aid,
    hap_uuid,
    iter_characteristics,
    pair,
)
from tests.peers.pair_verify_secret import capture_pair_verify_secrets, pair_verify_secret

# --------------------------------------------------------------------------------------------
# The hub
# --------------------------------------------------------------------------------------------


class HasHap(Protocol):
    hap_port: int
    setup_code: str


class HapWriteError(AssertionError):
    def __init__(self, what: str, reply: hap_raw.Reply) -> None:
        super().__init__(f"{what}: HTTP {reply.code} {reply.body[:300]!r}")
        self.reply = reply
        self.statuses = reply.statuses() if reply.body else {}


class TestHub:
    """A paired home hub (see the module docstring). `async with TestHub.start(bridge)`."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        port: int,
        setup_code: str,
        *,
        address: str = "127.0.0.1",
        alias: str = "hksv-test-hub",
        timeout_s: float = 30.0,
    ) -> None:
        self.port, self.setup_code, self.address = port, setup_code, address
        self.alias, self.timeout_s = alias, timeout_s
        self.accessories: list[dict[str, Any]] = []
        self.streams: list[DataStream] = []
        self._paired: Paired | None = None
        self._events: EventLog | None = None

    @classmethod
    def start(cls, bridge: HasHap, **kwargs: Any) -> TestHub:
        return cls(bridge.hap_port, bridge.setup_code, **kwargs)

    async def __aenter__(self) -> TestHub:
        capture_pair_verify_secrets()
        self._paired = await pair(
            self.port,
            self.setup_code,
            address=self.address,
            alias=self.alias,
            timeout_s=self.timeout_s,
        )
        self._events = EventLog(self._paired.pairing)
        await self.refresh()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, *, unpair: bool = True) -> None:
        """Close data streams, unsubscribe, unpair (so the bridge can be paired again) and
        close the HAP session; bounded, and quiet if the bridge is already gone."""
        for ds in self.streams:
            await ds.close()
        paired, self._paired = self._paired, None
        if paired is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                if self._events is not None:
                    await self._events.close()
                if unpair:
                    await paired.pairing.remove_pairing(paired.controller_id)
        await paired.close()

    @property
    def paired(self) -> Paired:
        if self._paired is None:
            raise RuntimeError("the hub is not paired (use `async with`)")
        return self._paired

    @property
    def pairing(self) -> IpPairing:
        return self.paired.pairing

    @property
    def events(self) -> EventLog:
        assert self._events is not None
        return self._events

    def shared_secret(self) -> bytes:
        """The pair-verify secret of the HAP connection in use now."""
        return pair_verify_secret(self.pairing.connection)

    async def refresh(self) -> list[dict[str, Any]]:
        self.accessories = await self.pairing.list_accessories_and_characteristics()
        return self.accessories

    async def camera(self, which: str | int) -> HubCamera:
        aid = which if isinstance(which, int) else find_aid(self.accessories, which)
        return HubCamera(self, RecordingChars.find(self.accessories, aid))

    async def put(
        self, rows: Sequence[Mapping[str, Any]], *, timed: bool = False, ttl_ms: int = 5000
    ) -> dict[tuple[int, int], Any]:
        """PUT /characteristics (after PUT /prepare if `timed`); raises HapWriteError unless
        every row succeeded. Returns write-response values by (aid, iid)."""
        body: dict[str, Any] = {"characteristics": list(rows)}
        if timed:
            pid = secrets.randbelow(2**32) + 1
            prep = json.dumps({"ttl": ttl_ms, "pid": pid}).encode()
            reply = await hap_raw.request(self.pairing, "PUT", "/prepare", prep)
            if reply.code != 200 or reply.json() != {"status": 0}:
                raise HapWriteError("PUT /prepare", reply)
            body["pid"] = pid
        reply = await hap_raw.put_json(self.pairing, body)
        if reply.code == 204:
            return {}
        if reply.code != 207 or any(s != 0 for s in reply.statuses().values()):
            raise HapWriteError("PUT /characteristics", reply)
        rows_back = reply.json().get("characteristics", [])
        return {(r["aid"], r["iid"]): r.get("value") for r in rows_back if "value" in r}


# --------------------------------------------------------------------------------------------
# One camera's HKSV characteristics
# --------------------------------------------------------------------------------------------

# service -> {field: characteristic}; short UUIDs, full form 0000XXXX-0000-1000-8000-0026BB765291
_LAYOUT: dict[str, dict[str, str]] = {
    "204": {
        "recording_active": "B0",
        "supported_recording": "205",
        "supported_video": "206",
        "supported_audio": "207",
        "selected": "209",
        "audio_active": "226",
    },
    "21A": {"homekit_active": "21B", "event_snapshots": "223", "periodic_snapshots": "225"},
    "129": {"supported_transport": "130", "setup_transport": "131", "version": "37"},
    "85": {"motion_detected": "22", "status_active": "75"},
}
_OPTIONAL = {"audio_active", "status_active"}


@dataclass(frozen=True)
class RecordingChars:
    aid: int
    recording_active: CharRef
    supported_recording: CharRef
    supported_video: CharRef
    supported_audio: CharRef
    selected: CharRef
    audio_active: CharRef | None
    homekit_active: CharRef
    event_snapshots: CharRef
    periodic_snapshots: CharRef
    supported_transport: CharRef
    setup_transport: CharRef
    version: CharRef
    motion_detected: CharRef
    status_active: CharRef | None

    @classmethod
    def find(cls, accessories: Sequence[dict[str, Any]], aid: int) -> RecordingChars:
        chars = [c for c in iter_characteristics(accessories) if c.aid == aid]
        found: dict[str, CharRef | None] = {}
        for svc, fields in _LAYOUT.items():
            in_svc = [c for c in chars if c.service_type == hap_uuid(svc)]
            for name, ctype in fields.items():
                match = [c for c in in_svc if c.type == hap_uuid(ctype)]
                if not match and name not in _OPTIONAL:
                    have = sorted({c.service_type[:8] for c in chars})
                    raise LookupError(f"aid {aid}: no {ctype} in service {svc} (services {have})")
                found[name] = match[0] if match else None
        return cls(aid=aid, **found)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Supported:
    recording: rt.SupportedRecording
    video: list[rt.VideoRecordingCodec]
    audio: list[rt.AudioRecordingCodec]
    transports: list[int]


@dataclass(frozen=True)
class DataStreamOffer:
    """The accessory's answer to SetupDataStreamTransport, with what the hub needs for keys."""

    setup: rt.DataStreamSetup
    controller_salt: bytes
    shared_secret: bytes

    @property
    def keys(self) -> HdsKeys:
        if self.setup.accessory_salt is None:
            raise ValueError(f"no accessory salt in {self.setup}")
        return HdsKeys.derive(self.shared_secret, self.controller_salt, self.setup.accessory_salt)


def _timed(timed: bool | None, refs: Sequence[CharRef]) -> bool:
    return any("tw" in ref.perms for ref in refs) if timed is None else timed


def _flag(ref: CharRef, on: bool) -> bool | int:
    return bool(on) if ref.format == "bool" else int(bool(on))


class HubCamera:
    """The HAP side of HKSV for one camera accessory."""

    def __init__(self, hub: TestHub, chars: RecordingChars) -> None:
        self.hub, self.chars, self.aid = hub, chars, chars.aid

    async def read_raw(self, ref: CharRef) -> bytes:
        """A TLV8 characteristic's bytes (HAP JSON carries them base64); HapStatusError if the
        accessory refused the read."""
        key = ref.key
        row = (await self.hub.pairing.get_characteristics([key]))[key]
        if row.get("status", 0) != 0:
            raise HapStatusError(key, row["status"], row)
        return base64.b64decode(row.get("value") or "")

    async def supported(self) -> Supported:
        c = self.chars
        return Supported(
            recording=rt.SupportedRecording.parse(await self.read_raw(c.supported_recording)),
            video=rt.parse_supported_video(await self.read_raw(c.supported_video)),
            audio=rt.parse_supported_audio(await self.read_raw(c.supported_audio)),
            transports=rt.parse_supported_transports(await self.read_raw(c.supported_transport)),
        )

    async def read_selected(self) -> rt.RecordingSelection:
        return rt.RecordingSelection.parse(await self.read_raw(self.chars.selected))

    async def select_recording(
        self,
        selection: rt.RecordingSelection | None = None,
        *,
        resolution: tuple[int, int, int] | None = None,
        timed: bool = False,
        **changes: Any,
    ) -> rt.RecordingSelection:
        """Write SelectedCameraRecordingConfiguration: `selection`, or what a hub would pick
        from the supported configurations (`resolution`), with `changes` applied."""
        if selection is None:
            s = await self.supported()
            selection = rt.RecordingSelection.from_supported(
                s.recording, s.video, s.audio, resolution=resolution
            )
        selection = replace(selection, **changes)
        await self.write_raw(self.chars.selected, selection.encode(), timed=timed)
        return selection

    async def write_raw(self, ref: CharRef, raw: bytes, *, timed: bool | None = None) -> None:
        row = {"aid": ref.aid, "iid": ref.iid, "value": rt.b64(raw)}
        await self.hub.put([row], timed=_timed(timed, [ref]))

    async def set_mode(
        self,
        *,
        homekit_active: bool | None = None,
        event_snapshots: bool | None = None,
        periodic_snapshots: bool | None = None,
        recording_active: bool | None = None,
        audio_active: bool | None = None,
        timed: bool | None = None,
    ) -> None:
        """Write the given operating-mode / Active flags in one PUT. `timed`: None = as a hub
        does (a timed write when one of them has the "tw" permission), True/False forces."""
        c = self.chars
        wanted = [
            (c.homekit_active, homekit_active), (c.event_snapshots, event_snapshots),
            (c.periodic_snapshots, periodic_snapshots), (c.recording_active, recording_active),
            (c.audio_active, audio_active),
        ]  # fmt: skip
        if audio_active is not None and c.audio_active is None:
            raise LookupError("this camera has no RecordingAudioActive")
        refs = [(ref, on) for ref, on in wanted if ref is not None and on is not None]
        rows = [{"aid": ref.aid, "iid": ref.iid, "value": _flag(ref, on)} for ref, on in refs]
        if rows:
            await self.hub.put(rows, timed=_timed(timed, [ref for ref, _ in refs]))

    async def setup_data_stream(
        self, *, controller_salt: bytes | None = None, request: bytes | None = None
    ) -> DataStreamOffer:
        """Write SetupDataStreamTransport with "r": true (`request` overrides the TLV, for
        hostile tests) and parse the write response."""
        salt = controller_salt if controller_salt is not None else rt.new_salt()
        ref = self.chars.setup_transport
        raw = request if request is not None else rt.setup_data_stream_request(salt)
        row = {"aid": ref.aid, "iid": ref.iid, "value": rt.b64(raw), "r": True}
        value = (await self.hub.put([row])).get(ref.key)
        if value is None:
            raise AssertionError("SetupDataStreamTransport gave no write-response value")
        setup = rt.DataStreamSetup.parse(base64.b64decode(value))
        return DataStreamOffer(setup, salt, self.hub.shared_secret())

    async def data_stream(
        self, *, hello: bool = True, timeout_s: float = 10.0, auto_ack: bool = True
    ) -> DataStream:
        """Set up a data stream, connect to it on the address the hub reached us on, say
        hello. The hub closes it on exit."""
        offer = await self.setup_data_stream()
        if offer.setup.status != rt.DS_SUCCESS or offer.setup.tcp_port is None:
            raise AssertionError(f"SetupDataStreamTransport refused: {offer.setup}")
        ds = await DataStream.connect(
            self.hub.address,
            offer.setup.tcp_port,
            offer.keys,
            timeout_s=timeout_s,
            auto_ack=auto_ack,
        )
        self.hub.streams.append(ds)
        if hello:
            await ds.hello(timeout_s=timeout_s)
        return ds

    # ---- motion ----

    async def watch_motion(self) -> None:
        keys = [self.chars.motion_detected.key]
        if self.chars.status_active is not None:
            keys.append(self.chars.status_active.key)
        await self.hub.events.subscribe(keys)

    def motion_events(self) -> list[tuple[float, Any]]:
        """(time.monotonic(), value) of every MotionDetected event so far."""
        key = self.chars.motion_detected.key
        return [(t, v) for t, k, v in self.hub.events.events if k == key]

    async def wait_motion(
        self, value: bool = True, *, timeout_s: float = 30.0, after: int = 0
    ) -> float:
        """Time of the first MotionDetected event with `value` among events[after:]."""
        key = self.chars.motion_detected.key
        await self.hub.events.wait_for(
            key, lambda v: bool(v) == value, timeout_s=timeout_s, after=after
        )
        for t, k, v in self.hub.events.events[after:]:
            if k == key and bool(v) == value:
                return t
        raise AssertionError("unreachable: wait_for found the event")
