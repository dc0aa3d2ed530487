"""A timeline of 2,000 events: review start → ready, the first page, scrolling, server memory.

    .venv/bin/python -m bench.review_timeline [--events 2000] [--quick] [--s3] [--fresh]
                                              [--profile] [--json [FILE]]

The issue's goal: with thousands of clips, the first page of the timeline is rendered within
1 s. The bucket is made for real, cheaply: the bridge's own ClipVault (bridge/store/vault.py)
in this process seals every part of every event through the recorder's path (EncryptedClipSink
→ spool → uploader, a manifest segment per part, as a running bridge logs them) into a file://
bucket. The parts are one small real fragmented MP4 (the timeline never plays them); each part
has its own poster, a real 640x360 JPEG (the bridge's poster size) of a photographed person or
cat on a yard, 48 different pictures. Events are spread over 5 cameras and 21 days, with
person / vehicle / animal subjects; their lengths follow a log-normal law (median 12 s, 3-60 s)
cut into 4 s parts (the bridge's default part_seconds), so 2,000 events are ~7,000 parts. The
bucket is kept under the temp dir (bench/_review.py's CACHE) and reused while its head is fresh.
`--s3` copies it into SeaweedFS first and reads it from there.

Measured, with `obscura review` as a child process (tests/peers/review_app.py):
- start → URL printed → /api/status "ready" (every manifest segment fetched and verified), with a
  fresh owner state (first run: the bridge key is pinned) and again with the state it saved;
- GET /api/events: the first page (50), a filtered first page, the last page (the cursor of
  the oldest events), each 20 times;
- in headless Chromium on the real page: navigation → first cards in the DOM → the posters of
  the cards in the viewport loaded and decoded; then scrolling to the end (each page of 60 is
  asked for by the page's own IntersectionObserver), the time per page;
- the review process's VmRSS / VmHWM (/proc) when ready, after the first page and after
  scrolling through everything (every poster fetched, decrypted and cached, LRU-bounded).
`--profile` runs the same load (verify + grouping) in this process under cProfile and prints
where the time goes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import Summary, describe_machine, emit_json, fmt, log, machine_info, table
from bench._review import (
    Review,
    chromium,
    chromium_version,
    cpu_load,
    seaweed_copy,
    timeline_bucket,
)

# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


def start_ready(key: Path, url: str, state: Path, creds: Path | None) -> Review:
    extra = ("--credentials-file", str(creds)) if creds else ()
    app = Review(key, url, state, *extra)
    app.start()
    app.wait_ready(timeout=900)
    return app


def api_latency(app: Review, path: str, n: int) -> tuple[Summary, dict[str, Any]]:
    times, body = [], {}
    for _ in range(n):
        t = time.perf_counter()
        answer = app.get(path)
        times.append((time.perf_counter() - t) * 1000)
        assert answer.status == 200, answer.body[:200]
        body = answer.json()
    return Summary.of(times), body


def api_figures(app: Review, runs: int) -> dict[str, Any]:
    first, page = api_latency(app, "/api/events", runs)
    total = page["total"]
    # The oldest page: walk the cursors once in pages of 50 (the page asks for 60 at a time),
    # then time the request for the oldest page again.
    cursor, last_cursor, pages, t = None, None, 0, time.perf_counter()
    while True:
        body = app.get("/api/events" + (f"?before={cursor}" if cursor else "")).json()
        pages += 1
        if not body["next"]:
            break
        last_cursor, cursor = cursor, body["next"]
    walk_ms = (time.perf_counter() - t) * 1000
    oldest = "/api/events" + (f"?before={last_cursor}" if last_cursor else "")
    last, _ = api_latency(app, oldest, runs)
    camera = page["cameras"][0]
    filtered, fbody = api_latency(app, f"/api/events?camera={camera.replace(' ', '%20')}"
                                  "&subject=vehicle", runs)  # fmt: skip
    status, _ = api_latency(app, "/api/status", runs)
    return {
        "total": total, "first_page": first.as_dict(), "last_page": last.as_dict(),
        "filtered_first_page": filtered.as_dict(), "filtered_total_shown": len(fbody["events"]),
        "status": status.as_dict(), "walk_pages": pages, "walk_ms": round(walk_ms, 1),
        "cameras": page["cameras"], "subjects": page["subjects"],
    }  # fmt: skip


# In the page: when the first cards are in the DOM, and when every poster of the cards in the
# viewport is loaded and decoded (img.complete with a size; lazy images off-screen not counted).
FIRST_PAGE = """() => {
  const b = (window.__tl = window.__tl || {});
  const cards = document.querySelectorAll(".card");
  if (!cards.length) return false;
  if (b.cards === undefined) { b.cards = performance.now(); b.n = cards.length; }
  const seen = [...cards].filter((c) => {
    const r = c.getBoundingClientRect();
    return r.bottom > 0 && r.top < innerHeight;
  });
  const imgs = seen.flatMap((c) => [...c.querySelectorAll("img")]);
  if (!imgs.length || !imgs.every((i) => i.complete && i.naturalWidth > 0)) return false;
  b.posters = performance.now(); b.visible = seen.length; b.imgs = imgs.length;
  return true;
}"""


SCROLL = """() => {
  window.scrollTo(0, document.documentElement.scrollHeight);
  return performance.now();
}"""
MORE = """(n) => {
  if (document.querySelectorAll(".card").length > n) {
    window.__tl.appeared = performance.now();
    return true;
  }
  return !document.getElementById("end").hidden;
}"""


def scroll_steps(page: Any, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each scroll: → the page's /api/events request sent → its answer → the cards in the DOM
    (Resource Timing entries of the page's fetches, on the page's clock)."""
    fetches = page.evaluate("""() => performance.getEntriesByType("resource")
        .filter((e) => e.name.includes("/api/events"))
        .map((e) => [e.startTime, e.responseEnd])""")
    out = []
    for s in steps:
        # The request that brought these cards: the last answer read before they appeared
        # (the page may have sent it before this scroll: its observer looks 1200 px ahead).
        done = [f for f in fetches if f[1] <= s["appeared"]]
        row = {"total_ms": s["appeared"] - s["scrolled"], "cards": s["cards"]}
        if done:
            start, end = max(done, key=lambda f: f[1])
            row.update(to_request_ms=start - s["scrolled"], request_ms=end - start,
                       to_cards_ms=s["appeared"] - end)  # fmt: skip
        out.append(row)
    return out


