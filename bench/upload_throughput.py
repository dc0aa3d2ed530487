"""Encrypt-while-uploading vs plaintext upload of the same bytes to the same SeaweedFS.

    .venv/bin/python -m bench.upload_throughput [--mb 128] [--runs 5] [--json [FILE]]

One `weed mini` on 127.0.0.1 (tests/peers/seaweed.py), N MiB of random bytes in memory, and for
each run, in alternating order:

- plaintext: the bytes streamed to S3 through obstore's multipart upload (8 MiB parts, 4 in
  flight — the bridge's settings), fed as 1 MiB chunks from an async iterator;
- encrypted: the same bytes written into crypto.age.AgeWriter in a worker thread, its ciphertext
  fed through a bounded queue into the same kind of streaming upload (encryption and upload
  overlap, as they would for a clip going straight to the bucket);
- spool path (the bridge's real path, for reference): encrypt into a spool entry (fsync'd file),
  then the Uploader uploads it and verifies it (SHA-256 + MD5 ETag re-read): sequential stages.

The goal (issue 4) is encrypted / plaintext >= 0.9. The "encrypted" rows use the real
crypto.age.AgeWriter to one fresh X25519 recipient (crypto.age_keys.generate_identity()).
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
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import obstore

from bench._common import describe_machine, emit_json, log, machine_info, table
from bridge.store.backends.s3 import PART_CONCURRENCY, PART_SIZE, ObstoreBucket
from bridge.store.bucket import BucketLayout, open_bucket
from bridge.store.spool import Spool
from bridge.store.uploader import Uploader
from crypto.age import AgeWriter
from crypto.age_keys import generate_identity
from tests.peers.seaweed import SeaweedFS

MiB = 1 << 20
FEED = MiB  # bytes per chunk handed to the uploader


class Sink(Protocol):
    def write(self, data: bytes | memoryview) -> int: ...


class Writer(Protocol):
    def write(self, data: bytes | memoryview) -> Any: ...
    def close(self) -> Any: ...


def writer_factory() -> tuple[Callable[[list[str], Sink], Writer], list[str], str]:
    """(AgeWriter, recipients, label): one fresh X25519 recipient, as a bridge would have."""
    recipient = str(generate_identity().recipient)
    return AgeWriter, [recipient], "age (crypto/age.py AgeWriter, X25519, 1 recipient)"


class QueueSink:
    """Thread side of the pipe: batches writes into FEED-sized chunks for the upload task."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytearray | None]
    ) -> None:
        self.loop = loop
        self.queue = queue
        self.buf = bytearray(FEED)
        self.fill = 0
        self.total = 0

    def write(self, data: bytes | memoryview) -> int:
        # One copy into a fresh FEED-sized buffer (the writer may reuse its own), which is then
        # handed over whole: no further copies on this side.
        view = memoryview(data).cast("B")
        n = len(view)
        self.total += n
        while view:
            take = min(len(view), FEED - self.fill)
            self.buf[self.fill : self.fill + take] = view[:take]
            self.fill += take
            view = view[take:]
            if self.fill == FEED:
                self._send(self.buf)
                self.buf, self.fill = bytearray(FEED), 0
        return n

    def finish(self) -> None:
        if self.fill:
            self._send(self.buf[: self.fill])
        self._send(None)

    def _send(self, item: bytearray | None) -> None:
        # Blocks this thread while the queue is full: bounded memory, real backpressure.
        asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop).result()


async def upload_stream(bucket: ObstoreBucket, name: str, chunks: AsyncIterator[Any]) -> None:
    await obstore.put_async(
        bucket._store, name, chunks, chunk_size=PART_SIZE, max_concurrency=PART_CONCURRENCY
    )


async def run_plain(bucket: ObstoreBucket, data: bytes, name: str) -> float:
    async def chunks() -> AsyncIterator[bytes]:
        view = memoryview(data)
        for i in range(0, len(data), FEED):
            yield view[i : i + FEED]  # type: ignore[misc]

    t = time.perf_counter()
    await upload_stream(bucket, name, chunks())
    return time.perf_counter() - t


async def run_encrypted(
    bucket: ObstoreBucket,
    data: bytes,
    name: str,
    make: Callable[[list[str], Sink], Writer],
    recipients: list[str],
) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytearray | None] = asyncio.Queue(maxsize=8)
    sink = QueueSink(loop, queue)

    def encrypt() -> None:
        try:
            writer = make(recipients, sink)
            view = memoryview(data)
            for i in range(0, len(data), 64 * 1024):
                writer.write(view[i : i + 64 * 1024])
            writer.close()
        finally:
            sink.finish()

    async def chunks() -> AsyncIterator[bytearray]:
        while (item := await queue.get()) is not None:
            yield item

    t = time.perf_counter()
    worker = threading.Thread(target=encrypt, name="encrypt")
    worker.start()
    await upload_stream(bucket, name, chunks())
    elapsed = time.perf_counter() - t
    await asyncio.to_thread(worker.join)
    return elapsed, sink.total


