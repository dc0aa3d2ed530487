"""HomeKit Secure Video against a hostile or broken hub: clear answers, nothing crashes (issue #9).

One real `obscura run` with two demo cameras (Gate gets a recording configuration, Shed never
does) and the test hub of tests/peers/hds_hub.py, which here also misbehaves on purpose:
malformed TLV8 in the recording characteristics (HAP status -70410, the old value kept), HDS
connections that send garbage, frames sealed with the wrong key, frames before hello or of an
impossible length (only that connection is closed; another data stream of the same hub goes
on), requests nobody serves (header status 5), opens of what we do not record (4), acks for
streams that are not ours (a protocol-error close), and floods of SetupDataStreamTransport
writes and silent TCP connections (bounded, then expired). After every test the bridge's log
must hold no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.peers import hds_wire as w
from tests.peers import recording_tlv_peer as rt
from tests.peers.bridge_process import BridgeProcess, CameraSpec
from tests.peers.hds_hub import HapWriteError, HubCamera, TestHub
from tests.peers.hds_recording import PROTOCOL_ERROR, UNSUPPORTED
from tests.peers.hds_stream import DataStream, StreamClosed
from tests.peers.homekit import HapStatusError

INVALID_VALUE = -70410  # HAP: invalid value in request
COMMUNICATION_FAILURE = -70402
HEADER_MISSING_PROTOCOL = 5  # HDS header status: we do not serve this protocol/topic
HEADER_PAYLOAD_ERROR = 4
HEADER_PROTOCOL_SPECIFIC = 6
RNG = random.Random(9)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    demo = {"width": 320, "height": 240, "fps": 5, "hksv": {"post_roll_seconds": 30}}
    process = BridgeProcess(
        tmp_path_factory.mktemp("hksv-hostile"),
        [CameraSpec("Gate", "demo:", demo), CameraSpec("Shed", "demo:", demo)],
    )
    process.start()
    try:
        process.wait_camera("Gate")
        process.wait_camera("Shed")
        yield process
    finally:
        code = process.stop()
    assert code == 0, process.log_text()[-4000:]


@pytest.fixture(autouse=True)
def no_traceback(bridge: BridgeProcess) -> Iterator[None]:
    yield
    assert bridge.proc is not None and bridge.proc.poll() is None, "the bridge died"
    log = bridge.log_text()
    assert "Traceback" not in log, log[-8000:]


async def status(bridge: BridgeProcess) -> dict[str, Any]:
    return await asyncio.to_thread(bridge.status)


async def streams(bridge: BridgeProcess) -> dict[str, int]:
    return (await status(bridge))["hap"]["data_streams"]


async def eventually(probe: Callable[[], Any], what: str, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout_s:g} s: {what} (last: {last!r})")


async def ready(hub: TestHub, name: str = "Gate") -> HubCamera:
    cam = await hub.camera(name)
    await cam.select_recording(timed="tw" in cam.chars.selected.perms)
    await cam.set_mode(homekit_active=True, recording_active=True)
    return cam


async def still_talks(ds: DataStream) -> None:
    """The connection is alive and answers (control/hello may be repeated)."""
    response = await ds.request("control", "hello", {}, timeout_s=10)
    assert response.status == 0 and not ds.is_closed


# ---- recording TLVs ----


def selection_tlv(sel: rt.RecordingSelection, **raw: bytes) -> bytes:
    """209 as RecordingSelection.encode() writes it, with some fields' bytes replaced."""

    def f(name: str, default: bytes) -> bytes:
        return raw.get(name, default)

    fragment = [(rt.CONTAINER_FRAGMENT_MS, f("fragment", rt.u32(sel.fragment_ms)))]
    recording = [
        (rt.REC_PREBUFFER, f("prebuffer", rt.u32(sel.prebuffer_ms))),
        (rt.REC_TRIGGERS, rt.u64(sel.trigger_options)),
        (rt.REC_CONTAINER, [
            (rt.CONTAINER_TYPE, rt.u8(sel.container)),
            (rt.CONTAINER_PARAMS, fragment),
        ]),
    ]  # fmt: skip
    video = [
        (rt.V_CODEC, f("codec", rt.u8(sel.video_codec))),
        (rt.V_PARAMS, [
            (rt.VP_PROFILE, rt.u8(sel.profile)), (rt.VP_LEVEL, rt.u8(sel.level)),
            (rt.VP_BITRATE, rt.u32(sel.bitrate_kbps)),
            (rt.VP_IFRAME_MS, rt.u32(sel.iframe_interval_ms)),
        ]),
        (rt.V_ATTRS, [
            (rt.VA_WIDTH, f("width", rt.u16(sel.width))), (rt.VA_HEIGHT, rt.u16(sel.height)),
            (rt.VA_FPS, rt.u8(sel.fps)),
        ]),
    ]  # fmt: skip
    audio = [
        (rt.A_CODEC, rt.u8(sel.audio_codec)),
        (rt.A_PARAMS, [
            (rt.AP_CHANNELS, rt.u8(sel.channels)), (rt.AP_BITRATE_MODE, rt.u8(sel.bitrate_mode)),
            (rt.AP_SAMPLE_RATE, f("sample_rate", rt.u8(sel.sample_rate))),
            (rt.AP_MAX_BITRATE, rt.u32(sel.max_audio_bitrate_kbps)),
        ]),
    ]  # fmt: skip
    items: list[tuple[int, rt.TlvValue]] = [(rt.SEL_RECORDING, recording), (rt.SEL_VIDEO, video)]
    if "no_audio" not in raw:
        items.append((rt.SEL_AUDIO, audio))
    return rt.tlv_encode(items)


