"""The no-config demo shows the whole mission: a person walks by, is detected, and is recorded,
encrypted, to a demo key that opens the clips at once.

End to end: a real `obscura run` with no configuration file anywhere (HOME in tmp, so the demo's
state dir is too; its listeners on loopback through $OBSCURA_DEMO_HAP / $OBSCURA_DEMO_STATUS,
never announced), checked from outside: the stock `age` CLI decrypts a clip of its bucket with
the demo key into an MP4 whose decoded frames show a person (found by the detector), `obscura
clips list` lists the event, `obscura doctor` reads the demo, and the log names `obscura review
--demo`. Unit level: the person comes and goes on schedule, pasted exactly, without moving the
demo's box, clock or beeps; the demo key is made once, atomically, mode 0600, and stock age
reads it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from bridge.config import ConfigError, demo_config, source_problem
from bridge.demo import (
    DEMO_SOURCE,
    demo_paths,
    demo_person,
    ensure_demo_identity,
    review_command,
)
from bridge.sources.demo import DemoInput
from bridge.sources.demo_scene import Visitor, Visits
from tests.peers.bridge_process import ROOT
from tests.peers.review_app import ReviewApp
from tests.peers.rtsp import free_port

W, H, FPS = 320, 240, 10.0


def demo_env(home: Path, hap_port: int = 0, status_port: int = 0) -> dict[str, str]:
    """The environment of a user with no configuration file, whose home is `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBSCURA_", "XDG_"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    if hap_port:
        env["OBSCURA_DEMO_HAP"] = f"127.0.0.1:{hap_port}"
    if status_port:
        env["OBSCURA_DEMO_STATUS"] = f"127.0.0.1:{status_port}"
    return env


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process as that user (platformdirs reads HOME), with loopback listeners."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OBSCURA_DEMO_HAP", "127.0.0.1:51999")
    monkeypatch.setenv("OBSCURA_DEMO_STATUS", "127.0.0.1:58999")
    for name in [n for n in os.environ if n.startswith("XDG_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("OBSCURA_CONFIG", raising=False)
    return home


# -- the person ---------------------------------------------------------------------------


def test_the_person_walks_by_on_schedule() -> None:
    visits = Visits()
    assert visits.first < 60 - visits.walk  # a newcomer sees one within a minute
    seen = [t for t in np.arange(0, 200, 0.1) if visits.walking(float(t))]
    starts = [t for i, t in enumerate(seen) if i == 0 or t - seen[i - 1] > 0.2]
    assert starts == pytest.approx([visits.start(i) for i in range(len(starts))], abs=0.11)
    assert len(starts) == 5 and 40 <= visits.every <= 60 and 6 <= visits.walk <= 8
    visitor = Visitor(W, H, visits)
    assert visitor.box(visits.first - 0.5) is None and visitor.box(visits.first + 7.5) is None
    # Across the whole frame and out, left to right, then back.
    lefts = [visitor.box(visits.first + t) for t in (0.5, 3.5, 6.5)]
    assert [b is not None for b in lefts] == [True, True, True]
    assert lefts[0][0] == 0 and lefts[2][2] == W  # type: ignore[index]
    back = visits.start(1)
    assert visitor.box(back + 0.5)[2] == W and visitor.box(back + 6.5)[0] == 0  # type: ignore[index]


def render(demo: DemoInput, t: float) -> np.ndarray:
    return demo._render(t).to_ndarray(format="rgb24")


def test_the_person_is_pasted_exactly_and_only_during_a_walk() -> None:
    visits = Visits(first=1.0, every=10.0, walk=4.0)
    plain = DemoInput(W, H, FPS, audio=False)
    person = DemoInput(W, H, FPS, audio=False, person=True, visits=visits)
    plain.open()
    person.open()
    try:
        below_clock = slice(H // 4, H)  # the stamp's seconds may tick between two renders
        for t in (0.5, 5.5, 10.9):  # between walks: the scene nobody walks through
            assert np.array_equal(render(plain, t)[below_clock], render(person, t)[below_clock])
        visitor = person.visitor
        assert visitor is not None
        t = 3.0  # mid-walk: the cut-out, pixel for pixel, where the schedule puts it
        x0, y0, x1, y1 = visitor.box(t)  # type: ignore[misc]
        left = visitor.left_edge(t)
        assert left is not None and x1 - x0 == visitor.cutout.shape[1]  # wholly in view
        frame = render(person, t)
        assert np.array_equal(frame[y0:y1, x0:x1], visitor.cutout)
        outside = np.ones(frame.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        outside[: H // 4] = False
        assert np.array_equal(frame[outside], render(plain, t)[outside])
        assert y1 <= H and (y1 - y0) == pytest.approx(0.55 * H, abs=1)
    finally:
        plain.close()
        person.close()


def test_the_demo_keeps_its_clock_and_beeps_with_the_person() -> None:
    """The pictures' and the beeps' timestamps are those of the plain demo (one clock), the
    box still walks, and the stamp is drawn, while the person is in view."""
    from tests.test_camera_audio import box_time

    # Walking right to left from the start: at 1 s the person is on the right, the box left.
    visits = Visits(first=-5.0, every=5.0, walk=4.0)
    demo = DemoInput(W, H, FPS, person=True, visits=visits)
    info = demo.open()
    assert (info.width, info.height) == (W, H) and demo.audio_info is not None
    video, audio = [], []
    try:
        for item in demo.packets():
            if isinstance(item, tuple):
                video.append(item[1])
            else:
                audio.append((item.pts, item.duration))
            if len(video) >= 16:  # 1.5 s of the demo, its person walking
                break
    finally:
        demo.close()
    assert video == pytest.approx([n / FPS for n in range(len(video))])
    step = 1024 / 16000
    assert [p for p, _ in audio] == pytest.approx([k * step for k in range(len(audio))])
    assert len(audio) >= int((video[-1]) / step)
    # The box (still read by tests/test_camera_audio.py) and the stamp, the person in view.
    assert demo.visitor is not None and demo.visitor.box(1.0)[0] > W // 2  # type: ignore[index]
    frame = render(demo, 1.0)
    assert box_time(frame) == pytest.approx(1.0, abs=0.1)
    stamp = frame[: H // 8, : W // 2]
    assert (stamp.min(axis=-1) > 240).sum() > 20  # white text: the clock


def test_the_demo_source_and_its_one_option() -> None:
    assert demo_person("demo:") is False and demo_person(DEMO_SOURCE) is True
    assert DEMO_SOURCE == "demo:person" and source_problem(DEMO_SOURCE) is None
    for bad in ("demo:cat", "demo:?person=1", "demo://x", "demo:person#x"):
        problem = source_problem(bad)
        assert problem and "demo:person" in problem, bad


# -- the demo key and the demo's configuration -----------------------------------------------


def test_the_demo_key_is_made_once_atomically_0600_and_stock_age_reads_it(
    home: Path, tmp_path: Path
) -> None:
    paths = demo_paths()
    assert paths.state_dir == home / ".local/share/obscura"
    assert not paths.identity.exists()
    recipients: list[str] = []
    threads = [
        threading.Thread(target=lambda: recipients.append(ensure_demo_identity(paths)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(recipients) == 8 and len(set(recipients)) == 1  # one key, whoever won
    text = paths.identity.read_text()
    assert stat.S_IMODE(paths.identity.stat().st_mode) == 0o600
    assert text.startswith("# OBSCURA DEMO KEY: NOT FOR REAL USE.")
    assert "kept by the bridge" in text and "A real set-up never does this" in text
    assert f"# public key: {recipients[0]}" in text
    assert [p.name for p in paths.state_dir.iterdir()] == ["demo-owner.key"]  # no temp left
    assert ensure_demo_identity(paths) == recipients[0] and paths.identity.read_text() == text
    plain, sealed = tmp_path / "plain", tmp_path / "plain.age"
    plain.write_bytes(b"demo clip")
    subprocess.run(["age", "-r", recipients[0], "-o", str(sealed), str(plain)], check=True)
    out = subprocess.run(
        ["age", "-d", "-i", str(paths.identity), str(sealed)], capture_output=True, check=True
    )
    assert out.stdout == b"demo clip"


def test_demo_config_records_people_to_its_bucket_and_demo_key(home: Path) -> None:
    config = demo_config()
    paths = demo_paths()  # what `obscura review --demo` resolves: the same files
    assert config.demo and config.path is None and config.state_dir == paths.state_dir
    assert config.storage is not None
    assert config.storage.bucket == paths.bucket_url == (paths.state_dir / "demo-bucket").as_uri()
    assert config.storage.recipients == (ensure_demo_identity(paths),)
    assert config.storage.spool_dir is None  # state_dir/spool
    assert config.detect.enabled
    (camera,) = config.cameras
    assert camera.source == "demo:person" and camera.detect.enabled
    assert camera.detect.subjects == ("person",) == camera.detect.settings.filters.subjects
    hap = config.hap
    assert (hap.address, hap.port, hap.advertise) == ("127.0.0.1", 51999, False)
    assert (config.status.address, config.status.port) == ("127.0.0.1", 58999)
    assert paths.status_url == "http://127.0.0.1:58999"
    assert review_command(paths).startswith("obscura review --demo  (the same as: ")
    elsewhere = demo_paths(home / "other")
    assert review_command(elsewhere).startswith(f"obscura review --demo {home / 'other'}  (")
    assert f"--identity {elsewhere.identity} --bucket {elsewhere.bucket_url}" in review_command(
        elsewhere
    )
    assert demo_config().storage == config.storage  # the key is reused, not made again


def test_demo_listeners_default_to_the_network_and_refuse_nonsense(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OBSCURA_DEMO_HAP")
    monkeypatch.delenv("OBSCURA_DEMO_STATUS")
    config = demo_config()  # builds it; binds nothing
    assert (config.hap.address, config.hap.port, config.hap.advertise) == ("0.0.0.0", 51826, True)
    assert (config.status.address, config.status.port) == ("127.0.0.1", 8089)
    for bad in ("51826", "localhost:1", "127.0.0.1:99999", "127.0.0.1:"):
        monkeypatch.setenv("OBSCURA_DEMO_HAP", bad)
        with pytest.raises(ConfigError, match=r"\$OBSCURA_DEMO_HAP.*ADDRESS:PORT"):
            demo_config()


# -- the whole demo ---------------------------------------------------------------------------


def shows_a_person(rgb: np.ndarray) -> float:
    from bridge.detect.registry import load_model

    with load_model("nanodet-m", threads=1) as detector:
        return max((d.score for d in detector.detect(rgb) if d.label == "person"), default=0.0)


def status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
        return json.load(response)


def wait(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the demo exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if predicate():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.2)


def obscura(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )


@pytest.mark.slow
@pytest.mark.skipif(Path("/etc/obscura/obscura.toml").exists(), reason="a system config exists")
def test_the_no_config_demo_records_a_person_that_its_demo_key_opens(tmp_path: Path) -> None:
    home = tmp_path / "home"
    status_port = free_port()
    env = demo_env(home, free_port(), status_port)
    log = tmp_path / "demo.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run"], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        wait(lambda: status(status_port), 30, "the status API", proc, log)
        first = status(status_port)
        assert first["demo"] and first["hap"]["address"] == "127.0.0.1"
        assert first["hap"]["advertise"] is False  # loopback: never announced
        # The first walk starts 8 s into the demo and takes 7 s; the event ends 3 s later, its
        # clip 5 s after that: sealed and uploaded well within the bound.
        wait(lambda: (status(status_port)["storage"] or {}).get("events_sealed", 0) >= 1, 90,
             "a recorded event", proc, log)  # fmt: skip
        wait(lambda: status(status_port)["storage"]["uploads"]["pending_count"] == 0, 30,
             "its upload", proc, log)  # fmt: skip
        elapsed = time.monotonic() - started
        final = status(status_port)
        doctor = obscura(env, "doctor")
        time.sleep(1.0)  # the manifest head follows its segments
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text, text
    print(f"the demo recorded its first event {elapsed:.1f} s after `obscura run`")

    paths = demo_paths(home / ".local/share/obscura")
    assert final["storage"]["bucket"] == paths.bucket_url
    assert final["storage"]["recipients"] == [ensure_demo_identity(paths)]
    assert [c["name"] for c in final["cameras"]] == ["Demo camera"]
    # The log: the key is a demo key kept on the bridge, and the command that opens the clips.
    assert "WARNING" in text and "DEMO KEY" in text and str(paths.identity) in text
    assert "A real set-up never does this" in text
    assert text.count("obscura review --demo") == 1
    assert "person arrived" in text
    # The key: 0600, and it says what it is.
    assert stat.S_IMODE(paths.identity.stat().st_mode) == 0o600
    assert "OBSCURA DEMO KEY: NOT FOR REAL USE" in paths.identity.read_text()
    # `obscura doctor` of the demo: the running bridge, and its clips.
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "built-in demo configuration" in doctor.stdout
    assert f"sealed to 1 recipient(s) in {paths.bucket_url}" in doctor.stdout, doctor.stdout

    # The owner's tools with the demo key: the event is listed...
    owner = tmp_path / "owner.toml"
    owner.write_text(f'[storage]\nbucket = "{paths.bucket_url}"\n')
    listing = obscura(
        env, "clips", "list", "--json", "--config", str(owner), "--identity", str(paths.identity),
        "--state-dir", str(tmp_path / "owner-state"),
    )
    assert listing.returncode == 0, listing.stdout + listing.stderr
    events = json.loads(listing.stdout)
    (event,) = [e for e in events if e["state"] == "complete"]
    assert event["camera"] == "Demo camera" and event["subjects"] == ["person"]
    # ... and stock age opens its parts into MP4s whose pictures show the person.
    best, frames = 0.0, 0
    for part in event["parts"]:
        obj = paths.bucket_dir / event["bridge"] / part["id"]
        out = subprocess.run(
            ["age", "-d", "-i", str(paths.identity), str(obj)], capture_output=True, check=True
        )
        assert out.stdout[4:8] == b"ftyp"
        with av.open(io.BytesIO(out.stdout)) as container:
            decoded = list(container.decode(video=0))
        assert decoded and (decoded[0].width, decoded[0].height) == (1280, 720)
        frames += len(decoded)
        for frame in decoded[:: max(1, len(decoded) // 4)]:
            best = max(best, shows_a_person(frame.to_ndarray(format="rgb24")))
    print(f"its clip: {frames} frames in {len(event['parts'])} part(s), person score {best:.2f}")
    assert frames >= 10 * 15  # pre-roll, the walk, post-roll at 15 fps
    assert best > 0.5, best

    # And the one command the log names opens them: `obscura review --demo`, as that user.
    with ReviewApp(["--demo"], tmp_path / "review-state", env=env) as review:
        ready = review.wait_ready()
        page = review.get("/api/events").json()
        shown = next(e for e in page["events"] if e["id"] == event["id"])
        poster = review.get(f"/api/events/{shown['id']}/poster")
        video = review.get(f"/api/events/{shown['id']}/video", headers={"Range": "bytes=0-65535"})
    assert ready["state"] == "ready" and all(b["ok"] for b in ready["bridges"]), ready
    assert shown["subjects"] == ["person"] and shown["poster"]
    assert poster.status == 200 and poster.body[:2] == b"\xff\xd8"
    assert video.status == 206 and video.body[4:8] == b"ftyp"
