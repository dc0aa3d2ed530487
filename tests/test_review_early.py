"""The review app's first load shows the newest events while it walks the rest of the manifest:
only whole events (their first part reached), exactly as they are once everything is verified,
no verdict before the end, no action on them before the end; a refresh keeps the last load."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

from bridge.owner.review.library import Library, OwnerThread, Query
from crypto.age_keys import identity_file_text
from crypto.manifest import ClipEntry
from crypto.padding import pad_mp4
from tests.peers.review_app import ReviewApp
from tests.test_chain_readahead import BRIDGE_ID, Slow, owner, write_bucket
from tests.test_manifest import Bridge
from tests.test_review_browser import artifacts, browser, open_page

__all__ = ["artifacts", "browser", "open_page"]  # the browser tests' fixtures


def record_interleaved(bridge: Bridge, pairs: int, parts: int = 3) -> None:
    """Pairs of events on two cameras, their parts sealed in turn (one segment per part), so a
    walk can stop between an event's parts."""
    for _ in range(pairs):
        ids: dict[str, str] = {}
        for k in range(parts):
            for camera in ("porch", "yard"):
                bridge.now += 2000
                clip = bridge.object(pad_mp4(b"\x00\x00\x00\x18ftypisom" + os.urandom(1500)))
                event = ids.setdefault(camera, clip[0])
                entry = ClipEntry(*clip, camera, bridge.now - 4000, bridge.now, ("person",),
                                  event=event, part=k, final=k == parts - 1)  # fmt: skip
                bridge.publish(bridge.writer.append([entry]))
    bridge.now = max(bridge.now, int(time.time() * 1000))  # a fresh heartbeat
    bridge.heartbeat(0)


async def watch(library: Library) -> list[tuple[dict, dict]]:
    """(status, every event) each time the page would poll, until the load ends."""
    task = library.refresh()
    seen = []
    while not task.done():
        await asyncio.sleep(0.02)
        if library.early:
            seen.append((library.status(), library.page(Query(limit=200))))
    await task
    return seen


async def test_the_newest_whole_events_show_while_the_walk_goes_on(tmp_path: Path) -> None:
    bridge = Bridge()
    record_interleaved(bridge, 40)  # 80 events, 240 parts, one segment each
    write_bucket(bridge, tmp_path / "bucket")
    o = owner(tmp_path, bridge)
    Slow(o.bucket.bucket, 0.01)  # type: ignore[arg-type]  (a remote bucket, slowed down)
    library = Library(OwnerThread(o))
    try:
        seen = await watch(library)
        assert library.state == "ready" and not library.early
        final = library.page(Query(limit=200))
        assert final["total"] == 80
        order = [e["id"] for e in final["events"]]
        whole = {e["id"]: e for e in final["events"]}
        assert len(seen) >= 2, "the walk was never seen part-way"
        counts = []
        for status, page in seen:
            assert status["state"] == "loading" and status["early"]
            assert status["bridges"] == []  # no verdict (green or red) before the whole chain
            p = status["progress"]
            assert 0 < p["segments"] < p["of_segments"] == 240
            shown = [e["id"] for e in page["events"]]
            assert shown and page["total"] == len(shown) < 80
            # Each event shown is whole: as it is at the end (parts, duration, state, poster).
            assert all(e == whole[e["id"]] for e in page["events"])
            assert shown == [i for i in order if i in set(shown)]  # newest first, same order
            assert shown == order[: len(shown)]  # and the newest ones: nothing newer is missing
            counts.append(len(shown))
        assert counts == sorted(counts)  # it only grows

        # A refresh re-reads everything but keeps the timeline whole until it is done.
        task = library.refresh()
        while not task.done():
            await asyncio.sleep(0.02)
            assert not library.early and library.page(Query(limit=200))["total"] == 80
        await task
        assert (tmp_path / "owner-state" / f"{BRIDGE_ID}.chain").exists()
    finally:
        await library.owner.close()


async def test_a_load_that_fails_part_way_shows_nothing_of_it(tmp_path: Path) -> None:
    bridge = Bridge()
    record_interleaved(bridge, 30)
    # Segment 10 gone: the walk breaks there, after it has shown the newest events.
    gone = bridge.history[10].segment_id
    assert gone is not None
    del bridge.bucket[gone]
    write_bucket(bridge, tmp_path / "bucket")
    o = owner(tmp_path, bridge)
    Slow(o.bucket.bucket, 0.01)  # type: ignore[arg-type]
    library = Library(OwnerThread(o))
    try:
        seen = await watch(library)
        assert seen
        # The end is the verifier's verdict, with every event it could still read: a red
        # banner for the missing segment, not the early view.
        status = library.status()
        assert status["state"] == "ready" and not status["early"]
        [verdict] = status["bridges"]
        assert not verdict["ok"] and any(p["kind"] == "segment" for p in verdict["problems"])
    finally:
        await library.owner.close()


def test_the_page_shows_the_newest_events_before_the_verdict(
    tmp_path: Path, open_page: Any, artifacts: Path
) -> None:
    """In Chromium: cards while the chain is walked, under a "Verifying…" pill; then the green
    verdict, and the cards already shown stay (not rebuilt)."""
    bridge = Bridge()
    record_interleaved(bridge, 1500, parts=1)  # 3,000 events: a walk of a few seconds
    write_bucket(bridge, tmp_path / "bucket")
    key = tmp_path / "owner.key"
    key.write_text(identity_file_text(bridge.owner))
    args = ["--identity", str(key), "--bucket", (tmp_path / "bucket").as_uri()]
    with ReviewApp(args, tmp_path / "review-state") as app:
        page = open_page(app.url)
        early = page.until("""() => {
            const card = document.querySelector('.card');
            const pill = document.getElementById('verifying');
            if (!card || !pill) return null;
            card.dataset.shownEarly = "yes";
            return {cards: document.querySelectorAll('.card').length, text: pill.textContent};
        }""", timeout=60)
        assert early["cards"] > 0
        assert re.fullmatch(r"Verifying the manifest: [\d,]+ of 3,000 segments…", early["text"])
        assert "so far, verifying the rest" in page.text("#summary")
        page.page.screenshot(path=str(artifacts / "early-cards.png"))
        # No action before the whole manifest is verified (the walk takes seconds: still on).
        event_id = page.page.locator(".card").first.get_attribute("data-id")
        refused = app.request(f"/api/events/{event_id}/delete", method="POST", body={},
                              headers={"Origin": app.base})  # fmt: skip
        assert app.status()["state"] == "loading"
        assert refused.status == 409 and refused.json()["kind"] == "loading", refused
        page.until("() => document.querySelector('#trust .pill.ok')", timeout=60)
        assert page.page.locator("#verifying").count() == 0
        page.until("() => document.querySelectorAll('.card').length >= 60")
        first = page.page.locator(".card").first
        assert first.get_attribute("data-shown-early") == "yes"  # kept, not rebuilt
        assert page.text("#summary") == "3,000 events in the bucket"
        assert app.get("/api/status").json()["events"] == 3000
    assert "Traceback" not in app.stderr, app.stderr
