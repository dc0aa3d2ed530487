"""Event end → clip durable in the bucket (issue #4), `obscura run` on loopback.

    .venv/bin/python -m bench.clip_durable [--quick] [--visits N] [--post-roll P]
                                           [--file-bucket] [--json [FILE]]

A gst-rtsp-server camera (640x360@15) serves a looping 8 s clip: tests/peers/scenes.py's
photographed person crosses the yard (in view ~0.5-3.5 s), then the yard is empty. `obscura
run` analyses it at 5 fps (camera `detect = {hold_seconds = 1.0}`) and records clips
(`pre_roll_seconds = 1`, `post_roll_seconds = P`, one age recipient) into a SeaweedFS bucket
(`weed mini` on 127.0.0.1, tests/peers/seaweed.py; `--file-bucket`: a file:// bucket instead).

What is measured, per clip:

- `ended_at` of the visit: the newest `ended_at` (the track's last sighting, wall clock) of the
  track `end` records in the status API's `events_recent` that fall inside the clip, and the
  newest `detected_at` of those records (when the bridge decided the track was over: `hold`
  seconds after the last sighting). The recorder can close the clip no earlier than
  `close_floor = max(detected_at, ended_at + P)`: before the end is detected it does not know
  the visit is over, and after that it must still record the post-roll. The clip's last frame
  must also reach the bridge (camera latency) — that stays in the measurement.
- `durable_at`: the first time the clip's object shows in the bucket listing (polled every
  50 ms from this process, so ±25 ms of quantisation). The object is complete by then: S3
  objects and the file bucket's renamed files appear only when whole.

Reported: `durable_at - close_floor` ("event end → durable", the goal: p50 ≤ 2 s), and for
reference `durable_at - detected_at` and `durable_at - ended_at` (the latter includes the whole
post-roll). Clips are identified afterwards with the owner's key: the manifest (verified, no
problems allowed) gives each clip's object id, start and end. Bridge, camera and bench share
the box's wall clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import (
    Summary,
    add_common_args,
    describe_machine,
    emit_json,
    fmt,
    log,
    machine_info,
    table,
)
from bridge.store.bucket import BucketLayout, open_bucket
from crypto.age_keys import generate_identity
from crypto.manifest import ManifestVerifier
from tests.peers.bridge_process import BridgeProcess, CameraSpec
from tests.peers.rtsp import RtspCamera
from tests.peers.scenes import write_crossing_clip
from tests.peers.seaweed import SeaweedFS

CAMERA = "Drive"
GOAL_P50_S = 2.0
LOOP_S = 8.0
POLL_S = 0.05


async def watch_bucket(
    bucket: Any, seen: dict[str, tuple[float, int]], stop: asyncio.Event
) -> None:
    """Record the first time each object name shows in the listing."""
    while not stop.is_set():
        try:
            async for name, size in bucket.list(""):
                if name not in seen:
                    seen[name] = (time.time(), size)
        except Exception as exc:  # a transient listing error: keep polling
            log(f"listing failed: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)


async def watch_events(
    bridge: BridgeProcess, records: dict[tuple[Any, ...], dict[str, Any]], stop: asyncio.Event
) -> None:
    """events_recent holds the last 10 records: poll often enough to keep every one."""
    while not stop.is_set():
        try:
            cam = await asyncio.to_thread(bridge.camera_status, CAMERA)
            for r in (cam.get("detection") or {}).get("events_recent", []):
                records[(r["track_id"], r["kind"], r["detected_at"])] = r
        except Exception as exc:
            log(f"status failed: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def run(args: argparse.Namespace, work: Path, clip: Path) -> dict[str, Any]:
    identity = generate_identity()
    recipient = str(identity.recipient)
    with contextlib.ExitStack() as stack:
        cam = stack.enter_context(RtspCamera(file=clip, width=640, height=360, fps=15))
        if args.file_bucket:
            url = (work / "bucket").as_uri()
            storage: dict[str, Any] = {"bucket": url}
            creds: Path | None = None
        else:
            s3 = stack.enter_context(SeaweedFS(work / "weed"))
            url = s3.url(prefix="home/")
            creds = work / "s3.env"
            creds.write_text("".join(f"{k}={v}\n" for k, v in s3.env.items()))
            creds.chmod(0o600)
            storage = {"bucket": url, "credentials_file": str(creds)}
        storage |= {
            "recipients": [recipient],
            "pre_roll_seconds": 1.0,
            "post_roll_seconds": args.post_roll,
            "heartbeat_seconds": 300,
        }
        bridge = BridgeProcess(
            work,
            [CameraSpec(CAMERA, cam.url, {"detect": {"hold_seconds": args.hold}})],
            detect={"enabled": True, "fps": 5},
            storage=storage,
        )
        bucket = open_bucket(url, creds)
        seen: dict[str, tuple[float, int]] = {}
        records: dict[tuple[Any, ...], dict[str, Any]] = {}
        stop = asyncio.Event()
        await asyncio.to_thread(bridge.start)
        tasks = [
            asyncio.create_task(watch_bucket(bucket, seen, stop)),
            asyncio.create_task(watch_events(bridge, records, stop)),
        ]
        try:
            await asyncio.to_thread(bridge.wait_camera, CAMERA, "streaming", 60.0)
            log(f"streaming; waiting for {args.visits} clips ({LOOP_S:.0f} s loop)")
            deadline = time.monotonic() + args.visits * LOOP_S + 60.0
            storage_status: dict[str, Any] = {}
            while time.monotonic() < deadline:
                storage_status = (await asyncio.to_thread(bridge.status))["storage"] or {}
                up = storage_status.get("uploads") or {}
                if storage_status.get("events_sealed", 0) >= args.visits and not up.get(
                    "pending_count"
                ):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.5)  # the manifest head follows its segments
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            rc = await asyncio.to_thread(bridge.stop)
            text = bridge.log_text()
            if rc not in (0, None) or "Traceback" in text:
                log(f"bridge exited with {rc}:\n{text[-3000:]}")
        # Everything in the bucket after the stop (the head is re-uploaded on the way out).
        names = [n async for n, _ in bucket.list("")]
        (bridge_id,) = BucketLayout.bridge_ids(names)
        layout = BucketLayout(bridge_id)
        objects = {n.rsplit("/", 1)[1]: n for n in names}
        blobs = {oid: await bucket.get(name) for oid, name in objects.items()}
        await bucket.close()
    head = layout.well_known_name("manifest-head").rsplit("/", 1)[1]
    report = ManifestVerifier(
        [identity],
        head_id=head,
        get=blobs.get,
        list=lambda: [(oid, len(b or b"")) for oid, b in blobs.items()],
    ).verify()
    ends = [r for r in records.values() if r["kind"] == "end"]
    rows = []
    # An event is sealed in parts (docs/clip-format.md §8): it is durable once its final part
    # is in the bucket; its span is that of all its parts.
    spans: dict[str, tuple[int, int]] = {}
    for c in report.clips:
        key = c.event or c.id
        lo, hi = spans.get(key, (c.start_ms, c.end_ms))
        spans[key] = (min(lo, c.start_ms), max(hi, c.end_ms))
    for c in sorted((c for c in report.clips if c.final), key=lambda c: c.start_ms):
        start_ms, end_ms = spans[c.event or c.id]
        start, end = start_ms / 1000, end_ms / 1000
        inside = [r for r in ends if start <= (r["ended_at"] or r["detected_at"]) <= end]
        name = objects.get(c.id)
        if not inside or name is None or name not in seen:
            rows.append({"clip": c.id, "skipped": "no end record inside the clip or unseen"})
            continue
        ended_at = max(r["ended_at"] or r["detected_at"] for r in inside)
        detected_at = max(r["detected_at"] for r in inside)
        floor = max(detected_at, ended_at + args.post_roll)
        durable_at = seen[name][0]
        rows.append({
            "clip": c.id,
            "seconds": round(end - start, 2),
            "size": c.size,
            "ended_at": ended_at,
            "detected_at": detected_at,
            "durable_at": durable_at,
            "after_close_floor": durable_at - floor,
            "after_detected": durable_at - detected_at,
            "after_ended": durable_at - ended_at,
        })
    return {
        "clips": rows,
        "problems": [str(p) for p in report.problems],
        "storage": storage_status,
        "bucket": "file" if args.file_bucket else "seaweedfs-s3",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--visits", type=int, default=None, help="clips to measure (12; quick 5)")
    parser.add_argument("--post-roll", type=float, default=1.0, help="post_roll_seconds (1)")
    parser.add_argument("--hold", type=float, default=1.0, help="camera hold_seconds (1)")
    parser.add_argument("--file-bucket", action="store_true", help="file:// bucket, not S3")
    args = parser.parse_args()
    args.visits = args.visits or (5 if args.quick else 12)
    info = machine_info()
    log(f"machine: {describe_machine(info)}")
    work = Path(tempfile.mkdtemp(prefix="obscura-bench-durable-"))
    try:
        clip = work / "person.mp4"
        write_crossing_clip(clip, kind="person", seconds=LOOP_S, enter_at=0.5, cross_seconds=3.0)
        result = asyncio.run(run(args, work, clip))
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    clips = [r for r in result["clips"] if "skipped" not in r]
    rows, js = [], {}
    for key, label in (
        ("after_close_floor", "event end → durable (max(detected_at, ended_at + P))"),
        ("after_detected", "end record detected_at → durable"),
        ("after_ended", "last sighting ended_at → durable (includes P)"),
    ):
        s = Summary.of([r[key] for r in clips])
        js[key] = s.as_dict(1, 3)
        rows.append([label, s.n, f"**{fmt(s.p50, 2)}**", fmt(s.p90, 2), fmt(s.min, 2),
                     fmt(s.max, 2)])
    print()
    print(f"{describe_machine(info)}")
    print(f"bucket: {result['bucket']}; post_roll {args.post_roll} s, hold {args.hold} s, "
          f"pre_roll 1 s; poll {POLL_S * 1000:.0f} ms")
    print(table(["interval", "n", "p50 s", "p90 s", "min s", "max s"], rows))
    skipped = len(result["clips"]) - len(clips)
    sizes = [r["size"] for r in clips]
    print(f"clips: {len(clips)} measured, {skipped} skipped; sizes {min(sizes, default=0)}-"
          f"{max(sizes, default=0)} B; manifest problems: {result['problems'] or 'none'}")
    print(f"goal: p50 <= {GOAL_P50_S:.0f} s")
    emit_json(args, {"benchmark": "clip_durable", "machine": info, "summary_s": js,
                     "post_roll": args.post_roll, "hold": args.hold, **result})


if __name__ == "__main__":
    main()
