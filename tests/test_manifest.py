"""The manifest: writer → bucket → verifier, and each tampering case with its own message."""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from crypto.age import X25519Identity, decrypt, encrypt, share_copy
from crypto.manifest import (
    ClipEntry,
    DeleteEntry,
    FormatError,
    ManifestOutput,
    ManifestState,
    ManifestVerifier,
    ManifestWriter,
    Report,
    ShareEntry,
    VerifierState,
    new_object_id,
)
from crypto.manifest_format import decode_head, decode_segment, parse_canonical
from crypto.padding import pad_mp4
from crypto.signing import BridgeKey, BridgeKeyError, BridgePublicKey

HEAD = hashlib.sha256(b"obscura-layout-v1\x000123456789abcdef\x00manifest-head").hexdigest()[:32]
T0 = 1_760_000_000_000  # ms
PERIOD = 60


@dataclass
class Bridge:
    """A bridge's writer, an owner and a bucket (a dict of id → bytes), on a fake clock."""

    owner: X25519Identity = field(default_factory=X25519Identity.generate)
    key: BridgeKey = field(default_factory=BridgeKey.generate)
    bucket: dict[str, bytes] = field(default_factory=dict)
    now: int = T0
    writer: ManifestWriter = field(init=False)
    history: list[ManifestOutput] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.writer = ManifestWriter(self.key, [self.owner.recipient], None, period_s=PERIOD,
                                     clock=lambda: self.now / 1000)

    def publish(self, out: ManifestOutput) -> ManifestOutput:
        if out.segment_id is not None and out.segment is not None:
            self.bucket[out.segment_id] = out.segment
        self.bucket[HEAD] = out.head
        self.history.append(out)
        return out

    def object(self, plaintext: bytes) -> tuple[str, str, int]:
        oid = new_object_id()
        data = encrypt([self.owner.recipient], plaintext)
        self.bucket[oid] = data
        return oid, hashlib.sha256(data).hexdigest(), len(data)

    def record(self, camera: str = "porch", subjects: Iterable[str] = ("person",)) -> ClipEntry:
        self.now += 10_000
        body = b"\x00\x00\x00\x18ftypisom" + os.urandom(50_000)
        clip = self.object(pad_mp4(body))
        thumb = self.object(b"\xff\xd8" + os.urandom(3000))
        entry = ClipEntry(*clip, camera, self.now - 9000, self.now - 1000, tuple(subjects), *thumb)
        self.publish(self.writer.append([entry]))
        return entry

    def heartbeat(self, seconds: int = PERIOD) -> ManifestOutput:
        self.now += seconds * 1000
        return self.publish(self.writer.heartbeat())

    def verify(self, state: VerifierState | None = None, *, pinned: object = "mine",
               deep: bool = True, now: int | None = None) -> Report:
        pin = self.key.public if pinned == "mine" else pinned
        at = self.now if now is None else now
        return ManifestVerifier(
            [self.owner], head_id=HEAD, get=self.bucket.get,
            list=lambda: [(k, len(v)) for k, v in self.bucket.items()],
            pinned_key=pin, state=state, deep=deep, clock=lambda: at / 1000,  # type: ignore[arg-type]
        ).verify()


def kinds(report: Report) -> list[str]:
    return [p.kind for p in report.problems]


def messages(report: Report) -> list[str]:
    return [p.message for p in report.problems]


@pytest.fixture
def bridge() -> Bridge:
    b = Bridge()
    for camera in ("porch", "garden", "porch"):
        b.record(camera)
    return b


# -- the happy path --------------------------------------------------------------------------


def test_chain_verifies_and_lists_clips(bridge: Bridge) -> None:
    report = bridge.verify()
    assert report.ok, messages(report)
    assert [c.camera for c in report.clips] == ["porch", "garden", "porch"]
    assert report.clips[0].subjects == ("person",) and report.clips[0].thumb
    assert report.recipients == (str(bridge.owner.recipient),)
    assert report.state is not None and report.state.seq == 2
    assert report.head is not None and report.head.seq == 2
    # Incremental: the next run starts from the saved state.
    bridge.record()
    bridge.heartbeat()
    again = bridge.verify(VerifierState.from_json(report.state.to_json()))
    assert again.ok, messages(again)
    assert again.state is not None and again.state.seq == 3


