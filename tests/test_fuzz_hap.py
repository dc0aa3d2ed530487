"""Seeded fuzzing of what a paired controller can send: camera TLV8 writes, HAP JSON, HTTP.

The camera TLVs (SetupEndpoints, SelectedRTPStreamConfiguration) start from the valid messages
tests/peers/camera_tlv.py builds and are mutated as a tree (random or repeated or unknown
items, nested garbage, values of another width or over 255 bytes, deep nesting) and as bytes
(bit flips, truncation, length and tag lies). They go to the parsers directly (thousands of
cases) and, a few hundred of each, through a paired aiohomekit session to `obscura run`. HAP
JSON bodies, query strings, paths, methods and content types are generated the same way, and
a few broken HTTP messages are sent raw on a session of their own.

What must hold: the parsers raise TLVError and nothing else; every answer is a clear status
(never 500, every row of a 207 carries a HAP status, every 400 says -70410); a malformed
request never closes its session unless its HTTP framing was broken, and then only that
session; the bridge keeps answering ordinary reads, snapshots and stream set-ups, leaves no
live session behind, and its log holds no traceback. Seeds are fixed: a failure names the
case to replay.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohomekit.exceptions import AccessoryDisconnectedError

from accessories.backend import VideoRequest
from accessories.camera_tlv import (
    SessionCommand,
    parse_selected_stream_config,
    parse_setup_endpoints,
    video_request,
)
from accessories.tlv8 import TLVError
from tests.peers.bridge_process import BridgeProcess, demo_bridge
from tests.peers.camera_tlv import (
    SETUP_SUCCESS,
    AudioSelection,
    SetupEndpointsResponse,
    VideoSelection,
    selected_stream_config,
    tlv8_decode,
    tlv8_encode,
)
from tests.peers.camera_tlv import SetupEndpointsRequest as Setup
from tests.peers.hap_raw import HAP_JSON, Reply, put_json, read, request
from tests.peers.homekit import (
    Paired,
    find_aid,
    find_characteristic,
    pair,
    reconnect,
    stream_management,
)

STATUSES = {0, -70401, -70402, -70403, -70404, -70405, -70406, -70407, -70408, -70409, -70410}
CLEAR = {200, 204, 207, 400, 404, 405}

# ---- TLV8 mutations ----

Tree = list[tuple[int, "bytes | Tree"]]


def parse_tree(data: bytes, depth: int = 0) -> Tree:
    """Items whose value is itself well-formed TLV8 (2 bytes or more) become subtrees."""
    tree: Tree = []
    for tag, value in tlv8_decode(data):
        sub: bytes | Tree = value
        if depth < 4 and len(value) >= 2:
            with contextlib.suppress(ValueError):
                sub = parse_tree(value, depth + 1)
        tree.append((tag, sub))
    return tree


def encode_tree(tree: Tree) -> bytes:
    return tlv8_encode([(tag, encode_tree(v) if isinstance(v, list) else v) for tag, v in tree])


def _lists(tree: Tree) -> list[Tree]:
    found = [tree]
    for _, value in tree:
        if isinstance(value, list):
            found += _lists(value)
    return found


def _random_bytes(rng: random.Random, longest: int = 40) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 2, 4, 8, 16, rng.randrange(longest + 1)]))


def _garbage_tree(rng: random.Random, depth: int) -> Tree:
    if depth <= 0:
        return [(rng.randrange(256), _random_bytes(rng))]
    return [
        (rng.randrange(256), _garbage_tree(rng, depth - 1) if rng.random() < 0.5 else b"")
        for _ in range(rng.randint(1, 3))
    ]


def _tree_mutation(rng: random.Random, tree: Tree) -> None:
    target = rng.choice(_lists(tree))
    if not target:
        target.append((rng.randrange(256), _random_bytes(rng)))
        return
    index = rng.randrange(len(target))
    tag, value = target[index]
    action = rng.randrange(9)
    if action == 0:  # another value, maybe longer than one fragment
        target[index] = (tag, rng.randbytes(rng.choice([0, 1, 3, 17, 255, 256, 300])))
    elif action == 1:  # the same field at another width (a u8 sent as 2, 4 or 8 bytes...)
        raw = value if isinstance(value, bytes) else encode_tree(value)
        width = rng.choice([0, 1, 2, 3, 4, 8, 16])
        target[index] = (tag, (raw + bytes(width))[:width])
    elif action == 2:
        del target[index]
    elif action == 3:  # repeated
        target.insert(index, (tag, value))
    elif action == 4:  # unknown tag
        target.insert(rng.randrange(len(target) + 1), (rng.randrange(8, 256), _random_bytes(rng)))
    elif action == 5:  # nested garbage
        target[index] = (tag, _garbage_tree(rng, rng.randint(1, 4)))
    elif action == 6:
        rng.shuffle(target)
    elif action == 7:  # deep nesting
        deep: Tree = [(1, b"\x00")]
        for _ in range(rng.choice([8, 40, 120])):
            deep = [(rng.choice([1, 2, 3]), deep)]
        target[index] = (tag, deep)
    else:  # another tag
        target[index] = (rng.randrange(256), value)


def _byte_mutation(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    action = rng.randrange(5)
    if not buf or action == 0:
        return bytes(buf + rng.randbytes(rng.randint(1, 8)))
    if action == 1:  # bit flips
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif action == 2:
        del buf[rng.randrange(len(buf)) :]
    elif action == 3:  # a length lie at a random header (any byte may be one)
        buf[rng.randrange(len(buf))] = rng.choice([0, 1, 254, 255, rng.randrange(256)])
    else:
        position = rng.randrange(len(buf))
        buf[position:position] = rng.randbytes(rng.randint(1, 6))
    return bytes(buf)


def mutate(rng: random.Random, valid: bytes) -> bytes:
    """One to three tree mutations, then (often) one or two byte mutations."""
    tree = parse_tree(valid)
    for _ in range(rng.randint(1, 3)):
        _tree_mutation(rng, tree)
    data = encode_tree(tree)
    for _ in range(rng.choice([0, 0, 1, 2])):
        data = _byte_mutation(rng, data)
    return data


def setup_endpoints(port: int = 50000, address: str = "127.0.0.1") -> Setup:
    return Setup.new(port, port + 2, address=address)


def start_config(session_id: bytes, rng: random.Random | None = None) -> bytes:
    video = VideoSelection(320, 240, 5, max_bitrate_kbps=200)
    if rng is not None and rng.random() < 0.3:
        return selected_stream_config("reconfigure", session_id, video)
    return selected_stream_config("start", session_id, video, AudioSelection())


# ---- the parsers on their own ----


def test_parsers_raise_tlv_errors_only() -> None:
    rng = random.Random(0x0B5C08A)
    accepted = refused = 0
    base = VideoRequest(width=640, height=360, fps=15, max_bitrate_kbps=300)
    for case in range(3000):
        sid = rng.randbytes(16)
        valid = setup_endpoints().encode() if case % 2 else start_config(sid, rng)
        data = mutate(rng, valid)
        try:
            if case % 2:
                setup = parse_setup_endpoints(data)
                ip = ipaddress.ip_address(setup.controller_address)
                assert not (ip.is_multicast or ip.is_unspecified or ip.is_link_local), ip
                assert setup.video_port and len(setup.session_id) == 16
            else:
                config = parse_selected_stream_config(data)
                if config.command in (SessionCommand.START, SessionCommand.RECONFIGURE):
                    prior = base if config.command is SessionCommand.RECONFIGURE else None
                    video = video_request(config.video, ipv6=False, base=prior)
                    assert 0 < video.width <= 1920 and 0 < video.height <= 1200
                    assert 0 < video.fps <= 30
            accepted += 1
        except TLVError:
            refused += 1
        except Exception as exc:  # the point: nothing but TLVError
            pytest.fail(f"case {case}: {exc!r} for {data.hex()}")
    assert accepted > 200 and refused > 1000, (accepted, refused)  # both paths exercised


# ---- against the bridge ----


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    with demo_bridge(tmp_path_factory.mktemp("fuzz-hap")) as process:
        yield process
    assert len(process.log_text()) < 2_000_000  # one line per refused TLV write at most


@pytest.fixture
async def controller(bridge: BridgeProcess) -> AsyncIterator[Paired]:
    paired = await pair(bridge.hap_port, bridge.setup_code)
    yield paired
    await paired.unpair()


@pytest.fixture
def sink() -> Iterator[int]:
    """A UDP port on loopback that swallows whatever video a fuzzed start sends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock.getsockname()[1]
    sock.close()


