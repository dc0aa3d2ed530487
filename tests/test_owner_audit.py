"""What the owner's audit must not miss, run as the owner runs it (the real CLI, a subprocess)
against copies of a bucket a real bridge filled (tests/peers/owner_bucket.py): a bridge whose
objects all vanished, recipients added behind the owner's back, an operator serving a huge
object, and the messages that tell the owner what to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.peers.bridge_process import ROOT, BridgeProcess, CameraSpec
from tests.peers.owner_bucket import Recorded, clips, obscura, tampered, wait

NOT_YOURS = "(not one of your identities)"


def test_a_bridge_whose_objects_all_vanished_is_still_audited(
    recorded: Recorded, tmp_path: Path
) -> None:
    bucket, state, bid = tampered(recorded, tmp_path), tmp_path / "state", recorded.bridge_id
    clips(recorded, "verify", bucket=bucket, state=state)  # remembered for this bucket now
    shutil.rmtree(bucket / bid)  # the operator removes the bridge's whole prefix
    india = {"TZ": "IST-5:30"}  # POSIX form: needs no tzdata; local times carry the offset
    out = clips(recorded, "verify", bucket=bucket, state=state, check=None, env=india)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"bridge {bid}: head missing (all its objects are gone?)" in out.stdout
    assert re.search(r"last verified at seq \d+, heartbeat \S+\+05:30", out.stdout), out.stdout
    assert str(state / f"{bid}.json") in out.stdout  # how to retire a bridge on purpose
    listed = clips(recorded, "list", bucket=bucket, state=state, check=None)
    assert listed.returncode == 1
    assert f"warning: bridge {bid}: head missing (all its objects are gone?)" in listed.stderr
    # What the owner verified in one bucket is no alarm in another.
    empty = tmp_path / "other-bucket"
    empty.mkdir()
    out = clips(recorded, "verify", bucket=empty, state=state)
    assert "the bucket holds no bridge's objects" in out.stdout


def test_recipients_are_shown_and_one_added_on_the_bridge_is_loud(
    recorded: Recorded, tmp_path: Path
) -> None:
    """Someone with access to the bridge adds their key (`keys add-recipient`, restart): the
    owner's next `clips verify` fails once and names it, `clips list` shows it from then on."""
    bucket, bid = tampered(recorded, tmp_path), recorded.bridge_id
    seen, later = tmp_path / "seen", tmp_path / "later"
    out = clips(recorded, "verify", bucket=bucket, state=seen)
    assert f"bridge {bid}: clips are encrypted to: {recorded.recipient}\n" in out.stdout
    shutil.copytree(seen, later)  # a second run, to see `clips list` meet the change too
    seq = int(re.search(r"manifest seq (\d+)", out.stdout).group(1))  # type: ignore[union-attr]

    staff_key = tmp_path / "staff.key"
    staff = obscura("keys", "generate", "-o", str(staff_key)).stdout.split("recipient): ")[1]
    staff = staff.split()[0]
    work = tmp_path / "bridge"
    shutil.copytree(recorded.bucket.parent / "state", work / "state")  # the same bridge
    bridge = BridgeProcess(
        work,
        [CameraSpec("Demo", "demo:", {"width": 320, "height": 240})],
        storage={"bucket": bucket.as_uri(), "recipients": [recorded.recipient],
                 "heartbeat_seconds": 600},
    )
    obscura("keys", "add-recipient", staff, "--config", str(bridge.config))
    bridge.start()
    try:
        storage = lambda: bridge.status()["storage"]  # noqa: E731
        wait(lambda: storage()["manifest_seq"] > seq, 20, "the recipients entry")
        wait(lambda: storage()["uploads"]["pending_count"] == 0, 20, "its upload")
    finally:
        assert bridge.stop() == 0, bridge.log_text()

    out = clips(recorded, "verify", bucket=bucket, state=seen, check=None)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"bridge {bid}: OK (1 clips" in out.stdout  # nothing else is wrong
    assert re.search(
        rf"bridge {bid}: WARNING: recipients changed at seq {seq + 1} \(\S+\), since you last "
        rf"verified: added {staff} \(not one of your identities\)", out.stdout
    ), out.stdout
    now = f"clips are encrypted to: {recorded.recipient}, {staff} {NOT_YOURS}"
    assert f"bridge {bid}: {now}" in out.stdout
    again = clips(recorded, "verify", bucket=bucket, state=seen)  # seen: no longer a failure
    assert "WARNING" not in again.stdout and now in again.stdout

    listed = clips(recorded, "list", bucket=bucket, state=later)
    assert f"WARNING: bridge {bid}: recipients changed at seq {seq + 1}" in listed.stderr
    assert now in listed.stdout
    # The clip was recorded before the change: only the owner's key opens it.
    assert f"    encrypted to: {recorded.recipient}\n" in listed.stdout
    [clip] = json.loads(clips(recorded, "list", "--json", bucket=bucket, state=later).stdout)
    assert clip["recipients"] == [{"recipient": recorded.recipient, "yours": True}]
    assert clip["bridge_recipients"] == [
        {"recipient": recorded.recipient, "yours": True}, {"recipient": staff, "yours": False}
    ]


