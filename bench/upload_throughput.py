"""Encrypt + upload vs plaintext upload of the same bytes to the same SeaweedFS.

    .venv/bin/python -m bench.upload_throughput [--mb 128] [--runs 7] [--json [FILE]]

One `weed mini` on 127.0.0.1 (tests/peers/seaweed.py) and N MiB of random bytes in memory. Each
round runs four uploads in alternating order (the order flips every round):

- plaintext: the bytes streamed to S3 through obstore's multipart upload (8 MiB parts, 4 in
  flight: the bridge's settings), fed in 8 MiB chunks from an async iterator;
- encrypted: the same bytes through crypto.age.AgeWriter (one fresh X25519 recipient), 8 MiB of
  plaintext per step in a worker thread (CPU work stays off the event loop), the ciphertext fed
  to the same streaming upload: encryption of the next part overlaps the upload of the last;
- file put: a ciphertext file on disk PUT with `bucket.put(path)`, nothing else: the baseline for
- spool drain: the bridge's real upload path. The clip was encrypted into a spool entry while
  it was recorded (timed separately: "encrypt into the spool", which also hashes the S3 ETag);
  the Uploader PUTs it, HEADs it, checks size + ETag and drops the spool copy.

Ratios are reported twice: of the medians, and the median of the per-round ratios (each round's
uploads run back to back, so slow drifts of a shared machine cancel out). CPU is the process's
own (obstore's threads included) and SeaweedFS's, per MiB, from /proc.

Goal (issue 4): encrypted / plaintext >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import obstore

from bench._common import cpu_seconds, describe_machine, emit_json, log, machine_info, table
from bridge.store.backends.s3 import PART_CONCURRENCY, PART_SIZE, ObstoreBucket
from bridge.store.bucket import BucketLayout, open_bucket
from bridge.store.spool import Spool
from bridge.store.uploader import Uploader
from crypto.age import AgeWriter
from crypto.age_keys import generate_identity
from tests.peers.seaweed import SeaweedFS

MiB = 1 << 20
STEP = PART_SIZE  # bytes of plaintext per hand-over to the upload
WRITE = 64 * 1024  # the recorder's fMP4 fragments are of this order
MODES = ("plaintext", "encrypted", "file_put", "spool_drain")


class Collect:
    """An AgeWriter sink: appends to a bytearray that is handed over whole (no further copy)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes | memoryview) -> int:
        self.buf += data
        return len(data)

    def take(self) -> bytearray:
        out, self.buf = self.buf, bytearray()
        return out


async def upload_stream(bucket: ObstoreBucket, name: str, chunks: AsyncIterator[Any]) -> None:
    await obstore.put_async(
        bucket._store, name, chunks, chunk_size=PART_SIZE, max_concurrency=PART_CONCURRENCY
    )


async def run_plain(bucket: ObstoreBucket, data: bytes, name: str) -> int:
    async def chunks() -> AsyncIterator[memoryview]:
        view = memoryview(data)
        for i in range(0, len(data), STEP):
            yield view[i : i + STEP]

    await upload_stream(bucket, name, chunks())
    return len(data)


async def run_encrypted(bucket: ObstoreBucket, data: bytes, name: str, recipient: str) -> int:
    sink = Collect()
    writer = AgeWriter([recipient], sink)
    view = memoryview(data)

    def encrypt(i: int) -> bytearray:
        for j in range(i, min(i + STEP, len(data)), WRITE):
            writer.write(view[j : min(j + WRITE, i + STEP)])
        if i + STEP >= len(data):
            writer.close()
        return sink.take()

    async def chunks() -> AsyncIterator[bytearray]:
        for i in range(0, len(data), STEP):
            yield await asyncio.to_thread(encrypt, i)

    await upload_stream(bucket, name, chunks())
    return writer.size


def encrypt_into_spool(spool: Spool, data: bytes, recipient: str, name: str) -> None:
    with spool.create() as entry:
        writer = AgeWriter([recipient], entry)
        view = memoryview(data)
        for i in range(0, len(data), WRITE):
            writer.write(view[i : i + WRITE])
        writer.close()
        entry.commit(name, "clip")


