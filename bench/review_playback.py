"""Click → first frame and seek → frame in headless Chromium, for a ~30 s event on SeaweedFS.

    .venv/bin/python -m bench.review_playback [--runs 10] [--quick] [--page minimal|real|both]
                                              [--fresh] [--json [FILE]]

The issue's goal: clicking an event in `obscura review` shows its first frame within 0.5 s
(p50). The event is real: a real `obscura run` records a person crossing a gst-rtsp-server
camera (1280x720, 15 fps, 1 s GOP, 2 Mbit/s, AAC sound) into a file:// bucket, once, kept
under the temp dir for later runs (bench/_review.py; `--fresh` records it again). Each run
copies it into SeaweedFS and runs `obscura review --bucket s3://… --credentials-file …` as a
child process; Debian's chromium (Playwright, headless) plays it.

Two pages:
- **minimal**: a page of the benchmark's own (served on the app's origin through a Playwright
  route that is removed before the click, so no request of the measurement goes through it):
  one button whose click sets a `<video>`'s src to `/api/events/{id}/video` and calls play().
  The figure does not depend on the review page's own code.
- **real**: the review page itself (bridge/owner/review/static/): the timeline is loaded (cards
  and posters), then the event's card is clicked; its player opens and plays.

The clock starts at the click event's timestamp in the page and stops at the first
`requestVideoFrameCallback` of the video (registered at `loadstart`, so it is the first frame
the compositor presents); the frame is checked to be drawn (a canvas copy is not blank).
**Cold**: a fresh `obscura review` process per run (nothing opened or cached: each part's
header, unwrap and final chunk come from the bucket). **Warm**: the same process again (the
event's parts open, its first chunks in the app's LRU). Every run uses a fresh browser context
(no cookies or media cache of an earlier run; the app answers `no-store` anyway).

Seeks: while it plays, `currentTime` is set to a few positions (50%, 90%, 25%, 75%, 10% of the
clip) and the time to `seeked` and to the first frame presented at the new position is taken.
The app's /api/status "media" block gives the bucket GETs and bytes between the click and the
first frame, over the first 3 s, and during each seek. The browser's Range requests are listed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import Summary, describe_machine, emit_json, fmt, log, machine_info, table
from bench._review import (
    FRAME_HOOK,
    Review,
    chromium,
    chromium_version,
    cpu_load,
    recorded_event,
    seaweed_copy,
)

SEEKS = (0.9, 0.5, 0.25, 0.75, 0.1)
MINIMAL_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>bench: one video</title></head>
<body style="margin:0;background:#222">
<button id="play" style="display:block;width:240px;height:60px">play</button>
<video id="video" width="640" height="360" playsinline preload="auto"></video>
<script>
document.getElementById("play").addEventListener("click", () => {
  const v = document.getElementById("video");
  v.src = window.benchSrc;
  v.play().catch((e) => { window.__bench.error = String(e); });
});
</script></body></html>
"""


