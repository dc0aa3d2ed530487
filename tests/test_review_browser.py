"""The review page in a real browser: Debian's headless Chromium, driven by Playwright.

The server is the real `obscura review` (a child process; its URL with the token read from its
first line on stdout, tests/peers/review_app.py), the bucket one a real `obscura run` recorded
(tests/conftest.py `recorded`: a person crossing a gst-rtsp-server camera). The page runs under
the app's own Content-Security-Policy (no eval, no inline script): any script error or CSP
violation fails the test that caused it.

What a user sees is checked: the event's card with its decrypted poster actually drawn, its
local time; a click plays the video (its time advances and a decoded frame has a picture in
it); a download is the MP4; a tampered copy of the bucket shows the red banner (an object
deleted, caught by the manifest check as the page loads; a byte flipped, caught when the clip
is played); the wrong key, an unreachable bucket and an empty one each say so; filters ask the
server again; Share and Delete go through their confirmation steps and say the bridge is not
running when it is not; a phone-sized window never scrolls sideways and the player fits in it.
Screenshots are saved as artifacts (the directory is printed; set OBSCURA_TEST_ARTIFACTS to
choose it).

The slow test at the end records with a bridge that keeps running, pages through its events a
card at a time (the infinite scroll), and shares and deletes one through the page.

Chromium comes from apt (scripts/setup.sh --test); `playwright install` is never needed.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.peers.owner_bucket import Recorded, clips_sealed, obscura, recording_bridge, wait
from tests.peers.review_app import ReviewApp
from tests.peers.rtsp import RtspCamera
from tests.peers.scenes import write_crossing_clip

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
    pytest.mark.timeout(240),
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}
# Our own picture of time: the page formats in the browser's zone and locale.
CONTEXT = {"locale": "en-GB", "timezone_id": "UTC"}


# ---- the browser, the server, artifacts -------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("OBSCURA_TEST_ARTIFACTS")
    where = Path(chosen) / "review" if chosen else tmp_path_factory.mktemp("review-artifacts")
    where.mkdir(parents=True, exist_ok=True)
    print(f"\nreview page screenshots: {where}")
    return where


class Page:
    """A Playwright page that records script errors and CSP refusals as they happen."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"script error: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        text = msg.text
        if msg.type == "error" and (
            "Content Security Policy" in text or "Refused to" in text or "Uncaught" in text
        ):
            self.errors.append(text)

    def js(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def until(self, script: str, arg: Any = None, timeout: float = 20.0) -> Any:
        """Waits until the function `script` returns something truthy; returns it."""
        handle = self.page.wait_for_function(script, arg=arg, timeout=timeout * 1000)
        return handle.json_value()

    def text(self, selector: str) -> str:
        return str(self.page.locator(selector).first.inner_text())


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """open_page(url, viewport=DESKTOP, scheme="dark") -> Page; closed and checked after."""
    opened: list[tuple[Any, Page]] = []

    def open_(url: str, viewport: dict[str, int] = DESKTOP, scheme: str = "dark", **kw: Any):
        context = browser.new_context(
            viewport=viewport, color_scheme=scheme, accept_downloads=True, **CONTEXT, **kw
        )
        page = Page(context.new_page())
        opened.append((context, page))
        page.page.goto(url)
        return page

    yield open_
    for context, page in opened:
        context.close()
        assert not page.errors, page.errors


@contextmanager
def review(
    bucket: Path, key: Path, work: Path, *extra: str, bridge_url: str | None = None
) -> Iterator[ReviewApp]:
    """`obscura review` on `bucket` with `key`; share/delete ask `bridge_url` (default: a
    loopback port nothing listens on, so the bridge is offline)."""
    url = bridge_url or f"http://127.0.0.1:{closed_port()}"
    state = work / f"owner-state-{time.monotonic_ns()}"
    app = ReviewApp(["--identity", str(key), "--bucket", bucket.as_uri(), "--url", url, *extra],
                    state)  # fmt: skip
    with app:
        yield app
    assert "Traceback" not in app.stderr, app.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def only_event(app: ReviewApp) -> dict[str, Any]:
    assert app.wait_ready()["state"] == "ready", app.stderr
    events = app.get("/api/events").json()["events"]
    assert len(events) == 1, events
    return dict(events[0])


def poster_drawn(page: Page) -> int:
    """The naturalWidth of the first card's poster once it has loaded (0 if it failed)."""
    return int(page.until("""() => {
        const img = document.querySelector('.card img');
        return img && img.complete ? String(img.naturalWidth) : null;
    }"""))


FRAME = """async () => {
    const v = document.getElementById('video');
    const presented = await new Promise((done) => {
        v.requestVideoFrameCallback((now, meta) => done(meta.presentedFrames));
        setTimeout(() => done(-1), 5000);
    });
    const c = document.createElement('canvas');
    c.width = v.videoWidth; c.height = v.videoHeight;
    const g = c.getContext('2d');
    g.drawImage(v, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let sum = 0, sq = 0, n = 0;
    for (let i = 0; i < d.length; i += 4 * 97) {
        const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
        sum += y; sq += y * y; n += 1;
    }
    const mean = sum / n;
    const sky = g.getImageData(0, 0, c.width, Math.floor(c.height / 5)).data;
    let r = 0, b = 0;
    for (let i = 0; i < sky.length; i += 4 * 31) { r += sky[i]; b += sky[i + 2]; }
    return {presented, width: c.width, height: c.height, mean,
            std: Math.sqrt(sq / n - mean * mean), skyBlue: b > r * 1.15};
}"""


# ---- tests --------------------------------------------------------------------------------------


def test_timeline_shows_the_event_and_plays_it(
    recorded: Recorded, tmp_path: Path, open_page: Any, artifacts: Path
) -> None:
    with review(recorded.bucket, recorded.key, tmp_path) as app:
        event = only_event(app)
        page = open_page(app.url)
        assert page.page.url.endswith("/"), "the token must leave the address bar"
        assert poster_drawn(page) > 0
        card = page.page.locator(".card").first
        started = datetime.fromtimestamp(event["start_ms"] / 1000, UTC).strftime("%H:%M:%S")
        assert page.text(".card .time") == started
        assert page.text(".card .cam") == "Front porch"
        assert "Person" in page.text(".card .subject-chips")
        assert page.text(".day-title").startswith(("Today", "Yesterday"))
        assert page.text(".cam-title") == "Front porch"
        assert "Verified up to" in page.text("#trust .pill.ok")
        assert page.page.locator(".banner").count() == 0
        page.until("() => [...document.images].every((i) => i.complete)")
        page.page.screenshot(path=str(artifacts / "timeline.png"))

        card.click()
        # Past the first second (its first GOP): the scene's own picture from then on.
        page.until("() => document.getElementById('video').currentTime > 1.5", timeout=30)
        frame = page.js(FRAME)
        assert frame["presented"] > 0, frame
        assert (frame["width"], frame["height"]) == (640, 360), frame
        # Sky, grass and astronaut: a picture, not a flat grey or black frame; sky at the top.
        assert frame["std"] > 15 and 40 < frame["mean"] < 220, frame
        assert frame["skyBlue"], frame
        assert page.text("#player-title") == "Front porch"
        page.page.screenshot(path=str(artifacts / "player.png"))

        with page.page.expect_download() as download:
            page.page.click("#player-download")
        saved = Path(download.value.path())
        head = app.request(f"/api/events/{event['id']}/video", method="HEAD")
        assert saved.stat().st_size == int(head.headers["Content-Length"])
        assert saved.read_bytes()[4:8] == b"ftyp"
        assert download.value.suggested_filename.startswith("Front-porch-")

        page.page.keyboard.press("Escape")
        page.until("() => !document.getElementById('player').open")
        # Closing stops the video and its range requests.
        page.until("() => document.getElementById('video').getAttribute('src') === null")
        assert page.js("() => document.activeElement.classList.contains('card')")


def test_filters_requery_and_say_when_nothing_matches(
    recorded: Recorded, tmp_path: Path, open_page: Any
) -> None:
    with review(recorded.bucket, recorded.key, tmp_path) as app:
        event = only_event(app)
        page = open_page(app.url)
        poster_drawn(page)
        day = datetime.fromtimestamp(event["start_ms"] / 1000, UTC)
        later = f"{day.year + 1}-01-01"
        page.page.fill("#f-from", later)
        page.page.dispatch_event("#f-from", "change")
        page.until("() => !document.getElementById('message').hidden")
        assert page.text("#message-title") == "No events match these filters"
        assert page.page.locator(".card").count() == 0
        page.page.click("#message-action")  # Clear filters
        page.until("() => document.querySelectorAll('.card').length === 1")
        # A subject the event has, then one it does not (the chips come from the server).
        page.page.get_by_role("button", name="Person", exact=True).click()
        page.until("() => document.querySelectorAll('.card').length === 1")
        assert "subject=person" in page.page.url
        page.until("() => document.getElementById('summary').textContent.startsWith('Showing')")
        assert page.text("#summary") == "Showing 1 of 1 event in the bucket"
        page.page.get_by_role("button", name="All", exact=True).nth(1).click()
        page.until("() => !location.hash.includes('subject')")


def test_tampered_bucket_shows_the_red_banner(
    recorded: Recorded, tmp_path: Path, open_page: Any, artifacts: Path
) -> None:
    """A part deleted from a copy of the bucket: the manifest check finds it as the page
    loads, and says so in a red banner."""
    bucket = tmp_path / "bucket"
    shutil.copytree(recorded.bucket, bucket)
    last = recorded.clip["parts"][-1]["id"]
    recorded.obj(bucket, last).unlink()
    with review(bucket, recorded.key, tmp_path) as app:
        page = open_page(app.url)
        page.until("() => document.querySelector('.banner')")
        banner = page.text(".banner")
        assert "deleted from the bucket" in banner, banner
        assert last in banner, banner  # the verifier's own message, object and all
        assert page.page.locator("#trust .pill.bad").count() == 1
        assert page.page.locator("#trust .pill.ok").count() == 0
        page.until("() => document.querySelector('.card img')")  # the rest of it still shows
        page.until("() => [...document.images].every((i) => i.complete)")
        page.page.screenshot(path=str(artifacts / "tampered-deleted.png"))


def test_a_flipped_byte_is_refused_when_played(
    recorded: Recorded, tmp_path: Path, open_page: Any, artifacts: Path
) -> None:
    """One byte of the first chunk of part 0 flipped (same size: the quick manifest check
    passes): the server refuses to serve it, the player says so and the page shows a red
    banner."""
    bucket = tmp_path / "bucket"
    shutil.copytree(recorded.bucket, bucket)
    part = recorded.obj(bucket, recorded.clip["id"])
    data = bytearray(part.read_bytes())
    mac = data.index(b"\n--- ")
    payload = data.index(b"\n", mac + 1) + 1 + 16  # header, then the 16-byte nonce
    data[payload + 1000] ^= 0x01
    part.write_bytes(bytes(data))
    with review(bucket, recorded.key, tmp_path) as app:
        page = open_page(app.url)
        poster_drawn(page)
        assert page.page.locator(".banner").count() == 0  # nothing seen yet
        page.page.locator(".card").first.click()
        page.until("() => !document.getElementById('video-error').hidden", timeout=30)
        page.until("() => document.querySelector('.banner')")
        assert "not recorded by your bridge" in page.text(".banner")
        assert "cannot be played" in page.text("#video-error")
        page.page.screenshot(path=str(artifacts / "tampered-played.png"))


def test_the_wrong_key_opens_nothing(
    recorded: Recorded, tmp_path: Path, open_page: Any, artifacts: Path
) -> None:
    stranger = tmp_path / "stranger.key"
    obscura("keys", "generate", "-o", str(stranger))
    with review(recorded.bucket, stranger, tmp_path) as app:
        page = open_page(app.url)
        page.until("() => !document.getElementById('message').hidden")
        assert page.text("#message-title") == "This key opens none of these clips"
        assert "opens none" in page.text("#message-detail")
        assert page.page.locator(".card").count() == 0
        assert page.page.locator("#filters").is_hidden()
        assert "Not a recipient" in page.text("#trust .pill.muted")
        assert page.page.locator(".banner").count() == 0  # not a tampering: a wrong key
        page.page.screenshot(path=str(artifacts / "wrong-key.png"))


def test_an_unreachable_bucket_and_an_empty_one_say_so(
    recorded: Recorded, tmp_path: Path, open_page: Any, artifacts: Path
) -> None:
    nothing = f"s3://clips/home?endpoint=http://127.0.0.1:{closed_port()}&region=us-east-1"
    dummy = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    state = tmp_path / "owner-state"
    with ReviewApp(["--identity", str(recorded.key), "--bucket", nothing], state, env=dummy) as app:
        page = open_page(app.url)
        page.until("() => !document.getElementById('message').hidden", timeout=30)
        assert page.text("#message-title") == "The bucket cannot be reached"
        assert f"127.0.0.1:{nothing.split(':')[-1].split('&')[0]}" in page.text("#message-detail")
        page.page.click("#message-action")  # Try again: reads it again, fails the same way
        page.until("() => !document.getElementById('message').hidden", timeout=30)
        assert page.text("#message-title") == "The bucket cannot be reached"
        page.page.screenshot(path=str(artifacts / "bucket-unreachable.png"))
    empty = tmp_path / "empty-bucket"
    empty.mkdir()
    with review(empty, recorded.key, tmp_path) as app:
        page = open_page(app.url)
        page.until("() => !document.getElementById('message').hidden")
        assert page.text("#message-title") == "No clips yet"
        assert page.page.locator(".card").count() == 0


def test_share_and_delete_confirm_then_need_the_bridge(
    recorded: Recorded, tmp_path: Path, open_page: Any
) -> None:
    """Each action has its confirmation step; with the bridge offline the page says that
    sharing and deleting need it, and nothing leaves the timeline."""
    with review(recorded.bucket, recorded.key, tmp_path) as app:
        page = open_page(app.url)
        poster_drawn(page)
        p = page.page
        p.locator(".card").first.click()
        p.click("#player-share")
        assert p.locator("#share-recipient").evaluate("(e) => e === document.activeElement")
        p.fill("#share-recipient", "age1notakey")
        p.click("#share-next")
        assert "not an age public key" in page.text("#share-error")
        p.fill("#share-recipient", recorded.recipient)
        p.click("#share-next")
        assert page.text("#share-who") == recorded.recipient  # the confirmation step
        p.click("#share-next")
        page.until("() => !document.getElementById('share-error').hidden")
        assert "The bridge is not running: sharing and deleting need it" in page.text(
            "#share-error"
        )
        p.keyboard.press("Escape")  # the share dialog, then the player: one at a time
        page.until("() => !document.getElementById('share').open")
        assert page.js("() => document.getElementById('player').open")

        p.click("#player-delete")
        assert "Front porch" in page.text("#delete-what")
        assert page.js("() => document.activeElement.textContent.trim()") == "Cancel"
        p.click("#delete-go")
        page.until("() => !document.getElementById('delete-error').hidden")
        assert "The bridge is not running" in page.text("#delete-error")
        p.keyboard.press("Escape")
        p.keyboard.press("Escape")
        page.until("() => !document.getElementById('player').open")
        assert p.locator(".card").count() == 1


def test_phone_window_no_sideways_scroll_and_the_player_fits(
    recorded: Recorded, tmp_path: Path, open_page: Any, artifacts: Path
) -> None:
    overflow = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    with review(recorded.bucket, recorded.key, tmp_path) as app:
        page = open_page(app.url, PHONE, "light", is_mobile=True, has_touch=True,
                         device_scale_factor=2)  # fmt: skip
        poster_drawn(page)
        assert page.js(overflow) == 0
        page.page.click("#f-toggle")  # filters fold away on a phone
        assert page.page.locator("#f-cameras").is_visible()
        assert page.js(overflow) == 0
        page.page.screenshot(path=str(artifacts / "phone-timeline.png"))
        page.page.locator(".card").first.tap()
        page.until("() => document.getElementById('video').currentTime > 1.5", timeout=30)
        for selector in ("#player", "#video", "#player-download", "#player-delete"):
            box = page.page.locator(selector).bounding_box()
            assert box is not None, selector
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 0.5, (
                selector, box)  # fmt: skip
            assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"] + 0.5, (
                selector, box)  # fmt: skip
        assert page.js(overflow) == 0
        page.page.screenshot(path=str(artifacts / "phone-player.png"))


