"""The review app's API (docs/review.md §3-4) against a bucket a real bridge recorded.

A real `obscura run` records a person crossing a gst-rtsp-server camera (with sound) into a
file:// bucket, in parts; it keeps running, so shares and deletions go through it as they do
from the CLI. `obscura review` runs as a child process (tests/peers/review_app.py). What the app
serves is checked against the stock `age` CLI's output: random ranges of the event's video equal
the same bytes of the parts joined by the documented rule; a seek costs only the chunks it
covers; a poster is the decrypted JPEG; share and delete show up after the refresh.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import av
import pytest

from bridge.store.bucket import open_bucket
from tests.peers.azurite import Azurite
from tests.peers.fake_gcs import FakeGcs
from tests.peers.owner_bucket import clips_sealed, recording_bridge
from tests.peers.review_app import ReviewApp
from tests.peers.rtsp import RtspCamera
from tests.peers.scenes import write_crossing_clip
from tests.peers.seaweed import SeaweedFS
from tests.test_clips import wait
from tests.test_owner_requests import age_keygen

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
CHUNK = 65536
CLIPS = [sys.executable, "-m", "bridge", "clips"]
ENV = dict(os.environ, OBSCURA_OWNER_STATE_DIR="/nonexistent/do-not-use")


@dataclass
class Recorded:
    bridge: Any  # BridgeProcess, running
    bucket: Path
    owner_key: Path
    other: str  # a recipient to share with
    work: Path

    def review(self, *extra: str, bucket: Path | None = None, key: Path | None = None) -> ReviewApp:
        where = bucket or self.bucket
        return ReviewApp(
            ["--identity", str(key or self.owner_key), "--bucket", where.as_uri(),
             "--url", f"http://127.0.0.1:{self.bridge.status_port}", *extra],
            self.work / f"owner-state-{time.monotonic_ns()}",
        )  # fmt: skip


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    work = tmp_path_factory.mktemp("review")
    owner_key, other_key = work / "owner.key", work / "other.key"
    recipient, other = age_keygen(owner_key), age_keygen(other_key)
    scene = work / "person.mp4"
    write_crossing_clip(scene, kind="person", seconds=24, enter_at=1.0, cross_seconds=12.0)
    bucket = work / "bucket"
    # A busy picture at a high bitrate: parts of several MiB, so a seek has chunks to skip.
    with RtspCamera(file=scene, width=1280, height=720, fps=15, bitrate_kbps=8000,
                    audio="aac", tone_hz=440.0) as cam:  # fmt: skip
        bridge = recording_bridge(work, cam.url, bucket, [recipient], 600, part_seconds=6.0)
        bridge.start()
        try:
            wait(lambda: clips_sealed(bridge) >= 1, 120, "an event")
            wait(lambda: bridge.status()["storage"]["uploads"]["pending_count"] == 0, 30, "uploads")
        except BaseException:
            bridge.stop()
            raise
    try:
        yield Recorded(bridge, bucket, owner_key, other, work)
    finally:
        code = bridge.stop()
    assert code == 0, bridge.log_text()


@pytest.fixture(scope="module")
def app(rec: Recorded) -> Iterator[ReviewApp]:
    with rec.review() as review:
        assert review.wait_ready()["state"] == "ready", review.stderr
        yield review
    assert "Traceback" not in review.stderr, review.stderr


def age_d(key: Path, path: Path) -> bytes:
    return subprocess.run(
        ["age", "-d", "-i", str(key), str(path)], capture_output=True, check=True
    ).stdout


def header_length(plain: bytes) -> int:
    pos = 0
    for kind in (b"ftyp", b"moov"):
        size, box = struct.unpack_from(">I4s", plain, pos)
        assert box == kind
        pos += size
    return pos


def the_event(app: ReviewApp) -> dict[str, Any]:
    """The recorded crossing (the largest event: under load a track may be cut in two)."""
    events = app.get("/api/events").json()["events"]
    assert len(events) >= 1
    sizes = [(e["size"], e["parts"], e["duration_s"]) for e in events]
    biggest = max(events, key=lambda e: e["size"])
    assert biggest["size"] >= 5 << 20 and biggest["parts"] >= 2, sizes  # what the tests need
    return biggest


def expected_video(
    rec: Recorded, app: ReviewApp, event: dict[str, Any]
) -> tuple[bytes, list[int]]:
    """The event as docs/review.md §4 joins it, from `age -d` of each part: part 0's ftyp +
    moov, the app's `sidx` (checked here against what FFmpeg reads in each part), then every
    part after its ftyp + moov; and each part's ciphertext size."""
    listing = subprocess.run(
        [*CLIPS, "list", "--json", "--identity", str(rec.owner_key),
         "--config", str(rec.bridge.config), "--state-dir", str(rec.work / "cli-state")],
        capture_output=True, text=True, check=True, env=ENV,
    )  # fmt: skip
    (clip,) = [c for c in json.loads(listing.stdout) if c["id"] == event["id"]]
    root = rec.bucket / event["bridge_id"]
    plains = [age_d(rec.owner_key, root / p["id"]) for p in clip["parts"]]
    skip = header_length(plains[0])
    assert all(p[:skip] == plains[0][:skip] for p in plains)  # the same ftyp + moov
    sidx = served_index(app, event["id"], skip)
    check_index(sidx, plains, skip, clip["parts"])
    joined = plains[0][:skip] + sidx + plains[0][skip:] + b"".join(p[skip:] for p in plains[1:])
    return joined, [p["size"] for p in clip["parts"]]


