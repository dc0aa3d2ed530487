"""The owner's walk down the manifest chain reads ahead from the chain it verified last time:
GETs overlap, every segment is still read and checked once, and a stale, wrong or damaged guess
changes no result (bridge/owner/sync_bucket.py, bridge/owner/audit.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from bridge.owner.audit import Owner
from bridge.owner.sync_bucket import SyncBucket
from bridge.store.backends.file import FileBucket
from crypto.age_keys import identity_file_text
from tests.test_manifest import Bridge, messages

BRIDGE_ID = "0123456789abcdef"  # tests/test_manifest.py's HEAD is this bridge's


class Slow:
    """A bucket's get_range that takes `delay` s and records what overlapped."""

    def __init__(self, bucket: FileBucket, delay: float = 0.004) -> None:
        self._get = bucket.get_range
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.order: list[tuple[str, str]] = []  # ("start" | "end", name), as they happened
        self.in_flight = self.most_in_flight = 0
        bucket.get_range = self.get_range  # type: ignore[method-assign]

    async def get_range(self, name: str, start: int, end: int) -> bytes | None:
        self.calls[name] += 1
        self.order.append(("start", name))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            return await self._get(name, start, end)
        finally:
            self.in_flight -= 1
            self.order.append(("end", name))


def write_bucket(bridge: Bridge, root: Path) -> None:
    folder = root / BRIDGE_ID
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.name not in bridge.bucket:
            old.unlink()
    for oid, data in bridge.bucket.items():
        (folder / oid).write_bytes(data)


def owner(tmp_path: Path, bridge: Bridge) -> Owner:
    key = tmp_path / "owner.key"
    if not key.exists():
        key.write_text(identity_file_text(bridge.owner))
    args = argparse.Namespace(
        config=None, bucket=f"file://{tmp_path / 'bucket'}", credentials_file=None,
        identity=key, state_dir=tmp_path / "owner-state", bridge_key=str(bridge.key.public),
        bridge=None,
    )
    return Owner(args)


def verify(tmp_path: Path, bridge: Bridge, delay: float = 0.004) -> tuple[list[str], Slow]:
    """Problems of a quick verify, as `clips verify --quick` runs it, and its GETs."""
    bridge.now = max(bridge.now, int(time.time() * 1000))  # the owner checks heartbeats by now
    bridge.heartbeat(0)
    write_bucket(bridge, tmp_path / "bucket")
    o = owner(tmp_path, bridge)
    slow = Slow(o.bucket.bucket, delay)  # type: ignore[arg-type]
    try:
        view = o.verify(BRIDGE_ID, deep=False)
    finally:
        o.close()
    return messages(view.report), slow


@pytest.fixture
def recorded() -> Bridge:
    b = Bridge()
    for _ in range(40):
        b.record()
    return b


def test_a_second_walk_overlaps_its_gets_and_reads_each_segment_once(
    tmp_path: Path, recorded: Bridge
) -> None:
    problems, first = verify(tmp_path, recorded)
    assert problems == []
    assert first.most_in_flight == 1  # nothing to guess from: one GET at a time
    chain = tmp_path / "owner-state" / f"{BRIDGE_ID}.chain"
    assert chain.stat().st_mode & 0o777 == 0o600
    saved = json.loads(chain.read_text())
    walked = [o.segment_id for o in reversed(recorded.history) if o.segment_id is not None]
    assert saved["segments"] == walked  # newest first, as the walk reads them
    assert saved["bucket"] == f"file://{tmp_path / 'bucket'}"

    problems, second = verify(tmp_path, recorded)
    assert problems == []
    assert second.most_in_flight > 1
    segments = {f"{BRIDGE_ID}/{s}" for s in walked}
    assert {n: c for n, c in second.calls.items() if n in segments} == dict.fromkeys(segments, 1)
    assert sum(second.calls.values()) == sum(first.calls.values())  # no GET wasted


