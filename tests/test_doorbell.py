"""Doorbells (issue #10): a real `obscura run` with a doorbell camera and a plain one.

Peers: the aiohomekit-based test hub (tests/peers/hds_hub.py) pairs, subscribes to the
Doorbell's ProgrammableSwitchEvent and plays a home hub for HomeKit Secure Video; rings come
from the `obscura ring` CLI and from plain HTTP requests (urllib); the recorded clip is listed
and decrypted with the owner's CLI (tests/peers/owner_bucket.py). One bridge serves the module.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest

from tests.peers.bridge_process import ROOT, BridgeProcess, CameraSpec
from tests.peers.hds_hub import TestHub
from tests.peers.homekit import find_aid, find_characteristic, hap_uuid
from tests.peers.owner_bucket import Recorded, clips, clips_sealed, obscura, wait

DOOR, YARD = "Front door", "Yard"
DEMO = {"width": 320, "height": 240, "fps": 10}
PSE = "00000073-0000-1000-8000-0026BB765291"  # ProgrammableSwitchEvent
DOORBELL_SERVICE = "00000121-0000-1000-8000-0026BB765291"


@dataclass
class Bell:
    bridge: BridgeProcess
    key: Path
    recipient: str
    bucket: Path

    @property
    def token(self) -> str:
        return (self.bridge.workdir / "state" / "doorbell.token").read_text().strip()

    def url(self, camera: str) -> str:
        name = urllib.request.quote(camera, safe="")
        return f"http://127.0.0.1:{self.bridge.status_port}/cameras/{name}/ring"


@pytest.fixture(scope="module")
def bell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bell]:
    work = tmp_path_factory.mktemp("doorbell")
    key = work / "owner.key"
    words = obscura("keys", "generate", "-o", str(key)).stdout.split()
    recipient = next(w for w in words if w.startswith("age1"))
    bucket = work / "bucket"
    door = {**DEMO, "doorbell": True, "hksv": {"post_roll_seconds": 2}}
    bridge = BridgeProcess(
        work, [CameraSpec(DOOR, "demo:", door), CameraSpec(YARD, "demo:", {**DEMO, "fps": 5})],
        storage={"bucket": bucket.as_uri(), "recipients": [recipient], "pre_roll_seconds": 1.0,
                 "post_roll_seconds": 1.0, "heartbeat_seconds": 600},
    )  # fmt: skip
    bridge.start()
    try:
        bridge.wait_camera(DOOR)
        bridge.wait_camera(YARD)
        yield Bell(bridge, key, recipient, bucket)
    finally:
        token = (work / "state" / "doorbell.token").read_text().strip()
        code = bridge.stop()
    log = bridge.log_text()
    assert code == 0, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    assert token not in log  # the secret is never logged


Answer = tuple[int, dict[str, str], Any]


def post(url: str, token: str | None = None, scheme: str = "Bearer") -> Answer:
    headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
    request = urllib.request.Request(url, data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


async def apost(url: str, token: str | None = None, scheme: str = "Bearer") -> Answer:
    return await asyncio.to_thread(post, url, token, scheme)


def metrics_text(bell: Bell) -> str:
    url = f"http://127.0.0.1:{bell.bridge.status_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def doorbell_status(bell: Bell, camera: str = DOOR) -> dict[str, Any]:
    return bell.bridge.camera_status(camera)["doorbell"]


async def ring_when_allowed(bell: Bell) -> float:
    """Ring over HTTP, waiting out the 2 s rate limit of an earlier ring; returns when the
    answer came (time.monotonic())."""
    for _ in range(5):
        code, headers, body = await apost(bell.url(DOOR), bell.token)
        if code == 200:
            return time.monotonic()
        assert code == 429, (code, body)
        await asyncio.sleep(float(headers["Retry-After"]))
    raise AssertionError("never allowed to ring")


def test_config_doorbell_must_be_a_boolean(tmp_path: Path) -> None:
    config = tmp_path / "obscura.toml"
    config.write_text(
        f'[bridge]\nstate_dir = "{tmp_path / "state"}"\n[hap]\nadvertise = false\n'
        '[[cameras]]\nname = "Door"\nsource = "demo:"\ndoorbell = "yes"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    assert "cameras[0].doorbell" in out.stderr and "true or false" in out.stderr, out.stderr
    assert not (tmp_path / "state").exists()  # nothing started


def test_a_standalone_doorbell_pairs_as_a_video_doorbell(tmp_path: Path) -> None:
    from accessories.bridge import pairing_uris

    uris = dict(pairing_uris("B", "482-91-375", tmp_path, ["Door", "Yard"], standalone=True,
                             doorbells=["Door"]))  # fmt: skip
    # X-HM:// + 9 base-36 digits: category in bits 31-38 of the payload (HAP spec, setup payload)
    category = {name: int(uri[7:16], 36) >> 31 & 0xFF for name, uri in uris.items()}
    assert category == {"Door": 18, "Yard": 17}


def test_token_file_is_private(bell: Bell) -> None:
    path = bell.bridge.workdir / "state" / "doorbell.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bell.token) >= 40


async def test_rings_reach_the_controller(bell: Bell) -> None:
    async with TestHub.start(bell.bridge) as hub:
        accessories = hub.accessories
        door, yard = find_aid(accessories, DOOR), find_aid(accessories, YARD)
        # The doorbell camera: a primary Doorbell service whose event reads as null.
        services = {a["aid"]: a["services"] for a in accessories}
        bells = [s for s in services[door] if hap_uuid(s["type"]) == DOORBELL_SERVICE]
        assert len(bells) == 1 and bells[0].get("primary") is True, bells
        assert not [s for s in services[yard] if hap_uuid(s["type"]) == DOORBELL_SERVICE]
        assert not [s for s in services[door] if s is not bells[0] and s.get("primary")]
        event = find_characteristic(accessories, PSE, aid=door)
        assert set(event.perms) == {"pr", "ev"} and event.value is None
        assert (await hub.pairing.get_characteristics([event.key]))[event.key]["value"] is None
        # HKSV: the doorbell camera offers the doorbell trigger too (205, parsed from raw).
        for aid, bits in ((door, 0b11), (yard, 0b01)):
            supported = await (await hub.camera(aid)).supported()
            assert supported.recording.trigger_options == bits, (aid, supported.recording)

        await hub.events.subscribe([event.key])
        count = lambda: len(hub.events.values(event.key))  # noqa: E731
        # `obscura ring` (the CLI reads the token from the state directory)
        out = await asyncio.to_thread(obscura, "ring", "--config", str(bell.bridge.config), DOOR)
        assert f"rang {DOOR!r}" in out.stdout
        assert await hub.events.wait_for(event.key, 0, timeout_s=5) == 0

        # The HTTP endpoint: refused without the right token, before anything else is said.
        for token, scheme, code in (
            (None, "Bearer", 401), ("", "Bearer", 401), (bell.token, "Basic", 401),
            ("x" * 43, "Bearer", 403), (bell.token[:-1], "Bearer", 403),
        ):  # fmt: skip
            status, headers, body = await apost(bell.url(DOOR), token, scheme)
            assert status == code, (token, scheme, status, body)
            if code == 401:
                assert headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert (await apost(bell.url("Nowhere"), "wrong"))[0] == 403
        assert (await apost(bell.url("Nowhere"), bell.token))[0] == 404
        assert (await apost(bell.url(YARD), bell.token))[0] == 409
        assert (await apost(bell.url(DOOR.upper()), "wrong"))[0] == 403

        # The right token rings (once the CLI's ring is 2 s old); the event goes out at once.
        before, seen = count(), len(hub.events.events)
        answered = await ring_when_allowed(bell)
        await hub.events.wait_for(event.key, 0, timeout_s=5, after=seen)
        arrived = next(t for t, k, _ in hub.events.events[seen:] if k == event.key)
        assert count() == before + 1
        print(f"event {1000 * (arrived - answered):+.0f} ms after the HTTP answer")

        # A stuck button: rings within 2 s are suppressed (429) and counted, not sent.
        suppressed = doorbell_status(bell)["suppressed"]
        for _ in range(3):
            status, headers, _body = await apost(bell.url(DOOR), bell.token)
            assert status == 429 and 1 <= int(headers["Retry-After"]) <= 2
        await asyncio.sleep(1.0)  # more than HAP-python's 0.5 s event batch
        assert count() == before + 1, hub.events.values(event.key)
        status_ = doorbell_status(bell)
        assert status_["rings"] == 2 and status_["suppressed"] == suppressed + 3, status_
        assert abs(status_["last_ring_at"] - time.time()) < 30
        assert doorbell_status(bell, YARD) is None

        doctor = await asyncio.to_thread(
            obscura, "doctor", "--config", str(bell.bridge.config), check=None
        )
        assert "doorbell: 2 ring(s)" in doctor.stdout, doctor.stdout
        metrics = await asyncio.to_thread(metrics_text, bell)
        assert f'obscura_doorbell_rings_total{{camera="{DOOR}"}} 2' in metrics, metrics
        assert f'obscura_doorbell_rings_total{{camera="{YARD}"}}' not in metrics


async def test_a_ring_keeps_an_hksv_recording_going(bell: Bell) -> None:
    async with TestHub.start(bell.bridge, alias="doorbell-hub") as hub:
        cam = await hub.camera(DOOR)
        selection = await cam.select_recording()
        assert selection.trigger_options == 0b11
        await cam.set_mode(homekit_active=True, recording_active=True)
        ds = await cam.data_stream()
        event = find_characteristic(hub.accessories, PSE, aid=cam.chars.aid)
        await hub.events.subscribe([event.key])
        await ring_when_allowed(bell)
        # The hub opens a recording on the ring; the demo camera has no motion, so only the
        # ring's hold (5 s) keeps the trigger on, then the post-roll (2 s) ends it.
        await hub.events.wait_for(event.key, 0, timeout_s=5)
        rec = await ds.record(stream_id=3, until_end=True, timeout_s=40)
        assert rec.problems == [] and rec.end == "endOfStream", (rec.problems, rec.end)
        assert rec.ended_at is not None
        seconds = rec.ended_at - rec.opened_at
        assert 5.0 <= seconds <= 30.0, seconds  # without the hold: ~2 s (the post-roll)


def test_a_ring_records_an_event_clip(bell: Bell, tmp_path: Path) -> None:
    asyncio.run(ring_when_allowed(bell))
    bridge = bell.bridge
    # pre-roll 1 s + the ring's 5 s + post-roll 1 s, then sealed and uploaded
    wait(lambda: clips_sealed(bridge) >= 1, 40, "the ring's clip")
    wait(lambda: bridge.status()["storage"]["uploads"]["pending_count"] == 0, 30, "uploads")
    bridge_id = bridge.status()["storage"]["bridge_id"]
    rec = Recorded(bell.bucket, bridge_id, bell.key, bell.recipient, b"", {})
    state = tmp_path / "owner" / "state"
    state.parent.mkdir()
    listing = json.loads(clips(rec, "list", "--json", state=state).stdout)
    rung = [c for c in listing if c["camera"] == DOOR and "doorbell" in c["subjects"]]
    assert rung, listing
    mp4, jpg = tmp_path / "ring.mp4", tmp_path / "ring.jpg"
    clips(rec, "get", rung[0]["id"], "-o", str(mp4), "--poster", str(jpg), state=state)
    with av.open(str(mp4)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) >= 30 and (frames[0].width, frames[0].height) == (320, 240)
    assert jpg.read_bytes()[:2] == b"\xff\xd8"  # the poster: the camera at the ring
