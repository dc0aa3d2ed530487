"""The no-config demo: one camera, detection, and encrypted clips its user can open at once.

`obscura run` with no configuration file runs this demo, so that a newcomer sees the whole
mission rather than a third of it: a photographed person walks across the demo camera's yard
now and then (`demo:person`, bridge/sources/demo_scene.py), the detector finds them, and
each visit is recorded, encrypted, into a `file://` bucket under the state dir, to a demo
owner key the demo generates there on its first start.

A real set-up never does that last part: the bridge holds only public keys, and the owner's
identity stays on the owner's own computer, so that a stolen bridge opens no clip. The demo
keeps its key beside the bridge because a newcomer has nowhere else yet; the key file's
comments and a warning at every start say so, and the key opens only the demo's own clips.

`demo_paths()` is the one place the demo's files are named: `demo_config()` builds the demo
from it and `obscura review --demo` resolves its identity and bucket with it, so the two
cannot disagree. Two environment variables move the demo's listeners, for trying it beside a
running bridge or without announcing it on the network (and for tests, which never listen on
anything but loopback): `OBSCURA_DEMO_HAP=ADDRESS:PORT` (HomeKit; default 0.0.0.0:51826,
announced over mDNS unless the address is a loopback one) and `OBSCURA_DEMO_STATUS=ADDRESS:PORT`
(the status API; default 127.0.0.1:8089).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import platformdirs

from bridge.config import CameraConfig, Config, ConfigError, HapConfig, StatusConfig
from crypto.age_keys import AgeError, generate_identity, identity_file_text, load_identities

if TYPE_CHECKING:
    from bridge.store.config import StorageConfig

__all__ = [
    "DEMO_SOURCE",
    "DemoPaths",
    "demo_camera",
    "demo_listen",
    "demo_paths",
    "demo_person",
    "demo_storage",
    "ensure_demo_identity",
    "log_demo_start",
    "review_command",
]

log = logging.getLogger(__name__)

#: The no-config demo's camera: the demo scene with its visitor.
DEMO_SOURCE = "demo:person"
KEY_NAME = "demo-owner.key"
BUCKET_NAME = "demo-bucket"
ENV_HAP = "OBSCURA_DEMO_HAP"
ENV_STATUS = "OBSCURA_DEMO_STATUS"
DEFAULT_HAP = ("0.0.0.0", 51826)
DEFAULT_STATUS = ("127.0.0.1", 8089)
#: Days the demo keeps its clips: a visit (~2 MB at 720p) every 45 s fills ~1 GB in 6 h.
RETENTION_DAYS = 0.25

KEY_WARNING = """\
# OBSCURA DEMO KEY: NOT FOR REAL USE.
# The secret key of the demo's owner, generated and kept by the bridge so that
# `obscura review --demo` opens the demo's clips at once. A real set-up never does this:
# the bridge holds only public keys, and the owner's key stays on the owner's own computer
# (`obscura keys generate` there, then `obscura keys add-recipient age1...`), so that a
# stolen bridge opens no clip. Anyone who can read this file can open every demo clip.
"""


@dataclass(frozen=True, slots=True)
class DemoPaths:
    """Where the demo keeps its things, and how to reach it."""

    state_dir: Path  # the bridge's state dir (pairings, bridge key, spool)
    identity: Path  # the demo owner's age identity file (a secret key, mode 0600)
    bucket_dir: Path  # the file:// bucket its clips go to
    status_url: str  # its status API, for the owner's requests (share, delete)

    @property
    def bucket_url(self) -> str:
        return self.bucket_dir.as_uri()


def default_state_dir() -> Path:
    """The bridge's state dir when no configuration names one (as `Config` defaults it)."""
    return Path(platformdirs.user_data_dir("obscura"))


def demo_paths(state_dir: Path | None = None) -> DemoPaths:
    """The demo's files under `state_dir` (default: the state dir of `obscura run` with no
    configuration file, for this user). Reads and creates nothing."""
    state = (state_dir or default_state_dir()).absolute()
    address, port = _listen(ENV_STATUS, DEFAULT_STATUS)
    host = "127.0.0.1" if ipaddress.ip_address(address).is_unspecified else address
    host = f"[{host}]" if ":" in host else host
    return DemoPaths(state, state / KEY_NAME, state / BUCKET_NAME, f"http://{host}:{port}")


def review_command(paths: DemoPaths) -> str:
    """The command that opens the demo's clips (`--demo DIR` for a state dir other than this
    user's default), and what it stands for."""
    demo = "--demo" if paths.state_dir == default_state_dir().absolute() else (
        f"--demo {paths.state_dir}"
    )
    return (
        f"obscura review {demo}  (the same as: obscura review "
        f"--identity {paths.identity} --bucket {paths.bucket_url})"
    )