class ReadSpy(BytesIO):
    """A file whose furthest byte read is recorded."""

    furthest = 0

    def read(self, n: int | None = -1, /) -> bytes:
        data = super().read(n)
        self.furthest = max(self.furthest, self.tell())
        return data


def served_index(app: ReviewApp, event_id: str, at: int) -> bytes:
    """The `sidx` boxes the app serves right after the head."""
    boxes = b""
    while True:
        url, start = f"/api/events/{event_id}/video", at + len(boxes)
        size, kind = struct.unpack(">I4s", app.get(url, headers={
            "Range": f"bytes={start}-{start + 7}"}).body)  # fmt: skip
        if kind != b"sidx":
            assert boxes, kind
            return boxes
        boxes += app.get(url, headers={"Range": f"bytes={start}-{start + size - 1}"}).body


def check_index(boxes: bytes, plains: list[bytes], skip: int, parts: list[dict]) -> None:
    """A sidx per track, one reference per part: its bytes after the head, starting on a
    keyframe, lasting until the track's first packet in the next part (FFmpeg's decode times),
    the last as the manifest says; every box points at the first part's first fragment."""
    firsts: dict[int, list[int]] = {}  # track id -> its first dts in each part
    bases: dict[int, int] = {}
    for plain in plains:
        with av.open(BytesIO(plain)) as container:
            for stream in container.streams:
                packet = next(p for p in container.demux(stream) if p.dts is not None)
                assert packet.is_keyframe or stream.type == "audio"
                firsts.setdefault(stream.id, []).append(packet.dts)
                bases[stream.id] = stream.time_base.denominator
                container.seek(0)
    pos, seen = 0, []
    while pos < len(boxes):
        size = struct.unpack_from(">I", boxes, pos)[0]
        version, track_id, timescale, earliest, first_offset, count = struct.unpack_from(
            ">B3xIIQQ2xH", boxes, pos + 8
        )
        assert (version, count) == (1, len(plains))
        assert first_offset == len(boxes) - pos - size  # to the first fragment
        assert timescale == bases[track_id] and earliest == firsts[track_id][0]
        for i in range(count):
            ref_size, duration, sap = struct.unpack_from(">III", boxes, pos + 40 + 12 * i)
            assert ref_size == len(plains[i]) - skip and sap == 0x9000_0000
            if i + 1 < len(plains):
                assert duration == firsts[track_id][i + 1] - firsts[track_id][i]
            else:
                ms = parts[i]["end_ms"] - parts[i]["start_ms"]
                assert duration == ms * timescale // 1000
        seen.append(track_id)
        pos += size
    assert sorted(seen) == sorted(firsts)  # video and sound


@pytest.fixture(scope="module")
def video(rec: Recorded, app: ReviewApp) -> tuple[dict[str, Any], bytes]:
    event = the_event(app)
    joined, _ = expected_video(rec, app, event)
    return event, joined


# -- the timeline --------------------------------------------------------------------------------