def test_new_segments_since_the_guess_are_walked_first(tmp_path: Path, recorded: Bridge) -> None:
    assert verify(tmp_path, recorded)[0] == []
    for _ in range(5):
        recorded.record()
    recorded.heartbeat()
    problems, walk = verify(tmp_path, recorded)
    assert problems == []
    assert walk.most_in_flight > 1  # reached the old head's segment, then read ahead
    assert max(walk.calls.values()) == 1


def test_a_wrong_guess_changes_no_result(tmp_path: Path, recorded: Bridge) -> None:
    """What the operator does between two runs is found exactly as without a guess."""
    assert verify(tmp_path, recorded)[0] == []
    target = recorded.history[20].segment_id
    assert target is not None
    forged = recorded.bucket[recorded.history[21].segment_id]  # type: ignore[index]
    recorded.bucket[target] = forged  # a validly signed segment from another seq
    with_guess, _ = verify(tmp_path, recorded)
    (tmp_path / "owner-state" / f"{BRIDGE_ID}.chain").unlink()
    without, walk = verify(tmp_path, recorded)
    assert with_guess == without and with_guess, with_guess
    assert walk.most_in_flight == 1


def test_a_large_object_at_a_guessed_id_is_not_fetched_ahead(
    tmp_path: Path, recorded: Bridge
) -> None:
    """The operator chooses object sizes: swapping a guessed segment for a large object must
    not make the walk hold a window of them. It is fetched only when the walk asks for it."""
    assert verify(tmp_path, recorded)[0] == []
    target = recorded.history[20].segment_id
    newer = recorded.history[21].segment_id
    assert target is not None and newer is not None
    recorded.bucket[target] = os.urandom(2 << 20)
    problems, walk = verify(tmp_path, recorded)
    assert problems == ["segment 20: cannot decrypt (not an age file)"]
    big, before = f"{BRIDGE_ID}/{target}", f"{BRIDGE_ID}/{newer}"
    # Asked for only once the walk had read the segment that points at it.
    assert walk.order.index(("start", big)) > walk.order.index(("end", before))
    assert walk.most_in_flight > 1  # the rest was still read ahead


@pytest.mark.parametrize("text", [
    "not json", "[]", '{"bucket": "file:///elsewhere", "segments": []}',
    '{"segments": 7}', '{"segments": ["../../etc/passwd", 5, null]}',
])
def test_a_damaged_or_foreign_guess_is_ignored(
    tmp_path: Path, recorded: Bridge, text: str
) -> None:
    assert verify(tmp_path, recorded)[0] == []
    chain = tmp_path / "owner-state" / f"{BRIDGE_ID}.chain"
    chain.write_text(text)
    problems, walk = verify(tmp_path, recorded)
    assert problems == [] and walk.most_in_flight == 1
    assert json.loads(chain.read_text())["segments"]  # written again, whole


def test_readahead_window_asks_out_of_order_and_cleanup(tmp_path: Path) -> None:
    root = tmp_path / "b"
    names = [f"obj{i}" for i in range(10)]
    root.mkdir()
    for n in names:
        (root / n).write_bytes(n.encode() * 10)
    sync = SyncBucket(FileBucket(root))
    slow = Slow(sync.bucket, 0.01)  # type: ignore[arg-type]
    try:
        with sync.readahead(names, 1 << 20, window=3) as ahead:
            assert ahead.get("obj0") == b"obj0" * 10
            assert set(slow.calls) == {"obj0", "obj1", "obj2", "obj3"}
            assert ahead.get("missing") is None  # not expected: fetched on its own
            assert ahead.get("obj2") == b"obj2" * 10  # obj1 skipped: a wrong guess
            assert ahead.get("obj2") == b"obj2" * 10  # asked twice: fetched again
            assert set(slow.calls) == {f"obj{i}" for i in range(6)} | {"missing"}
        assert slow.in_flight == 0  # obj1, obj3..5 never asked for: cancelled, not leaked
        assert sync.get("obj9", 100) == b"obj9" * 10  # the loop is still usable
    finally:
        sync.close()
