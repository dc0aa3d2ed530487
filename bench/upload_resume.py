"""Uploader resume time after an S3 outage: the server is back (ready) → the first upload done.

    .venv/bin/python -m bench.upload_resume [--outages 10] [--outage-seconds 20] [--json [FILE]]
    .venv/bin/python -m bench.upload_resume --quick        # 3 outages of 10 s
    .venv/bin/python -m bench.upload_resume --no-probe     # the uploads' backoff alone (before)

One `weed mini` on 127.0.0.1 (tests/peers/seaweed.py), a spool and the bridge's `Uploader` with
its defaults (backoff 1 s doubling to 300 s, a probe every 2 s while uploads fail). Each outage:
the server is stopped (SIGTERM; `--kill`: SIGKILL), a 256 KiB entry is committed (recording goes
on), the outage lasts `--outage-seconds` (the uploads' backoff grows meanwhile), then the server
is started again and `ready` is when `SeaweedFS.start()` returns: S3 answers a LIST of the
bucket. Measured from `ready`, polled every 5 ms:

- probe: the uploader's probe finds the bucket back (`unreachable_since` cleared);
- first upload: the entry committed during the outage is uploaded and verified;
- writable: a PUT of 1 byte by another client, sent at `ready`, is done. After a restart
  SeaweedFS answers reads at once but can hold writes for a few seconds more (its master waits
  for the volume server's report: seen 0-20 s), whoever sends them. `first upload - writable`
  is then the uploader's own delay (negative: its upload was first).

`backoff left` is what the uploads' own backoff still had to run at `ready` (none when an
upload was under way then).

Goal (issue #8): the uploader notices the bucket's return within 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import Summary, describe_machine, emit_json, fmt, log, machine_info, table
from bridge.store.bucket import BucketError, BucketLayout, open_bucket
from bridge.store.spool import Spool
from bridge.store.uploader import Uploader
from tests.peers.seaweed import SeaweedFS

KiB = 1 << 10
ENTRY = 256 * KiB
POLL = 0.005


def commit(spool: Spool, layout: BucketLayout, rng: random.Random) -> None:
    with spool.create() as entry:
        entry.write(rng.randbytes(ENTRY))
        entry.commit(layout.clip_name(), "clip")


async def wait(cond: Any, timeout: float) -> float | None:
    """Monotonic time `cond()` first held, or None after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(POLL)
    return time.monotonic()


async def writable(server: SeaweedFS) -> float:
    """When a 1-byte PUT by a client of our own first succeeds."""
    bucket = open_bucket(server.url(prefix="writable"), environ=server.env)
    try:
        while True:
            try:
                await bucket.put(f"w{secrets.token_hex(8)}", b"w")
                return time.monotonic()
            except BucketError:
                await asyncio.sleep(POLL)
    finally:
        await bucket.close()


async def one_outage(
    server: SeaweedFS, spool: Spool, up: Uploader, layout: BucketLayout, rng: random.Random,
    seconds: float, kill: bool,
) -> dict[str, float | None]:
    assert await up.wait_idle(60), "the spool did not drain before the outage"
    done = up.uploaded_count
    await asyncio.to_thread(server.kill if kill else server.stop)
    down_at = time.monotonic()
    await asyncio.to_thread(commit, spool, layout, rng)
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - down_at)))
    await asyncio.to_thread(server.start)
    ready = time.monotonic()
    failures, retry_at = up.failures, up.next_retry_at
    backoff_left = None if retry_at is None else max(0.0, retry_at - time.time())
    # With --no-probe nothing marks the bucket down: this row is then left out.
    probe_task = asyncio.ensure_future(wait(lambda: up.unreachable_since is None, 400))
    writable_task = asyncio.ensure_future(writable(server))
    uploaded = await wait(lambda: up.uploaded_count > done, 400)
    probed, wrote = await probe_task, await writable_task
    return {
        "probe_s": None if probed is None else max(0.0, probed - ready),
        "upload_s": None if uploaded is None else uploaded - ready,
        "writable_s": wrote - ready,
        "upload_after_writable_s": None if uploaded is None else uploaded - wrote,
        "failures_before": float(failures),
        "backoff_left_s": backoff_left,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="obscura-resume-"))
    rows: list[dict[str, float | None]] = []
    try:
        with SeaweedFS(work / "weed") as server:
            bucket = open_bucket(server.url(prefix="resume"), environ=server.env)
            spool = Spool(work / "spool", 1 << 30, etag_md5=bucket.md5_etags,
                          etag_part_size=bucket.part_size)
            layout = BucketLayout(secrets.token_hex(8))
            up = Uploader(spool, bucket, rng=random.Random(rng.random()),
                          probe_interval=1e9 if args.no_probe else 2.0)
            up.start()
            try:
                await asyncio.to_thread(commit, spool, layout, rng)  # warm: one upload first
                for i in range(args.outages):
                    row = await one_outage(server, spool, up, layout, rng, args.outage_seconds,
                                           args.kill)
                    rows.append(row)
                    log(f"outage {i + 1}/{args.outages}: probe {fmt(row['probe_s'], 2)} s, "
                        f"first upload {fmt(row['upload_s'], 2)} s after ready, writable "
                        f"{fmt(row['writable_s'], 2)} s "
                        f"({row['failures_before']:.0f} failed uploads, backoff "
                        f"{fmt(row['backoff_left_s'], 1)} s left)")
            finally:
                await up.stop()
                await bucket.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outages", type=int, default=10)
    parser.add_argument("--outage-seconds", type=float, default=20.0)
    parser.add_argument("--kill", action="store_true", help="SIGKILL the server (default SIGTERM)")
    parser.add_argument("--no-probe", action="store_true",
                        help="no probe: the uploads' own backoff alone (the behaviour before)")
    parser.add_argument("--quick", action="store_true", help="3 outages of 10 s")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--verbose", action="store_true", help="the uploader's INFO log")
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quick:
        args.outages, args.outage_seconds = 3, 10.0
    info = machine_info()
    results = asyncio.run(run(args))
    rows = results["rows"]
    print(describe_machine(info))
    print(f"{args.outages} outages of {args.outage_seconds:g} s "
          f"({'SIGKILL' if args.kill else 'SIGTERM'}), probe "
          f"{'off' if args.no_probe else 'every 2 s'}; seconds after the server is ready")
    stats = {}
    table_rows = []
    keys = [("probe_s", "probe finds it back")] if not args.no_probe else []
    for key, label in [*keys, ("upload_s", "first upload done"),
                       ("writable_s", "server writable (another client)"),
                       ("upload_after_writable_s", "first upload - writable")]:
        values = [r[key] for r in rows if r[key] is not None]
        s = Summary.of(values)  # type: ignore[arg-type]
        stats[key] = s.as_dict()
        missing = len(rows) - len(values)
        table_rows.append([label, s.n, f"**{fmt(s.p50, 2)}**", fmt(s.p90, 2), fmt(s.min, 2),
                           f"**{fmt(s.max, 2)}**", missing])
    print(table(["interval", "n", "p50 s", "p90 s", "min s", "max s", "never"], table_rows))
    backoff = [r["backoff_left_s"] for r in rows if r["backoff_left_s"] is not None]
    if backoff:
        print(f"upload backoff still to run when the server was ready: median "
              f"{sorted(backoff)[len(backoff) // 2]:.1f} s, max {max(backoff):.1f} s")
    emit_json(args, {"machine": info, "args": vars(args), "stats": stats, **results})


if __name__ == "__main__":
    main()