async def run_spool_path(
    bucket: ObstoreBucket,
    data: bytes,
    spool: Spool,
    layout: BucketLayout,
    make: Callable[[list[str], Sink], Writer],
    recipients: list[str],
) -> tuple[float, float, str]:
    name = layout.clip_name()

    def encrypt() -> None:
        with spool.create() as entry:
            writer = make(recipients, entry)
            view = memoryview(data)
            for i in range(0, len(data), 64 * 1024):
                writer.write(view[i : i + 64 * 1024])
            writer.close()
            entry.commit(name, "clip")

    done = asyncio.Event()
    up = Uploader(spool, bucket, on_uploaded=lambda item: done.set())
    t = time.perf_counter()
    await asyncio.to_thread(encrypt)
    t_spooled = time.perf_counter()
    up.start()
    await done.wait()
    elapsed = time.perf_counter() - t
    await up.stop()
    return elapsed, t_spooled - t, name


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    make, recipients, label = writer_factory()
    info = machine_info()
    log(f"writer: {label}")
    data = os.urandom(args.mb * MiB)
    work = Path(tempfile.mkdtemp(prefix="upload-bench-"))
    results: dict[str, list[float]] = {"plaintext": [], "encrypted": [], "spool_path": []}
    spool_encrypt: list[float] = []
    try:
        with SeaweedFS(root=work / "seaweed") as s3:
            bucket = open_bucket(s3.url(prefix="bench"), environ=s3.env)
            assert isinstance(bucket, ObstoreBucket)
            spool = Spool(work / "spool", 4 * args.mb * MiB)
            layout = BucketLayout(secrets.token_hex(8))
            # One warm-up of each (connections, volume allocation), not counted.
            await run_plain(bucket, data[: 16 * MiB], "warm-plain")
            await run_encrypted(bucket, data[: 16 * MiB], "warm-enc", make, recipients)
            for r in range(args.runs):
                order = ["plaintext", "encrypted"] if r % 2 == 0 else ["encrypted", "plaintext"]
                for mode in order:
                    name = f"{mode}-{r}"
                    if mode == "plaintext":
                        dt = await run_plain(bucket, data, name)
                    else:
                        dt, size = await run_encrypted(bucket, data, name, make, recipients)
                        head = await bucket.head(name)
                        assert head is not None and head.size == size
                    results[mode].append(args.mb / dt)
                    log(f"run {r + 1}/{args.runs} {mode}: {args.mb / dt:.0f} MiB/s")
                    await bucket.delete(name)
                dt, enc, obj = await run_spool_path(bucket, data, spool, layout, make, recipients)
                results["spool_path"].append(args.mb / dt)
                spool_encrypt.append(args.mb / enc)
                log(
                    f"run {r + 1}/{args.runs} spool path: {args.mb / dt:.0f} MiB/s "
                    f"(encrypt into spool {args.mb / enc:.0f} MiB/s)"
                )
                await bucket.delete(obj)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "machine": info,
        "writer": label,
        "mb": args.mb,
        "runs": args.runs,
        "mib_s": results,
        "median_mib_s": med,
        "spool_encrypt_mib_s": statistics.median(spool_encrypt),
        "ratio_encrypted_over_plaintext": med["encrypted"] / med["plaintext"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=128, help="MiB per upload (default 128)")
    parser.add_argument("--runs", type=int, default=5, help="runs per mode (default 5)")
    parser.add_argument("--quick", action="store_true", help="--mb 32 --runs 3")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.runs = 32, 3
    res = asyncio.run(bench(args))
    med = res["median_mib_s"]
    print(f"\n{describe_machine(res['machine'])}")
    print(f"{args.mb} MiB per upload, {args.runs} runs per mode, writer: {res['writer']}\n")
    print(
        table(
            ["mode", "median MiB/s", "runs (MiB/s)"],
            [
                [k, f"{med[k]:.0f}", " ".join(f"{x:.0f}" for x in v)]
                for k, v in res["mib_s"].items()
            ],
        )
    )
    print(f"\nencrypted / plaintext = {res['ratio_encrypted_over_plaintext']:.2f} (goal >= 0.9)")
    print(f"spool path: encrypt into the spool {res['spool_encrypt_mib_s']:.0f} MiB/s, then upload")
    with contextlib.suppress(BrokenPipeError):
        emit_json(args, res)


if __name__ == "__main__":
    main()
