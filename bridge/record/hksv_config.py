"""`[cameras.hksv]`: HomeKit Secure Video for one camera (issue #9).

HKSV records what the camera's MotionSensor reports, so the trigger is what MotionDetected
follows: the owner's chosen subjects (the default: people, not tree shadows) or any motion.
`trigger` therefore sets the camera's `motion_sensor`; giving both with different values is a
configuration error rather than a silent winner.

    [[cameras]]
    name = "Porch"
    source = "rtsp://…"
    [cameras.hksv]
    enabled = true            # offer HKSV to the Home app (default); `hksv = false` turns it off
    trigger = "subjects"      # or "motion"
    post_roll_seconds = 4     # keep recording this long after the trigger ends
    max_seconds = 180         # one recording never runs longer
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bridge.config_reader import TableReader

TRIGGERS = ("subjects", "motion")


@dataclass(frozen=True, slots=True)
class HksvConfig:
    enabled: bool = True
    trigger: str | None = None  # None: whatever motion_sensor says (subjects by default)
    post_roll_seconds: float = 4.0
    max_seconds: float = 180.0


def parse_camera_hksv(path: Path, prefix: str, cam: TableReader) -> HksvConfig:
    """Read `hksv` (a boolean or a table) from one [[cameras]] table."""
    raw = cam.get("hksv", (bool, dict), True)
    if isinstance(raw, bool):
        return HksvConfig(enabled=raw)
    table = TableReader(path, f"{prefix}.hksv", raw)
    enabled = table.get("enabled", bool, True)
    trigger = table.get("trigger", str, None)
    if trigger is not None and trigger not in TRIGGERS:
        raise table.fail("trigger", f"must be one of {', '.join(TRIGGERS)}, got {trigger!r}")
    post_roll = table.get("post_roll_seconds", float, 4.0)
    if not 0.0 <= post_roll <= 60.0:
        raise table.fail("post_roll_seconds", f"must be between 0 and 60, got {post_roll}")
    max_seconds = table.get("max_seconds", float, 180.0)
    if not 10.0 <= max_seconds <= 600.0:
        raise table.fail("max_seconds", f"must be between 10 and 600, got {max_seconds}")
    table.check_unknown()
    if trigger is not None and "motion_sensor" in cam.table:
        if cam.table["motion_sensor"] != trigger:
            raise table.fail(
                "trigger",
                f"is {trigger!r} but {cam.key('motion_sensor')} is "
                f"{cam.table['motion_sensor']!r}: HKSV records what the motion sensor reports; "
                "set one of them",
            )
    return HksvConfig(enabled, trigger, post_roll, max_seconds)