def test_the_owner_tools_need_no_recipients_in_the_config(
    recorded: Recorded, tmp_path: Path
) -> None:
    """They read with the identity; `recipients` is the bridge's business (maybe empty)."""
    config = tmp_path / "owner.toml"
    config.write_text(f'[storage]\nbucket = "{recorded.bucket.as_uri()}"\n')
    args = ["--config", str(config), "--identity", str(recorded.key),
            "--state-dir", str(tmp_path / "s")]
    out = obscura("clips", "verify", *args)
    assert f"bridge {recorded.bridge_id}: OK (1 clips" in out.stdout
    listed = json.loads(obscura("clips", "list", "--json", *args).stdout)
    assert [c["id"] for c in listed] == [recorded.clip["id"]]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", listed[0]["start"])


def test_verify_reads_no_more_of_a_huge_object_than_the_bridge_signed(
    recorded: Recorded, tmp_path: Path
) -> None:
    """The operator serves a 2 GiB object where the clip was: reported as altered, with the
    owner's tool never holding more than the signed size of it (alone the tool peaks at
    ~135 MiB; the bound leaves room for a loaded machine and fails if the object is read)."""
    bucket = tampered(recorded, tmp_path)
    with open(recorded.obj(bucket, recorded.clip["id"]), "r+b") as f:
        f.truncate(2 << 30)  # sparse: served in full, stored in none
    config = tmp_path / "owner.toml"
    config.write_text(f'[storage]\nbucket = "{bucket.as_uri()}"\n')
    measure = (
        "import resource, runpy, sys\n"
        "try:\n    runpy.run_module('bridge', run_name='__main__')\n"
        "finally:\n    print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", measure, "clips", "verify", "--config", str(config),
         "--identity", str(recorded.key), "--state-dir", str(tmp_path / "s")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"object {recorded.clip['id']}: SHA-256 mismatch (swapped or altered)" in out.stdout
    peak_kib = int(out.stderr.rsplit("maxrss", 1)[1])
    assert peak_kib < 1 << 20, f"peak RSS {peak_kib} KiB for a 2 GiB object"


def test_messages_say_where_and_what(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "HOME": str(tmp_path)}
    clean = {k: v for k, v in os.environ.items() if k != "OBSCURA_CONFIG"}
    for args in (["keys", "list"], ["clips", "list", "--identity", "x.key"]):
        out = subprocess.run(
            [sys.executable, "-m", "bridge", *args], cwd=ROOT, capture_output=True, text=True,
            timeout=60, env={**clean, **env},
        )
        assert out.returncode == 2, out.stderr
        assert "no configuration file (looked for --config, $OBSCURA_CONFIG (not set), " \
            f"{tmp_path / 'cfg' / 'obscura' / 'obscura.toml'}, /etc/obscura/obscura.toml)" \
            in out.stderr, out.stderr
        assert "obscura init" in out.stderr
    share = obscura("clips", "share", "--help").stdout
    assert "re-encrypt" in obscura("clips", "--help").stdout and "re-wrap" not in share
