"""Shared plumbing of the review app's benchmarks (bench/review_playback.py, review_timeline.py).

- `recorded_event()`: a real ~30 s event — a real `obscura run` records a person crossing a
  gst-rtsp-server camera (tests/peers/owner_bucket.py, tests/peers/scenes.py) into a file://
  bucket — made once and kept under the temp dir (it takes a minute or two), reused by later
  runs unless `--fresh`.
- `timeline_bucket()`: a bucket of thousands of events sealed by the bridge's own ClipVault in
  this process (bench/review_timeline.py says what they look like), built once and cached.
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
import io
import json
import logging
import math
import random
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
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
# A timeline of many events, sealed by the bridge's ClipVault (bench/review_timeline.py)
# ----------------------------------------------------------------------------------------------

CAMERAS = ("Front porch", "Driveway", "Back yard", "Garage", "Side gate")
SUBJECTS = ((("person",), 50), (("vehicle",), 20), (("animal",), 12), (("person", "vehicle"), 12),
            (("person", "animal"), 6))  # fmt: skip
DAYS = 21
PART_S = 4.0
POSTERS = 48


# ----------------------------------------------------------------------------------------------
# The bucket
# ----------------------------------------------------------------------------------------------


def small_fmp4() -> bytes:
    """2 s of 320x180 H.264 as a fragmented MP4 (ftyp, moov, then moof/mdat per keyframe)."""
    import av
    import numpy as np

    out = io.BytesIO()
    flags = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    with av.open(out, "w", format="mp4", options=flags) as c:
        stream = c.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.options = {"g": "15", "bf": "0"}
        ramp = np.linspace(0, 200, 320, dtype=np.float32)[None, :, None]
        for i in range(30):
            img = np.broadcast_to(ramp + i * 2, (180, 320, 3))
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 15)
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return out.getvalue()


def posters(n: int = POSTERS) -> list[bytes]:
    """`n` different 640x360 JPEGs (quality 80, as the bridge renders them): a photographed
    person or cat at some point of its walk across a yard."""
    import numpy as np
    from PIL import Image

    from tests.peers.scenes import _background, _subject

    out = []
    rng = np.random.default_rng(5)
    subjects = {kind: _subject(kind, round(360 * 0.6)) for kind in ("person", "cat")}
    for i in range(n):
        frame = _background(640, 360, seed=i % 6).astype(np.int16)
        subject = subjects["person" if i % 3 else "cat"]
        sh, sw = subject.shape[:2]
        left = int(rng.integers(-sw // 2, 640 - sw // 2))
        top = 360 - sh - 18
        x0, x1 = max(0, left), min(640, left + sw)
        frame[top : top + sh, x0:x1] = subject[:, x0 - left : x1 - left]
        frame += rng.normal(0, 2, frame.shape).astype(np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def plan(n_events: int, seed: int, now: float) -> list[dict[str, Any]]:
    """The events, oldest first: camera, subjects, start, length, parts."""
    rng = random.Random(seed)
    span = DAYS * 86400.0
    starts = sorted(now - 3600 - rng.random() * span for _ in range(n_events))
    kinds, weights = zip(*SUBJECTS, strict=True)
    events = []
    for start in starts:
        length = min(60.0, max(3.0, rng.lognormvariate(math.log(12.0), 0.7)))
        events.append({
            "camera": rng.choice(CAMERAS), "subjects": rng.choices(kinds, weights)[0],
            "start": start, "length": round(length, 2), "parts": math.ceil(length / PART_S),
        })  # fmt: skip
    return events


async def seal_event(vault: Any, event: dict[str, Any], mp4: bytes, jpegs: list[bytes],
                     rng: random.Random) -> None:  # fmt: skip
    from bridge.record.clip import ClipMeta
    from crypto.padding import mp4_free_box, mp4_padding

    payload = mp4 + mp4_free_box(mp4_padding(len(mp4)))
    event_id = secrets.token_hex(16)
    for part in range(event["parts"]):
        start = event["start"] + part * PART_S
        length = min(PART_S, event["length"] - part * PART_S)
        final = part == event["parts"] - 1
        meta = ClipMeta(
            camera=event["camera"], event_id=event_id, part=part, start=start, end=start + length,
            duration=length, subjects=tuple(event["subjects"]), best_score=0.8,
            poster=rng.choice(jpegs), width=320, height=180, frames=round(length * 15),
            media_bytes=len(mp4), size=len(payload), reason="post_roll" if final else "part",
            final=final,
        )  # fmt: skip
        sink = await asyncio.to_thread(vault.sink_factory)
        await asyncio.to_thread(sink.write, payload)
        await sink.finish(meta)


async def build(where: Path, n_events: int, seed: int) -> dict[str, Any]:
    from bridge.store.config import StorageConfig
    from bridge.store.vault import ClipVault
    from crypto.age_keys import generate_identity

    identity = generate_identity()
    key = where / "owner.key"
    key.write_text(f"{identity}\n")
    key.chmod(0o600)
    state = where / "bridge-state"
    state.mkdir()
    config = StorageConfig(
        bucket=(where / "bucket").as_uri(), recipients=(str(identity.recipient),),
        retention_days=3650, heartbeat_seconds=86400,
    )  # fmt: skip
    mp4, jpegs = small_fmp4(), posters()
    events = plan(n_events, seed, time.time())
    rng = random.Random(seed + 1)
    logging.getLogger("bridge").setLevel(logging.WARNING)
    vault = ClipVault(config, state)
    await vault.start()
    t = time.monotonic()
    try:
        queue = list(events)
        done = 0

        async def worker() -> None:  # two events at a time: fsyncs overlap
            nonlocal done
            while queue:
                await seal_event(vault, queue.pop(0), mp4, jpegs, rng)
                done += 1
                if done % 200 == 0:
                    log(f"{done}/{len(events)} events sealed ({time.monotonic() - t:.0f} s)")

        await asyncio.gather(worker(), worker())
        await vault.uploader.wait_idle(timeout=600)
    finally:
        await vault.stop(drain_seconds=600)
    parts = sum(e["parts"] for e in events)
    return {
        "events": n_events, "parts": parts, "posters": parts, "cameras": len(CAMERAS),
        "days": DAYS, "seed": seed, "clip_bytes": len(mp4),
        "poster_bytes_mean": round(sum(map(len, jpegs)) / len(jpegs)),
        "build_s": round(time.monotonic() - t, 1), "built": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip


def timeline_bucket(n_events: int, seed: int, fresh: bool) -> tuple[Path, Path, dict[str, Any]]:
    where = CACHE / f"timeline-{n_events}-s{seed}"
    done = where / "bucket.json"
    # The head freezes (a verify problem) two heartbeats (2 days) after the vault stopped.
    if done.exists() and not fresh and time.time() - done.stat().st_mtime < 36 * 3600:
        return where / "bucket", where / "owner.key", json.loads(done.read_text())
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    log(f"building a bucket of {n_events} events with the bridge's ClipVault (once)")
    info = asyncio.run(build(where, n_events, seed))
    objects = sum(1 for p in (where / "bucket").rglob("*") if p.is_file())
    info["objects"] = objects
    info["bucket_mb"] = round(sum(p.stat().st_size for p in (where / "bucket").rglob("*")
                                  if p.is_file()) / 1e6, 1)  # fmt: skip
    done.write_text(json.dumps(info, indent=2))
    log(f"bucket built: {info}")
    return where / "bucket", where / "owner.key", info


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
