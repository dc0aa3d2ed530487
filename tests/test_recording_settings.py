"""What the Home app chose for HKSV survives restarts, and is dropped when capabilities change.

Built in-process with the real HAP-python accessories (no network): a hub's writes are applied
through the characteristics' own setters, as HAP-python does for a PUT; the hub's 209 bytes
come from the test hub's independent TLV builder. The end-to-end restart (a real `obscura run`
and a paired hub) is in test_hksv_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from accessories.backend import (
    LiveSession,
    RecordingRequest,
    RecordingStream,
    StreamEndpoints,
    VideoCapabilities,
)
from accessories.bridge import HomeKitBridge
from accessories.hap_requests import ReadRefused
from accessories.recording import CameraRecording, RecordingOptions
from tests.peers.recording_tlv_peer import RecordingSelection


class _Camera:
    """A CameraBackend whose size the test sets; it never streams (nothing here asks it to)."""

    def __init__(self, name: str, width: int, height: int, fps: int = 15) -> None:
        self.name = name
        self.caps = VideoCapabilities(native_width=width, native_height=height, native_fps=fps)

    def capabilities(self) -> VideoCapabilities:
        return self.caps

    async def snapshot(self, width: int, height: int) -> bytes:
        raise NotImplementedError

    def open_live_session(
        self, endpoints: StreamEndpoints, on_end: Callable[[], None]
    ) -> LiveSession:
        raise NotImplementedError

    def open_recording(self, request: RecordingRequest) -> RecordingStream:
        raise NotImplementedError


async def _bridge(state: Path, camera: _Camera, *, standalone: bool = False) -> CameraRecording:
    homekit = HomeKitBridge(
        name="Test", address="127.0.0.1", port=0, setup_code="482-91-375", state_dir=state,
        advertise=False, cameras=[camera], standalone=standalone,
    )  # fmt: skip
    return homekit.enable_recording(0, camera, RecordingOptions())


def _char(recording: CameraRecording, name: str) -> Any:
    return recording.service.get_characteristic(name)


def _write(recording: CameraRecording, name: str, value: Any) -> Any:
    """What HAP-python does for a hub's PUT: the characteristic's setter, then the value."""
    return _char(recording, name).client_update_value(value, ("127.0.0.1", 5000))


def _settings_file(state: Path) -> Path:
    (path,) = state.glob("*.hksv.json")
    return path


@pytest.mark.parametrize("standalone", [False, True])
async def test_selection_and_mode_survive_a_restart(tmp_path: Path, standalone: bool) -> None:
    camera = _Camera("Porch", 1280, 720)
    rec = await _bridge(tmp_path, camera, standalone=standalone)
    with pytest.raises(ReadRefused):  # nothing selected yet: a read must fail
        rec._check_selected_read()
    raw = RecordingSelection(width=1280, height=720, fps=15).encode()
    _write(rec, "SelectedCameraRecordingConfiguration", base64.b64encode(raw).decode())
    _write(rec, "Active", 1)
    _write(rec, "RecordingAudioActive", 0)
    rec._mode.get_characteristic("PeriodicSnapshotsActive").client_update_value(0, None)
    assert rec.selected is not None and rec.selected.raw == raw
    path = _settings_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again = await _bridge(tmp_path, _Camera("Porch", 1280, 720), standalone=standalone)
    assert again.selected is not None and again.selected.raw == raw
    assert base64.b64decode(_char(again, "SelectedCameraRecordingConfiguration").value) == raw
    assert _char(again, "Active").value == 1 and _char(again, "RecordingAudioActive").value == 0
    assert not again.snapshot_allowed(0) and again.snapshot_allowed(1)
    request = again.selected.to_request(audio_active=False)
    assert (request.width, request.height, request.audio_active) == (1280, 720, False)


async def test_the_camera_size_known_at_start_keeps_the_selection(tmp_path: Path) -> None:
    """Before the camera connects the backend reports a default size; the size saved last time
    is advertised instead, so a restart does not drop the hub's choice."""
    rec = await _bridge(tmp_path, _Camera("Porch", 1280, 720))
    raw = RecordingSelection(width=1280, height=720, fps=15).encode()
    _write(rec, "SelectedCameraRecordingConfiguration", base64.b64encode(raw).decode())
    rec.update_capabilities(VideoCapabilities(1280, 720, 15))
    again = await _bridge(tmp_path, _Camera("Porch", 1920, 1080, 30))  # not connected yet
    assert again.selected is not None
    again.update_capabilities(VideoCapabilities(1280, 720, 15))  # connected: same size
    assert again.selected is not None


async def test_a_new_camera_size_drops_the_selection(tmp_path: Path) -> None:
    rec = await _bridge(tmp_path, _Camera("Porch", 1280, 720))
    raw = RecordingSelection(width=1280, height=720, fps=15).encode()
    _write(rec, "SelectedCameraRecordingConfiguration", base64.b64encode(raw).decode())
    video_before = _char(rec, "SupportedVideoRecordingConfiguration").value
    rec.update_capabilities(VideoCapabilities(1920, 1080, 30))
    assert rec.selected is None
    assert _char(rec, "SupportedVideoRecordingConfiguration").value != video_before
    saved = json.loads(_settings_file(tmp_path).read_text())
    assert saved["selected"] is None and saved["native"] == [1920, 1080, 30]
    with pytest.raises(ReadRefused):
        rec._check_selected_read()
    again = await _bridge(tmp_path, _Camera("Porch", 1920, 1080, 30))
    assert again.selected is None


async def test_a_selection_we_did_not_offer_is_refused(tmp_path: Path) -> None:
    rec = await _bridge(tmp_path, _Camera("Porch", 1280, 720))
    for bad in (
        RecordingSelection(width=1920, height=1080, fps=15).encode(),  # larger than the camera
        RecordingSelection(width=1280, height=720, fps=15, audio_codec=1).encode(),  # AAC-ELD
        b"\x01\x02garbage",
    ):
        with pytest.raises(ValueError):
            _write(rec, "SelectedCameraRecordingConfiguration", base64.b64encode(bad).decode())
        assert rec.selected is None
    with pytest.raises(ValueError):
        _write(rec, "SelectedCameraRecordingConfiguration", "not base64!")


async def test_a_damaged_settings_file_means_defaults(tmp_path: Path) -> None:
    rec = await _bridge(tmp_path, _Camera("Porch", 1280, 720))
    _write(rec, "Active", 1)
    _settings_file(tmp_path).write_text("{not json")
    again = await _bridge(tmp_path, _Camera("Porch", 1280, 720))
    assert again.selected is None and _char(again, "Active").value == 0
    await asyncio.sleep(0)