def test_first_segment_holds_init_recipients_and_heartbeat(bridge: Bridge) -> None:
    first = bridge.history[0]
    assert first.segment is not None
    seg = decode_segment(decrypt([bridge.owner], first.segment))
    assert [e.type for e in seg.entries] == ["init", "recipients", "heartbeat", "clip"]
    assert seg.seq == 0 and seg.prev_segment is None
    assert seg.entries[0].bridge_key == str(bridge.key.public)  # type: ignore[union-attr]


def test_objects_are_opaque_and_padded(bridge: Bridge) -> None:
    # Markers of 5+ bytes only: a 3-byte one turns up in ~1% of runs of random ciphertext.
    markers = (b"porch", b"garden", b"person", b"\x00\x00\x00\x18ftypisom", b'"type":"clip"')
    for oid, data in bridge.bucket.items():
        assert re.fullmatch(r"[0-9a-f]{32}", oid)
        for marker in markers:
            assert marker not in data
    for out in bridge.history:  # manifest plaintexts are padded to 1 KiB steps
        assert len(decrypt([bridge.owner], out.head)) % 1024 == 0
        assert out.segment is not None and len(decrypt([bridge.owner], out.segment)) % 1024 == 0


def test_writer_state_survives_a_restart(bridge: Bridge) -> None:
    state = ManifestState.from_json(bridge.writer.state.to_json())  # type: ignore[union-attr]
    engineer = X25519Identity.generate()
    bridge.writer = ManifestWriter(bridge.key, [bridge.owner.recipient, engineer.recipient], state,
                                   period_s=PERIOD, clock=lambda: bridge.now / 1000)
    assert [e.type for e in bridge.writer.pending] == ["recipients", "heartbeat"]
    bridge.heartbeat()  # pending entries go out with the heartbeat
    report = bridge.verify()
    assert report.ok, messages(report)
    assert len(report.recipients) == 2


def test_heartbeat_only_rewrites_the_head(bridge: Bridge) -> None:
    before = set(bridge.bucket)
    out = bridge.heartbeat()
    assert out.segment is None and set(bridge.bucket) == before
    head = decode_head(decrypt([bridge.owner], bridge.bucket[HEAD]))
    assert head.time_ms == bridge.now and head.period_s == PERIOD


def test_deletions_and_shares(bridge: Bridge) -> None:
    clip = bridge.verify().clips[0]
    engineer = X25519Identity.generate()
    copy = io.BytesIO()
    share_copy([bridge.owner], io.BytesIO(bridge.bucket[clip.id]), copy, [engineer.recipient])
    cid = new_object_id()
    bridge.bucket[cid] = copy.getvalue()
    sha = hashlib.sha256(copy.getvalue()).hexdigest()
    old = bridge.verify().clips[1]
    bridge.publish(bridge.writer.append([
        ShareEntry(clip.id, cid, str(engineer.recipient), sha, len(copy.getvalue())),
        DeleteEntry(old.id, "retention"), DeleteEntry(old.thumb or "", "retention"),
    ]))
    del bridge.bucket[old.id], bridge.bucket[old.thumb or ""]
    report = bridge.verify()
    assert report.ok, messages(report)
    listed = {c.id: c for c in report.clips}
    assert listed[old.id].deleted == "retention"
    shares = [(s.copy, s.recipient) for s in listed[clip.id].shares]
    assert shares == [(cid, str(engineer.recipient))]


# -- tampering: each case has its own message --------------------------------------------------


def test_forged_object(bridge: Bridge) -> None:
    forged = new_object_id()
    bridge.bucket[forged] = encrypt([bridge.owner.recipient], b"\x00\x00\x00\x18ftyp fake")
    report = bridge.verify()
    assert messages(report) == [f"forged object {forged}: not in the manifest"]


