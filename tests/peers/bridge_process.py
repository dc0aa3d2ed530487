"""`obscura run` as a child process with a config written by the test (loopback only)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.peers.rtsp import free_port

SETUP_CODE = "482-91-375"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class CameraSpec:
    name: str
    source: str
    extra: dict[str, Any] = field(default_factory=dict)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def write_config(
    path: Path,
    cameras: list[CameraSpec],
    hap_port: int,
    status_port: int,
    detect: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
) -> None:
    lines = [
        "[bridge]",
        'name = "Obscura Test"',
        f"state_dir = {json.dumps(str(path.parent / 'state'))}",
        "",
        "[hap]",
        'address = "127.0.0.1"',
        f"port = {hap_port}",
        f'setup_code = "{SETUP_CODE}"',
        "advertise = false",
        "",
        "[status]",
        'address = "127.0.0.1"',
        f"port = {status_port}",
        "",
        "[detect]",
        *(
            [f"{k} = {_toml_value(v)}" for k, v in detect.items()]
            if detect is not None
            else ["enabled = false  # most tests are about video; detection tests turn it on"]
        ),
    ]
    if storage is not None:
        lines += ["", "[storage]", *[f"{k} = {_toml_value(v)}" for k, v in storage.items()]]
    for cam in cameras:
        lines += [
            "",
            "[[cameras]]",
            f"name = {json.dumps(cam.name)}",
            f"source = {json.dumps(cam.source)}",
        ]
        lines += [f"{k} = {_toml_value(v)}" for k, v in cam.extra.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


class BridgeProcess:
    def __init__(
        self,
        workdir: Path,
        cameras: list[CameraSpec],
        detect: dict[str, Any] | None = None,
        storage: dict[str, Any] | None = None,
        *,
        nofile: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``nofile``: soft and hard RLIMIT_NOFILE of the child (a lowered limit for flood tests;
        the bridge raises its soft limit only up to the hard one). ``env``: variables added to
        the child's environment (e.g. MALLOC_ARENA_MAX for a memory benchmark)."""
        self.workdir = workdir
        self.nofile = nofile
        self.env = dict(env or {})
        self.cameras = cameras
        self.hap_port = free_port()
        self.status_port = free_port()
        self.config = workdir / "obscura.toml"
        self.log = workdir / "bridge.log"
        self.setup_code = SETUP_CODE
        self.proc: subprocess.Popen[bytes] | None = None
        write_config(self.config, cameras, self.hap_port, self.status_port, detect, storage)

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "--config", str(self.config)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=self._limits if self.nofile else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                self.status()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"bridge did not come up:\n{self.log_text()}")

    def _limits(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def status(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.status_port}/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)

    def camera_status(self, name: str) -> dict[str, Any]:
        return next(c for c in self.status()["cameras"] if c["name"] == name)

    def wait_camera(self, name: str, state: str = "streaming", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.camera_status(name)["state"] == state:
                return
            time.sleep(0.1)
        raise AssertionError(f"camera {name!r} not {state}: {self.camera_status(name)}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


@contextlib.contextmanager
def demo_bridge(workdir: Path, camera: str = "Gate") -> Iterator[BridgeProcess]:
    """`obscura run` with one small demo camera, streaming; on exit it must stop with status 0
    and leave no traceback in its log."""
    process = BridgeProcess(
        workdir, [CameraSpec(camera, "demo:", {"width": 320, "height": 240, "fps": 5})]
    )
    process.start()
    process.wait_camera(camera)
    yield process
    assert process.stop() == 0, process.log_text()
    log = process.log_text()
    assert "Traceback" not in log, log
