"""Fixtures of the fault suite: a broker a test may kill, flush and start again."""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sheepdog.broker import embedded

from ..conftest import _free_port

#: Settings that make lost tasks show within seconds instead of a minute.
FAST_LEASES = {"heartbeat_interval": 0.5, "lease_timeout": 3.0, "broker_patience": 10.0}


class Server:
    """A real valkey-server on a fixed loopback port and password, for one test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        """Start it - empty: no persistence, as an admin's restart without it."""
        self.proc = subprocess.Popen(
            [str(embedded.server_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
             "--requirepass", self.password, "--dir", str(self.workdir), "--save", "",
             "--appendonly", "no", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and self.proc.poll() is None
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        """kill -9: everything it held in memory is gone."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    found = Server(tmp_path)
    found.start()
    yield found
    if found.proc is not None:
        found.proc.terminate()
        found.proc.wait(10)


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
