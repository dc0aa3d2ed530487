"""HKSV: MotionDetected event -> first mediaFragment at the home hub, and the prebuffer it carries.

    .venv/bin/python -m bench.hksv_latency [--quick] [--events N] [--gop G] [--json [FILE]]

A gst-rtsp-server camera (1280x720@15, GOP 30 = 2 s, so the recording is copied; `--gop 150`:
transcoded) serves a looping 10 s clip: the photographed person of tests/peers/scenes.py walks
across the yard (in view ~0.3-3.8 s of each loop), then the yard is empty. `obscura run`
detects people at 5 fps (`[detect] enabled`, camera `detect = {hold_seconds = 1.0}`), so each
loop raises MotionDetected once; `[cameras.hksv] post_roll_seconds = 1` (`--post-roll`), so each
recording ends (endOfStream) ~2 s after the person left, before the next loop. Once a recording
is finishing the bridge holds each fragment until the next one (the last carries endOfStream):
a transcoder slower than the event would have its first fragment held too, so measure the
transcode case with `--post-roll 4` (the default of the config) as well.

The bench's controller is the home hub (bench/_hksv.py): it selects the camera's 1280x720@15,
turns recording on, keeps one data stream open and subscribes to MotionDetected. On each true
event it does what a hub does: dataSend/open at once, then collects the recording to its
endOfStream. All times are time.monotonic() in the hub's process: the EVENT's arrival (after
aiohomekit decrypted it), the open response, the init segment and the first mediaFragment
(first chunk and last chunk; the latency is to the last: the fragment is usable then).

The first fragment's *lead*: how long before the event its first frame reached the bridge.
Media time maps to the hub's clock through the recording's end: the bridge finishes the
recording `post_roll` after MotionDetected went false (the hub sees that EVENT within a ms), it
stops taking camera packets then, and the last fragment ends one frame after the last packet
taken. So the recording's media end is at (last false EVENT + post_roll) on the hub's clock, to
within a frame, however far behind a transcoder runs. lead = event - (that offset + first pts).
A second estimate, from the live fragments (a fragment is complete when the camera's next
keyframe arrives: offset = min(arrival - media end)), agrees in copy mode and is printed as a
check; it is wrong when a transcoder lags behind the camera.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import av

from bench._common import (
    CAM_FPS,
    CAM_HEIGHT,
    CAM_WIDTH,
    Summary,
    add_common_args,
    cpu_seconds,
    describe_machine,
    emit_json,
    fmt,
    log,
    machine_info,
    rtsp_camera,
    table,
)
from bench._detect import write_crossing_clip
from bench._hksv import GOP_COPY, hksv_bridge, hksv_spec, hksv_status, ready_camera
from tests.peers.hds_recording import Recording

CAMERA = "Yard"
LOOP_S = 10.0
GOAL_P50_S = 0.5
HUB_PATIENCE_S = 5.0  # hubs cancel a recording whose data does not come within ~5 s


def media_spans(init: bytes, fragments: list[bytes]) -> list[tuple[float, float]]:
    """(first pts, end of last frame) of each fragment's video, in seconds (PyAV's mp4 demuxer
    reads each fragment's tfdt, so the times are the recording's own timeline)."""
    spans = []
    for data in fragments:
        with av.open(io.BytesIO(init + data), format="mp4") as container:
            video = container.streams.video[0]
            tb = float(video.time_base or 0)
            packets = [p for p in container.demux(video) if p.pts is not None]
            ends = [(p.pts, p.pts + (p.duration or 0)) for p in packets]
        spans.append((min(a for a, _ in ends) * tb, max(b for _, b in ends) * tb))
    return spans


def finish_trigger(
    motion: list[tuple[float, Any]], opened: float, post_roll: float
) -> float | None:
    """The false MotionDetected EVENT whose post-roll finished the recording opened at `opened`:
    the first one after it that no true EVENT follows within `post_roll`."""
    after = [(t, bool(v)) for t, v in motion if t >= opened]
    for i, (t, on) in enumerate(after):
        if not on and not any(v and u <= t + post_roll for u, v in after[i + 1 :]):
            return t
    return None


def timings(
    t_event: float, rec: Recording, motion: list[tuple[float, Any]], post_roll: float
) -> dict[str, Any]:
    """Seconds from the event to each step of one recording, and the first fragment's lead
    (`motion`: the hub's MotionDetected EVENTs, (time, value))."""
    # The recording's last fragment may be the empty one that only carries endOfStream.
    media = [f for f in rec.media if f.data]
    assert rec.response is not None and rec.init is not None and media
    assert rec.ended_at is not None
    first = media[0]
    spans = media_spans(rec.init.data, [f.data for f in media])
    t_off = finish_trigger(motion, rec.opened_at, post_roll)
    offset = None if t_off is None else t_off + post_roll - spans[-1][1]
    live = min(f.completed_at - end for f, (_, end) in zip(media, spans, strict=True))
    filmed = (offset if offset is not None else live) + spans[0][0]  # on the hub's clock
    return {
        "open_sent": rec.opened_at - t_event,
        "open_response": rec.response.at - t_event,
        "init": rec.init.completed_at - t_event,
        "first_chunk": first.started_at - t_event,
        "first_fragment": first.completed_at - t_event,
        "lead_before_event": t_event - filmed,
        "lead_before_open": rec.opened_at - filmed,
        "lead_live_estimate": t_event - (live + spans[0][0]),
        "lead_from": "end" if offset is not None else "live fragments",
        "first_fragment_seconds": spans[0][1] - spans[0][0],
        "fragments": len(media),
        "media_seconds": spans[-1][1] - spans[0][0],
        "end": rec.end,
        "problems": list(rec.problems),
    }


async def run(args: argparse.Namespace, clip: Path) -> dict[str, Any]:
    cam = rtsp_camera(gop=args.gop, mount="/yard")
    cam.file = clip
    spec = hksv_spec(CAMERA, "rtsp:#0", post_roll=args.post_roll, detect={"hold_seconds": 1.0})
    detect = {"enabled": True, "fps": 5}
    out: list[dict[str, Any]] = []
    async with hksv_bridge([spec], [cam], keep=args.keep, detect=detect) as (env, hub):
        recorder = await ready_camera(hub, CAMERA)
        await recorder.camera.watch_motion()
        await env.wait_prebuffer(CAMERA, 4.0)
        after = len(hub.events.events)
        log(f"hub ready; waiting for {args.events} events ({LOOP_S:g} s loop)")
        while len(out) < args.events:
            t_event = await recorder.camera.wait_motion(True, timeout_s=3 * LOOP_S, after=after)
            cpu0 = cpu_seconds(env.pid)
            rec = await recorder.open()
            await rec.wait_fragments(1, 60.0)
            cpu = {"bridge_cpu_to_first": cpu_seconds(env.pid) - cpu0}
            cpu["bridge_share_to_first"] = cpu["bridge_cpu_to_first"] / (time.monotonic() - t_event)
            await rec.wait_end(60.0)
            after = len(hub.events.events)  # motion during this recording belongs to it
            last = (await hksv_status(env, CAMERA))["last_recording"] or {}
            motion = recorder.camera.motion_events()
            row = (
                timings(t_event, rec, motion, args.post_roll)
                | cpu
                | {
                    "bridge_mode": last.get("mode"),
                    "bridge_ended": last.get("ended"),
                    "bridge_first_fragment_after": last.get("first_fragment_after"),
                }
            )
            out.append(row)
            log(
                f"event {len(out)}: first fragment after {row['first_fragment'] * 1000:.0f} ms, "
                f"lead {row['lead_before_event']:.2f} s, {row['fragments']} fragments, "
                f"{row['media_seconds']:.1f} s, {row['end']} ({row['bridge_mode']})"
            )
        detection = (await env.camera_status(CAMERA)).get("detection") or {}
    return {
        "events": out,
        "detection": {k: v for k, v in detection.items() if k != "events_recent"},
    }


ROWS = [
    ("open_sent", "hub sends dataSend/open"),
    ("open_response", "open response"),
    ("init", "mediaInitialization received"),
    ("first_chunk", "first mediaFragment: first chunk"),
    ("first_fragment", "**first mediaFragment received**"),
]


def report(args: argparse.Namespace, info: dict[str, Any], result: dict[str, Any]) -> None:
    events = result["events"]
    rows = []
    for key, label in ROWS:
        s = Summary.of([e[key] for e in events])
        rows.append([label, s.n, fmt(s.p50 * 1000), fmt(s.p90 * 1000), fmt(s.max * 1000)])
    print(f"\nHKSV event -> first fragment — {describe_machine(info)}")
    modes = sorted({str(e["bridge_mode"]) for e in events})
    print(
        f"camera {CAM_WIDTH}x{CAM_HEIGHT}@{CAM_FPS}, GOP {args.gop} ({'/'.join(modes)}), "
        f"post-roll {args.post_roll:g} s; "
        f"{len(events)} events, person crossing every {LOOP_S:g} s; detection 5 fps\n"
    )
    print(table(["from the MotionDetected EVENT to", "n", "p50 ms", "p90 ms", "max ms"], rows))
    print()
    rows = []
    for key, label in (
        ("lead_before_event", "first fragment's first frame, before the event"),
        ("lead_before_open", "… before the hub's open"),
        ("lead_live_estimate", "… before the event, live-fragment estimate (check)"),
        ("bridge_cpu_to_first", "bridge CPU time, event to first fragment"),
        ("bridge_share_to_first", "… as a share of one core"),
        ("first_fragment_seconds", "first fragment's length"),
        ("media_seconds", "recording length (media)"),
    ):
        s = Summary.of([e[key] for e in events])
        rows.append([label, fmt(s.p50, 2), fmt(s.min, 2), fmt(s.max, 2)])
    print(table(["seconds", "p50", "min", "max"], rows))
    first = Summary.of([e["first_fragment"] for e in events])
    ends = sorted({f"{e['end']}/{e['bridge_ended']}" for e in events})
    problems = sorted({p for e in events for p in e["problems"]})
    late = sum(1 for e in events if e["first_fragment"] > HUB_PATIENCE_S)
    print(
        f"\nends (hub/bridge): {', '.join(ends)}; problems: {problems or 'none'}; "
        f"first fragment later than {HUB_PATIENCE_S:g} s: {late}"
        f"\ngoal p50 <= {GOAL_P50_S * 1000:.0f} ms: "
        f"{'meets' if first.p50 <= GOAL_P50_S else 'MISSES'} ({fmt(first.p50 * 1000)} ms)"
    )
    emit_json(
        args,
        {
            "benchmark": "hksv_latency",
            "machine": info,
            "gop": args.gop,
            "post_roll": args.post_roll,
            **result,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--events", type=int, default=0, help="recordings to measure (12)")
    parser.add_argument(
        "--gop", type=int, default=GOP_COPY, help=f"camera GOP in frames ({GOP_COPY}: copy)"
    )
    parser.add_argument(
        "--post-roll", type=float, default=1.0, help="[cameras.hksv] post_roll_seconds (1)"
    )
    args = parser.parse_args()
    args.events = args.events or (5 if args.quick else 12)
    info = machine_info()
    log(f"machine: {describe_machine(info)}")
    with tempfile.TemporaryDirectory(prefix="obscura-bench-") as tmp:
        clip = Path(tmp) / "crossing.mp4"
        truth = write_crossing_clip(
            clip, width=CAM_WIDTH, height=CAM_HEIGHT, fps=CAM_FPS, seconds=LOOP_S,
            enter_at=0.3, cross_seconds=3.5,
        )  # fmt: skip
        log(f"clip: person in view {truth.enters:.2f}-{truth.leaves:.2f} s of each loop")
        result = asyncio.run(run(args, clip))
    report(args, info, result)


if __name__ == "__main__":
    main()
