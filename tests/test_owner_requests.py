"""Shares and deletions through a running `obscura run`, proven with the owner's identity.

One bridge process records a clip of a person crossing in front of a real RTSP camera into a
file:// bucket and keeps running; the real CLI (a subprocess) then shares the clip with a
support engineer, other local processes try to make the bridge sign without the owner's
identity or by replaying a captured request, and the owner deletes the clip. The tests run in
file order: the last one deletes the clip the others use.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import pytest

from bridge.config import load_config
from bridge.owner.audit import OwnerError
from bridge.owner.bridge_client import BridgeClient
from bridge.owner.proof import HEADER_CHALLENGE, HEADER_PROOF, open_challenge, proof
from crypto.age_keys import load_identities
from tests.peers.bridge_process import ROOT, BridgeProcess
from tests.peers.owner_bucket import clips_sealed, recording_bridge, wait
from tests.peers.rtsp import RtspCamera
from tests.peers.scenes import write_crossing_clip


def age_keygen(path: Path) -> str:
    out = subprocess.run(
        ["age-keygen", "-o", str(path)], capture_output=True, text=True, check=True
    )
    return out.stderr.strip().split()[-1]


@dataclass
class Live:
    bridge: BridgeProcess
    bucket: Path
    owner_key: Path
    support_key: Path
    support: str
    stranger_key: Path
    state: Path
    clip_id: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.bridge.status_port}"

    def objects(self) -> list[str]:
        return sorted(p.name for p in self.bucket.rglob("*") if p.is_file())

    def bridge_id(self) -> str:
        return str(self.bridge.status()["storage"]["bridge_id"])

    def seq(self) -> int:
        return int(self.bridge.status()["storage"]["manifest_seq"])

    def clips(self, *args: str, identity: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge", "clips", args[0], "--config", str(self.bridge.config),
             "--identity", str(identity or self.owner_key), "--state-dir", str(self.state),
             *args[1:]],
            cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            env=dict(os.environ, OBSCURA_OWNER_STATE_DIR="/nonexistent/do-not-use"),
        )

    def listing(self) -> list[dict[str, Any]]:
        out = self.clips("list", "--json", "--all")
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    work = tmp_path_factory.mktemp("owner-requests")
    keys = {name: work / f"{name}.key" for name in ("owner", "support", "stranger")}
    recipients = {name: age_keygen(path) for name, path in keys.items()}
    scene = work / "person.mp4"
    write_crossing_clip(scene, kind="person", seconds=14, enter_at=1.0, cross_seconds=4.0)
    bucket = work / "bucket"
    with RtspCamera(file=scene, width=640, height=360, fps=15) as cam:
        bridge = recording_bridge(  # heartbeat: not "frozen" while the tests run
            work, cam.url, bucket, [recipients["owner"]], heartbeat_seconds=60
        )
        bridge.start()
        try:
            wait(lambda: clips_sealed(bridge) >= 1, 90, "a clip")
        except BaseException:
            bridge.stop()
            raise
    # The camera is gone now: no second clip can change the manifest under the tests.
    env = Live(bridge, bucket, keys["owner"], keys["support"], recipients["support"],
               keys["stranger"], work / "owner-state")
    try:
        wait(lambda: bridge.status()["storage"]["uploads"]["pending_count"] == 0, 30, "uploads")
        wait(lambda: bool(env.listing()), 20, "the clip in the manifest")
        env.clip_id = env.listing()[0]["id"]
        yield env
    finally:
        code = bridge.stop()
    assert code == 0, bridge.log_text()


class RecordingProxy(ThreadingHTTPServer):
    """Between the CLI and the bridge: forwards every request and keeps a copy (an attacker
    who captured the owner's traffic on loopback). `modes` (path -> mode) spoil requests to a
    path: "bad proof" alters the proof; "lost" drops the request, "no answer" forwards it but
    drops the bridge's answer (both close the connection unanswered, as a time-out ends);
    "unpublished" answers as a bridge whose new head did not reach the bucket in time."""

    def __init__(self, target: str, modes: dict[str, str] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.target = target
        self.modes = modes or {}
        self.seen: list[tuple[str, str, dict[str, str], bytes | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    server: RecordingProxy

    def _forward(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        keep = ("content-type", HEADER_CHALLENGE.lower(), HEADER_PROOF.lower())
        headers = {k: v for k, v in self.headers.items() if k.lower() in keep}
        self.server.seen.append((self.command, self.path, headers, body))
        mode = self.server.modes.get(self.path)
        if mode == "bad proof":
            headers = {k: "5a" * 32 if k.lower() == HEADER_PROOF.lower() else v
                       for k, v in headers.items()}
        if mode == "lost":
            return
        status, data = call(self.server.target, self.path, body, headers, self.command)
        if mode == "no answer":
            return
        if mode == "unpublished" and status < 300:
            data = {**data, "published": False}
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = _forward

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def proxied(live: Live, modes: dict[str, str] | None = None) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(live.url, modes)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def call(
    base: str, path: str, body: bytes | None, headers: dict[str, str], method: str = "POST"
) -> tuple[int, Any]:
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


JSON = {"Content-Type": "application/json"}


def test_share_through_the_running_bridge_and_a_replay_is_refused(live: Live) -> None:
    with proxied(live) as proxy:
        out = live.clips("share", live.clip_id, "--to", live.support, "--url", proxy.url)
    assert out.returncode == 0, out.stdout + out.stderr
    copy_id = out.stdout.split("object ")[1].split()[0].rsplit("/", 1)[1]
    [clip] = live.listing()
    assert clip["shares"] == [
        {"copy": copy_id, "recipient": live.support, "deleted": None, "source": live.clip_id}
    ]
    text = live.clips("list").stdout
    assert f"shared with {live.support} as {copy_id}" in text
    copy = next(live.bucket.rglob(copy_id))
    plain = live.state.parent / "shared.mp4"
    subprocess.run(["age", "-d", "-i", str(live.support_key), "-o", str(plain), str(copy)],
                   check=True)
    with av.open(str(plain)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) >= 15 and (frames[0].width, frames[0].height) == (640, 360)
    # Re-encrypted to the engineer only: the owner's key does not open the copy.
    assert subprocess.run(["age", "-d", "-i", str(live.owner_key), str(copy)],
                          capture_output=True).returncode != 0
    verify = live.clips("verify")
    assert verify.returncode == 0 and "OK (1 clips" in verify.stdout, verify.stdout + verify.stderr

    # Replaying the captured, successful request (same challenge, proof and body) is refused.
    [(_, path, headers, body)] = [s for s in proxy.seen if s[1] == "/shares"]
    seq, objects = live.seq(), live.objects()
    status, answer = call(live.url, path, body, headers)
    assert status == 401 and "already used" in answer["error"]
    assert (live.seq(), live.objects()) == (seq, objects)
    assert headers[HEADER_PROOF] not in live.bridge.log_text()  # secrets are never logged


def test_without_the_owner_identity_the_bridge_signs_nothing(live: Live) -> None:
    seq, objects = live.seq(), live.objects()
    share = {"object": live.clip_id, "copy": "ab" * 16, "recipient": live.support,
             "sha256": "00" * 32, "size": 1000}
    body = json.dumps(share).encode()
    # No proof at all, for a share and for a deletion.
    status, answer = call(live.url, "/shares", body, JSON)
    assert status == 401 and "owner proof required" in answer["error"]
    status, answer = call(live.url, "/deletions",
                          json.dumps({"objects": [live.clip_id]}).encode(), JSON)
    assert status == 401 and "owner proof required" in answer["error"]
    # A browser page (CSRF) cannot even ask for a challenge.
    status, answer = call(live.url, "/owner/challenge", b"{}", {**JSON, "Origin": "http://x"})
    assert status == 403 and "local tools only" in answer["error"]
    # A key that is not a recipient cannot open the challenge ...
    config = load_config(live.bridge.config)
    with pytest.raises(OwnerError, match="not one of the bridge's \\[storage\\] recipients"):
        BridgeClient(config, load_identities(live.stranger_key)).post("/shares", share)
    # ... so all it can send is a guess, refused with a clear message.
    _, challenge = call(live.url, "/owner/challenge", b"{}", JSON)
    guess = {HEADER_CHALLENGE: challenge["id"], HEADER_PROOF: "5a" * 32}
    status, answer = call(live.url, "/shares", body, {**JSON, **guess})
    assert status == 403 and "does not match" in answer["error"]
    # The owner's CLI with the stranger's key stops before it reaches the bridge.
    out = live.clips("share", live.clip_id, "--to", live.support, identity=live.stranger_key)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{live.stranger_key} is not a recipient of bridge {live.bridge_id()}" in out.stderr
    # A real owner proof is bound to its body: reused for another request it is refused.
    _, challenge = call(live.url, "/owner/challenge", b"{}", JSON)
    nonce = open_challenge(load_identities(live.owner_key), challenge["challenge"])
    signed = {HEADER_CHALLENGE: challenge["id"],
              HEADER_PROOF: proof(nonce, challenge["id"], "POST", "/shares", body)}
    deletion = json.dumps({"objects": [live.clip_id]}).encode()
    status, answer = call(live.url, "/deletions", deletion, {**JSON, **signed})
    assert status == 403 and "does not match" in answer["error"]
    status, answer = call(live.url, "/shares", body, {**JSON, **signed})
    assert status == 401 and "already used" in answer["error"]  # spent on the mismatch
    # Naming a challenge without a proof spends it too (docs/manifest.md §11).
    _, challenge = call(live.url, "/owner/challenge", b"{}", JSON)
    nonce = open_challenge(load_identities(live.owner_key), challenge["challenge"])
    status, answer = call(live.url, "/shares", body, {**JSON, HEADER_CHALLENGE: challenge["id"]})
    assert status == 401 and "owner proof required" in answer["error"]
    signed = {HEADER_CHALLENGE: challenge["id"],
              HEADER_PROOF: proof(nonce, challenge["id"], "POST", "/shares", body)}
    status, answer = call(live.url, "/shares", body, {**JSON, **signed})
    assert status == 401 and "already used" in answer["error"]
    assert (live.seq(), live.objects()) == (seq, objects)
    assert "refused an owner request POST /shares" in live.bridge.log_text()


def test_only_a_clip_can_be_shared(live: Live) -> None:
    """Regression: POST /shares accepted any live object of the bridge as the source, so a
    poster or a share copy could be shared. With a valid owner proof, both are now refused."""
    [clip] = live.listing()
    owner = load_identities(live.owner_key)
    seq, objects = live.seq(), live.objects()
    for source in (clip["poster"], clip["shares"][0]["copy"]):
        share = {"object": source, "copy": "cd" * 16, "recipient": live.support,
                 "sha256": "00" * 32, "size": 1000}
        body = json.dumps(share).encode()
        _, challenge = call(live.url, "/owner/challenge", b"{}", JSON)
        nonce = open_challenge(owner, challenge["challenge"])
        signed = {HEADER_CHALLENGE: challenge["id"],
                  HEADER_PROOF: proof(nonce, challenge["id"], "POST", "/shares", body)}
        status, answer = call(live.url, "/shares", body, {**JSON, **signed})
        assert (status, answer["error"]) == (
            422, f"{source} is a poster or a share copy, not a clip: only clips can be shared")
    assert (live.seq(), live.objects()) == (seq, objects)


def copy_named(text: str) -> str:
    found = re.search(r"obscura clips delete ([0-9a-f]{32})", text)
    assert found, text
    return found.group(1)


def test_a_share_the_bridge_refuses_leaves_no_copy(live: Live) -> None:
    seq, objects = live.seq(), live.objects()
    with proxied(live, {"/shares": "bad proof"}) as proxy:
        out = live.clips("share", live.clip_id, "--to", live.support, "--url", proxy.url)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "the share was not recorded, its copy is removed" in out.stderr
    assert "owner proof does not match" in out.stderr
    assert (live.seq(), live.objects()) == (seq, objects)


def test_a_share_whose_answer_is_lost_keeps_its_copy(live: Live) -> None:
    """Regression: the client deleted its copy on any error, a time-out included, while the
    bridge went on to record the share: `clips verify` then reported the copy missing. Now it
    keeps the copy on anything but a refusal, and says how to tell what happened."""
    with proxied(live, {"/shares": "no answer"}) as proxy:
        out = live.clips("share", live.clip_id, "--to", live.support, "--url", proxy.url)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"the bridge at {proxy.url} did not answer /shares" in out.stderr
    assert "may or may not be recorded" in out.stderr
    copy_id = copy_named(out.stderr)
    assert list(live.bucket.rglob(copy_id))
    # The bridge did record it: listed, and nothing is missing.
    [clip] = live.listing()
    assert {"copy": copy_id, "recipient": live.support, "deleted": None,
            "source": live.clip_id} in clip["shares"]
    verify = live.clips("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # The owner takes that copy back alone: the clip and the other share stay.
    out = live.clips("delete", copy_id[:10], "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Deleted share copy {copy_id} (clip {live.clip_id} shared with" in out.stdout
    assert not list(live.bucket.rglob(copy_id))
    [clip] = live.listing()
    assert clip["deleted"] is None and list(live.bucket.rglob(live.clip_id))
    shares = {s["copy"]: s["deleted"] for s in clip["shares"]}
    assert shares[copy_id] == "owner" and list(shares.values()).count(None) == 1
    assert f"as {copy_id} (copy deleted by the owner)" in live.clips("list").stdout
    assert live.clips("verify").returncode == 0
    again = live.clips("delete", copy_id, "--yes")
    assert again.returncode == 1 and f"share copy {copy_id} was deleted (owner)" in again.stderr


def test_an_unrecorded_copy_is_reported_and_can_be_removed(live: Live) -> None:
    with proxied(live, {"/shares": "lost"}) as proxy:
        out = live.clips("share", live.clip_id, "--to", live.support, "--url", proxy.url)
    assert out.returncode == 1 and "may or may not be recorded" in out.stderr, out.stderr
    copy_id = copy_named(out.stderr)
    seq = live.seq()
    verify = live.clips("verify")
    assert verify.returncode == 1
    assert f"forged object {copy_id}: not in the manifest" in verify.stdout, verify.stdout
    out = live.clips("delete", copy_id, "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the bridge did not record it either" in out.stdout
    assert not list(live.bucket.rglob(copy_id)) and live.seq() == seq  # nothing to log
    verify = live.clips("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_owner_is_told_when_the_bridge_could_not_publish(live: Live) -> None:
    """Both routes also answer when the new head did not reach the bucket in 30 s."""
    with proxied(live, {"/shares": "unpublished", "/deletions": "unpublished"}) as proxy:
        out = live.clips("share", live.clip_id, "--to", live.support, "--url", proxy.url)
        assert out.returncode == 0, out.stdout + out.stderr
        copy_id = copy_named(out.stdout)
        assert "could not get its new manifest head into the bucket" in out.stderr
        assert f"reports {copy_id} as a forged object: do not remove it" in out.stderr
        out = live.clips("delete", copy_id, "--yes", "--url", proxy.url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Deleted share copy {copy_id}" in out.stdout
    assert "could not get its new manifest head into the bucket" in out.stderr
    assert "still shows them as live" in out.stderr


def test_a_deletion_whose_answer_is_lost_says_how_to_tell(live: Live) -> None:
    out = live.clips("share", live.clip_id, "--to", live.support)
    copy_id = copy_named(out.stdout)
    with proxied(live, {"/deletions": "no answer"}) as proxy:
        out = live.clips("delete", copy_id, "--yes", "--url", proxy.url)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"the bridge at {proxy.url} did not answer /deletions" in out.stderr
    assert "may or may not be recorded" in out.stderr and "clips list --all" in out.stderr
    [clip] = live.listing()  # it was: the bridge acted, its answer was lost
    assert {s["copy"]: s["deleted"] for s in clip["shares"]}[copy_id] == "owner"
    again = live.clips("delete", copy_id, "--yes")
    assert again.returncode == 1 and "was deleted (owner)" in again.stderr


def test_the_owner_deletes_a_clip_with_its_poster_and_share_copies(live: Live) -> None:
    [clip] = live.listing()
    doomed = [clip["id"], clip["poster"], *(s["copy"] for s in clip["shares"] if not s["deleted"])]
    assert all(list(live.bucket.rglob(o)) for o in doomed) and len(doomed) == 3
    down = live.clips("delete", clip["id"], "--yes", "--url", "http://127.0.0.1:1")
    assert down.returncode == 1 and "not reachable at http://127.0.0.1:1/status" in down.stderr
    unsure = live.clips("delete", clip["id"])  # no terminal to confirm on
    assert unsure.returncode == 1 and "--yes" in unsure.stderr
    assert all(list(live.bucket.rglob(o)) for o in doomed)

    out = live.clips("delete", clip["id"][:12], "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Deleted clip" in out.stdout and "1 share copy" in out.stdout
    assert not [o for o in doomed if list(live.bucket.rglob(o))]
    verify = live.clips("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "OK (0 clips" in verify.stdout
    assert f"clip {clip['id']} ('Front porch'" in verify.stdout
    assert "deleted by the owner" in verify.stdout
    [after] = live.listing()
    assert after["deleted"] == "owner"
    assert [s["deleted"] for s in after["shares"]] == ["owner"] * len(after["shares"])
    assert "deleted by the owner" in live.clips("list", "--all").stdout
    assert clip["id"] not in live.clips("list").stdout
    again = live.clips("delete", clip["id"], "--yes")
    assert again.returncode == 1 and "was deleted (owner)" in again.stderr