@pytest.mark.slow
def test_a_running_bridge_pages_shares_and_deletes(
    tmp_path: Path, open_page: Any, artifacts: Path
) -> None:
    """A bridge that keeps recording (a crossing every 6 s): the page loads its events one
    card per request as it scrolls, then shares one and deletes another through the bridge;
    both show in the timeline once the manifest is read again."""
    key, other_key = tmp_path / "owner.key", tmp_path / "other.key"
    mine = obscura("keys", "generate", "-o", str(key)).stdout
    theirs = obscura("keys", "generate", "-o", str(other_key)).stdout
    recipient = next(w for w in mine.split() if w.startswith("age1"))
    other = next(w for w in theirs.split() if w.startswith("age1"))
    scene, bucket = tmp_path / "person.mp4", tmp_path / "bucket"
    write_crossing_clip(scene, kind="person", seconds=6, enter_at=0.5, cross_seconds=3.0)
    with RtspCamera(file=scene, width=640, height=360, fps=15) as cam:
        bridge = recording_bridge(tmp_path, cam.url, bucket, [recipient], heartbeat_seconds=600)
        bridge.start()
        try:
            wait(lambda: clips_sealed(bridge) >= 2, 120, "two events")
            wait(lambda: bridge.status()["storage"]["uploads"]["pending_count"] == 0, 30, "uploads")
            api = f"http://127.0.0.1:{bridge.status_port}"
            with review(bucket, key, tmp_path, bridge_url=api) as app:
                assert app.wait_ready()["state"] == "ready", app.stderr
                n = app.get("/api/events").json()["total"]
                assert n >= 2
                page = open_page(app.url + "#limit=1",
                                 permissions=["clipboard-read", "clipboard-write"])  # fmt: skip
                page.until(f"() => document.querySelectorAll('.card').length === {n}", timeout=30)
                page.until("() => !document.getElementById('end').hidden")
                pages = [u for u in page.requests if "/api/events?" in u]
                assert len(pages) == n, pages  # one card per request, each from the last cursor
                assert all("limit=1" in u for u in pages) and all("before=" in u for u in pages[1:])
                ids = page.js(
                    "() => [...document.querySelectorAll('.card')].map((c) => c.dataset.id)"
                )
                shared_id, deleted_id = ids[0], ids[1]

                # The player steps to the next older event and back.
                page.page.click(f'.card[data-id="{shared_id}"]')
                download = "() => document.getElementById('player-download').getAttribute('href')"
                assert shared_id in page.js(download)
                assert page.js("() => document.getElementById('player-newer').disabled")
                page.page.click("#player-older")
                page.until(f"() => ({download})().includes('{deleted_id}')")
                page.page.click("#player-newer")
                page.until(f"() => ({download})().includes('{shared_id}')")
                page.page.keyboard.press("Escape")
                page.until("() => !document.getElementById('player').open")

                # Share: recipient, confirmation, the command to send, copied.
                page.page.click(f'.card[data-id="{shared_id}"]')
                page.page.click("#player-share")
                page.page.fill("#share-recipient", other)
                page.page.click("#share-next")
                page.page.click("#share-next")
                page.until("() => document.getElementById('share-command').textContent")
                command = page.text("#share-command")
                assert command.startswith("age -d"), command
                page.page.click("#share-copy-btn")
                assert page.js("() => navigator.clipboard.readText()") == command
                page.page.screenshot(path=str(artifacts / "shared.png"))
                page.page.click("#share-next")  # Done
                page.until("() => document.getElementById('player-shared').hidden === false")
                assert other[:12] in page.text("#player-shared")
                page.page.keyboard.press("Escape")
                shared_line = f'.card[data-id="{shared_id}"] .shared-line'
                page.until(f"() => document.querySelector('{shared_line}')")
                line = page.text(shared_line)
                assert "Shared with" in line and other[:10] in line and other[-6:] in line, line
                title = page.page.locator(shared_line).get_attribute("title")
                assert title == other  # the whole key, on hover

                # Delete: confirmation, then gone from the page and from the server's list.
                page.page.click(f'.card[data-id="{deleted_id}"]')
                page.page.click("#player-delete")
                page.page.click("#delete-go")
                page.until("() => !document.getElementById('player').open")
                page.until(f"() => !document.querySelector('.card[data-id=\"{deleted_id}\"]')")
                page.until("() => document.getElementById('busy').hidden")  # re-read done
                listed = [e["id"] for e in app.get("/api/events?limit=200").json()["events"]]
                assert deleted_id not in listed and shared_id in listed
                assert not page.page.locator(f'.card[data-id="{deleted_id}"]').count()
                page.page.screenshot(path=str(artifacts / "after-share-and-delete.png"))
        finally:
            assert bridge.stop() == 0, bridge.log_text()
