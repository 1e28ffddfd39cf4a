"""Fixtures of the fault suite: a broker a test may kill, flush and start again."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import Server

#: Settings that make lost tasks show within seconds instead of a minute.
FAST_LEASES = {"heartbeat_interval": 0.5, "lease_timeout": 3.0, "broker_patience": 10.0}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    found = Server(tmp_path)
    found.start()
    yield found
    found.stop()


def rows(dbfile: str, request_id: int) -> list[tuple[int, int, str]]:
    """(index, attempt, status) of every result row of a request."""
    with sqlite3.connect(dbfile) as db:
        return [tuple(r) for r in db.execute(  # type: ignore[misc]
            "SELECT idx, attempt, status FROM results WHERE request_id = ? ORDER BY idx",
            (request_id,))]


def history(dbfile: str, request_id: int) -> list[tuple[int, int, str]]:
    with sqlite3.connect(dbfile) as db:
        return [tuple(r) for r in db.execute(  # type: ignore[misc]
            "SELECT idx, attempt, status FROM attempts WHERE request_id = ? ORDER BY idx,"
            " attempt", (request_id,))]


def wait_for(condition: object, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
