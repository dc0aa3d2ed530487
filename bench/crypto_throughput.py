"""Streaming age encryption (crypto.age.AgeWriter) vs raw ChaCha20-Poly1305, one thread.

    .venv/bin/python -m bench.crypto_throughput [--mb 256] [--runs 7] [--json [FILE]]

The baseline is what `cryptography` can do at best on the same machine: 64 KiB chunks sealed
with `ChaCha20Poly1305.encrypt_into` into one preallocated buffer, a fixed nonce, no output.
AgeWriter does the real work: header (one X25519 recipient), payload key, per-chunk nonces,
buffering of the possibly-final chunk, and a write of every sealed chunk into a sink that
discards it. Writes come in three sizes: 1 MiB (the upload pipeline's feed), 64 KiB, and 24 KiB
(about one fMP4 fragment of a 2 Mbit/s camera at 10 fragments/s).

Runs alternate between the baseline and each case; the ratio is of medians. Goal (issue 4):
AgeWriter / raw >= 0.7 for every write size. AgeReader (streaming decryption into one reused
buffer, as `obscura clips get` uses it) is shown for reference.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench._common import describe_machine, emit_json, log, machine_info, table
from crypto.age import AgeReader, AgeWriter, X25519Identity, encrypt

CHUNK = 64 * 1024
MiB = 1 << 20
GOAL = 0.7


class NullSink:
    def write(self, data: bytes | bytearray | memoryview) -> int:
        return len(data)


def raw_seconds(data: memoryview) -> float:
    aead = ChaCha20Poly1305(os.urandom(32))
    out = bytearray(CHUNK + 16)
    nonce = bytes(12)
    t = time.perf_counter()
    for i in range(0, len(data), CHUNK):
        aead.encrypt_into(nonce, data[i : i + CHUNK], None, out)
    return time.perf_counter() - t


def writer_seconds(data: memoryview, write_size: int, recipient: str) -> float:
    t = time.perf_counter()
    w = AgeWriter([recipient], NullSink())
    for i in range(0, len(data), write_size):
        w.write(data[i : i + write_size])
    w.close()
    return time.perf_counter() - t


def reader_seconds(ciphertext: bytes, identity: X25519Identity) -> float:
    t = time.perf_counter()
    for _ in AgeReader([identity], io.BytesIO(ciphertext)).chunks():
        pass
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="MiB encrypted per run")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", nargs="?", const="-", default=None, help="write JSON results")
    args = parser.parse_args()

    info = machine_info()
    log(describe_machine(info))
    data = memoryview(os.urandom(args.mb * MiB))
    identity = X25519Identity.generate()
    recipient = str(identity.recipient)
    ciphertext = encrypt([recipient], data)
    cases: dict[str, Callable[[], float]] = {
        "raw ChaCha20Poly1305.encrypt_into, 64 KiB": lambda: raw_seconds(data),
    }
    for size, label in ((MiB, "1 MiB"), (CHUNK, "64 KiB"), (24 * 1024, "24 KiB")):
        cases[f"AgeWriter, {label} writes"] = (
            lambda size=size: writer_seconds(data, size, recipient)  # type: ignore[misc]
        )
    cases["AgeReader (decryption, for reference)"] = lambda: reader_seconds(ciphertext, identity)
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for run in range(args.runs):
        for name, fn in cases.items():
            times[name].append(fn())
        log(f"run {run + 1}/{args.runs} done")

    raw_name = next(iter(cases))
    mbps = {name: len(data) / statistics.median(ts) / 1e6 for name, ts in times.items()}
    rows, results = [], {}
    for name in cases:
        ratio = mbps[name] / mbps[raw_name]
        best = len(data) / min(times[name]) / 1e6
        rows.append([name, f"{mbps[name]:.0f}", f"{best:.0f}", f"{ratio:.2f}"])
        results[name] = {"mb_per_s_median": mbps[name], "mb_per_s_best": best, "ratio": ratio}
    print(table(["case", "MB/s (median)", "MB/s (best)", "ratio to raw"], rows))
    worst = min(r["ratio"] for n, r in results.items() if n.startswith("AgeWriter"))
    verdict = "meets" if worst >= GOAL else "MISSES"
    print(
        f"\nworst AgeWriter / raw = {worst:.2f} ({verdict} the goal >= {GOAL}); "
        f"{args.mb} MiB x {args.runs} runs; {describe_machine(info)}"
    )
    emit_json(
        args,
        {
            "machine": info,
            "mb": args.mb,
            "runs": args.runs,
            "results": results,
            "worst_ratio": worst,
            "goal": GOAL,
        },
    )


if __name__ == "__main__":
    main()