def demo_person(source: str) -> bool:
    """Whether a `demo:` source asks for the walking person (`demo:person`); raises
    ValueError, saying what it accepts, for anything else after `demo:`."""
    parts = urlsplit(source)
    if parts.netloc or parts.query or parts.fragment or parts.path not in ("", "person"):
        raise ValueError(f"{source!r}: use demo: (the scene) or demo:person (someone walks by)")
    return parts.path == "person"


def _listen(env: str, default: tuple[str, int]) -> tuple[str, int]:
    value = os.environ.get(env, "").strip()
    if not value:
        return default
    address, sep, port = value.rpartition(":")
    address = address.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(address)
        number = int(port)
        if not sep or not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"${env}", "", f"must be ADDRESS:PORT, like 127.0.0.1:{default[1]}; got {value!r}"
        ) from None
    return address, number


def demo_listen() -> tuple[HapConfig, StatusConfig]:
    """[hap] and [status] of the demo, moved by $OBSCURA_DEMO_HAP / $OBSCURA_DEMO_STATUS."""
    hap_address, hap_port = _listen(ENV_HAP, DEFAULT_HAP)
    status_address, status_port = _listen(ENV_STATUS, DEFAULT_STATUS)
    # An mDNS announcement of a loopback address reaches no iPhone: none is made.
    advertise = not ipaddress.ip_address(hap_address).is_loopback
    return (
        HapConfig(address=hap_address, port=hap_port, advertise=advertise),
        StatusConfig(address=status_address, port=status_port),
    )


def demo_camera() -> CameraConfig:
    """The demo camera: people are what it detects (what walks by), and what it records."""
    from dataclasses import replace

    from bridge.detect.config import CameraDetect
    from bridge.detect.settings import DetectSettings

    settings = DetectSettings()
    settings = replace(
        settings,
        filters=replace(settings.filters, subjects=("person",)),
        # The visitor leaves for good: end the event (and its clip) 3 s after, not 10.
        tracker=replace(settings.tracker, hold_seconds=3.0),
    )
    detect = CameraDetect(subjects=("person",), occupancy_sensors=("person",), settings=settings)
    return CameraConfig(name="Demo camera", source=DEMO_SOURCE, detect=detect)


def demo_storage(paths: DemoPaths) -> StorageConfig | None:
    """[storage] of the demo: its bucket, encrypted to its demo key (made on the first start).
    None, with a warning, when the key can be neither read nor made (the state dir's checks
    before `obscura run` say why)."""
    from bridge.store.config import StorageConfig

    try:
        recipient = ensure_demo_identity(paths)
    except OSError as exc:
        log.warning("the demo records nothing: cannot make its key %s: %s", paths.identity, exc)
        return None
    return StorageConfig(
        bucket=paths.bucket_url, recipients=(recipient,), retention_days=RETENTION_DAYS
    )


def ensure_demo_identity(paths: DemoPaths) -> str:
    """The demo owner's public key (age1…): from its identity file, made first if there is
    none. Made atomically (written, fsync'd, then linked into place: a reader never sees half
    a key, and of two starts at once both use the one that got there first), mode 0600."""
    if not paths.identity.exists():
        paths.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        identity = generate_identity()
        fd, tmp = tempfile.mkstemp(dir=paths.state_dir, prefix=f".{KEY_NAME}.")  # 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(KEY_WARNING + identity_file_text(identity))
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, paths.identity)
            except FileExistsError:
                pass  # another start made it first: that one is the key
        finally:
            os.unlink(tmp)
        _fsync_dir(paths.state_dir)
    mode = stat.S_IMODE(paths.identity.stat().st_mode)
    if mode & 0o077:
        log.warning("demo key %s was readable by others (mode %04o): made 0600",
                    paths.identity, mode)  # fmt: skip
        paths.identity.chmod(0o600)
    try:
        return str(load_identities(paths.identity)[0].recipient)
    except AgeError as exc:
        raise ConfigError(
            paths.identity, "", f"not a demo key ({exc}); delete it and the demo makes a new one"
        ) from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def log_demo_start(config: Config) -> None:
    """Once at start: what the demo does, that its key is a demo key, and the command that
    opens its clips."""
    if config.storage is None:
        return
    paths = demo_paths(config.state_dir)
    log.warning(
        "DEMO KEY: %s is the demo owner's SECRET key, kept on the bridge so that the demo's "
        "clips open at once. A real set-up never does this: the bridge holds only public keys "
        "and the owner's key stays on the owner's computer (see `obscura init`)",
        paths.identity,
    )
    log.info(
        "demo: a person walks across the demo camera every %g s; each visit is detected and "
        "recorded, encrypted, to %s. Watch the clips: %s",
        _visit_seconds(), paths.bucket_url, review_command(paths),
    )  # fmt: skip


def _visit_seconds() -> float:
    from bridge.sources.demo_scene import Visits

    return Visits().every
