"""HAP's rules for characteristic access, against `obscura run` through a paired aiohomekit.

Every characteristic the bridge and its camera publish is taken from /accessories: each one
without `pw` must refuse a write (-70404) and keep its value, each one without `ev` must
refuse a subscription (-70406), the write-only one must refuse a read (-70405), unknown ids
get -70409, values that do not fit get -70410, malformed requests 400/404/405, and none of it
may log a traceback. The parsing rules are also checked without a bridge.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohomekit.uuid import normalize_uuid
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA512
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhap.loader import get_loader

from accessories.hap_requests import (
    BadRequest,
    InvalidValue,
    check_value,
    parse_read_query,
    parse_write_request,
)
from tests.peers.bridge_process import BridgeProcess, demo_bridge
from tests.peers.camera_tlv import (
    SETUP_SUCCESS,
    SetupEndpointsResponse,
    VideoSelection,
    selected_stream_config,
    tlv8_decode,
    tlv8_encode,
    tlv_first,
)
from tests.peers.camera_tlv import SetupEndpointsRequest as Setup
from tests.peers.hap_raw import Reply, put_json, read, request
from tests.peers.homekit import Paired, find_aid, find_characteristic, pair, stream_management

READ_ONLY, WRITE_ONLY, NO_EVENTS, NO_SUCH, INVALID = -70404, -70405, -70406, -70409, -70410
COMMUNICATION_FAILURE = -70402
INTS = {"uint8": 255, "uint16": 65535, "uint32": 2**32 - 1, "uint64": 2**64 - 1, "int": 2**31 - 1}

# ---- rules, without a bridge ----


@pytest.mark.parametrize(
    "query",
    [
        "", "id", "id=", "id=garbage", "id=a.b", "id=1", "id=1.", "id=.2", "id=1.2.3",
        "id=1.2,", "id=,1.2", "id=1.2,,1.3", "id=-1.2", "id=1.-2", "id=0.1", "id=1.0",
        "id=+1.2", "id= 1.2", "id=1.2%20", "id=18446744073709551616.1",
        "id=1." + "9" * 5000, "id=1.2&id=1.3", "id=\u0661.\u0662", "meta=1", "x=" + "&x=" * 40,
    ],
)  # fmt: skip
def test_malformed_read_ids_are_bad_requests(query: str) -> None:
    with pytest.raises(BadRequest):
        parse_read_query(query)


def test_read_ids() -> None:
    assert parse_read_query("id=1.2,3.4&meta=1&perms=1&type=1&ev=1") == [(1, 2), (3, 4)]
    assert parse_read_query("id=18446744073709551615.1") == [(2**64 - 1, 1)]


@pytest.mark.parametrize(
    "body",
    [
        None, [], "x", 1, {}, {"characteristics": None}, {"characteristics": {}},
        {"characteristics": [1]}, {"characteristics": [{"iid": 1, "value": 1}]},
        {"characteristics": [{"aid": 1, "value": 1}]},
        {"characteristics": [{"aid": "1", "iid": 2, "value": 1}]},
        {"characteristics": [{"aid": 1.0, "iid": 2, "value": 1}]},
        {"characteristics": [{"aid": True, "iid": 2, "value": 1}]},
        {"characteristics": [{"aid": 0, "iid": 2, "value": 1}]},
        {"characteristics": [{"aid": 1, "iid": -2, "value": 1}]},
        {"characteristics": [{"aid": 1, "iid": 2**64, "value": 1}]},
        {"characteristics": [], "pid": "7"},
        {"characteristics": [], "pid": -1},
    ],
)  # fmt: skip
def test_malformed_write_bodies_are_bad_requests(body: Any) -> None:
    with pytest.raises(BadRequest):
        parse_write_request(body)


def _char(name: str) -> Any:
    return get_loader().get_char(name)


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("Mute", [True, False, 0, 1], [None, "true", 2, -1, 0.5, [], {}]),
        ("Volume", [0, 55, 100], [101, -1, 5.5, True, "50", None]),  # uint8, 0..100
        ("Active", [0, 1], [2, 255, True, "1"]),  # valid values 0/1
        ("Name", ["x", "é" * 64, ""], [True, 1, None, "x" * 65, ["x"]]),  # maxLen 64
        ("SetupEndpoints", ["", "AQIDBA=="], [True, 1, "not base64!", "AQI"]),
        (
            "CurrentTemperature",
            [-10.5, 0, 1000],
            [float("nan"), float("inf"), "1", False, 1001, -300],
        ),
        ("ColorTemperature", [140, 500], [139, 501, 2**40]),  # uint32 with min/max
    ],
)
def test_values_must_fit_the_format(name: str, good: list[Any], bad: list[Any]) -> None:
    char = _char(name)
    for value in good:
        check_value(char, value)
    for value in bad:
        with pytest.raises(InvalidValue):
            check_value(char, value)


# ---- against the bridge ----


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    with demo_bridge(tmp_path_factory.mktemp("hap-permissions")) as process:
        yield process


@pytest.fixture
async def controller(bridge: BridgeProcess) -> AsyncIterator[Paired]:
    paired = await pair(bridge.hap_port, bridge.setup_code)
    yield paired
    await paired.unpair()


def characteristics(accessories: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every characteristic with its aid, as /accessories lists it."""
    return [
        {**char, "aid": acc["aid"]}
        for acc in accessories
        for svc in acc["services"]
        for char in svc["characteristics"]
    ]