def test_status_and_timeline(rec: Recorded, app: ReviewApp) -> None:
    status = app.status()
    (bridge,) = status["bridges"]
    assert bridge["ok"] and not bridge["problems"] and bridge["seq"] >= 1, bridge
    assert abs(bridge["verified_up_to_ms"] / 1000 - time.time()) < 3600
    page = app.get("/api/events").json()
    assert page["cameras"] == ["Front porch"] and "person" in page["subjects"]
    event = the_event(app)
    assert event["camera"] == "Front porch" and "person" in event["subjects"]
    assert event["state"] == "complete" and event["parts"] >= 2 and event["poster"]
    assert event["end_ms"] > event["start_ms"] and event["duration_s"] > 3
    # Filters and paging.
    assert event["part_ids"][0] == event["id"] and len(event["part_ids"]) == event["parts"]
    assert page["matched"] == page["total"] >= 1
    yard = app.get("/api/events?camera=Yard").json()
    assert yard["matched"] == 0 and yard["total"] == page["total"]
    assert app.get("/api/events?camera=Yard").json()["events"] == []
    assert app.get("/api/events?subject=vehicle").json()["events"] == []
    assert app.get(f"/api/events?to={event['start_ms'] - 60000}").json()["events"] == []
    one = app.get("/api/events?limit=1").json()
    assert len(one["events"]) == 1
    if page["total"] > 1:
        nxt = app.get(f"/api/events?limit=1&before={one['next']}").json()
        assert nxt["events"][0]["id"] != one["events"][0]["id"]
    assert app.get("/api/events?before=%%%").status == 400
    assert app.get("/api/events?from=yesterday").status == 400


def test_poster_is_the_decrypted_jpeg(rec: Recorded, app: ReviewApp) -> None:
    event = the_event(app)
    answer = app.get(f"/api/events/{event['id']}/poster")
    assert answer.status == 200 and answer.headers["Content-Type"] == "image/jpeg"
    assert answer.body[:2] == b"\xff\xd8"
    from io import BytesIO

    from PIL import Image

    image = Image.open(BytesIO(answer.body))
    assert image.width >= 160 and image.height >= 90
    assert app.get("/api/events/" + "0" * 32 + "/poster").status == 404


# -- ranged playback -----------------------------------------------------------------------------


def test_the_whole_video_is_the_parts_joined_and_plays(
    app: ReviewApp, video: tuple[dict[str, Any], bytes], tmp_path: Path
) -> None:
    event, joined = video
    answer = app.get(f"/api/events/{event['id']}/video")
    assert answer.status == 200 and answer.headers["Accept-Ranges"] == "bytes"
    assert answer.headers["Content-Type"] == "video/mp4"
    assert int(answer.headers["Content-Length"]) == len(joined)
    assert answer.body == joined
    path = tmp_path / "event.mp4"
    path.write_bytes(answer.body)
    with av.open(str(path)) as container:
        kinds = {s.type for s in container.streams}
        frames = sum(1 for _ in container.decode(video=0))
    assert kinds == {"video", "audio"}
    assert frames >= 15 * (event["duration_s"] - 1)  # every part's pictures, not just part 0's
    # The index lets FFmpeg (Chromium's demuxer for <video src>) start from the first fragment:
    # without it, it reads every box of the file before the first picture.
    spy = ReadSpy(answer.body)
    with av.open(spy) as container:
        next(container.decode(video=0))
        assert container.duration / 1e6 >= event["duration_s"] - 1
    assert 0 < spy.furthest < len(joined) / 3, (spy.furthest, len(joined))
    head = app.request(f"/api/events/{event['id']}/video", method="HEAD")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(joined)
    assert head.body == b""
    url = f"/api/events/{event['id']}/video?download=1"
    download = app.get(url, headers={"Range": "bytes=0-9"})
    disposition = download.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="Front-porch-') and ".mp4" in disposition