async def refused_write(hub: TestHub, row: dict[str, Any], *, timed: bool = False) -> int:
    """The HAP status of a write that must fail."""
    with pytest.raises(HapWriteError) as caught:
        await hub.put([row], timed=timed)
    statuses = caught.value.statuses
    assert list(statuses) == [(row["aid"], row["iid"])], caught.value
    return statuses[(row["aid"], row["iid"])]


async def test_selected_configuration_cannot_be_read_before_the_hub_wrote_one(
    bridge: BridgeProcess,
) -> None:
    async with TestHub.start(bridge) as hub:
        shed = await hub.camera("Shed")
        with pytest.raises(HapStatusError) as caught:
            await shed.read_raw(shed.chars.selected)
        assert caught.value.status == COMMUNICATION_FAILURE
        assert not (await status(bridge))["cameras"][1]["hksv"]["configured"]


async def test_malformed_recording_tlvs_get_invalid_value(bridge: BridgeProcess) -> None:
    async with TestHub.start(bridge) as hub:
        gate = await ready(hub)
        good = await gate.read_raw(gate.chars.selected)
        sel = rt.RecordingSelection.parse(good)
        assert selection_tlv(sel) == good  # the builder below writes what the hub wrote
        ref = gate.chars.selected
        timed = "tw" in ref.perms
        bad_209: dict[str, Any] = {
            "garbage": rt.b64(RNG.randbytes(48)),
            "truncated": rt.b64(good[: len(good) // 2]),
            "an item longer than the value": rt.b64(good + b"\x05\x09\x01"),
            "1-byte width (128)": rt.b64(selection_tlv(sel, width=b"\x80")),
            "3-byte width": rt.b64(selection_tlv(sel, width=rt.u16(sel.width) + b"\x00")),
            "9-byte prebuffer": rt.b64(selection_tlv(sel, prebuffer=rt.u64(4000) + b"\x00")),
            "empty fragment length": rt.b64(selection_tlv(sel, fragment=b"")),
            "a size not offered": rt.b64(selection_tlv(sel, width=rt.u16(1234))),
            "video codec 7": rt.b64(selection_tlv(sel, codec=rt.u8(7))),
            "sample rate 9": rt.b64(selection_tlv(sel, sample_rate=rt.u8(9))),
            "no audio": rt.b64(selection_tlv(sel, no_audio=b"")),
            "empty": "",
            "bad base64": "%%% not base64 %%%",
            "a number": 12345,
        }
        for what, value in bad_209.items():
            row = {"aid": ref.aid, "iid": ref.iid, "value": value}
            assert await refused_write(hub, row, timed=timed) == INVALID_VALUE, what
        assert await gate.read_raw(ref) == good  # the hub's choice is untouched

        setup = gate.chars.setup_transport
        salt = rt.new_salt()
        request = rt.setup_data_stream_request(salt)
        bad_131: dict[str, Any] = {
            "garbage": rt.b64(RNG.randbytes(40)),
            "truncated": rt.b64(request[:20]),
            "a 31-byte salt": rt.b64(rt.setup_data_stream_request(salt[:31])),
            "command 1": rt.b64(rt.setup_data_stream_request(salt, command=1)),
            "transport 1": rt.b64(rt.setup_data_stream_request(salt, transport=1)),
            "empty": "",
            "bad base64": "AAA=A",
        }
        for what, value in bad_131.items():
            row = {"aid": setup.aid, "iid": setup.iid, "value": value, "r": True}
            assert await refused_write(hub, row) == INVALID_VALUE, what
        assert (await streams(bridge))["prepared"] == 0
        ds = await gate.data_stream()  # and a good one works
        await still_talks(ds)
        await ds.close()


# ---- HDS: bad frames close that connection only ----


HELLO = ({"protocol": "control", "request": "hello", "id": w.Int64(1)}, {})


async def test_bad_frames_close_only_their_connection(bridge: BridgeProcess) -> None:
    async with TestHub.start(bridge) as hub:
        gate = await ready(hub)
        good = await gate.data_stream()

        async def unidentified(send: Callable[[DataStream], Any]) -> None:
            ds = await gate.data_stream(hello=False)
            await send(ds)
            assert await ds.wait_closed(timeout_s=15) == "accessory"

        async def after_hello(send: Callable[[DataStream], Any]) -> None:
            ds = await gate.data_stream()
            await send(ds)
            assert await ds.wait_closed(timeout_s=15) == "accessory"

        cases: list[tuple[str, Callable[[Callable[[DataStream], Any]], Any], Any]] = [
            ("wrong key first", unidentified, lambda ds: ds.send_with_wrong_key(*HELLO)),
            ("garbage first", unidentified, lambda ds: ds.send_raw(RNG.randbytes(64))),
            ("garbage frame first", unidentified,
             lambda ds: ds.send_raw(b"\x01\x00\x00\x20" + RNG.randbytes(48))),
            ("huge length first", unidentified, lambda ds: ds.send_raw(b"\x01\xff\xff\xff")),
            ("wrong key", after_hello, lambda ds: ds.send_with_wrong_key(*HELLO)),
            ("garbage", after_hello, lambda ds: ds.send_raw(RNG.randbytes(64))),
            ("huge length", after_hello, lambda ds: ds.send_raw(b"\x01\xff\xff\xff")),
            ("frame type 2", after_hello, lambda ds: ds.send_raw(b"\x02" + ds.tx.seal(
                w.encode_payload(*HELLO))[1:])),
            ("undecodable payload", after_hello, lambda ds: ds.send_raw(ds.tx.seal(b"\x03\xe1"))),
            ("a header that is no message", after_hello, lambda ds: ds.send_raw(ds.tx.seal(
                w.encode_payload({"protocol": "control"}, {})))),
        ]  # fmt: skip
        for what, how, send in cases:
            started = time.monotonic()
            await how(send)
            assert time.monotonic() - started < 10, what  # at once, not after a timeout
            await still_talks(good)
        # dataSend before hello: the connection is closed, the request never answered
        early = await gate.data_stream(hello=False)
        with pytest.raises(StreamClosed):
            await early.open_recording(1)
        assert await early.wait_closed(timeout_s=5) == "accessory"
        await still_talks(good)
        assert good.problems == []
        await eventually(lambda: _sessions_are(bridge, 1), "only the good session is left")
        await hub.refresh()  # HAP is fine too
        response, rec = await good.open_recording(1)
        assert response.accepted, response
        await rec.wait_fragments(1, timeout_s=20)
        await good.close_stream(1)


async def _sessions_are(bridge: BridgeProcess, count: int) -> bool:
    return (await streams(bridge))["sessions"] == count


# ---- HDS: requests and events we do not serve ----


async def test_unknown_and_unsupported_requests_get_answers(bridge: BridgeProcess) -> None:
    async with TestHub.start(bridge) as hub:
        gate = await ready(hub)
        ds = await gate.data_stream()
        for protocol, topic in [("nonsense", "nothing"), ("control", "frobnicate"),
                                ("dataSend", "frobnicate")]:  # fmt: skip
            response = await ds.send_unknown_request(protocol, topic)
            assert response is not None, (protocol, topic)
            assert (response.protocol, response.topic) == (protocol, topic)
            assert (response.status, response.message) == (HEADER_MISSING_PROTOCOL, {})
        # a malformed open: header status 4 (payload error)
        response = await ds.request("dataSend", "open", {"target": "controller",
                                                         "type": "ipcamera.recording"})  # fmt: skip
        assert response.status == HEADER_PAYLOAD_ERROR, response
        # an open for something we do not send: refused, unsupported
        for message in ({"type": "ipcamera.timelapse", "target": "controller"},
                        {"type": "ipcamera.recording", "target": "accessory"}):  # fmt: skip
            response = await ds.request("dataSend", "open", {**message, "streamId": 5})
            assert (response.status, response.message_status) == (
                HEADER_PROTOCOL_SPECIFIC, UNSUPPORTED), (message, response)  # fmt: skip
        # an unknown event is ignored
        await ds.event("nonsense", "nothing", {"x": 1})
        await still_talks(ds)
        assert ds.problems == [] and (await hksv_status(bridge))["recording"] is None


async def hksv_status(bridge: BridgeProcess, camera: str = "Gate") -> dict[str, Any]:
    cameras = (await status(bridge))["cameras"]
    return next(c for c in cameras if c["name"] == camera)["hksv"]


async def test_ack_and_close_for_a_stream_that_is_not_ours(bridge: BridgeProcess) -> None:
    async with TestHub.start(bridge) as hub:
        gate = await ready(hub)
        ds = await gate.data_stream()
        other = await gate.data_stream()
        response, rec = await other.open_recording(3)  # a stream of another connection
        assert response.accepted, response
        await rec.wait_fragments(1, timeout_s=20)

        def closes(stream_id: int) -> list[Any]:
            return [m for _, h, m in ds.events
                    if h.get("event") == "close" and m.get("streamId") == stream_id]  # fmt: skip

        for stream_id in (77, 3):  # unknown here; open, but on the other connection
            await ds.ack(stream_id)
            await eventually(lambda sid=stream_id: closes(sid), f"close for {stream_id}")
            assert closes(stream_id) == [{"streamId": stream_id, "reason": PROTOCOL_ERROR}]
            await still_talks(ds)
        # a close for a stream that is not open is ignored (docs/hds.md §6): answering it with
        # another close could make two peers that both do so bounce closes forever
        await ds.close_stream(78)
        await ds.event("dataSend", "close", {"streamId": 3, "reason": 0})
        await still_talks(ds)
        await asyncio.sleep(0.5)
        assert closes(78) == [] and len(closes(3)) == 1
        # the recording of the other connection was not disturbed by any of it
        assert rec.end is None and rec.problems == []
        assert (await hksv_status(bridge))["recording"]["ended"] == "running"
        await other.close_stream(3)
        assert ds.problems == [f"dataSend/close for unknown stream: {m!r:.200}"
                               for m in closes(77) + closes(3)]  # fmt: skip


# ---- floods ----


async def test_floods_are_bounded_and_prepared_sessions_expire(bridge: BridgeProcess) -> None:
    assert bridge.proc is not None
    fds = f"/proc/{bridge.proc.pid}/fd"
    async with TestHub.start(bridge) as hub:
        gate = await ready(hub)
        fds_before = len(os.listdir(fds))
        offers = [await gate.setup_data_stream() for _ in range(100)]
        prepared_at = time.monotonic()
        assert all(o.setup.status == rt.DS_SUCCESS for o in offers)
        port = offers[-1].setup.tcp_port
        assert port is not None and {o.setup.tcp_port for o in offers} == {port}
        st = await streams(bridge)
        assert 1 <= st["prepared"] <= 16, st

        silent: list[socket.socket] = []
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setblocking(False)
            silent.append(s)
        try:
            st = await status(bridge)  # the bridge answers during the flood
            assert st["hap"]["data_streams"]["sessions"] == 0
            assert len(os.listdir(fds)) < fds_before + 80
            # a hub that comes now is served
            ds = await gate.data_stream()
            response, rec = await ds.open_recording(1)
            assert response.accepted, response
            await rec.wait_fragments(1, timeout_s=20)
            await ds.close_stream(1)
            # the oldest prepared sessions were dropped: their keys no longer open anything
            stale = await DataStream.connect("127.0.0.1", port, offers[0].keys)
            await stale.send_raw(stale.tx.seal(w.encode_payload(*HELLO)))
            assert await stale.wait_closed(timeout_s=15) == "accessory"
            # the newest ones expire ~10 s after they were prepared
            await asyncio.sleep(max(0.0, prepared_at + 6 - time.monotonic()))
            assert (await streams(bridge))["prepared"] >= 1  # not before their time
            await eventually(
                lambda: _prepared_left(bridge, 0), "prepared sessions expired", timeout_s=20
            )
            assert time.monotonic() - prepared_at >= 8
            assert (await streams(bridge))["expired"] >= 10
            late = await DataStream.connect("127.0.0.1", port, offers[-1].keys)
            await late.send_raw(late.tx.seal(w.encode_payload(*HELLO)))
            assert await late.wait_closed(timeout_s=15) == "accessory"
            # the silent connections were closed by the bridge
            deadline = time.monotonic() + 15
            open_ones = list(silent)
            while open_ones and time.monotonic() < deadline:
                open_ones = [s for s in open_ones if not _peer_closed(s)]
                await asyncio.sleep(0.2)
            assert open_ones == [], f"{len(open_ones)} silent connections still open"
        finally:
            for s in silent:
                s.close()
        await still_talks(ds)
        await ds.close()
        await eventually(lambda: _sessions_are(bridge, 0), "no session left")
        log = bridge.log_text()
        for offer in offers:  # key material never reaches the log
            salt = offer.setup.accessory_salt
            assert salt is not None
            assert salt.hex() not in log and base64.b64encode(salt).decode() not in log
        await eventually(
            lambda: _fds_at_most(fds, fds_before + 3), "descriptors back", timeout_s=10
        )


async def _prepared_left(bridge: BridgeProcess, count: int) -> bool:
    return (await streams(bridge))["prepared"] == count


async def _fds_at_most(path: str, count: int) -> bool:
    return len(os.listdir(path)) <= count


def _peer_closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def test_close_then_disconnect_at_once_frees_the_camera(bridge: BridgeProcess) -> None:
    """A hub that sends dataSend/close and drops the connection right after (the sender is
    then cancelled twice) must not leave the camera busy."""
    async with TestHub.start(bridge) as hub:
        gate = await ready(hub)
        for stream_id in (1, 2):
            ds = await gate.data_stream()
            response, rec = await ds.open_recording(stream_id)
            assert response.accepted, response
            await rec.wait_fragments(1, timeout_s=20)
            await ds.close_stream(stream_id)
            await ds.close()
            last = await eventually(lambda: _idle(bridge), "the recording is freed")
            assert last["ended"] == "hub_closed", last


async def _idle(bridge: BridgeProcess) -> dict[str, Any] | None:
    st = await hksv_status(bridge)
    return st["last_recording"] if st["recording"] is None and st["last_recording"] else None