def bridge_name(accessories: list[dict[str, Any]]) -> tuple[int, int]:
    return find_characteristic(accessories, "NAME", service_type="ACCESSORY_INFORMATION", aid=1).key


def another_value(char: dict[str, Any]) -> Any:
    """A value of the right type and range, different from the current one: only the
    permission can be the reason for a refusal."""
    fmt, current = char["format"], char.get("value")
    if fmt == "bool":
        return not current
    if fmt in INTS:
        low, high = char.get("minValue", 0), char.get("maxValue", INTS[fmt])
        candidates = char.get("valid-values") or [low, high, (low + high) // 2]
        return next(v for v in candidates if v != current)
    if fmt == "float":
        return char.get("minValue", 0.0) if current != char.get("minValue", 0.0) else 1.0
    if fmt == "string":
        return "pwned" if current != "pwned" else "owned"
    if fmt in ("tlv8", "data"):
        return base64.b64encode(b"\x01\x01\x00").decode()
    raise AssertionError(f"unexpected format {fmt}")


async def values(paired: Paired, keys: list[tuple[int, int]]) -> dict[tuple[int, int], Any]:
    reply = await read(paired.pairing, *keys)
    assert reply.code in (200, 207), reply
    rows = reply.json()["characteristics"]
    return {(row["aid"], row["iid"]): row.get("value") for row in rows}


async def test_every_read_only_characteristic_refuses_writes(controller: Paired) -> None:
    accessories = await controller.pairing.list_accessories_and_characteristics()
    chars = characteristics(accessories)
    read_only = [c for c in chars if "pw" not in c["perms"]]
    assert len({c["aid"] for c in read_only}) == 2  # the bridge and the camera
    types = {normalize_uuid(c["type"]) for c in read_only}
    # Name, Manufacturer, MotionDetected, StatusActive, the supported configurations,
    # StreamingStatus: what the hostile run changed.
    for wanted in ("23", "20", "22", "75", "114", "115", "116", "120"):
        assert normalize_uuid(wanted) in types, wanted
    keys = [(c["aid"], c["iid"]) for c in read_only if "pr" in c["perms"]]
    before = await values(controller, keys)

    for char in read_only:  # one at a time: 207 with -70404 for that id
        key = (char["aid"], char["iid"])
        body = {"characteristics": [{"aid": key[0], "iid": key[1], "value": another_value(char)}]}
        reply = await put_json(controller.pairing, body)
        assert (reply.code, reply.statuses()) == (207, {key: READ_ONLY}), (char, reply)

    # All at once, with one legitimate write among them: each id answers for itself.
    stream = stream_management(accessories, find_aid(accessories, "Gate"))[0]
    assert stream.active is not None
    batch = [{"aid": c["aid"], "iid": c["iid"], "value": another_value(c)} for c in read_only] + [
        {"aid": stream.active.aid, "iid": stream.active.iid, "value": 1}
    ]
    reply = await put_json(controller.pairing, {"characteristics": batch})
    assert reply.code == 207
    statuses = reply.statuses()
    assert statuses.pop(stream.active.key) == 0
    assert set(statuses.values()) == {READ_ONLY} and len(statuses) == len(read_only)

    assert await values(controller, keys) == before  # nothing changed


async def test_subscriptions_and_reads_follow_permissions(controller: Paired) -> None:
    chars = characteristics(await controller.pairing.list_accessories_and_characteristics())
    without_ev = [(c["aid"], c["iid"]) for c in chars if "ev" not in c["perms"]]
    with_ev = [(c["aid"], c["iid"]) for c in chars if "ev" in c["perms"]]
    rows = [{"aid": a, "iid": i, "ev": True} for a, i in without_ev + with_ev]
    reply = await put_json(controller.pairing, {"characteristics": rows})
    assert reply.code == 207
    statuses = reply.statuses()
    assert {statuses[k] for k in without_ev} == {NO_EVENTS}
    assert {statuses[k] for k in with_ev} == {0}
    # All allowed: 204, as HAP-python answers a successful write.
    rows = [{"aid": a, "iid": i, "ev": False} for a, i in with_ev]
    assert (await put_json(controller.pairing, {"characteristics": rows})).code == 204

    write_only = [(c["aid"], c["iid"]) for c in chars if "pr" not in c["perms"]]
    assert write_only  # Identify
    reply = await read(controller.pairing, *write_only)
    assert reply.code == 207 and set(reply.statuses().values()) == {WRITE_ONLY}
    # HKSV's selected recording configuration cannot be read before a hub selected one.
    selected_uuid = normalize_uuid("209")
    unselected = [(c["aid"], c["iid"]) for c in chars if normalize_uuid(c["type"]) == selected_uuid]
    assert unselected
    reply = await read(controller.pairing, *unselected)
    assert reply.code == 207 and set(reply.statuses().values()) == {COMMUNICATION_FAILURE}
    readable = [(c["aid"], c["iid"]) for c in chars if "pr" in c["perms"]]
    reply = await read(controller.pairing, *[k for k in readable if k not in unselected])
    assert reply.code == 200, reply  # all fine: no status in the rows
    assert all("status" not in row for row in reply.json()["characteristics"])


async def test_unknown_ids_get_resource_does_not_exist(controller: Paired) -> None:
    accessories = await controller.pairing.list_accessories_and_characteristics()
    gate = find_aid(accessories, "Gate")
    service_iid = accessories[0]["services"][0]["iid"]  # a service's iid, not a characteristic
    name = bridge_name(accessories)
    unknown = [(1, 9999), (987654, 2), (gate, 2**63), (1, service_iid), (2**64 - 1, 2**64 - 1)]
    reply = await read(controller.pairing, name, *unknown)
    assert reply.code == 207
    assert reply.statuses() == {name: 0, **dict.fromkeys(unknown, NO_SUCH)}

    rows = [{"aid": a, "iid": i, "value": True} for a, i in unknown]
    rows += [{"aid": a, "iid": i, "ev": True} for a, i in unknown]
    reply = await put_json(controller.pairing, {"characteristics": rows})
    assert reply.code == 207 and set(reply.statuses().values()) == {NO_SUCH}
    assert len(reply.json()["characteristics"]) == len(rows)


async def test_values_that_do_not_fit_are_refused_and_change_nothing(controller: Paired) -> None:
    accessories = await controller.pairing.list_accessories_and_characteristics()
    stream = stream_management(accessories, find_aid(accessories, "Gate"))[0]
    assert stream.active is not None
    active, setup = stream.active.key, stream.setup_endpoints.key
    selected = stream.selected_config.key
    before = await values(controller, [active, setup, selected])
    bad: list[tuple[tuple[int, int], Any]] = [
        (active, 2), (active, "1"), (active, 1.5), (active, -1), (active, None), (active, [1]),
        (setup, True), (setup, 12), (setup, "not base64!"), (setup, {"a": 1}),
        # Base64 of a malformed TLV: refused by the setter, and not kept (HAP-python stores a
        # written value before it calls the setter).
        (setup, "AQID"), (selected, "AQID"), (selected, "AQEBAgEA"),
    ]  # fmt: skip
    for key, value in bad:
        reply = await put_json(
            controller.pairing,
            {"characteristics": [{"aid": key[0], "iid": key[1], "value": value, "r": True}]},
        )
        assert (reply.code, reply.statuses()) == (207, {key: INVALID}), (value, reply)
    for row in (
        {"aid": active[0], "iid": active[1]},  # neither value nor ev
        {"aid": active[0], "iid": active[1], "ev": "yes"},
        {"aid": active[0], "iid": active[1], "value": 1, "r": "yes"},
    ):
        reply = await put_json(controller.pairing, {"characteristics": [row]})
        assert (reply.code, reply.statuses()) == (207, {active: INVALID}), (row, reply)
    assert await values(controller, [active, setup, selected]) == before


async def test_write_responses_and_timed_writes_still_work(controller: Paired) -> None:
    accessories = await controller.pairing.list_accessories_and_characteristics()
    stream = stream_management(accessories, find_aid(accessories, "Gate"))[1]
    assert stream.active is not None
    key = stream.setup_endpoints.key
    setup = Setup.new(50000, 50002, address="127.0.0.1")
    row = {"aid": key[0], "iid": key[1], "value": setup.b64(), "r": True}
    reply = await put_json(controller.pairing, {"characteristics": [row]})
    assert reply.code == 207 and reply.statuses() == {key: 0}
    answer = SetupEndpointsResponse.parse(reply.json()["characteristics"][0]["value"])
    assert answer.status == SETUP_SUCCESS and answer.session_id == setup.session_id
    end = selected_stream_config("end", setup.session_id)
    await put_json(
        controller.pairing,
        {"characteristics": [{"aid": key[0], "iid": stream.selected_config.iid,
                              "value": base64.b64encode(end).decode()}]},
    )  # fmt: skip

    active = stream.active.key
    write = {"aid": active[0], "iid": active[1], "value": 1}

    async def prepare(pid: int, ttl: int) -> Reply:
        body = json.dumps({"ttl": ttl, "pid": pid}).encode()
        return await request(controller.pairing, "PUT", "/prepare", body)

    assert (await prepare(4242, 5000)).json() == {"status": 0}
    timed = {"characteristics": [write], "pid": 4242}
    assert (await put_json(controller.pairing, timed)).code == 204
    again = await put_json(controller.pairing, timed)  # a pid is good for one write
    assert again.code == 207 and again.statuses() == {active: INVALID}
    unknown = await put_json(controller.pairing, {"characteristics": [write], "pid": 77})
    assert unknown.statuses() == {active: INVALID}
    assert (await prepare(5151, 1)).json() == {"status": 0}
    await asyncio.sleep(0.05)
    expired = await put_json(controller.pairing, {"characteristics": [write], "pid": 5151})
    assert expired.statuses() == {active: INVALID}
    for body in ({"ttl": "10", "pid": 1}, {"ttl": 10, "pid": "1"}, {"ttl": -5, "pid": 1}, {}):
        reply = await request(controller.pairing, "PUT", "/prepare", json.dumps(body).encode())
        assert (reply.code, reply.json()) == (200, {"status": INVALID}), body


@pytest.mark.parametrize("address", ["255.255.255.255", "224.0.0.251", "0.0.0.0", "169.254.1.1"])
async def test_setup_endpoints_refuses_addresses_that_are_not_one_host(
    controller: Paired, address: str
) -> None:
    accessories = await controller.pairing.list_accessories_and_characteristics()
    stream = stream_management(accessories, find_aid(accessories, "Gate"))[0]
    key, selected = stream.setup_endpoints.key, stream.selected_config.key
    setup = Setup.new(50000, 50002, address=address)
    row = {"aid": key[0], "iid": key[1], "value": setup.b64(), "r": True}
    reply = await put_json(controller.pairing, {"characteristics": [row]})
    assert (reply.code, reply.statuses()) == (207, {key: INVALID})
    # No session was reserved: starting it fails as for any unknown session.
    start = selected_stream_config("start", setup.session_id, VideoSelection(320, 240, 5))
    row = {"aid": selected[0], "iid": selected[1], "value": base64.b64encode(start).decode()}
    reply = await put_json(controller.pairing, {"characteristics": [row]})
    assert (reply.code, reply.statuses()) == (207, {selected: INVALID})
    # Reading SetupEndpoints back shows no answer for this session either.
    items = tlv8_decode((await read(controller.pairing, key)).json()["characteristics"][0]["value"])
    assert tlv_first(items, 1) != setup.session_id


MALFORMED: list[tuple[str, str, bytes | None, int]] = [
    ("GET", "/characteristics?id=garbage", None, 400),
    ("GET", "/characteristics?id=", None, 400),
    ("GET", "/characteristics?id=a.b", None, 400),
    ("GET", "/characteristics?id=1", None, 400),
    ("GET", "/characteristics?id=1.2.3", None, 400),
    ("GET", "/characteristics?id=-1.2", None, 400),
    ("GET", "/characteristics?id=1.99999999999999999999999999", None, 400),
    ("GET", "/characteristics", None, 400),
    ("PUT", "/characteristics", b"", 400),
    ("PUT", "/characteristics", b"not json", 400),
    ("PUT", "/characteristics", b"[1, 2]", 400),
    ("PUT", "/characteristics", b'{"characteristics": {"aid": 1}}', 400),
    ("PUT", "/characteristics", b'{"characteristics": [{"aid": 1}]}', 400),
    ("PUT", "/characteristics", b'{"characteristics": [{"aid": "1", "iid": 2}]}', 400),
    ("PUT", "/characteristics", b"\xff\xfe\x00", 400),
    ("PUT", "/characteristics", b'{"characteristics": [{"aid": 1e400, "iid": 2}]}', 400),
    ("PUT", "/prepare", b"{", 400),
    ("POST", "/resource", b"{", 400),
    ("POST", "/resource", b'{"aid": 1, "image-width": "640", "image-height": 480}', 400),
    ("POST", "/resource", b'{"aid": 1, "image-width": 0, "image-height": 480}', 400),
    ("POST", "/resource", b'{"aid": [2], "image-width": 640, "image-height": 480}', 400),
    ("POST", "/resource", b'{"aid": {}, "image-width": 640, "image-height": 480}', 400),
    ("POST", "/resource", b'{"aid": 1, "image-width": 640, "image-height": 480}', 404),
    ("POST", "/resource", b'{"aid": 5, "image-width": 640, "image-height": 480}', 404),
    ("GET", "/nowhere", None, 404),
    ("GET", "/characteristics/../accessories", None, 404),
    ("DELETE", "/characteristics", None, 405),
    ("POST", "/characteristics", b"{}", 405),
    ("GET", "/pairings", None, 405),
    ("POST", "/pairings", b"", 400),
    ("POST", "/pairings", b"\x00\x01\x09", 400),
    ("POST", "/pairings", b"\x00\x01\x04\x06\x01\x01", 400),  # remove without identifier
    ("POST", "/pairings", b"\x00\x01\x04\x01\x03abc", 400),  # identifier not a UUID
    ("POST", "/pair-verify", b"\x06\x01\x01", 400),  # M1 without a public key
    ("POST", "/pair-verify", b"\x06\x01\x01\x03\x03abc", 400),
    ("POST", "/pair-verify", b"\x06\x01\x07", 400),
    ("POST", "/pair-verify", b"\x06\x05", 400),  # truncated
]


async def test_malformed_requests_answer_4xx_and_keep_the_session(controller: Paired) -> None:
    name = bridge_name(await controller.pairing.list_accessories_and_characteristics())
    transport = controller.pairing.connection.transport
    for method, target, body, code in MALFORMED:
        reply = await request(controller.pairing, method, target, body)
        assert reply.code == code, (method, target, body, reply)
        if code == 400:
            assert reply.json() == {"status": INVALID}, (method, target, body, reply)
        assert controller.pairing.connection.transport is transport  # the session stays open
        assert (await read(controller.pairing, name)).code == 200


def _pair_verify(port: int, inner: bytes) -> tuple[int, bytes]:
    """Pair-verify M1 as any LAN peer can send it, then an M3 whose encrypted part is `inner`
    (our own few lines of X25519 + HKDF + ChaCha20-Poly1305, as the spec describes them)."""
    key = X25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Content-Type": "application/pairing+tlv8"}
    try:
        conn.request("POST", "/pair-verify", tlv8_encode([(6, 1), (3, public)]), headers)
        m2 = dict(tlv8_decode(conn.getresponse().read()))
        shared = key.exchange(X25519PublicKey.from_public_bytes(m2[3]))
        session_key = HKDF(
            SHA512(), 32, b"Pair-Verify-Encrypt-Salt", b"Pair-Verify-Encrypt-Info"
        ).derive(shared)
        sealed = ChaCha20Poly1305(session_key).encrypt(b"\0\0\0\0PV-Msg03", inner, None)
        conn.request("POST", "/pair-verify", tlv8_encode([(6, 3), (5, sealed)]), headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def test_malformed_pair_verify_m3_is_an_authentication_error(
    bridge: BridgeProcess, controller: Paired
) -> None:
    """Any peer can encrypt an M3 (M1 needs no pairing): what is inside must not reach a
    traceback. Each answer is M4 with kTLVError_Authentication (tag 7 = 2)."""
    for inner in (
        tlv8_encode([(1, b"not-a-uuid"), (10, bytes(64))]),
        tlv8_encode([(10, bytes(64))]),  # no identifier
        tlv8_encode([(1, b"\xff\xfe")]),  # not UTF-8
        tlv8_encode([(1, str(uuid.uuid4()).encode())]),  # unknown controller, no signature
        b"\x01\x05ab",  # not TLV8
    ):
        status, body = await asyncio.to_thread(_pair_verify, bridge.hap_port, inner)
        assert status == 200, (inner, status, body)
        assert dict(tlv8_decode(body)) == {6: b"\x04", 7: b"\x02"}, inner
    name = bridge_name(await controller.pairing.list_accessories_and_characteristics())
    assert (await read(controller.pairing, name)).code == 200