def run_once(
    browser: Any, app: Review, event: dict[str, Any], page_kind: str, seeks: bool
) -> dict[str, Any]:
    """One click (and the seeks) in a fresh browser context; the app may be fresh or warm."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(FRAME_HOOK)
    video_url = f"/api/events/{event['id']}/video"
    ranges: list[str] = []
    requests: list[Any] = []

    def seen(r: Any) -> None:
        if video_url in r.url:
            ranges.append(r.headers.get("range", "(none)"))
            requests.append(r)

    page = context.new_page()
    page.on("request", seen)
    try:
        if page_kind == "minimal":
            # The token URL sets the session cookie (context.request shares the context's
            # cookies); the benchmark's page is answered by a route that is gone before
            # anything is measured.
            signed = context.request.get(app.url, max_redirects=0)
            assert signed.status == 303, signed.status
            context.route(
                app.base + "/bench",
                lambda route: route.fulfill(status=200, body=MINIMAL_PAGE,
                                            headers={"Content-Type": "text/html"}),
            )  # fmt: skip
            page.goto(app.base + "/bench")
            context.unroute_all()
            page.evaluate("(src) => { window.benchSrc = src; }", video_url)
            target = "#play"
        else:
            page.goto(app.url)
            target = f'.card[data-id="{event["id"]}"]'
            page.wait_for_selector(target, state="visible", timeout=60_000)
            page.wait_for_load_state("networkidle")
        before = app.media()
        page.click(target)
        page.wait_for_function("() => window.__bench.frames.length > 0", timeout=30_000)
        at_frame = app.media()
        bench = page.evaluate("""() => ({clicks: __bench.clicks, frames: __bench.frames,
                                          error: __bench.error || null,
                                          origin: performance.timeOrigin})""")
        frame = bench["frames"][0]
        click_epoch_ms = bench["origin"] + bench["clicks"][-1]
        out: dict[str, Any] = {
            "click_to_frame_ms": frame["now"] - bench["clicks"][-1],
            "requests_to_frame": waterfall(requests, click_epoch_ms),
            "frame_level": frame["level"],
            "frame_size": f"{frame['width']}x{frame['height']}",
            "first_ranges": list(ranges),
            "gets_to_frame": at_frame["gets"] - before["gets"],
            "bytes_to_frame": at_frame["bytes_fetched"] - before["bytes_fetched"],
        }
        if bench["error"]:
            out["play_error"] = bench["error"]
        if seeks:  # at once, while the player is still filling its buffer
            out["seeks"] = do_seeks(page, app, event["duration_s"], ranges)
        else:  # what the whole click costs: until the player stops fetching
            page.wait_for_function(
                "() => document.querySelector('video').currentTime > 1.0", timeout=30_000
            )
            after = wait_idle(app)
            out["gets_click"] = after["gets"] - before["gets"]
            out["bytes_click"] = after["bytes_fetched"] - before["bytes_fetched"]
            out["ranges_click"] = list(ranges)
            out["buffered"] = page.evaluate(
                "() => { const b = document.querySelector('video').buffered;"
                " return Array.from({length: b.length}, (_, i) => [b.start(i), b.end(i)]); }"
            )
        return out
    finally:
        context.close()


def waterfall(requests: list[Any], click_epoch_ms: float) -> list[dict[str, Any]]:
    """Each video request so far: its Range, when it started and ended (ms after the click;
    end None: still open or aborted) and how it ended."""
    out = []
    for r in requests:
        timing = r.timing
        start = timing["startTime"] - click_epoch_ms
        end = timing["responseEnd"]
        out.append({
            "range": r.headers.get("range"), "start_ms": round(start, 1),
            "first_byte_ms": round(start + timing["responseStart"], 1)
            if timing["responseStart"] >= 0 else None,
            "end_ms": round(start + end, 1) if end >= 0 else None,
            "failure": r.failure,
        })  # fmt: skip
    return out


def wait_idle(app: Review, quiet: float = 1.0, limit: float = 20.0) -> dict[str, int]:
    """The media counters once they have not moved for `quiet` seconds."""
    last, since, deadline = app.media(), time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = app.media()
        if now["gets"] != last["gets"] or now["bytes_fetched"] != last["bytes_fetched"]:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def do_seeks(page: Any, app: Review, duration: float, ranges: list[str]) -> list[dict[str, Any]]:
    done = []
    for fraction in SEEKS:
        to = round(duration * fraction, 2)
        before, n = app.media(), len(ranges)
        r = page.evaluate(
            "(to) => window.__bench.seek(document.querySelector('video'), to)", to
        )
        after = app.media()
        done.append({
            "to_s": to,
            "buffered": r["buffered"],
            "seeked_ms": r.get("seeked"),
            "frame_ms": r["frame"],
            "level": r["level"],
            "gets": after["gets"] - before["gets"],
            "bytes": after["bytes_fetched"] - before["bytes_fetched"],
            "ranges": ranges[n:],
        })  # fmt: skip
        time.sleep(0.3)
    return done


def start_review(key: Path, url: str, creds: Path, work: Path) -> Review:
    app = Review(key, url, work / f"owner-{time.monotonic_ns()}", "--credentials-file", str(creds))
    app.start()
    app.wait_ready()
    return app


def real_page_present() -> bool:
    static = Path(__file__).resolve().parents[1] / "bridge/owner/review/static"
    return (static / "player.js").exists() and (static / "timeline.js").exists()


def measure(
    results: dict[str, Any], browser: Any, fresh_app: Any, pages: list[str], runs: int
) -> None:
    warm = fresh_app()
    try:
        page = warm.get("/api/events").json()
        event = max(page["events"], key=lambda e: e["duration_s"])
        results["event"] = {k: event[k] for k in ("duration_s", "parts", "size", "state")}
        head = warm.request(f"/api/events/{event['id']}/video", method="HEAD")
        results["event"]["video_bytes"] = int(head.headers["Content-Length"])
        results["review_ready_s"] = warm.ready_s
        log(f"event: {event['duration_s']} s in {event['parts']} parts, "
            f"{event['size'] / 1e6:.1f} MB; review ready in {warm.ready_s:.2f} s")  # fmt: skip
        for kind in pages:
            for case in ("cold", "warm"):
                samples = []
                for i in range(runs):
                    app = fresh_app() if case == "cold" else warm
                    try:  # every other click seeks at once; the others play on
                        samples.append(run_once(browser, app, event, kind, seeks=i % 2 == 1))
                    finally:
                        if case == "cold":
                            app.stop()
                    s = samples[-1]
                    what = (f"seeks {[round(x['frame_ms']) for x in s['seeks']]} ms"
                            if "seeks" in s else
                            f"whole click {s['gets_click']} GETs "
                            f"{s['bytes_click'] / 2**20:.1f} MiB")  # fmt: skip
                    log(f"{kind} {case} {i + 1}/{runs}: click -> frame "
                        f"{s['click_to_frame_ms']:.0f} ms, {s['gets_to_frame']} GETs "
                        f"{s['bytes_to_frame'] / 1024:.0f} KiB; {what}; load {cpu_load()}")
                results["cases"][f"{kind}/{case}"] = samples
    finally:
        warm.stop()
        results["tracebacks_logged_warm_app"] = warm.stderr.count("Traceback")
        if "Traceback" in warm.stderr:
            at = warm.stderr.index("Traceback")
            results["first_traceback"] = warm.stderr[max(0, at - 300) : at + 2500]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="clicks per page and case (default 10)")
    p.add_argument("--quick", action="store_true", help="4 runs")
    p.add_argument("--page", choices=("minimal", "real", "both"), default="both")
    p.add_argument("--fresh", action="store_true", help="record the event again")
    p.add_argument("--seconds", type=float, default=30.0, help="event length to record")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    runs = 4 if args.quick else args.runs
    pages = ["minimal", "real"] if args.page == "both" else [args.page]
    if "real" in pages and not real_page_present():
        log("the review page (bridge/owner/review/static/) is not there yet: minimal page only")
        pages = [k for k in pages if k != "real"] or ["minimal"]
    info = machine_info()
    rec = recorded_event(args.seconds, fresh=args.fresh)
    work = Path(tempfile.mkdtemp(prefix="obscura-bench-playback-"))
    results: dict[str, Any] = {"machine": info, "chromium": chromium_version(),
                               "recording": rec.info, "runs": runs, "cases": {}}  # fmt: skip
    try:
        with seaweed_copy(rec.bucket, work) as (url, creds), chromium() as browser:
            measure(results, browser, lambda: start_review(rec.key, url, creds, work), pages, runs)
    finally:
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(results)
    results["load_at_end"] = cpu_load()
    emit_json(args, results)


def report(results: dict[str, Any]) -> None:
    print(f"\n{describe_machine(results['machine'])}; {results['chromium']}; "
          f"load at end {cpu_load()}")  # fmt: skip
    ev = results["event"]
    print(f"event: {ev['duration_s']} s, {ev['parts']} parts, {ev['size'] / 1e6:.2f} MB "
          "(ciphertext), SeaweedFS on loopback\n")  # fmt: skip
    rows = []
    seek_rows = []
    for name, samples in results["cases"].items():
        ms = Summary.of([s["click_to_frame_ms"] for s in samples])
        gets = Summary.of([s["gets_to_frame"] for s in samples])
        kib = Summary.of([s["bytes_to_frame"] / 1024 for s in samples])
        whole = [s for s in samples if "gets_click" in s]
        gets_all = Summary.of([s["gets_click"] for s in whole])
        mib_all = Summary.of([s["bytes_click"] / 2**20 for s in whole])
        drawn = sum(1 for s in samples if s["frame_level"] > 5)
        rows.append([name, ms.n, fmt(ms.p50, 0), fmt(ms.p90, 0), fmt(ms.max, 0),
                     fmt(gets.p50, 0), fmt(kib.p50, 0), fmt(gets_all.p50, 0),
                     fmt(mib_all.p50, 2), f"{drawn}/{len(samples)}"])  # fmt: skip
        seeks = [x for s in samples for x in s.get("seeks", [])]
        for buffered in (False, True):
            these = [x for x in seeks if x["buffered"] == buffered]
            if not these:
                continue
            f = Summary.of([x["frame_ms"] for x in these])
            sk = Summary.of([x["seeked_ms"] for x in these if x["seeked_ms"] is not None])
            g = Summary.of([x["gets"] for x in these])
            b = Summary.of([x["bytes"] / 1024 for x in these])
            seek_rows.append([name, "in the buffer" if buffered else "outside", f.n,
                              fmt(sk.p50, 0), fmt(f.p50, 0), fmt(f.p90, 0), fmt(f.max, 0),
                              fmt(g.p50, 0), fmt(g.max, 0), fmt(b.p50, 0)])  # fmt: skip
    print(table(["page / app", "n", "click→frame p50 ms", "p90", "max", "GETs to frame",
                 "KiB to frame", "GETs per click", "MiB per click", "frame drawn"],
                rows))  # fmt: skip
    print()
    print(table(["page / app", "seek target", "n", "→seeked p50 ms", "→frame p50 ms", "p90",
                 "max", "GETs p50", "GETs max", "KiB p50"], seek_rows))  # fmt: skip
    first = next(iter(results["cases"].values()))[0]
    print(f"\nevent size (plaintext): {results['event']['video_bytes']} bytes")
    print("range requests of one click, until the player stopped fetching:",
          json.dumps(first["ranges_click"]))
    print("buffered then:", first["buffered"])
    print("Tracebacks in the warm app's log:", results.get("tracebacks_logged_warm_app"))
    if "first_traceback" in results:
        print(results["first_traceback"][-1500:])


if __name__ == "__main__":
    main()