BUFFER = "performance.setResourceTimingBufferSize(100000)"


def first_page(page: Any, app: Review) -> dict[str, Any]:
    """Navigation (the URL with the token) → first cards in the DOM → posters in view."""
    t = time.perf_counter()
    page.goto(app.url, wait_until="commit")
    page.wait_for_function(FIRST_PAGE, polling="raf", timeout=900_000)
    wall = (time.perf_counter() - t) * 1000
    first = page.evaluate("() => ({...window.__tl, nav: performance.getEntriesByType("
                          "'navigation')[0].toJSON()})")  # fmt: skip
    # What the page fetched until its posters were in: [path, start, answer read] (ms).
    loads = page.evaluate("""(until) => performance.getEntriesByType("resource")
        .filter((e) => e.startTime <= until)
        .map((e) => [new URL(e.name).pathname.replace(/[0-9a-f]{32}/, "ID") + new URL(e.name)
                     .search.slice(0, 24), Math.round(e.startTime), Math.round(e.responseEnd)])""",
                          first["posters"])  # fmt: skip
    return {
        "waterfall": loads,
        "cards_ms": first["cards"], "posters_ms": first["posters"], "wall_ms": wall,
        "first_cards": first["n"], "visible_cards": first["visible"],
        "dom_content_loaded_ms": first["nav"]["domContentLoadedEventEnd"],
    }  # fmt: skip


def opened_at_start(browser: Any, key: Path, url: str, state: Path, creds: Path | None) -> dict:
    """`obscura review` opens the browser as soon as it listens: the page shows the loading
    state, then the timeline. Spawn → URL printed → first cards / posters in view."""
    extra = ("--credentials-file", str(creds)) if creds else ()
    app = Review(key, url, state, *extra)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        app.start()
        shown = first_page(context.new_page(), app)
        shown["url_s"] = app.url_s
        return shown
    finally:
        context.close()
        app.stop()


