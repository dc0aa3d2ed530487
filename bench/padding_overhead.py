"""Padding overhead of clips (Padmé via a trailing MP4 `free` box) over realistic clip sizes.

    .venv/bin/python -m bench.padding_overhead [--quick] [--json [FILE]]

Two sets of sizes:

- real clips: fragmented MP4s encoded here with PyAV/libx264 (1280x720, 15 fps, 1 s GOP, a
  noisy moving scene so that the rate control reaches its target), 5-60 s at 0.5-4 Mbit/s;
- a dense grid: every duration from 5 to 60 s x bitrates 0.5-4 Mbit/s in 0.25 steps, each with
  20 sizes jittered +/-15% (VBR), plus fMP4 framing (1 KiB moov, 120 B per 1 s fragment).

For each: padding = the free box that brings the fMP4 to a Padmé size (crypto.padding), and the
total ciphertext overhead (padding + age header for one recipient + 16 B per 64 KiB). Also the
number of distinct padded sizes, i.e. how coarse the operator's view is. Goal (issue 4):
padding overhead <= 12%.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from fractions import Fraction

import av
import numpy as np

from bench._common import describe_machine, emit_json, log, machine_info, table
from crypto.age import encrypted_size
from crypto.padding import mp4_padding, padme

GOAL = 0.12


def encode_clip(
    seconds: int, mbps: float, fps: int = 15, size: tuple[int, int] = (1280, 720)
) -> int:
    """Bytes of a real fMP4 at ~`mbps`."""
    buf = io.BytesIO()
    kbps = int(mbps * 1000)
    with av.open(
        buf, "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    ) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {
            "preset": "ultrafast",
            "g": str(fps),
            "b": f"{kbps}k",
            "maxrate": f"{kbps}k",
            "bufsize": f"{kbps}k",
            "x264-params": "nal-hrd=cbr",
        }
        rng = np.random.default_rng(seconds)
        w, h = size
        base = rng.integers(0, 255, (h, w + 16 * seconds * fps, 3), dtype=np.uint8)
        for i in range(seconds * fps):
            img = np.ascontiguousarray(base[:, 16 * i : 16 * i + w])  # a scrolling scene
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return len(buf.getvalue())


def stats(sizes: list[int]) -> dict[str, float]:
    pads = [mp4_padding(n) / n for n in sizes]
    total = [(encrypted_size(n + mp4_padding(n)) - n) / n for n in sizes]
    return {
        "clips": len(sizes),
        "min_mb": min(sizes) / 1e6,
        "max_mb": max(sizes) / 1e6,
        "mean_pad": statistics.fmean(pads),
        "max_pad": max(pads),
        "mean_total": statistics.fmean(total),
        "max_total": max(total),
        "distinct_padded": len({n + mp4_padding(n) for n in sizes}),
    }


def grid_sizes() -> list[int]:
    rng = random.Random(4)
    out = []
    for seconds in range(5, 61):
        for quarter in range(2, 17):
            nominal = quarter / 4 * 1e6 / 8 * seconds
            for _ in range(20):
                out.append(int(nominal * rng.uniform(0.85, 1.15)) + 1024 + 120 * seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="real clips up to 15 s only")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write JSON results")
    args = parser.parse_args()
    info = machine_info()
    log(describe_machine(info))

    real: list[tuple[int, float, int]] = []
    durations = (5, 15) if args.quick else (5, 15, 30, 60)
    for seconds in durations:
        for mbps in (0.5, 1.0, 2.0, 4.0):
            t = time.perf_counter()
            n = encode_clip(seconds, mbps)
            real.append((seconds, mbps, n))
            log(
                f"real clip {seconds} s at {mbps} Mbit/s: {n / 1e6:.2f} MB "
                f"({time.perf_counter() - t:.1f} s to encode)"
            )

    rows = []
    for seconds, mbps, n in real:
        pad = mp4_padding(n)
        rows.append(
            [
                f"{seconds} s",
                f"{mbps}",
                f"{n:,}",
                f"{padme(n + pad):,}",
                f"{pad:,}",
                f"{pad / n:.2%}",
                f"{(encrypted_size(n + pad) - n) / n:.2%}",
            ]
        )
    print(
        table(
            ["length", "Mbit/s", "fMP4 bytes", "padded", "free box", "padding", "total (with age)"],
            rows,
        )
    )

    sets = {"real clips": stats([n for _, _, n in real]), "grid": stats(grid_sizes())}
    print()
    print(
        table(
            [
                "set",
                "clips",
                "sizes (MB)",
                "padding mean",
                "padding max",
                "total mean",
                "total max",
                "distinct padded sizes",
            ],
            [
                [
                    name,
                    s["clips"],
                    f"{s['min_mb']:.2f}-{s['max_mb']:.2f}",
                    f"{s['mean_pad']:.2%}",
                    f"{s['max_pad']:.2%}",
                    f"{s['mean_total']:.2%}",
                    f"{s['max_total']:.2%}",
                    s["distinct_padded"],
                ]
                for name, s in sets.items()
            ],
        )
    )
    worst = max(s["max_pad"] for s in sets.values())
    verdict = "meets" if worst <= GOAL else "MISSES"
    print(
        f"\nworst padding overhead {worst:.2%} ({verdict} the goal <= {GOAL:.0%}); "
        f"{describe_machine(info)}"
    )
    emit_json(
        args,
        {
            "machine": info,
            "real": [
                {"seconds": s, "mbps": m, "bytes": n, "padding": mp4_padding(n)} for s, m, n in real
            ],
            "sets": sets,
            "worst_padding": worst,
            "goal": GOAL,
        },
    )


if __name__ == "__main__":
    main()
