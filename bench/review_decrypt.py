"""Ranged decryption (crypto.age_random) in player-like ranges vs `age -d` of the whole file.

    .venv/bin/python -m bench.review_decrypt [--mb 30] [--runs 21] [--quick] [--json [FILE]]

The review app answers a browser's range requests by fetching and authenticating only the age
chunks they cover (docs/review.md §4). This measures what that costs against decrypting the
whole clip with stock `age -d`, on one ~30 MiB clip encrypted by stock `age` to one recipient
(random bytes: the cipher does not care what the bytes are), in a file in the page cache, read
with `os.pread` (a local stand-in for the bucket's ranged GETs; no network in these figures):

- `age -d -o /dev/null`: wall time of the process, start-up included (CPU time shown too);
- AgeReader: our streaming decryption of the whole file (reference);
- opening: header prefix, X25519 unwrap, the final chunk authenticated (once per clip part);
- sequential 1 MiB ranges from 0 to the end (a player streaming the clip);
- random seeks, 256 KiB at random offsets (a player scrubbing): ~1.25 chunks of ciphertext
  per chunk delivered, since an unaligned range touches one more chunk.

Throughput is plaintext delivered per second (MiB/s, median of runs); the ratio is against
`age -d`. Each range is decrypted afresh (the app's chunk cache would only help).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._common import describe_machine, emit_json, log, machine_info, percentile, table
from crypto.age import AgeReader, load_identities
from crypto.age_keys import X25519Identity
from crypto.age_random import AgeRandomAccess

MiB = 1 << 20
SEEK = 256 * 1024


class Counted:
    """`fetch(start, end)` by pread on a file, counting the ciphertext bytes read."""

    def __init__(self, fd: int) -> None:
        self.fd, self.bytes, self.calls = fd, 0, 0

    def fetch(self, start: int, end: int) -> bytes:
        self.bytes += end - start
        self.calls += 1
        return os.pread(self.fd, end - start, start)


def age_d(key: Path, path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of `age -d -o /dev/null`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(["age", "-d", "-i", str(key), "-o", os.devnull, str(path)], check=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def reader_seconds(ids: list[X25519Identity], path: Path) -> float:
    t = time.perf_counter()
    with open(path, "rb") as f:
        for _ in AgeReader(ids, f).chunks():
            pass
    return time.perf_counter() - t


def ranged(
    ids: list[X25519Identity], fd: int, size: int, spans: list[tuple[int, int]],
    latencies: list[float],
) -> tuple[float, int, float]:
    """Seconds to open the file and read every span; ciphertext bytes read; open seconds."""
    src = Counted(fd)
    t = time.perf_counter()
    acc = AgeRandomAccess.open_fetch(ids, src.fetch, size)
    opened = time.perf_counter() - t
    for a, b in spans:
        t1 = time.perf_counter()
        out = acc.read(a, b, src.fetch)
        latencies.append(time.perf_counter() - t1)
        assert len(out) == b - a
    return time.perf_counter() - t, src.bytes, opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=30, help="plaintext MiB of the clip")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="5 runs")
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write JSON results")
    args = parser.parse_args()
    runs = 5 if args.quick else args.runs

    info = machine_info()
    log(describe_machine(info))
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        work = Path(tmp)
        key = work / "owner.key"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        ids = load_identities(key)
        plain = work / "clip.mp4"
        plain.write_bytes(random.Random(args.seed).randbytes(args.mb * MiB + 12_345))
        clip = work / "clip.age"
        subprocess.run(["age", "-r", str(ids[0].recipient), "-o", str(clip), str(plain)],
                       check=True)
        plain.unlink()
        size = clip.stat().st_size
        fd = os.open(clip, os.O_RDONLY)
        p = AgeRandomAccess.open_fetch(ids, Counted(fd).fetch, size)
        psize = p.plaintext_size
        rng = random.Random(args.seed)
        sequential = [(a, min(a + MiB, psize)) for a in range(0, psize, MiB)]
        seeks = [(a, a + SEEK) for a in (rng.randrange(psize - SEEK) for _ in range(psize // SEEK))]
        log(f"clip: {psize} plaintext bytes, {size} ciphertext, {p.chunk_count} chunks; "
            f"{len(sequential)} sequential 1 MiB ranges, {len(seeks)} seeks of 256 KiB")

        lat: dict[str, list[float]] = {"sequential": [], "seeks": []}
        opens: list[float] = []
        read_bytes: dict[str, int] = {}
        cpu_age: list[float] = []

        def age_case() -> float:
            wall, cpu = age_d(key, clip)
            cpu_age.append(cpu)
            return wall

        def ranged_case(name: str, spans: list[tuple[int, int]]) -> Callable[[], float]:
            def run() -> float:
                seconds, nbytes, opened = ranged(ids, fd, size, spans, lat[name])
                read_bytes[name] = nbytes
                opens.append(opened)
                return seconds
            return run

        cases: dict[str, tuple[Callable[[], float], int]] = {
            "age -d (whole file, process wall time)": (age_case, psize),
            "AgeReader (whole file, streaming)": (lambda: reader_seconds(ids, clip), psize),
            "ranged: sequential 1 MiB ranges": (ranged_case("sequential", sequential), psize),
            "ranged: random seeks of 256 KiB": (ranged_case("seeks", seeks), SEEK * len(seeks)),
        }
        for fn, _ in cases.values():  # warm-up (page cache, imports)
            fn()
        for v in (*lat.values(), opens, cpu_age):
            v.clear()
        times: dict[str, list[float]] = {name: [] for name in cases}
        middle: list[float] = []  # a click to the middle: a fresh open + one seek, 10 in a row
        for run in range(runs):
            for name, (fn, _) in cases.items():
                times[name].append(fn())
            for _ in range(10):
                middle.append(ranged(ids, fd, size, [(psize // 2, psize // 2 + SEEK)], [])[0])
            log(f"run {run + 1}/{runs} done")
        os.close(fd)

    base = next(iter(cases))
    speed = {n: cases[n][1] / statistics.median(ts) / MiB for n, ts in times.items()}
    rows, results = [], {}
    for name, (_, delivered) in cases.items():
        best = delivered / min(times[name]) / MiB
        ratio = speed[name] / speed[base]
        rows.append([name, f"{speed[name]:.0f}", f"{best:.0f}", f"{ratio:.2f}"])
        results[name] = {"mib_per_s_median": speed[name], "mib_per_s_best": best,
                         "ratio_to_age_d": ratio}
    print(table(["case", "MiB/s (median)", "MiB/s (best)", "ratio to age -d"], rows))
    seq_ms = [x * 1e3 for x in lat["sequential"]]
    seek_ms = [x * 1e3 for x in lat["seeks"]]
    open_ms = [x * 1e3 for x in opens]
    amp = {n: read_bytes[n] / cases[f"ranged: {d}"][1]
           for n, d in (("sequential", "sequential 1 MiB ranges"),
                        ("seeks", "random seeks of 256 KiB"))}
    print()
    print(table(
        ["per request", "p50 ms", "p90 ms", "ciphertext read / plaintext served"],
        [["open (header, unwrap, final chunk)", f"{percentile(open_ms, 50):.2f}",
          f"{percentile(open_ms, 90):.2f}", "-"],
         ["1 MiB range", f"{percentile(seq_ms, 50):.2f}", f"{percentile(seq_ms, 90):.2f}",
          f"{amp['sequential']:.3f}"],
         ["256 KiB seek", f"{percentile(seek_ms, 50):.2f}", f"{percentile(seek_ms, 90):.2f}",
          f"{amp['seeks']:.3f}"]],
    ))
    age_cpu = psize / statistics.median(cpu_age) / MiB
    middle_ms = statistics.median(middle) * 1e3
    age_ms = statistics.median(times[base]) * 1e3
    print(f"\nthe middle of the clip (a fresh open + 256 KiB): {middle_ms:.2f} ms; age -d of the "
          f"whole clip: {age_ms:.0f} ms ({age_ms / middle_ms:.0f}x)")
    print(f"age -d by CPU time: {age_cpu:.0f} MiB/s; {psize / MiB:.1f} MiB clip x {runs} runs; "
          f"{describe_machine(info)}")
    emit_json(args, {
        "machine": info, "plaintext_bytes": psize, "ciphertext_bytes": size, "runs": runs,
        "results": results, "age_d_cpu_mib_per_s": age_cpu,
        "middle_open_and_seek_ms": middle_ms, "age_d_ms": age_ms,
        "latency_ms": {"open_p50": percentile(open_ms, 50), "range_1mib_p50":
                       percentile(seq_ms, 50), "seek_256kib_p50": percentile(seek_ms, 50)},
        "read_amplification": amp,
    })


if __name__ == "__main__":
    main()