def browser_figures(browser: Any, app: Review, total: int) -> dict[str, Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    # Resource Timing keeps 250 entries by default: the posters would push the fetches out.
    context.add_init_script(BUFFER)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    events_requests: list[float] = []
    page.on("request", lambda r: events_requests.append(time.perf_counter())
            if "/api/events?" in r.url or r.url.endswith("/api/events") else None)  # fmt: skip
    try:
        out = first_page(page, app)
        rss_first = app.memory()
        # Scroll to the end: each page of cards comes when the sentinel nears the viewport.
        steps, t0 = [], time.perf_counter()
        count = page.evaluate("() => document.querySelectorAll('.card').length")
        while count < total:
            at = page.evaluate(SCROLL)
            try:
                page.wait_for_function(MORE, arg=count, polling="raf", timeout=60_000)
            except Exception as exc:
                raise RuntimeError(f"no more cards after {count}; page errors: {errors}") from exc
            new, appeared = page.evaluate(
                "() => [document.querySelectorAll('.card').length, window.__tl.appeared]")
            if new == count:
                break
            steps.append({"scrolled": at, "appeared": appeared, "cards": new})
            count = new
        out["scroll_total_s"] = time.perf_counter() - t0
        out["scroll_steps"] = scroll_steps(page, steps)
        out["scroll_pages"] = len(steps)
        out["scroll_page_ms"] = Summary.of([s["total_ms"] for s in out["scroll_steps"]]).as_dict()
        out["cards_at_end"] = count
        # Every poster on the way: scroll back up through the list so lazy images load.
        t = time.perf_counter()
        height = page.evaluate("() => document.documentElement.scrollHeight")
        y = height
        while y > 0:
            y -= 1800
            page.evaluate(f"() => window.scrollTo(0, {max(0, y)})")
            page.wait_for_timeout(30)
        page.wait_for_load_state("networkidle")
        out["scroll_up_s"] = time.perf_counter() - t
        out["posters_loaded"] = page.evaluate(
            "() => [...document.querySelectorAll('.card img')].filter(i => i.complete &&"
            " i.naturalWidth > 0).length")  # fmt: skip
        out["js_heap_mb"] = page.evaluate("() => performance.memory.usedJSHeapSize / 1e6")
        out["dom_nodes"] = page.evaluate("() => document.getElementsByTagName('*').length")
        out["events_requests"] = len(events_requests)
        out["rss_after_first_page"] = rss_first
        return out
    finally:
        context.close()


def load_in_process(key: Path, url: str, creds: Path | None, state: Path,
                    profiler: Any = None) -> tuple[dict[str, float], int]:  # fmt: skip
    """The library's load (verify every bridge, group events, sort, a page) here, timed by
    phase, with the time spent waiting on the bucket (SyncBucket.run) apart."""
    from argparse import Namespace

    from bridge.owner.audit import Owner
    from bridge.owner.events import events
    from bridge.owner.review.library import Library, OwnerThread, Query

    args = Namespace(identity=str(key), bucket=url, credentials_file=creds, config=None,
                     state_dir=str(state))  # fmt: skip
    owner = Owner(args)
    times = {"bucket_wait_s": 0.0}  # in the bucket loop: listing, GETs, read-ahead
    gets = [0]
    run, get_range = owner.bucket.run, owner.bucket.bucket.get_range

    def timed_run(coro: Any) -> Any:
        t = time.perf_counter()
        try:
            return run(coro)
        finally:
            times["bucket_wait_s"] += time.perf_counter() - t

    async def counted_get_range(*a: Any) -> Any:
        gets[0] += 1
        return await get_range(*a)

    owner.bucket.run = timed_run  # type: ignore[method-assign]
    owner.bucket.bucket.get_range = counted_get_range  # type: ignore[method-assign]
    try:
        if profiler is not None:
            profiler.enable()
        t = time.perf_counter()
        views = [owner.verify(b, False) for b in owner.bridges()]
        times["verify_s"] = time.perf_counter() - t
        t = time.perf_counter()
        grouped = [e for v in views for e in events(v)]
        times["group_s"] = time.perf_counter() - t
        library = Library(OwnerThread(owner))
        t = time.perf_counter()
        library._index(views)
        times["index_s"] = time.perf_counter() - t
        t = time.perf_counter()
        library.page(Query())
        times["page_s"] = time.perf_counter() - t
        if profiler is not None:
            profiler.disable()
        times["verify_cpu_s"] = times["verify_s"] - times["bucket_wait_s"]
    finally:
        owner.close()
    return {k: round(v, 3) for k, v in times.items()} | {"gets": gets[0]}, len(grouped)


def profile_load(key: Path, url: str, creds: Path | None, work: Path) -> dict[str, Any]:
    import cProfile
    import pstats

    plain, n = load_in_process(key, url, creds, work / "plain-state")
    log(f"in-process load of {n} events: {plain}")
    again, _ = load_in_process(key, url, creds, work / "plain-state")  # reads the chain ahead
    log(f"again, with the state it saved: {again}")
    prof = cProfile.Profile()
    profiled, _ = load_in_process(key, url, creds, work / "profiled-state", prof)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("cumulative")
    stats.print_stats(30)
    stats.sort_stats("tottime").print_stats(20)
    return {"plain": plain, "again": again, "profiled": profiled, "events": n,
            "stats": out.getvalue()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", type=int, default=3, help="review starts and page loads (default 3)")
    p.add_argument("--quick", action="store_true", help="1 run, 10 API requests per figure")
    p.add_argument("--s3", action="store_true", help="read the bucket from SeaweedFS")
    p.add_argument("--fresh", action="store_true", help="build the bucket again")
    p.add_argument("--profile", action="store_true", help="profile the load in this process")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    runs = 1 if args.quick else args.runs
    info = machine_info()
    bucket, key, built = timeline_bucket(args.events, args.seed, args.fresh)
    work = Path(tempfile.mkdtemp(prefix="obscura-bench-timeline-"))
    results: dict[str, Any] = {"machine": info, "chromium": chromium_version(), "bucket": built,
                               "store": "s3 (SeaweedFS)" if args.s3 else "file://"}  # fmt: skip
    try:
        with contextlib.ExitStack() as stack:
            creds: Path | None = None
            url = bucket.as_uri()
            if args.s3:
                url, creds = stack.enter_context(seaweed_copy(bucket, work))
            browser = stack.enter_context(chromium())
            measure(results, browser, key, url, creds, work, runs, 10 if args.quick else 20)
            if args.profile:  # in a thread: Playwright's loop runs in this one
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    results["profile"] = pool.submit(
                        profile_load, key, url, creds, work
                    ).result()
    finally:
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["load_at_end"] = cpu_load()
    report(results)
    emit_json(args, results)


def measure(results: dict[str, Any], browser: Any, key: Path, url: str, creds: Path | None,
            work: Path, runs: int, requests: int) -> None:  # fmt: skip
    starts, pages, at_start = [], [], []
    for i in range(runs):
        state = work / f"owner-{i}"
        for case in ("first", "again"):  # a fresh verifier state, then the one it saved
            app = start_ready(key, url, state, creds)
            try:
                row = {"case": case, "url_s": app.url_s, "ready_s": app.ready_s,
                       "rss_ready": app.memory()}  # fmt: skip
                log(f"start {i + 1}/{runs} ({case} state): URL {app.url_s:.2f} s, ready "
                    f"{app.ready_s:.2f} s, VmRSS {row['rss_ready']['VmRSS'] / 1024:.0f} MiB; "
                    f"load {cpu_load()}")  # fmt: skip
                if case == "again":
                    if i == 0:
                        results["api"] = api_figures(app, requests)
                        log(f"api: {results['api']['first_page']}")
                    shown = browser_figures(browser, app, results["api"]["total"])
                    shown["rss_end"] = app.memory()
                    pages.append(shown)
                    log(f"page {i + 1}/{runs}: cards {shown['cards_ms']:.0f} ms, posters "
                        f"{shown['posters_ms']:.0f} ms; {shown['scroll_pages']} pages scrolled "
                        f"in {shown['scroll_total_s']:.1f} s; VmRSS "
                        f"{shown['rss_end']['VmRSS'] / 1024:.0f} MiB, VmHWM "
                        f"{shown['rss_end']['VmHWM'] / 1024:.0f} MiB; "
                        f"load {cpu_load()}")  # fmt: skip
                starts.append(row)
            finally:
                app.stop()
                if "Traceback" in app.stderr:
                    log(app.stderr[-3000:])
        at_start.append(opened_at_start(browser, key, url, state, creds))
        a = at_start[-1]
        log(f"page opened at start {i + 1}/{runs}: URL {a['url_s']:.2f} s, then cards "
            f"{a['cards_ms'] / 1000:.2f} s, posters {a['posters_ms'] / 1000:.2f} s after "
            f"navigation; load {cpu_load()}")  # fmt: skip
    results["starts"], results["pages"], results["at_start"] = starts, pages, at_start


def report(results: dict[str, Any]) -> None:
    b = results["bucket"]
    print(f"\n{describe_machine(results['machine'])}; {results['chromium']}; "
          f"load at end {results['load_at_end']}")  # fmt: skip
    print(f"bucket ({results['store']}): {b['events']} events, {b['parts']} parts (+ as many "
          f"posters, ~{b['poster_bytes_mean'] // 1024} KiB), {b['objects']} objects, "
          f"{b['bucket_mb']} MB\n")  # fmt: skip
    rows = []
    for case in ("first", "again"):
        these = [s for s in results["starts"] if s["case"] == case]
        url = Summary.of([s["url_s"] for s in these])
        ready = Summary.of([s["ready_s"] for s in these])
        rss = Summary.of([s["rss_ready"]["VmRSS"] / 1024 for s in these])
        rows.append([f"start → ready ({case} verifier state)", ready.n, fmt(url.p50, 2),
                     fmt(ready.p50, 2), fmt(ready.max, 2), fmt(rss.p50, 0)])  # fmt: skip
    print(table(["", "n", "URL printed s", "ready s (p50)", "max", "VmRSS at ready MiB"], rows))
    api = results["api"]
    print()
    print(table(["GET", "n", "p50 ms", "p90 ms", "max ms"], [
        [f"/api/events (first 50 of {api['total']})", api["first_page"]["n"],
         fmt(api["first_page"]["p50"]), fmt(api["first_page"]["p90"]),
         fmt(api["first_page"]["max"])],
        ["/api/events?before=… (the oldest page)", api["last_page"]["n"],
         fmt(api["last_page"]["p50"]), fmt(api["last_page"]["p90"]), fmt(api["last_page"]["max"])],
        ["/api/events?camera=…&subject=vehicle", api["filtered_first_page"]["n"],
         fmt(api["filtered_first_page"]["p50"]), fmt(api["filtered_first_page"]["p90"]),
         fmt(api["filtered_first_page"]["max"])],
        ["/api/status", api["status"]["n"], fmt(api["status"]["p50"]), fmt(api["status"]["p90"]),
         fmt(api["status"]["max"])],
    ]))  # fmt: skip
    print(f"all {api['total']} events in pages of 50: {api['walk_pages']} requests, "
          f"{api['walk_ms']:.0f} ms")  # fmt: skip
    pages = results["pages"]
    print()
    cards = Summary.of([p["cards_ms"] for p in pages])
    posters = Summary.of([p["posters_ms"] for p in pages])
    steps = [x for p in pages for x in p["scroll_steps"]]
    rows = [
        ["ready app: navigation → first cards", cards.n, fmt(cards.p50, 0), fmt(cards.max, 0)],
        ["ready app: navigation → posters in view decoded", posters.n, fmt(posters.p50, 0),
         fmt(posters.max, 0)],
    ]  # fmt: skip
    at = results["at_start"]
    for name, values in (
        ("opened at start: spawn → URL printed", [a["url_s"] * 1000 for a in at]),
        ("opened at start: navigation → first cards", [a["cards_ms"] for a in at]),
        ("opened at start: navigation → posters in view", [a["posters_ms"] for a in at]),
        ("scroll → next page of cards in the DOM", [x["total_ms"] for x in steps]),
        ("… scroll → its /api/events request sent (< 0: before)",
         [x.get("to_request_ms", math.nan) for x in steps]),
        ("… the request (sent → answer read)", [x.get("request_ms", math.nan) for x in steps]),
        ("… answer → cards in the DOM", [x.get("to_cards_ms", math.nan) for x in steps]),
    ):  # fmt: skip
        v = Summary.of(values)
        rows.append([name, v.n, fmt(v.p50, 0), fmt(v.max, 0)])
    print(table(["in Chromium (real page)", "n", "p50 ms", "max ms"], rows))
    last = pages[-1]
    w = last["waterfall"]
    print(f"what the page fetched until its posters were in ({len(w)} requests; path, start, "
          f"answer read, ms after navigation): {json.dumps(w[:8])} … {json.dumps(w[-3:])}")
    print(f"first page: {last['first_cards']} cards, {last['visible_cards']} in view; scrolled "
          f"to {last['cards_at_end']} cards in {last['scroll_total_s']:.1f} s "
          f"({last['scroll_pages']} pages); {last['posters_loaded']} posters loaded on the way "
          f"back up; JS heap {last['js_heap_mb']:.0f} MB, "
          f"{last['dom_nodes']} DOM nodes")  # fmt: skip
    mem = [["at ready", *_mem(results["starts"][-1]["rss_ready"])],
           ["after the first page", *_mem(last["rss_after_first_page"])],
           ["after scrolling through everything", *_mem(last["rss_end"])]]  # fmt: skip
    print()
    print(table(["review process", "VmRSS MiB", "VmHWM MiB", "threads"], mem))
    if "profile" in results:
        prof = results["profile"]
        print(f"\nin-process load of {prof['events']} events (no profiler): {prof['plain']}")
        print(f"again, with the state it saved (chain read ahead): {prof['again']}")
        print(f"under cProfile: {prof['profiled']}\n{prof['stats']}")


def _mem(m: dict[str, int]) -> list[str]:
    return [fmt(m["VmRSS"] / 1024, 0), fmt(m["VmHWM"] / 1024, 0), str(m.get("Threads", "?"))]


if __name__ == "__main__":
    main()