def test_random_ranges_equal_age_output(
    app: ReviewApp, video: tuple[dict[str, Any], bytes]
) -> None:
    event, joined = video
    size = len(joined)
    rng = random.Random(11)
    url = f"/api/events/{event['id']}/video"
    ranges = [(0, 0), (0, CHUNK - 1), (CHUNK - 1, CHUNK), (size - 1, size - 1)]
    ranges += [(a, min(size - 1, a + rng.randrange(1, 3 * CHUNK))) for a in
               (rng.randrange(size) for _ in range(25))]  # fmt: skip
    for a, b in ranges:
        answer = app.get(url, headers={"Range": f"bytes={a}-{b}"})
        assert answer.status == 206, (a, b)
        assert answer.headers["Content-Range"] == f"bytes {a}-{b}/{size}"
        assert answer.body == joined[a : b + 1], (a, b)
    tail = app.get(url, headers={"Range": "bytes=-1000"})
    assert tail.status == 206 and tail.body == joined[-1000:]
    rest = app.get(url, headers={"Range": f"bytes={size - 5000}-"})
    assert rest.body == joined[-5000:]
    several = app.get(url, headers={"Range": "bytes=10-19, 30-39"})
    assert several.status == 206 and several.body == joined[10:20]  # the first range
    bad = app.get(url, headers={"Range": f"bytes={size}-"})
    assert bad.status == 416 and bad.headers["Content-Range"] == f"bytes */{size}"


def test_parallel_first_requests_on_a_cold_app(
    rec: Recorded, video: tuple[dict[str, Any], bytes]
) -> None:
    """A player fires several range requests at once before anything is open: they share the
    opens and the final-chunk checks, and every answer is right."""
    event, joined = video
    rng = random.Random(5)
    starts = [rng.randrange(len(joined) - 100_000) for _ in range(24)]
    with rec.review() as fresh:
        assert fresh.wait_ready()["state"] == "ready"
        url = f"/api/events/{event['id']}/video"

        def fetch(a: int) -> tuple[int, bytes, int]:
            answer = fresh.get(url, headers={"Range": f"bytes={a}-{a + 99_999}"})
            return a, answer.body, answer.status

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(fetch, starts))
    assert "Traceback" not in fresh.stderr, fresh.stderr
    for a, body, status in results:
        assert status == 206 and body == joined[a : a + 100_000], a


def test_a_seek_fetches_only_the_chunks_it_needs(
    rec: Recorded, video: tuple[dict[str, Any], bytes]
) -> None:
    event, joined = video
    with rec.review() as fresh:  # nothing cached
        assert fresh.wait_ready()["state"] == "ready"
        url = f"/api/events/{event['id']}/video"
        opened = fresh.get(url, headers={"Range": "bytes=0-1"})  # the player's first probe
        assert opened.status == 206
        before = fresh.status()["media"]
        middle = len(joined) // 2
        answer = fresh.get(url, headers={"Range": f"bytes={middle}-{middle + 200_000 - 1}"})
        after = fresh.status()["media"]
    assert answer.body == joined[middle : middle + 200_000]
    assert len(joined) >= 5 << 20  # the "5 MiB clip"
    fetched, gets = after["bytes_fetched"] - before["bytes_fetched"], after["gets"] - before["gets"]
    print(f"seek: {gets} GETs, {fetched} bytes for 200000 bytes of a {len(joined)}-byte video; "
          f"opening it: {before['gets']} GETs, {before['bytes_fetched']} bytes")  # fmt: skip
    # 200000 bytes span at most 5 chunks (4 + 1 for alignment) of the part they are in; on
    # that part's first read, also its final chunk (proven first) and its chunk 0 (its moov
    # is compared with the event's): 7 chunks. A request's runs grow (2, then 4 chunks): 4 GETs.
    assert gets <= 4 and fetched <= 7 * (CHUNK + 16)
    # Opening: a header per part, part 0's first and final chunks: nothing near the whole.
    assert before["bytes_fetched"] < 0.1 * len(joined)


# -- trust --------------------------------------------------------------------------------------