async def write_tlv(paired: Paired, key: tuple[int, int], data: bytes) -> Reply:
    row = {"aid": key[0], "iid": key[1], "value": base64.b64encode(data).decode(), "r": True}
    return await put_json(paired.pairing, {"characteristics": [row]})


def check_write(reply: Reply, key: tuple[int, int], what: str) -> int:
    """The answer to one TLV write: 204, or 207 with this id's success or -70410."""
    assert reply.code in (204, 207), (what, reply)
    if reply.code == 204:
        return 0
    status = reply.statuses()[key]
    assert status in (0, -70410), (what, reply)
    return status


async def healthy(paired: Paired, bridge: BridgeProcess, aid: int) -> None:
    accessories = await paired.pairing.list_accessories_and_characteristics()
    assert find_aid(accessories, "Gate") == aid
    jpeg = await paired.pairing.image(aid, 320, 240)
    assert jpeg is not None and jpeg[:2] == b"\xff\xd8"
    for _ in range(50):  # sessions stop in the background: up to 10 s
        if not bridge.camera_status("Gate")["live_sessions"]:
            break
        await asyncio.sleep(0.2)
    assert bridge.camera_status("Gate")["live_sessions"] == []  # nothing left streaming


async def test_mutated_camera_tlvs_through_the_bridge(
    bridge: BridgeProcess, controller: Paired, sink: int
) -> None:
    rng = random.Random(0xF0220)
    accessories = await controller.pairing.list_accessories_and_characteristics()
    aid = find_aid(accessories, "Gate")
    stream = stream_management(accessories, aid)[0]
    setup_key, selected_key = stream.setup_endpoints.key, stream.selected_config.key
    transport = controller.pairing.connection.transport
    outcomes = {"setup ok": 0, "setup refused": 0, "select ok": 0, "select refused": 0}

    for case in range(200):
        data = mutate(rng, setup_endpoints(sink).encode())
        reply = await write_tlv(controller, setup_key, data)
        status = check_write(reply, setup_key, f"SetupEndpoints case {case}: {data.hex()}")
        outcomes["setup ok" if status == 0 else "setup refused"] += 1
        if status == 0 and reply.code == 207:
            answer = tlv8_decode(reply.json()["characteristics"][0]["value"])
            assert any(tag == 2 and value in (b"\x00", b"\x01", b"\x02") for tag, value in answer)

    for case in range(150):
        setup = setup_endpoints(sink)
        reply = await write_tlv(controller, setup_key, setup.encode())
        answer = SetupEndpointsResponse.parse(reply.json()["characteristics"][0]["value"])
        assert answer.status == SETUP_SUCCESS, (case, answer)
        data = mutate(rng, start_config(setup.session_id, rng))
        status = check_write(
            await write_tlv(controller, selected_key, data),
            selected_key,
            f"SelectedRTPStreamConfiguration case {case}: {data.hex()}",
        )
        outcomes["select ok" if status == 0 else "select refused"] += 1
        end = selected_stream_config("end", setup.session_id)
        assert check_write(await write_tlv(controller, selected_key, end), selected_key, "end") == 0

    assert all(outcomes.values()), outcomes  # both paths exercised for both characteristics
    assert controller.pairing.connection.transport is transport  # never disconnected
    await healthy(controller, bridge, aid)


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 2, 255, 256, 65536, 2**31, 2**63, 2**64 - 1, -(2**63)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-300, 3.0, 1e20])
    if kind == 4:
        return rng.choice(["", "1", "1.2", "AQID", "true", "é" * 70, "x" * 300, "\u0000"])
    if kind == 5:
        return rng.randrange(1, 20)
    if kind == 6:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["aid", "iid", "value", "ev", "r", "pid", "characteristics", "ttl", "x"]
    return {rng.choice(keys): _json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _row(rng: random.Random, ids: list[tuple[int, int]]) -> Any:
    if rng.random() < 0.1:
        return _json_value(rng)
    aid, iid = rng.choice(ids) if rng.random() < 0.7 else (rng.randrange(1, 9), rng.randrange(99))
    row: dict[str, Any] = {"aid": aid, "iid": iid}
    if rng.random() < 0.15:
        row[rng.choice(["aid", "iid"])] = _json_value(rng)
    for field, chance in (("value", 0.7), ("ev", 0.3), ("r", 0.2)):
        if rng.random() < chance:
            row[field] = _json_value(rng)
    return row


def _query(rng: random.Random, ids: list[tuple[int, int]]) -> str:
    parts = [f"{a}.{i}" for a, i in rng.sample(ids, rng.randint(1, 4))]
    if rng.random() < 0.6:
        alphabet = "0123456789.,-+=&% abcid\u00e9"
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12)))
        parts.insert(rng.randrange(len(parts) + 1), junk)
    query = "id=" + ",".join(parts)
    if rng.random() < 0.2:
        query = rng.choice(["", "meta=1&", "id=1.2&", "ev=1&perms=1&"]) + query
    return quote(query, safe="=&,.%+-")  # any bytes h11 accepts in a request target


