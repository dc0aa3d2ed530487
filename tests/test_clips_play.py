"""`obscura clips play ID`: the decrypted clip goes straight into a player's standard input.

The "player" here is a real consumer: a Python process that decodes the MP4 from its stdin with
PyAV (as mpv or ffplay would from a pipe) and reports what it saw. The CLI's temporary directory
(TMPDIR) is checked afterwards: nothing left, and no plaintext was ever written there.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from tests.peers.owner_bucket import Recorded, clips

DECODER = """
import av, json, sys
with av.open(sys.stdin.buffer, format="mp4") as c:  # a pipe: no seeking, as a player reads it
    frames = [f for f in c.decode(video=0)]
json.dump({"frames": len(frames), "size": [frames[0].width, frames[0].height]},
          open(sys.argv[1], "w"))
"""


def player(script: str, *args: str) -> str:
    return shlex.join([sys.executable, "-c", script, *args])


def test_play_pipes_a_decodable_clip_and_leaves_nothing_on_disk(
    recorded: Recorded, tmp_path: Path
) -> None:
    report, tmp = tmp_path / "seen.json", tmp_path / "tmp"
    tmp.mkdir()
    out = clips(
        recorded, "play", recorded.clip["id"][:10], "--player", player(DECODER, str(report)),
        state=tmp_path / "s", env={"TMPDIR": str(tmp)},
    )
    seen = json.loads(report.read_text())
    assert seen["frames"] >= 15 and seen["size"] == [640, 360]
    assert list(tmp.iterdir()) == []  # the downloaded ciphertext is gone too
    assert "playing clip" in out.stderr


def test_a_player_that_quits_early_is_not_an_error(recorded: Recorded, tmp_path: Path) -> None:
    quits = "import sys; sys.stdin.buffer.read(1000)"
    out = clips(
        recorded, "play", recorded.clip["id"], "--player", player(quits), state=tmp_path / "s"
    )
    assert "Traceback" not in out.stderr


def test_no_player_is_a_clear_error(recorded: Recorded, tmp_path: Path) -> None:
    out = clips(
        recorded, "play", recorded.clip["id"], "--player", "no-such-player-xyz",
        state=tmp_path / "s", check=None,
    )
    assert out.returncode == 1 and "player 'no-such-player-xyz' not found" in out.stderr
    empty = tmp_path / "empty-path"
    empty.mkdir()
    out = clips(
        recorded, "play", recorded.clip["id"], state=tmp_path / "s", check=None,
        env={"PATH": str(empty), "OBSCURA_PLAYER": ""},
    )
    assert out.returncode == 1 and "no video player found" in out.stderr
    assert "clips get" in out.stderr
