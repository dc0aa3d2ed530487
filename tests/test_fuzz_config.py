"""Configuration fuzzing: whatever the file holds, loading it gives a Config or a ConfigError.

Seeded mutations of deploy/example.toml (what users copy): bytes flipped, the file cut short,
spans deleted, lines doubled, TOML punctuation dropped in; and, on the parsed document, values
swapped for values of other types and ranges (NaN, huge integers, NUL characters, `~user`
paths, URLs of every bucket and source scheme), keys removed and unknown ones added. Each is
loaded the way `obscura run` loads it before starting anything (`load_config`, then the host
checks that bind nothing): any exception but ConfigError is a bug (a traceback at start-up).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
from pathlib import Path
from typing import Any

import pytest

from bridge.config import ConfigError, load_config
from bridge.preflight import check_host

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "example.toml"
CASES = 300  # per kind of mutation
TOKENS = [
    "[", "]", "[[", "]]", '"', "'", '"""', "=", "\n", "#", "{", "}", ",", "\\", "\\u0000", "\x00",
    "nan", "inf", "-", "1e999", "0x", "true", "1979-05-27", "[[cameras]]\n", "[storage]\n",
    "\ufeff", "\udcff",
]
STRINGS = [
    "", " ", "x" * 5000, "Café ☕", "a\x00b", "~", "~no-such-user-x9/x", "/", "..", "state",
    "demo:", "rtsp://", "rtsp://u:p@[::1", "v4l2:", "file://", "file:///dev/null",
    "s3://", "s3://b/p?endpoint=not-a-url", "s3://b/../x", "gs:///x", "az://c?account=A_B",
    "file://relative/x", "http://[::1", "age1" + "q" * 58, "0.0.0.0", "::", "192.0.2.1",
    "123-45-678", "482-91-375", "mjpeg", "udp", "person", "ghost", "debug",
]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.choice([0, -1, 1, 2, 16, 65535, 65536, 70000, 2**63, -(2**70), 10**30])
    if kind == 1:
        return rng.choice([0.0, -0.0, 0.5, 1e-9, 1e308, math.inf, -math.inf, math.nan, 30.5])
    if kind == 2:
        return rng.choice([True, False])
    if kind in (3, 4):
        return rng.choice(STRINGS)
    if kind == 5:
        return dt.datetime(1979, 5, 27, 7, 32, tzinfo=dt.UTC)
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["name", "source", "x", "port", "enabled", "polygon"]): random_value(
        rng, depth + 1) for _ in range(rng.randrange(3))}


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def toml_document(doc: dict[str, Any]) -> str:
    """Every top-level key as one inline value: valid TOML for any tree of values."""
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


def containers(node: Any, found: list[Any]) -> list[Any]:
    if isinstance(node, dict | list):
        found.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            containers(child, found)
    return found


def mutate_document(base: dict[str, Any], rng: random.Random) -> str:
    import copy

    doc = copy.deepcopy(base)
    for _ in range(rng.randrange(1, 4)):
        parent = rng.choice(containers(doc, []))
        op = rng.randrange(3)
        if isinstance(parent, dict):
            if op == 0 and parent:
                del parent[rng.choice(list(parent))]
            elif op == 1:
                parent[rng.choice(["extra", "nmae", "port", "enabled"])] = random_value(rng)
            elif parent:
                parent[rng.choice(list(parent))] = random_value(rng)
        elif parent:
            i = rng.randrange(len(parent))
            if op == 0:
                del parent[i]
            elif op == 1:
                parent.append(random_value(rng))
            else:
                parent[i] = random_value(rng)
    return toml_document(doc)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            for _ in range(rng.randrange(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1:
            del buf[at:]
        elif op == 2:
            del buf[at : at + rng.randrange(1, 200)]
        elif op == 3:
            lines = bytes(buf).split(b"\n")
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            buf = bytearray(b"\n".join(lines))
        else:
            token = rng.choice(TOKENS).encode("utf-8", errors="surrogateescape")
            buf[at:at] = token
    return bytes(buf)


@pytest.fixture(scope="module")
def base_text() -> str:
    text = EXAMPLE.read_text()
    # Nothing of the host's: state under the test's directory (relative to the config file).
    return text.replace('state_dir = "/var/lib/obscura"', 'state_dir = "state"')


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("AWS_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name)


def load(path: Path, data: bytes) -> str:
    """'ok', 'config error', or the unexpected exception (a bug)."""
    path.write_bytes(data)
    try:
        check_host(load_config(path))
    except ConfigError as exc:
        assert str(path) in str(exc) or "no configuration file" in str(exc)
        return "config error"
    except Exception as exc:  # what this test looks for
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_the_base_loads(tmp_path: Path, base_text: str) -> None:
    assert load(tmp_path / "obscura.toml", base_text.encode()) == "ok"


@pytest.mark.parametrize("kind", ["bytes", "document"])
def test_mutated_configs_load_or_raise_config_error(
    tmp_path: Path, base_text: str, kind: str
) -> None:
    import tomllib

    rng = random.Random(f"obscura-config-fuzz-{kind}")
    base = tomllib.loads(base_text)
    path = tmp_path / "obscura.toml"
    outcomes: dict[str, int] = {}
    bugs: list[str] = []
    for _ in range(CASES):
        if kind == "bytes":
            data = mutate_bytes(base_text.encode(), rng)
        else:
            data = mutate_document(base, rng).encode("utf-8", errors="surrogateescape")
        outcome = load(path, data)
        if outcome not in ("ok", "config error"):
            bugs.append(f"{outcome}\n--- config ---\n{data[:2000]!r}")
            outcome = "bug"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert not bugs, f"{len(bugs)} of {CASES} raised something else:\n\n" + "\n\n".join(bugs[:3])
    # The mutations are not all refused at the first byte: both outcomes occur.
    assert outcomes.get("ok", 0) > 0 and outcomes.get("config error", 0) > CASES // 4, outcomes