def test_unrecorded_share_copy_is_forged(bridge: Bridge) -> None:
    clip = bridge.verify().clips[0]
    copy = io.BytesIO()
    share_copy([bridge.owner], io.BytesIO(bridge.bucket[clip.id]), copy,
               [X25519Identity.generate().recipient])
    cid = new_object_id()
    bridge.bucket[cid] = copy.getvalue()
    assert kinds(bridge.verify()) == ["forged"]


def test_swapped_objects(bridge: Bridge) -> None:
    a, b = bridge.verify().clips[:2]
    bridge.bucket[a.id], bridge.bucket[b.id] = bridge.bucket[b.id], bridge.bucket[a.id]
    report = bridge.verify()
    assert sorted(messages(report)) == sorted([
        f"object {a.id}: SHA-256 mismatch (swapped or altered); it holds object {b.id}'s content",
        f"object {b.id}: SHA-256 mismatch (swapped or altered); it holds object {a.id}'s content",
    ])


def test_flipped_byte(bridge: Bridge) -> None:
    clip = bridge.verify().clips[2]
    data = bytearray(bridge.bucket[clip.id])
    data[len(data) // 2] ^= 0x40
    bridge.bucket[clip.id] = bytes(data)
    assert messages(bridge.verify()) == [f"object {clip.id}: SHA-256 mismatch (swapped or altered)"]
    assert bridge.verify(deep=False).ok  # same size: only the hash tells


def test_deleted_object(bridge: Bridge) -> None:
    thumb = bridge.verify().clips[1].thumb
    assert thumb is not None
    del bridge.bucket[thumb]
    assert messages(bridge.verify()) == [
        f"object {thumb} listed in the manifest is missing from the bucket (deleted)"
    ]


def test_truncated_clip(bridge: Bridge) -> None:
    clip = bridge.verify().clips[0]
    bridge.bucket[clip.id] = bridge.bucket[clip.id][:-100]
    assert messages(bridge.verify()) == [f"object {clip.id} is truncated"]
    assert messages(bridge.verify(deep=False)) == [f"object {clip.id} is truncated"]


def test_rolled_back_head(bridge: Bridge) -> None:
    state = bridge.verify().state
    old_head = bridge.history[0].head
    bridge.bucket[HEAD] = old_head  # a validly signed head, but from seq 0
    report = bridge.verify(state)
    assert "manifest rolled back: head seq 0 < last verified 2" in messages(report)
    assert report.state is None  # nothing to save from a rolled-back view


def test_replayed_head_with_the_same_seq(bridge: Bridge) -> None:
    earlier = bridge.bucket[HEAD]
    bridge.heartbeat()
    state = bridge.verify().state
    bridge.bucket[HEAD] = earlier
    assert kinds(bridge.verify(state)) == ["rollback"]
    assert "manifest head replayed" in messages(bridge.verify(state))[0]


def test_forked_manifest(bridge: Bridge) -> None:
    """The bridge restored from a backup signs a different segment 3."""
    saved = bridge.writer.state
    bridge.record("porch")
    state = bridge.verify().state
    clone = ManifestWriter(bridge.key, [bridge.owner.recipient], saved, period_s=PERIOD,
                           clock=lambda: bridge.now / 1000)
    bridge.writer = clone
    bridge.record("garden")
    report = bridge.verify(state)
    assert "manifest forked at seq 3" in messages(report)
    assert report.state is None


def test_frozen_head(bridge: Bridge) -> None:
    assert bridge.verify(now=bridge.now + 2 * PERIOD * 1000).ok
    report = bridge.verify(now=bridge.now + 2 * PERIOD * 1000 + 1)
    assert kinds(report) == ["frozen"]
    assert re.fullmatch(
        r"head is frozen: last heartbeat at \S+, older than 2 × period \(60 s\)",  # noqa: RUF001
        report.problems[0].message,
    )


def test_segment_signed_by_another_key(bridge: Bridge) -> None:
    """An attacker who can encrypt to the owner rewrites segment 1 with their own key."""
    target = bridge.history[1]
    assert target.segment_id is not None and target.segment is not None
    real = decode_segment(decrypt([bridge.owner], target.segment))
    mallory = BridgeKey.generate()
    fake = replace(real, entries=(replace(real.entries[0], camera="x"),))
    fake = replace(fake, sig=mallory.sign(fake.message()))
    bridge.bucket[target.segment_id] = encrypt([bridge.owner.recipient], fake.encode())
    report = bridge.verify()
    assert "segment 1: bad signature" in messages(report)
    assert report.state is None


def test_missing_segment(bridge: Bridge) -> None:
    sid = bridge.history[1].segment_id
    assert sid is not None
    del bridge.bucket[sid]
    report = bridge.verify()
    assert messages(report) == [f"segment 1 (object {sid}) is missing from the bucket"]


def test_pinned_key_mismatch_and_trust_on_first_use(bridge: Bridge) -> None:
    other = BridgeKey.generate().public
    report = bridge.verify(pinned=other)
    assert kinds(report) == ["head"] and "manifest head: bad signature" in messages(report)[0]
    assert report.state is None and not report.clips
    tofu = bridge.verify(pinned=None)
    assert tofu.ok and "trust on first use" in tofu.notices[0]
    assert tofu.state is not None and tofu.state.bridge_key == str(bridge.key.public)


def test_head_signed_by_another_key(bridge: Bridge) -> None:
    real = decode_head(decrypt([bridge.owner], bridge.bucket[HEAD]))
    mallory = BridgeKey.generate()
    fake = replace(real, time_ms=real.time_ms + 1)
    fake = replace(fake, sig=mallory.sign(fake.message()))
    bridge.bucket[HEAD] = encrypt([bridge.owner.recipient], fake.encode())
    report = bridge.verify()
    assert kinds(report) == ["head"] and "bad signature" in messages(report)[0]


def test_oversized_manifest_object_is_not_downloaded(bridge: Bridge) -> None:
    bridge.bucket[HEAD] = bytes(17 << 20)
    assert messages(bridge.verify()) == [
        "manifest head: malformed (too large for a manifest object)"
    ]


def test_state_of_another_bridge_is_refused(bridge: Bridge) -> None:
    state = bridge.verify().state
    assert state is not None
    with pytest.raises(BridgeKeyError):
        bridge.verify(state, pinned=BridgeKey.generate().public)


def test_head_from_someone_else(bridge: Bridge) -> None:
    bridge.bucket[HEAD] = encrypt([bridge.owner.recipient], b"{}")
    assert messages(bridge.verify())[0].startswith("manifest head: malformed")
    del bridge.bucket[HEAD]
    assert messages(bridge.verify()) == ["manifest head is missing"]


# -- encoding and keys -----------------------------------------------------------------------


def test_non_canonical_plaintext_is_rejected(bridge: Bridge) -> None:
    out = bridge.history[0]
    assert out.segment is not None
    plain = decrypt([bridge.owner], out.segment)
    assert decode_segment(plain).seq == 0
    with pytest.raises(FormatError, match="canonical"):
        decode_segment(plain.replace(b'"seq":0', b'"seq": 0'))
    with pytest.raises(FormatError):
        parse_canonical(b'{"a":1.5}')


def test_bridge_key_file(tmp_path: Path) -> None:
    key = BridgeKey.generate()
    path = tmp_path / "bridge.key"
    key.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert BridgeKey.load(path).public == key.public
    assert BridgeKey.load_or_create(path).public == key.public
    text = str(key.public)
    assert text.startswith("obscura-bridge1") and BridgePublicKey.parse(text) == key.public
    assert key.public.fingerprint().startswith("SHA256:")
    assert re.fullmatch(r"([0-9a-f]{4} ){3}[0-9a-f]{4}", key.public.short_fingerprint())
    path.chmod(0o644)
    with pytest.raises(BridgeKeyError, match="readable by others"):
        BridgeKey.load(path)
    with pytest.raises(BridgeKeyError):
        BridgePublicKey.parse(text[:-1] + ("q" if text[-1] != "q" else "p"))
    assert "PRIVATE" not in repr(key)
