"""Shared plumbing of the review app's benchmarks (bench/review_playback.py, review_timeline.py).

- `recorded_event()`: a real ~30 s event — a real `obscura run` records a person crossing a
  gst-rtsp-server camera (tests/peers/owner_bucket.py, tests/peers/scenes.py) into a file://
  bucket — made once and kept under the temp dir (it takes a minute or two), reused by later
  runs unless `--fresh`.
- `seaweed_copy()`: SeaweedFS (tests/peers/seaweed.py) holding a copy of a bucket, and the
  credentials file `obscura review --credentials-file` reads, as tests/test_review_api.py does.
- `Review`: `obscura review` as a child process (tests/peers/review_app.py) with its pid, for
  /proc figures, and its ready time.
- `chromium()`: Debian's chromium driven by Playwright (never `playwright install`), and
  `FRAME_HOOK`, an init script that times the first frame any <video> of the page presents
  (`requestVideoFrameCallback`, registered at `loadstart`, so it fires on the very first frame)
  and checks it was drawn (a canvas copy of that frame is not blank).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._common import log, proc_status
from tests.peers.review_app import ReviewApp

CACHE = Path(tempfile.gettempdir()) / "obscura-bench-review"
CHROMIUM = "/usr/bin/chromium"


# ----------------------------------------------------------------------------------------------
# A real recorded event
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    bucket: Path  # file:// bucket a real bridge filled
    key: Path  # the owner's identity
    info: dict[str, Any]  # how it was made (camera, scene, bridge's /status storage block)


def recorded_event(
    seconds: float = 30.0,
    *,
    width: int = 1280,
    height: int = 720,
    fps: int = 15,
    kbps: int = 2000,
    fresh: bool = False,
) -> Recording:
    """A bucket with one event of about `seconds` recorded by a real bridge (cached)."""
    where = CACHE / f"event-{int(seconds)}s-{width}x{height}-{fps}fps-{kbps}k"
    done = where / "recording.json"
    # The head freezes (a verify problem) 2 heartbeats after the bridge stopped: 2 days here.
    if done.exists() and not fresh and time.time() - done.stat().st_mtime < 36 * 3600:
        return Recording(where / "bucket", where / "owner.key", json.loads(done.read_text()))
    shutil.rmtree(where / "bucket", ignore_errors=True)
    shutil.rmtree(where / "bridge", ignore_errors=True)
    where.mkdir(parents=True, exist_ok=True)
    info = _record(where, seconds, width, height, fps, kbps)
    done.write_text(json.dumps(info, indent=2))
    return Recording(where / "bucket", where / "owner.key", info)


def _record(where: Path, seconds: float, width: int, height: int, fps: int, kbps: int) -> dict:
    from tests.peers.owner_bucket import clips_sealed, obscura, recording_bridge, wait
    from tests.peers.rtsp import RtspCamera
    from tests.peers.scenes import write_crossing_clip

    key = where / "owner.key"
    key.unlink(missing_ok=True)
    out = obscura("keys", "generate", "-o", str(key))
    recipient = next(w for w in out.stdout.split() if w.startswith("age1"))
    # The astronaut cut-out is ~0.72 as wide as tall (70% of the frame's height): its centre is
    # in the frame for width / (width + its width) of the crossing, about 78% at 16:9.
    cross = seconds / 0.8
    scene = where / "person.mp4"
    if not scene.exists():  # kept: writing it takes a few minutes
        t = time.monotonic()
        log(f"writing a {width}x{height} scene: a person crossing for {cross:.0f} s")
        part = scene.with_suffix(".part.mp4")
        write_crossing_clip(part, kind="person", width=width, height=height, fps=fps,
                            seconds=cross + 14, enter_at=1.0, cross_seconds=cross)  # fmt: skip
        part.rename(scene)
        log(f"scene written in {time.monotonic() - t:.0f} s")
    log("recording it with obscura run")
    bucket = where / "bucket"
    with RtspCamera(file=scene, width=width, height=height, fps=fps, gop=fps,
                    bitrate_kbps=kbps, audio="aac", tone_hz=440.0) as cam:  # fmt: skip
        (where / "bridge").mkdir(exist_ok=True)
        bridge = recording_bridge(where / "bridge", cam.url, bucket, [recipient], 86400)
        bridge.start()
        try:
            wait(lambda: clips_sealed(bridge) >= 1, cross + 120, "the event")
            wait(lambda: bridge.status()["storage"]["uploads"]["pending_count"] == 0, 30, "uploads")
            storage = bridge.status()["storage"]
        finally:
            code = bridge.stop()
        if code != 0:
            raise RuntimeError(f"the bridge exited with {code}:\n{bridge.log_text()[-3000:]}")
    return {
        "camera": {
            "width": width, "height": height, "fps": fps, "gop": fps, "bitrate_kbps": kbps,
            "audio": "aac 16 kHz tone",
        },
        "scene": {"kind": "person", "cross_seconds": cross, "enter_at": 1.0},
        "recipient": recipient,
        "events_sealed": storage.get("events_sealed"),
        "clips_sealed": storage.get("clips_sealed"),
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# ----------------------------------------------------------------------------------------------
# SeaweedFS
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def seaweed_copy(source: Path, work: Path, bucket: str = "clips") -> Iterator[tuple[str, Path]]:
    """SeaweedFS holding a copy of the file bucket `source`: (s3:// URL, credentials file)."""
    from bridge.store.bucket import open_bucket
    from tests.peers.seaweed import SeaweedFS

    with SeaweedFS(work / "weed", buckets=(bucket,)) as s3:
        creds = work / "s3.env"
        creds.write_text("".join(f"{k}={v}\n" for k, v in s3.env.items()))
        creds.chmod(0o600)
        url = s3.url(bucket)

        files = sorted(p for p in source.rglob("*") if p.is_file())

        async def upload() -> int:
            store = open_bucket(url, creds)
            todo = list(files)

            async def worker() -> None:
                while todo:
                    path = todo.pop()
                    await store.put(str(path.relative_to(source)), path)

            try:
                await asyncio.gather(*(worker() for _ in range(8)))
            finally:
                await store.close()
            return len(files)

        t = time.monotonic()
        n = asyncio.run(upload())
        log(f"{n} objects copied into SeaweedFS in {time.monotonic() - t:.1f} s")
        yield url, creds


# ----------------------------------------------------------------------------------------------
# obscura review
# ----------------------------------------------------------------------------------------------


class Review(ReviewApp):
    """`obscura review` as a child process; `started` / `ready_s`: its start and load times."""

    def __init__(self, key: Path, bucket_url: str, state: Path, *extra: str) -> None:
        super().__init__(["--identity", str(key), "--bucket", bucket_url, *extra], state)
        self.url_s = self.ready_s = float("nan")  # spawn -> URL printed, spawn -> state ready

    def start(self, timeout: float = 60.0) -> None:
        t = time.perf_counter()
        super().start(timeout)
        self.url_s = time.perf_counter() - t
        self._t0 = t

    def wait_ready(self, timeout: float = 300.0, poll: float = 0.02) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["state"] != "loading":
                self.ready_s = time.perf_counter() - self._t0
                if status["state"] != "ready":
                    raise RuntimeError(f"review: {status['error']}\n{self.stderr[-2000:]}")
                return status
            if time.monotonic() > deadline:
                raise RuntimeError(f"review still loading after {timeout} s: {status}")
            time.sleep(poll)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def memory(self) -> dict[str, int]:
        return proc_status(self.pid)

    def media(self) -> dict[str, int]:
        return dict(self.status()["media"])


def cpu_load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ----------------------------------------------------------------------------------------------
# Chromium
# ----------------------------------------------------------------------------------------------

# Installed into every page before its own scripts. Media events do not bubble, but a capturing
# listener on the document sees them all.
FRAME_HOOK = r"""
(() => {
  const b = (window.__bench = { clicks: [], frames: [], seeks: [] });
  document.addEventListener("click", (e) => { b.clicks.push(performance.now()); }, true);
  const drawn = (v) => {
    try {
      const c = document.createElement("canvas");
      c.width = 64; c.height = 36;
      const g = c.getContext("2d");
      g.drawImage(v, 0, 0, 64, 36);
      const px = g.getImageData(0, 0, 64, 36).data;
      let sum = 0;
      for (let i = 0; i < px.length; i += 4) sum += px[i] + px[i + 1] + px[i + 2];
      return sum / (64 * 36 * 3);  // mean level: 0 is a blank (black) picture
    } catch (err) { return -1; }
  };
  b.drawn = drawn;
  document.addEventListener("loadstart", (e) => {
    const v = e.target;
    if (!(v instanceof HTMLVideoElement) || !v.getAttribute("src")) return;
    const src = v.currentSrc || v.src;
    v.requestVideoFrameCallback((now, md) => {
      b.frames.push({ src, now, presented: md.presentationTime, expected: md.expectedDisplayTime,
                      mediaTime: md.mediaTime, width: md.width, height: md.height,
                      level: drawn(v), currentTime: v.currentTime });
    });
  }, true);
  // A seek: time from setting currentTime to `seeked` and to the next frame presented.
  b.seek = (v, to) => new Promise((resolve, reject) => {
    const t0 = performance.now();
    const r = { to, t0, buffered: false };
    for (let i = 0; i < v.buffered.length; i++) {
      if (v.buffered.start(i) <= to && to < v.buffered.end(i)) r.buffered = true;
    }
    const timer = setTimeout(() => reject(new Error("no frame 10 s after a seek to " + to)), 10000);
    let seeked = false;
    v.addEventListener("seeked", () => { r.seeked = performance.now() - t0; seeked = true; },
                       { once: true });
    const frame = (now, md) => {
      // The first frame presented at the new position (a frame of the old one may be on its
      // way when currentTime is set).
      if (!seeked || Math.abs(md.mediaTime - to) > 1.5) {
        v.requestVideoFrameCallback(frame);
        return;
      }
      clearTimeout(timer);
      r.frame = now - t0; r.mediaTime = md.mediaTime; r.level = drawn(v);
      b.seeks.push(r);
      resolve(r);
    };
    v.requestVideoFrameCallback(frame);
    v.currentTime = to;
  });
})();
"""


@contextlib.contextmanager
def chromium(*, headless: bool = True) -> Iterator[Any]:
    """Playwright's Chromium = Debian's /usr/bin/chromium (no browser download)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit("no /usr/bin/chromium: apt-get install -y chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=headless,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )  # fmt: skip
        try:
            yield browser
        finally:
            browser.close()


def chromium_version() -> str:
    out = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"
