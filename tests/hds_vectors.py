"""The HDS reference vectors (tests/data/hds/README.md), for every test that checks against them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(
    os.environ.get(
        "OBSCURA_HDS_VECTORS",
        Path(__file__).resolve().parent / "data/hds/hds-vectors-dev.json",
    )
)


def load_vectors() -> dict[str, Any]:
    if not VECTORS.exists():
        pytest.fail(f"HDS reference vectors not found at {VECTORS} (set OBSCURA_HDS_VECTORS)")
    result: dict[str, Any] = json.loads(VECTORS.read_text())
    return result
