"""Fixtures of the tests a person at the workstation would run: one fresh `edged serve`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server

# A fresh install (default context, no models pulled), on fewer threads and slots for the
# two shared cores.
SMALL = ("--threads", "1", "--parallel", "4")


@pytest.fixture(scope="session")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`edged serve` as installed: the embedded model only, no alias, no key."""
    tmp = tmp_path_factory.mktemp("fresh")
    srv = start_server(tmp, *SMALL, env={"EDGED_MODELS_DIR": str(tmp / "models")})
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def http(fresh: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fresh.url, timeout=300) as c:
        yield c


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    return d
