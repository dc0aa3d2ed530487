"""The owner's commands: pair, doctor, camera probe; and what the bridge leaves on disk."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.bridge_process import ROOT, BridgeProcess, CameraSpec
from tests.peers.rtsp import RtspCamera


def obscura(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    process = BridgeProcess(
        tmp_path_factory.mktemp("cli"),
        [
            CameraSpec("Demo", "demo:", {"width": 320, "height": 240, "fps": 10}),
            CameraSpec("Garage", "rtsp://admin:pa55word@127.0.0.1:9/live"),  # nothing listens
        ],
    )
    process.start()
    process.wait_camera("Demo")
    yield process
    process.stop()


def test_doctor_reports_each_camera_and_the_dead_one(bridge: BridgeProcess) -> None:
    bridge.wait_camera("Garage", "retrying")
    result = obscura("doctor", "--config", str(bridge.config))
    assert result.returncode == 1  # a camera is down
    out = result.stdout
    assert f"config    {bridge.config}: OK (2 camera(s))" in out
    assert "0 paired controller(s)" in out and "obscura pair" in out
    assert "'Demo' (demo:): 320x240@10" in out
    assert "'Garage' (rtsp://***@127.0.0.1:9/live): RETRYING" in out
    assert "refused" in out.lower() and "next try in" in out
    assert "pa55word" not in out
    # HKSV is offered on every camera; no hub has set it up here.
    assert out.count("HomeKit Secure Video: offered; not set up by a home hub yet") == 2
    assert "0 data stream(s)" in out


def test_doctor_without_a_running_bridge(tmp_path: Path) -> None:
    config = tmp_path / "o.toml"
    config.write_text('[status]\nport = 9\n[[cameras]]\nname = "A"\nsource = "demo:"\n')
    result = obscura("doctor", "--config", str(config))
    assert result.returncode == 1
    assert "not reachable" in result.stdout and "obscura run" in result.stdout


def test_metrics_are_prometheus_text(bridge: BridgeProcess) -> None:
    import urllib.request

    url = f"http://127.0.0.1:{bridge.status_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    assert 'obscura_camera_up{camera="Demo"} 1' in text
    assert 'obscura_camera_up{camera="Garage"} 0' in text
    assert "# TYPE obscura_camera_packets_total counter" in text
    assert 'obscura_hksv_recordings_total{camera="Demo"} 0' in text
    assert 'obscura_hksv_sessions{camera="Garage"} 0' in text
    assert "# TYPE obscura_hksv_recording_ends_total counter" in text


def test_pair_prints_qr_setup_uri_and_code(bridge: BridgeProcess) -> None:
    result = obscura("pair", "--config", str(bridge.config))
    assert result.returncode == 0, result.stderr
    assert f"Setup code:  {bridge.setup_code}" in result.stdout
    uri = next(line.split()[-1] for line in result.stdout.splitlines() if "X-HM://" in line)
    assert uri.startswith("X-HM://") and len(uri) == len("X-HM://") + 9 + 4
    assert "█" in result.stdout or "▀" in result.stdout  # the terminal QR code
    # The same setup id as the running bridge: pairing by QR works without a restart.
    again = obscura("pair", "--config", str(bridge.config))
    assert uri in again.stdout


def test_state_dir_holds_secrets_privately(bridge: BridgeProcess) -> None:
    state = bridge.workdir / "state"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    files = [p for p in state.iterdir() if p.is_file()]
    assert files
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_camera_probe_against_a_real_rtsp_camera(tmp_path: Path) -> None:
    with RtspCamera(width=640, height=360, fps=15) as camera:
        snapshot = tmp_path / "probe.jpg"
        result = obscura(
            "camera", "probe", camera.url, "--snapshot", str(snapshot), "--seconds", "1"
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "H.264 main, 640x360 @ 15 fps" in result.stdout
    assert snapshot.read_bytes()[:2] == b"\xff\xd8"


def test_camera_probe_of_a_dead_camera_fails_clearly() -> None:
    result = obscura("camera", "probe", "rtsp://u:secret@127.0.0.1:9/x")
    assert result.returncode == 1
    assert "FAILED  rtsp://***@127.0.0.1:9/x" in result.stdout
    assert "secret" not in result.stdout + result.stderr


def test_probe_rejects_unsupported_source() -> None:
    result = obscura("camera", "probe", "http://cam/video.mjpg")
    assert result.returncode == 2
    assert "unsupported source" in result.stderr
