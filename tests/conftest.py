"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest

from tests.peers.owner_bucket import Recorded, record_bucket


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """One real recording, shared: tests copy the bucket before tampering with it."""
    return record_bucket(tmp_path_factory.mktemp("owner"))