def _body(rng: random.Random, ids: list[tuple[int, int]]) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return json.dumps(_json_value(rng)).encode()
    if kind == 1:
        return rng.randbytes(rng.randrange(40))
    body: dict[str, Any] = {"characteristics": [_row(rng, ids) for _ in range(rng.randint(0, 5))]}
    if rng.random() < 0.1:
        body["pid"] = _json_value(rng)
    raw = json.dumps(body).encode()
    if kind == 2 and raw:  # no longer JSON, most of the time
        return _byte_mutation(rng, raw)
    return raw


def check_reply(reply: Reply, what: str) -> None:
    assert reply.code in CLEAR, (what, reply)
    if reply.code == 400:
        assert reply.json() == {"status": -70410}, (what, reply)
    if reply.code == 207:
        rows = reply.json()["characteristics"]
        assert rows and all(row.get("status") in STATUSES for row in rows), (what, reply)


async def test_generated_hap_requests(bridge: BridgeProcess, controller: Paired) -> None:
    rng = random.Random(0x4A50)
    accessories = await controller.pairing.list_accessories_and_characteristics()
    aid = find_aid(accessories, "Gate")
    ids = [
        (acc["aid"], char["iid"])
        for acc in accessories
        for svc in acc["services"]
        for char in svc["characteristics"]
    ]
    transport = controller.pairing.connection.transport
    content_types = [HAP_JSON, HAP_JSON, "application/json", "text/plain", "", None]
    makers: list[Callable[[], tuple[str, str, bytes | None]]] = [
        lambda: ("GET", "/characteristics?" + _query(rng, ids), None),
        lambda: ("PUT", "/characteristics", _body(rng, ids)),
        lambda: ("PUT", "/characteristics", _body(rng, ids)),
        lambda: ("PUT", "/prepare", json.dumps(_json_value(rng)).encode()),
        lambda: ("POST", "/resource", _resource_body(rng, aid)),
        lambda: (
            rng.choice(["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]),
            rng.choice(["/accessories", "/characteristics", "/x", "/prepare", "/identify", "/"]),
            None if rng.random() < 0.5 else rng.randbytes(rng.randrange(20)),
        ),
    ]
    for case in range(400):
        method, target, body = rng.choice(makers)()
        if method == "GET" and target == "/accessories":
            body = None
        content_type = rng.choice(content_types)
        reply = await request(controller.pairing, method, target, body, content_type=content_type)
        check_reply(reply, f"case {case}: {method} {target} {body!r} ({content_type})")
    assert controller.pairing.connection.transport is transport  # never disconnected

    # Leave the streams usable (a fuzzed write may have set Active to 0), then check health.
    for stream in stream_management(accessories, aid):
        assert stream.active is not None
        row = {"aid": stream.active.aid, "iid": stream.active.iid, "value": 1}
        assert (await put_json(controller.pairing, {"characteristics": [row]})).code == 204
    await healthy(controller, bridge, aid)
    setup = setup_endpoints()
    key = stream_management(accessories, aid)[0].setup_endpoints.key
    answer = (await write_tlv(controller, key, setup.encode())).json()["characteristics"][0]
    assert SetupEndpointsResponse.parse(answer["value"]).status == SETUP_SUCCESS


def _resource_body(rng: random.Random, aid: int) -> bytes:
    body: dict[str, Any] = {"resource-type": "image", "aid": aid}
    if rng.random() < 0.3:  # a real snapshot now and then, small (snapshots cost CPU)
        body.update({"image-width": rng.choice([160, 320]), "image-height": 120})
        return json.dumps(body).encode()
    body["resource-type"] = rng.choice(["image", "image", "video", 1])
    body["aid"] = rng.choice([aid, aid, 1, 0, -1, "x", None, [aid], {"a": 1}, 2.5])
    for key in ("image-width", "image-height"):
        body[key] = rng.choice([160, 320, 0, -5, 2**40, "320", 3.5, True, None])
    if rng.random() < 0.2:
        del body[rng.choice(list(body))]
    return json.dumps(body).encode()


BROKEN_HTTP = [
    b"GARBAGE\r\n\r\n",
    b"GET /characteristics?id=1.2 HTTP/9.9\r\n\r\n",
    b"GET /characteristics?id=1.2 HTTP/1.1\r\nHost\r\n\r\n",
    b"PUT /characteristics HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"PUT /characteristics HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}",
    b"PUT /characteristics HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"PUT /characteristics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"PUT /characteristics HTTP/1.1\r\nContent-Length: 1\r\n\r\n{}",  # one byte too many
    b"GET /characteristics?id=1.2\x00 HTTP/1.1\r\n\r\n",
    b"GET " + b"/" * 20000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n",
    b"\r\n\r\n\r\n",
    b"\xff\xfe\xfd\r\n\r\n",
]


async def test_broken_http_closes_only_its_own_session(
    bridge: BridgeProcess, controller: Paired
) -> None:
    """A second session of the same pairing sends broken HTTP; the first must not notice."""
    accessories = await controller.pairing.list_accessories_and_characteristics()
    aid = find_aid(accessories, "Gate")
    bystander = controller.pairing.connection.transport
    name = find_characteristic(accessories, "NAME", service_type="ACCESSORY_INFORMATION", aid=1).key
    rng = random.Random(0x477)
    cases = BROKEN_HTTP + [
        b"PUT /characteristics HTTP/1.1\r\n" + rng.randbytes(rng.randrange(1, 60)) + b"\r\n\r\n"
        for _ in range(12)
    ]
    closed = 0
    for raw in cases:
        other = await reconnect(controller.pairing_data, alias="fuzz-http")
        try:
            await other.pairing._ensure_connected()
            protocol = other.pairing.connection.protocol
            assert protocol is not None
            response = None
            try:
                async with asyncio.timeout(1.0):
                    response = await protocol.send_bytes(raw)
            except (TimeoutError, AccessoryDisconnectedError):  # closed, or left waiting
                closed += 1
            if response is not None:
                assert response.code in CLEAR | {413, 431}, (raw[:80], response.code)
        finally:
            await other.close()
        reply = await read(controller.pairing, name)
        assert reply.code == 200, (raw[:80], reply)
        assert controller.pairing.connection.transport is bystander
    assert closed > 0
    await healthy(controller, bridge, aid)
