"""Checks of a loaded configuration against this host, before `obscura run` starts anything.

`load_config()` reads the file and nothing else, so the owner's tools and `obscura keys` can load
a bridge's configuration anywhere. Whether the bridge can run *here* depends on the host: is
there a camera to serve, can `state_dir` be made private, does the credentials file exist with
mode 0600, does the bucket URL open, can [hap] and [status] bind their addresses. `run` checks
all of that first and exits 2 with a `ConfigError` naming the file and the key, rather than
starting half a bridge that logs the problem (or a traceback) and keeps running.

The bucket is opened by `open_bucket()`, the function the vault uses (it does no network I/O),
so the URL and credentials rules cannot drift apart. Binds are tried with a socket closed at
once; another program can still take a port before the bridge binds it, so `BridgeService`
wraps its real binds in `bind_errors()` and stops whatever had started (the same exit 2).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bridge.config import Config, ConfigError

__all__ = ["bind_errors", "check_binds", "check_host", "check_runnable", "config_name"]

#: errno of a bind that the configuration can fix, and what it means.
_BIND_PROBLEMS = {
    errno.EADDRNOTAVAIL: ("address", "{address} is not an address of this host"),
    errno.EADDRINUSE: (
        "port", "port {port} on {address} is in use (another program, or obscura already running?)"
    ),
    errno.EACCES: ("port", "binding port {port} on {address} is not permitted to this user"),
}


def config_name(config: Config) -> str:
    """What a ConfigError names as the file: the demo has none."""
    return str(config.path) if config.path is not None else "(no configuration file: the demo)"


def check_runnable(config: Config) -> None:
    """Everything `obscura run` needs from this host; raises ConfigError on the first problem."""
    check_host(config)
    check_binds(config)


def check_host(config: Config) -> None:
    """The checks that bind nothing: cameras, directories, the bucket and its credentials."""
    where = config_name(config)
    if not config.cameras:
        raise ConfigError(
            where, "cameras", "no cameras configured: add a [[cameras]] table with a name and a "
            "source (the demo camera runs only when there is no configuration file at all)",
        )
    if not any(cam.enabled for cam in config.cameras):
        raise ConfigError(where, "cameras", "every camera has enabled = false: nothing to serve")
    _directory(where, "bridge.state_dir", config.state_dir)
    if config.storage is not None:
        if config.storage.spool_dir is not None:
            _directory(where, "storage.spool_dir", config.storage.spool_dir)
        _bucket(config, where)
    _advertising(config, where)


def _directory(where: str, key: str, path: Path) -> None:
    """`path` is a directory this user may make private (0700) and write, or can be created."""
    probe = path
    while True:
        try:
            st = os.stat(probe)
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                raise ConfigError(where, key, f"{path}: no such directory") from None
            probe = probe.parent  # the nearest existing ancestor must let us create it
        except OSError as exc:
            raise ConfigError(where, key, f"{path}: {exc.strerror}") from None
    missing = probe != path
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(
            where, key, f"{probe} is not a directory"
            + (f" (so {path} cannot be created)" if missing else ""),
        )
    if not missing and st.st_uid != os.geteuid() and os.geteuid() != 0:
        raise ConfigError(
            where, key, f"{path} belongs to another user (uid {st.st_uid}); the bridge keeps it "
            "private (mode 0700), which only its owner can: run the bridge as that user",
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            where, key, f"cannot create {path}: {probe} is not writable by this user"
            if missing else f"{path} is not writable by this user",
        )


def _bucket(config: Config, where: str) -> None:
    from bridge.redact import redact
    from bridge.store.bucket import BucketError, open_bucket
    from bridge.store.credentials import CredentialsError

    storage = config.storage
    assert storage is not None
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the vault says its warnings (plain http) once, later
    try:
        bucket = open_bucket(storage.bucket, storage.credentials_file)
        bucket.describe()
    except CredentialsError as exc:
        raise ConfigError(where, "storage.credentials_file", str(exc)) from None
    except BucketError as exc:  # the URL (BucketConfigError), or a prefix that is no name
        raise ConfigError(where, "storage.bucket", str(exc)) from None
    except Exception as exc:  # the client library refused what it was given
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        problem = f"cannot open it: {redact(first)[:300]}"
        raise ConfigError(where, "storage.bucket", problem) from None
    finally:
        logging.disable(previous)


def _advertising(config: Config, where: str) -> None:
    hap = config.hap
    if not hap.advertise or hap.advertised_address or not ipaddress.ip_address(
        hap.address
    ).is_unspecified:
        return
    from accessories.bridge import interface_addresses

    if not interface_addresses():
        raise ConfigError(
            where, "hap.advertised_address", f"[hap] address = {hap.address} listens on every "
            "interface but this host has no address to announce: set advertised_address, or "
            "advertise = false",
        )


def check_binds(config: Config) -> None:
    """Each TCP address the bridge will listen on can be bound now (the socket is closed at
    once); also that [hap] and [status] do not ask for the same one."""
    where = config_name(config)
    hap, status = config.hap, config.status
    ports = [hap.port]
    if hap.standalone and hap.port:  # one HAP server per camera, on port + i
        ports = [hap.port + i for i in range(sum(c.enabled for c in config.cameras))]
        if ports[-1] > 65535:
            raise ConfigError(
                where, "hap.port", f"standalone = true needs ports {ports[0]}-{ports[-1]}: "
                "past 65535",
            )
    for port in ports:
        _try_bind(where, "hap", hap.address, port)
    if not status.enabled:
        return
    if status.port and status.port in ports and _overlap(status.address, hap.address):
        raise ConfigError(
            where, "status.port", f"port {status.port} is also [hap]'s: choose another",
        )
    _try_bind(where, "status", status.address, status.port)


def _overlap(a: str, b: str) -> bool:
    ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return ia == ib or ia.is_unspecified or ib.is_unspecified


def _try_bind(where: str, section: str, address: str, port: int) -> None:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers do
        try:
            sock.bind((address, port))
        except OSError as exc:
            raise bind_problem(where, section, address, port, exc) from None


def bind_problem(where: str, section: str, address: str, port: int, exc: OSError) -> ConfigError:
    key, text = _BIND_PROBLEMS.get(
        exc.errno or 0, ("address", f"cannot listen on {{address}} port {{port}}: {exc.strerror}")
    )
    return ConfigError(where, f"{section}.{key}", text.format(address=address, port=port))


@contextmanager
def bind_errors(config: Config, section: str) -> Iterator[None]:
    """Turn a failed bind of [hap] or [status] during start-up into the ConfigError of the
    preflight (exit 2 naming the key); other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _BIND_PROBLEMS:
            raise
        table = config.hap if section == "hap" else config.status
        raise bind_problem(config_name(config), section, table.address, table.port, exc) from None