def test_a_tampered_part_is_refused_and_reported(rec: Recorded, tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    shutil.copytree(rec.bucket, bucket)
    with rec.review(bucket=bucket) as review:
        event = the_event(review) if review.wait_ready()["state"] == "ready" else None
        assert event is not None
        bridge_dir = bucket / event["bridge_id"]
        parts = sorted((p for p in bridge_dir.iterdir()), key=lambda p: p.stat().st_size)
        biggest = parts[-1]  # a clip part (posters and manifest objects are smaller)
        data = bytearray(biggest.read_bytes())
        data[len(data) // 2] ^= 0x01  # a flipped bit in a middle chunk
        biggest.write_bytes(bytes(data))
        url = f"/api/events/{event['id']}/video"
        whole = review.get(url)
        status = review.status()
    (bridge,) = status["bridges"]
    assert not bridge["ok"]
    kinds = {p["kind"] for p in bridge["problems"]}
    assert kinds & {"forged", "swapped"}, bridge["problems"]
    assert not whole.complete or whole.status >= 500  # cut short, never the forged bytes


def test_a_swapped_part_is_caught_by_its_hash(rec: Recorded, tmp_path: Path) -> None:
    """The operator replaces a part with a file of its own encrypted to the owner's public key
    (here: the same plaintext, re-encrypted by stock age, so every chunk authenticates and the
    size is the same). Only the manifest's SHA-256 tells; the app checks it after serving."""
    bucket = tmp_path / "bucket"
    shutil.copytree(rec.bucket, bucket)
    recipient = subprocess.run(["age-keygen", "-y", str(rec.owner_key)], capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
    with rec.review(bucket=bucket) as review:
        assert review.wait_ready()["state"] == "ready"
        event = the_event(review)
        listing = subprocess.run(
            [*CLIPS, "list", "--json", "--identity", str(rec.owner_key),
             "--config", str(rec.bridge.config), "--state-dir", str(tmp_path / "cli-state")],
            capture_output=True, text=True, check=True, env=ENV,
        )  # fmt: skip
        (clip,) = [c for c in json.loads(listing.stdout) if c["id"] == event["id"]]
        part = bucket / event["bridge_id"] / clip["parts"][-1]["id"]
        plain = age_d(rec.owner_key, part)
        swapped = subprocess.run(["age", "-r", recipient], input=plain, capture_output=True,
                                 check=True).stdout  # fmt: skip
        assert len(swapped) == part.stat().st_size  # a perfect stand-in, byte for byte in size
        part.write_bytes(swapped)
        whole = review.get(f"/api/events/{event['id']}/video")
        assert whole.complete and whole.status == 200  # it plays: every chunk authenticates
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            (bridge,) = review.status()["bridges"]
            if any(p["kind"] == "swapped" for p in bridge["problems"]):
                break
            time.sleep(0.2)
        again = review.get(f"/api/events/{event['id']}/video")
    assert any(p["kind"] == "swapped" for p in bridge["problems"]), bridge
    assert not bridge["ok"]
    assert not again.complete or again.status >= 500  # refused from then on


def test_the_wrong_key_opens_nothing(rec: Recorded, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.key"
    age_keygen(stranger)
    with rec.review(key=stranger) as review:
        status = review.wait_ready()
        events = review.get("/api/events").json()["events"]
    assert status["state"] == "error" and status["error"]["kind"] == "not-recipient", status
    assert "opens none of these clips" in status["error"]["message"]
    assert events == []


# -- actions through the running bridge --------------------------------------------------------


@pytest.mark.parametrize("server", ["s3", "az", "gs"])
def test_the_same_from_a_cloud_bucket(
    rec: Recorded, video: tuple[dict[str, Any], bytes], tmp_path: Path, server: str
) -> None:
    """The recorded bucket copied into SeaweedFS (s3://), Azurite (az://) or fake-gcs-server
    (gs://): the app reads it with explicit credentials from a file, as the CLI does."""
    event, joined = video
    peer: Any = {
        "s3": lambda: SeaweedFS(tmp_path / "weed", buckets=("clips",)),
        "az": lambda: Azurite(tmp_path / "azurite", containers=("clips",)),
        "gs": lambda: FakeGcs(buckets=("clips",)),
    }[server]()
    with peer:
        url = peer.url("clips")
        objects = [p for p in rec.bucket.rglob("*") if p.is_file()]
        if server == "gs":  # fake-gcs-server takes uploads on its JSON API only
            creds = peer.key_file
            for path in objects:
                peer.upload("clips", str(path.relative_to(rec.bucket)), path.read_bytes())
        else:
            creds = tmp_path / "cloud.env"
            env = dict(peer.env)
            if server == "az":
                env["AZURE_STORAGE_ACCOUNT_NAME"] = peer.account
            creds.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
            creds.chmod(0o600)

            async def upload() -> None:
                bucket = open_bucket(url, creds)
                try:
                    for path in objects:
                        await bucket.put(str(path.relative_to(rec.bucket)), path)
                finally:
                    await bucket.close()

            asyncio.run(upload())
        review = ReviewApp(
            ["--identity", str(rec.owner_key), "--bucket", url, "--credentials-file", str(creds)],
            tmp_path / "state",
        )
        with review:
            assert review.wait_ready()["state"] == "ready", review.stderr
            ids = [e["id"] for e in review.get("/api/events").json()["events"]]
            poster = review.get(f"/api/events/{event['id']}/poster")
            middle = len(joined) // 2
            piece = review.get(f"/api/events/{event['id']}/video",
                               headers={"Range": f"bytes={middle}-{middle + 99_999}"})  # fmt: skip
            media = review.status()["media"]
    assert event["id"] in ids
    assert poster.status == 200 and poster.body[:2] == b"\xff\xd8"
    assert piece.status == 206 and piece.body == joined[middle : middle + 100_000]
    assert media["bytes_fetched"] < 0.2 * len(joined)  # ranged GETs, not the whole video


def test_actions_without_a_bridge_say_so(rec: Recorded, tmp_path: Path) -> None:
    with ReviewApp(
        ["--identity", str(rec.owner_key), "--bucket", rec.bucket.as_uri(),
         "--url", "http://127.0.0.1:9"],  # nothing listens on the discard port
        tmp_path / "state",
    ) as review:  # fmt: skip
        assert review.wait_ready()["state"] == "ready"
        events = review.get("/api/events").json()["events"]
        if not events:
            pytest.skip("the event was deleted by an earlier test")
        answer = review.request(f"/api/events/{events[0]['id']}/delete", method="POST", body={},
                                headers={"Origin": review.base})  # fmt: skip
        status = wait_probed(review)
    assert answer.status == 409 and answer.json()["kind"] == "bridge-offline", answer.body
    assert status["bridge_reachable"] is False
    with ReviewApp(
        ["--identity", str(rec.owner_key), "--bucket", rec.bucket.as_uri()], tmp_path / "s2"
    ) as review:  # no --url and no --config: no bridge to ask at all
        assert review.wait_ready()["state"] == "ready"
        answer = review.request(f"/api/events/{events[0]['id']}/delete", method="POST", body={},
                                headers={"Origin": review.base})  # fmt: skip
        assert review.status()["bridge_reachable"] is False
    assert answer.status == 409 and answer.json()["kind"] == "no-bridge", answer.body


def wait_probed(review: ReviewApp) -> dict[str, Any]:
    """/api/status once the app has asked the bridge whether it is there."""
    deadline = time.monotonic() + 10
    while (status := review.status())["bridge_reachable"] is None:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


def test_share_then_delete_through_the_bridge(rec: Recorded, app: ReviewApp) -> None:
    assert wait_probed(app)["bridge_reachable"] is True
    event = the_event(app)
    origin = {"Origin": app.base}
    bad = app.request(f"/api/events/{event['id']}/share", method="POST",
                      body={"recipient": "not-a-key"}, headers=origin)  # fmt: skip
    assert bad.status == 400 and bad.json()["kind"] == "bad-recipient"
    shared = app.request(f"/api/events/{event['id']}/share", method="POST",
                         body={"recipient": rec.other}, headers=origin)  # fmt: skip
    assert shared.status == 200, shared.body
    answer = shared.json()
    assert answer["command"].startswith("age -d -i THEIR.key") and answer["copy"]
    copy = rec.bucket / event["bridge_id"] / answer["copy"]
    plain = subprocess.run(["age", "-d", "-i", str(rec.work / "other.key"), str(copy)],
                           capture_output=True, check=True).stdout  # fmt: skip
    assert plain[4:8] == b"ftyp"
    app.wait_ready()
    after = next(e for e in app.get("/api/events").json()["events"] if e["id"] == event["id"])
    assert [s["recipient"] for s in after["shared"]] == [rec.other]
    deleted = app.request(f"/api/events/{event['id']}/delete", method="POST", body={},
                          headers=origin)  # fmt: skip
    assert deleted.status == 200, deleted.body
    app.wait_ready()
    ids = [e["id"] for e in app.get("/api/events").json()["events"]]
    assert event["id"] not in ids
    assert app.get(f"/api/events/{event['id']}/video").status == 404
