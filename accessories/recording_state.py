"""What the Home app chose for one camera's recording, kept across restarts.

The hub writes the operating mode and its selected recording configuration once (when the
owner picks "Stream & Allow Recording") and expects them back after we restart; it does not
write them again. They live in one small JSON file per camera in the state directory, mode
0600 (it says when the owner watches and records), written atomically. The selection is only
valid for the capabilities it was chosen from: ``fingerprint`` names them, and a selection
saved under another fingerprint is dropped (the hub reads the new capabilities and selects
again). The camera's last known size is kept too, so the same capabilities are advertised
before the camera connects after a restart.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class RecordingSettings:
    recording_active: int = 0  # CameraRecordingManagement.Active
    audio_active: int = 1  # RecordingAudioActive
    homekit_active: int = 1  # CameraOperatingMode.HomeKitCameraActive
    event_snapshots: int = 1  # EventSnapshotsActive
    periodic_snapshots: int = 1  # PeriodicSnapshotsActive
    selected: str | None = None  # base64 of the hub's SelectedCameraRecordingConfiguration
    fingerprint: str | None = None  # of the capabilities the selection was made from
    native: list[int] = field(default_factory=list)  # [width, height, fps] last seen

    @property
    def selected_bytes(self) -> bytes | None:
        if self.selected is None:
            return None
        try:
            return base64.b64decode(self.selected, validate=True)
        except (binascii.Error, ValueError):
            return None


def load_settings(path: Path) -> RecordingSettings:
    """The saved settings, or defaults (missing or unreadable file: logged, never fatal)."""
    try:
        raw = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return RecordingSettings()
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable, recording settings reset: %s", path, exc)
        return RecordingSettings()
    settings = RecordingSettings()
    if not isinstance(raw, dict):
        return settings
    for name, default in asdict(settings).items():
        value = raw.get(name, default)
        if isinstance(default, int) and isinstance(value, int) and value in (0, 1):
            setattr(settings, name, value)
        elif name in ("selected", "fingerprint") and (value is None or isinstance(value, str)):
            setattr(settings, name, value)
        elif name == "native" and isinstance(value, list) and len(value) == 3:
            if all(isinstance(v, int) and 0 < v < 100_000 for v in value):
                settings.native = list(value)
    return settings


def save_settings(path: Path, settings: RecordingSettings) -> None:
    """Atomic write, mode 0600 (a crash leaves the old file or the new one)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(settings), out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
