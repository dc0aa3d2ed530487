"""The spool's eviction policy and held entries (its other tests are in test_store.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from bridge.store.spool import Spool

MiB = 1 << 20


def spool_kind(
    spool: Spool, size: int, name: str, kind: str, meta: dict[str, Any] | None = None
) -> None:
    with spool.create() as entry:
        entry.write(os.urandom(size))
        entry.commit(name, kind, meta)


def test_spool_cap_never_evicts_manifest_segments_and_takes_posters_with_clips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: eviction took the oldest entries whatever their kind, so with the bucket
    down segment 0 went and the owner's chain was broken for good."""
    evicted: list[str] = []
    spool = Spool(tmp_path, 3 * MiB, on_evict=lambda items: evicted.extend(
        i.object_name for i in items))
    spool_kind(spool, 4000, "m/0", "manifest")
    spool_kind(spool, MiB, "c/1", "clip")
    spool_kind(spool, 4000, "m/1", "manifest")
    spool_kind(spool, 300_000, "c/2", "clip")
    spool_kind(spool, 20_000, "t/1", "thumbnail", {"clip": "c/1"})  # c/1's poster, out of order
    spool_kind(spool, 20_000, "t/2", "thumbnail", {"clip": "c/2"})
    assert evicted == []
    spool_kind(spool, 2 * MiB, "c/3", "clip")  # 3.3 MiB: c/1 goes, and its poster with it
    assert evicted == ["c/1", "t/1"]
    assert [i.object_name for i in spool.ready()] == ["m/0", "m/1", "c/2", "t/2", "c/3"]

    # Only segments (and the entry just committed) left above the cap: kept, one warning.
    small = Spool(tmp_path / "small", MiB, on_evict=lambda items: evicted.extend(
        i.object_name for i in items))
    with caplog.at_level(logging.WARNING, logger="bridge.store.spool"):
        for i in range(3):
            spool_kind(small, 400_000, f"m/{i}", "manifest")
    assert [i.object_name for i in small.ready()] == ["m/0", "m/1", "m/2"]
    assert evicted == ["c/1", "t/1"] and caplog.text.count("nothing left to evict") == 1
    spool_kind(small, 10, "c/x", "clip")  # still over: no new warning for every commit
    assert caplog.text.count("nothing left to evict") == 1


def test_spool_held_entry_is_not_offered_until_released(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 64 * MiB)
    woken: list[int] = []
    spool.add_listener(lambda: woken.append(1))
    with spool.create() as entry:
        entry.write(b"segment")
        held = entry.commit("m/held", "manifest", {"seq": 4}, hold=True)
    assert spool.ready() == [] and woken == [] and spool.has_object("m/held")
    spool.unhold(held)
    assert [i.object_name for i in spool.ready()] == ["m/held"] and woken == [1]
    spool.discard(held)
    assert spool.ready() == [] and list((tmp_path / "ready").iterdir()) == []


def test_spool_held_clip_counts_toward_the_cap_and_survives_a_restart(tmp_path: Path) -> None:
    """A held clip (sealed, its manifest entry not saved yet) can be evicted with its poster, a
    held segment cannot; after a restart held entries are held again until their owner
    decides (the vault releases or drops them)."""
    evicted: list[str] = []
    spool = Spool(tmp_path, MiB, on_evict=lambda items: evicted.extend(
        i.object_name for i in items))
    for name, kind, meta in (("m/0", "manifest", None), ("c/1", "clip", None),
                             ("t/1", "thumbnail", {"clip": "c/1"})):
        with spool.create() as entry:
            entry.write(os.urandom(400_000 if kind == "clip" else 4000))
            entry.commit(name, kind, meta, hold=True)
    assert spool.held_count == 3 and spool.ready() == [] and evicted == []
    spool_kind(spool, 700_000, "c/2", "clip")  # over the cap: the held clip goes, its poster too
    assert evicted == ["c/1", "t/1"] and spool.held_count == 1
    assert [i.object_name for i in spool.held()] == ["m/0"]

    again = Spool(tmp_path, MiB)
    assert [i.object_name for i in again.held()] == ["m/0"] and again.held_count == 1
    assert [i.object_name for i in again.ready()] == ["c/2"]
    again.unhold(*again.held())
    assert [i.object_name for i in again.ready()] == ["m/0", "c/2"]


def test_spool_keeps_order_and_no_times_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entry ids are a sequence, not a clock: a clock stepped back cannot reorder uploads, and a
    thief of the bridge's disk reads no exact times off the spool while the bucket is down."""
    import time

    spool = Spool(tmp_path, 64 * MiB)
    spool_kind(spool, 1000, "o/a", "clip")
    monkeypatch.setattr(time, "time", lambda: 1_000_000_000.0)  # the clock jumps back years
    monkeypatch.setattr(time, "time_ns", lambda: 1_000_000_000 * 10**9)
    spool_kind(spool, 1000, "o/b", "clip")
    again = Spool(tmp_path, 64 * MiB)  # a restart continues the sequence
    spool_kind(again, 1000, "o/c", "clip")
    assert [i.object_name for i in again.ready()] == ["o/a", "o/b", "o/c"]
    for item in again.ready():
        assert item.committed_at % 3600 == 0  # hours only
        assert int(item.id.partition("-")[0]) < 10  # a counter, not a timestamp


def test_spool_attempt_recorded_after_an_eviction_does_not_bring_it_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the uploader released its claim, then recorded the failed attempt; an
    eviction in between got its sidecar back (with no data: an error at the next start)."""
    spool = Spool(tmp_path, MiB)
    spool_kind(spool, 600_000, "c/1", "clip")
    (item,) = spool.ready()
    spool_kind(spool, 600_000, "c/2", "clip")  # over the cap: c/1 is evicted
    assert [i.object_name for i in spool.ready()] == ["c/2"]
    assert spool.record_attempt(item, "the bucket is down") == item
    assert not (tmp_path / "ready" / f"{item.id}.json").exists()
    with caplog.at_level(logging.ERROR, logger="bridge.store.spool"):
        again = Spool(tmp_path, MiB)
    assert [i.object_name for i in again.ready()] == ["c/2"] and "unreadable" not in caplog.text
