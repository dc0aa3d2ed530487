"""Reading one TOML table of the configuration: typed keys, unknown keys refused, and the
ConfigError that names the file and the key. A leaf module: every table's parser
(bridge/config.py, bridge/config_cameras.py, detect/, record/, store/) builds on it.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = str(path), key, problem
        where = f" at key '{key}'" if key else ""
        super().__init__(f"{path}: configuration error{where}: {problem}")


class TableReader:
    """Typed access to one TOML table that remembers which keys were used."""

    def __init__(self, path: Path, prefix: str, table: Any) -> None:
        self.path, self.prefix = path, prefix
        if not isinstance(table, dict):
            raise ConfigError(path, prefix, f"must be a table, not {_tname(table)}")
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(self.path, self.key(name), f"must be {_kinds(kinds)}, not a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise ConfigError(
                self.path, self.key(name), f"must be {_kinds(kinds)}, not {_tname(value)}"
            )
        return value

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), problem)

    def check_unknown(self) -> None:
        for name in self.table:
            if name not in self.used:
                known = ", ".join(sorted(self.used))
                raise ConfigError(self.path, self.key(name), f"unknown key (known keys: {known})")


def _tname(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _kinds(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "an array",
        dict: "a table",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def config_path(r: TableReader, name: str) -> Path | None:
    """A path key: `~` expanded, relative to the configuration file's directory; None when
    missing or empty."""
    value = r.get(name, str, None)
    if not value:
        return None
    if "\0" in value:
        raise r.fail(name, "must not contain a NUL character")
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user of no such user
        raise r.fail(name, f"cannot expand {value.split('/', 1)[0]!r}: no such user") from None
    # abspath, not resolve(): a symbolic link stays one (credentials files refuse them)
    return p if p.is_absolute() else Path(os.path.abspath(r.path.parent / p))


def read_port(r: TableReader, name: str, default: int) -> int:
    value = r.get(name, int, default)
    if not 0 <= value <= 65535:
        raise r.fail(name, f"must be a port number 0-65535, got {value}")
    return value


def read_address(r: TableReader, name: str, default: str) -> str:
    value = r.get(name, str, default)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise r.fail(
            name, f"must be an IP address like 0.0.0.0 or 127.0.0.1, got {value!r}"
        ) from None
    return value


def read_choice(r: TableReader, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = r.get(name, str, default)
    if value not in choices:
        raise r.fail(name, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def read_optional_choice(r: TableReader, name: str, choices: tuple[str, ...]) -> str | None:
    if name not in r.table:
        r.used.add(name)
        return None
    return read_choice(r, name, choices[0], choices)
