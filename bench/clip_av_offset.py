"""Audio/video offset in event clips (issue #10), the demo camera's beeps against its pictures.

    .venv/bin/python -m bench.clip_av_offset [--runs N] [--part-seconds S] [--json [FILE]]

A real `demo:` CameraSource (640x360@15, AAC 16 kHz mono whose beeps start at every multiple of
1.6 s of the same clock that draws its moving box) and a real Recorder record N events of ~4.5 s
(pre- and post-roll 1 s) in parts of S seconds, once with the camera's AAC copied and once
re-encoded as any other codec would be (decode, resample, AAC-LC). The parts are joined as the
owner's tools join them (bridge.media.mp4boxes.EventJoiner) and decoded with PyAV:

- offset: median over the event's beeps of (beep onset - the picture time the box gives for
  that instant of the demo's clock) (tests/test_clip_audio.py: av_offset); + means sound late;
- joins: the largest gap or overlap between consecutive AAC frames of the joined event (the
  part boundaries included);
- first / last: the first AAC frame's start minus the first picture's, and the last frame's end
  minus the last picture's (the track's extent: docs/clip-format.md §4.1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from bench._common import Summary, describe_machine, emit_json, fmt, log, machine_info, table
from tests.test_clip_audio import av_offset, join, record_demo, sound, transcoding


async def one(part_seconds: float) -> dict[str, float]:
    parts = await record_demo(audio=True, seconds=4.5, part_length=part_seconds)
    whole = sound(join([bytes(p.data) for p in parts]), pictures=True)
    offset, beeps = av_offset(whole)
    joins = whole.joins()
    (first, _), (last, length) = whole.packets[0], whole.packets[-1]
    return {
        "parts": len(parts),
        "beeps": beeps,
        "offset_ms": offset * 1000,
        "joins_ms": max(abs(j) for j in joins) * 1000,
        "first_ms": (first - whole.video[0]) * 1000,
        "last_ms": (last + length - whole.video[1]) * 1000,
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {"machine": machine_info(), "modes": {}}
    rows = []
    for mode in ("copy", "transcode"):
        runs = []
        for i in range(args.runs):
            with transcoding() if mode == "transcode" else contextlib.nullcontext():
                runs.append(await one(args.part_seconds))
            log(f"{mode} run {i + 1}: " + ", ".join(f"{k} {fmt(v)}" for k, v in runs[-1].items()))
        offsets = Summary.of([r["offset_ms"] for r in runs])
        results["modes"][mode] = {"runs": runs, "offset_ms": offsets.as_dict()}  # type: ignore[index]
        rows.append([
            mode, len(runs), sum(int(r["beeps"]) for r in runs), fmt(offsets.p50),
            fmt(min(r["offset_ms"] for r in runs)), fmt(max(r["offset_ms"] for r in runs)),
            fmt(max(r["joins_ms"] for r in runs), 2),
            f"{fmt(min(r['first_ms'] for r in runs))}..{fmt(max(r['first_ms'] for r in runs))}",
            f"{fmt(min(r['last_ms'] for r in runs))}..{fmt(max(r['last_ms'] for r in runs))}",
        ])  # fmt: skip
    print(describe_machine(results["machine"]))  # type: ignore[arg-type]
    headers = ["mode", "events", "beeps", "offset p50 ms", "min", "max", "joins max ms",
               "first frame ms", "last frame end ms"]  # fmt: skip
    print(table(headers, rows))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="events per mode")
    parser.add_argument("--part-seconds", type=float, default=1.0)
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE", help="also as JSON")
    args = parser.parse_args()
    emit_json(args, asyncio.run(run(args)))


if __name__ == "__main__":
    main()