async def drain(spool: Spool, bucket: ObstoreBucket) -> float:
    """Seconds from the uploader's start until the spool is empty (uploaded, verified, the
    entry forgotten; the data file's unlink runs in the background and is not counted)."""
    up = Uploader(spool, bucket)
    t = time.perf_counter()
    up.start()
    try:
        assert await up.wait_idle(120)
        return time.perf_counter() - t
    finally:
        await up.stop()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    recipient = str(generate_identity().recipient)
    info = machine_info()
    data = os.urandom(args.mb * MiB)
    work = Path(tempfile.mkdtemp(prefix="upload-bench-"))
    mib_s: dict[str, list[float]] = {m: [] for m in MODES}
    cpu_ms: dict[str, list[float]] = {m: [] for m in MODES}
    server_ms: dict[str, list[float]] = {m: [] for m in MODES}
    spool_mib_s: list[float] = []
    try:
        with SeaweedFS(root=work / "seaweed") as s3:
            assert s3.proc is not None
            server = s3.proc.pid
            bucket = open_bucket(s3.url(prefix="bench"), environ=s3.env)
            assert isinstance(bucket, ObstoreBucket)
            layout = BucketLayout(secrets.token_hex(8))
            spool = Spool(work / "spool", 4 * args.mb * MiB, etag_md5=True,
                          etag_part_size=bucket.part_size)
            cipher_file = work / "cipher.age"
            with cipher_file.open("wb") as f:
                AgeWriter([recipient], f).write(data)  # unsealed: the bytes are all that count
            # One warm-up of each (connections, volume allocation), not counted.
            await run_plain(bucket, data[: 16 * MiB], "warm-plain")
            await run_encrypted(bucket, data[: 16 * MiB], "warm-enc", recipient)
            for r in range(args.runs):
                t = time.perf_counter()
                name = layout.clip_name()
                await asyncio.to_thread(encrypt_into_spool, spool, data, recipient, name)
                spool_mib_s.append(args.mb / (time.perf_counter() - t))
                jobs: dict[str, Callable[[], Awaitable[Any]]] = {
                    "plaintext": lambda r=r: run_plain(bucket, data, f"plain-{r}"),
                    "encrypted": lambda r=r: run_encrypted(bucket, data, f"enc-{r}", recipient),
                    "file_put": lambda r=r: bucket.put(f"file-{r}", cipher_file),  # type: ignore[misc]
                    "spool_drain": lambda: drain(spool, bucket),
                }
                for mode in MODES if r % 2 == 0 else MODES[::-1]:
                    c0, s0, t0 = cpu_seconds(os.getpid()), cpu_seconds(server), time.perf_counter()
                    result = await jobs[mode]()
                    dt = result if mode == "spool_drain" else time.perf_counter() - t0
                    cpu_ms[mode].append((cpu_seconds(os.getpid()) - c0) * 1000 / args.mb)
                    server_ms[mode].append((cpu_seconds(server) - s0) * 1000 / args.mb)
                    mib_s[mode].append(args.mb / dt)
                log(f"round {r + 1}/{args.runs}: " + ", ".join(
                    f"{m} {mib_s[m][-1]:.0f}" for m in MODES) + " MiB/s")
                async for obj, _ in bucket.list(""):
                    if not obj.startswith("warm-"):
                        await bucket.delete(obj)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")

    def ratios(a: str, b: str) -> dict[str, float]:
        paired = [x / y for x, y in zip(mib_s[a], mib_s[b], strict=True)]
        return {
            "of_medians": statistics.median(mib_s[a]) / statistics.median(mib_s[b]),
            "median_paired": statistics.median(paired),
            "min_paired": min(paired),
            "max_paired": max(paired),
        }

    return {
        "machine": info,
        "mb": args.mb,
        "runs": args.runs,
        "mib_s": mib_s,
        "median_mib_s": {m: statistics.median(v) for m, v in mib_s.items()},
        "cpu_ms_per_mib": {m: statistics.median(v) for m, v in cpu_ms.items()},
        "server_cpu_ms_per_mib": {m: statistics.median(v) for m, v in server_ms.items()},
        "encrypt_into_spool_mib_s": statistics.median(spool_mib_s),
        "encrypted_over_plaintext": ratios("encrypted", "plaintext"),
        "drain_over_file_put": ratios("spool_drain", "file_put"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=128, help="MiB per upload (default 128)")
    parser.add_argument("--runs", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--quick", action="store_true", help="--mb 32 --runs 3")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.runs = 32, 3
    res = asyncio.run(bench(args))
    med, cpu, srv = res["median_mib_s"], res["cpu_ms_per_mib"], res["server_cpu_ms_per_mib"]
    print(f"\n{describe_machine(res['machine'])}")
    print(f"{args.mb} MiB per upload, {args.runs} rounds, age to 1 X25519 recipient\n")
    print(table(
        ["mode", "median MiB/s", "rounds (MiB/s)", "CPU ms/MiB (bench)", "CPU ms/MiB (weed)"],
        [
            [m, f"{med[m]:.0f}", " ".join(f"{x:.0f}" for x in res["mib_s"][m]),
             f"{cpu[m]:.2f}", f"{srv[m]:.2f}"]
            for m in MODES
        ],
    ))
    for label, key in (("encrypted / plaintext", "encrypted_over_plaintext"),
                       ("spool drain / file put", "drain_over_file_put")):
        r = res[key]
        print(f"{label}: {r['of_medians']:.2f} of medians, {r['median_paired']:.2f} median of "
              f"rounds (range {r['min_paired']:.2f}-{r['max_paired']:.2f})")
    print("goal: encrypted / plaintext >= 0.9")
    print(f"encrypt into the spool (age + SHA-256 + ETag MD5s, fsync): "
          f"{res['encrypt_into_spool_mib_s']:.0f} MiB/s")
    with contextlib.suppress(BrokenPipeError):
        emit_json(args, res)


if __name__ == "__main__":
    main()
