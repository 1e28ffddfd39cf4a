"""The SQLite store (the dbfile): requests, their tasks and their outcomes.

It keeps the function and every argument as well as the results, so a request
can be read - and pushed again - after its broker is gone. WAL mode: many
processes read while one writes. New files are created mode 0600.

Schema (version 1)::

    store     (key PK, value)                           store_id (uuid), schema
    brokers   (broker_id PK, location)                  location: 'embedded:<dir>' or a
                                                        password-free URL
    requests  (broker_id, request_id) PK, function, n_tasks, func, scheduler,
              job_ids, created, status (submitted, then the broker's final status:
              done | cancelled), settings (the config as JSON, without broker_url)
    tasks     (broker_id, request_id, idx) PK, args      args: codec envelope of the item
    results   (broker_id, request_id, idx) PK, status, value, error, host, pid,
              started, finished, stdout, stderr, stream_key
    incidents (broker_id, request_id, stream_key) PK, idx, error, host
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sheepdog.errors import RequestNotFound, SheepdogError

SCHEMA_VERSION = "1"

#: Seconds a writer waits for another writer's lock (the original used 30 s too).
BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS brokers (
    broker_id TEXT PRIMARY KEY,
    location  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    broker_id  TEXT NOT NULL REFERENCES brokers(broker_id),
    request_id INTEGER NOT NULL,
    function   TEXT NOT NULL,
    n_tasks    INTEGER NOT NULL,
    func       BLOB NOT NULL,
    scheduler  TEXT NOT NULL,
    job_ids    TEXT NOT NULL DEFAULT '',
    created    REAL NOT NULL,
    status     TEXT NOT NULL DEFAULT 'submitted',
    settings   TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (broker_id, request_id)
);
CREATE TABLE IF NOT EXISTS tasks (
    broker_id  TEXT NOT NULL,
    request_id INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    args       BLOB NOT NULL,
    PRIMARY KEY (broker_id, request_id, idx)
);
CREATE TABLE IF NOT EXISTS results (
    broker_id  TEXT NOT NULL,
    request_id INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('ok', 'error', 'lost')),
    value      BLOB,
    error      TEXT,
    host       TEXT,
    pid        INTEGER,
    started    REAL,
    finished   REAL,
    stdout     TEXT,
    stderr     TEXT,
    stream_key INTEGER NOT NULL,
    PRIMARY KEY (broker_id, request_id, idx)
);
CREATE TABLE IF NOT EXISTS incidents (
    broker_id  TEXT NOT NULL,
    request_id INTEGER NOT NULL,
    stream_key INTEGER NOT NULL,
    idx        INTEGER,
    error      TEXT NOT NULL,
    host       TEXT,
    PRIMARY KEY (broker_id, request_id, stream_key)
);
"""

_UPSERT_RESULT = """
INSERT INTO results (broker_id, request_id, idx, status, value, error, host, pid,
                     started, finished, stdout, stderr, stream_key)
VALUES (:broker_id, :request_id, :idx, :status, :value, :error, :host, :pid,
        :started, :finished, :stdout, :stderr, :stream_key)
ON CONFLICT (broker_id, request_id, idx) DO UPDATE SET
    status = excluded.status, value = excluded.value, error = excluded.error,
    host = excluded.host, pid = excluded.pid, started = excluded.started,
    finished = excluded.finished, stdout = excluded.stdout, stderr = excluded.stderr,
    stream_key = excluded.stream_key
WHERE excluded.stream_key > results.stream_key
"""

_INSERT_INCIDENT = """
INSERT OR IGNORE INTO incidents (broker_id, request_id, stream_key, idx, error, host)
VALUES (:broker_id, :request_id, :stream_key, :idx, :error, :host)
"""


def stream_key(entry_id: str) -> int:
    """A stream entry id ('ms-seq') as one integer that sorts the same way."""
    ms, seq = entry_id.split("-")
    return int(ms) * 1_000_000 + int(seq)


@dataclass(frozen=True)
class RequestRow:
    broker_id: str
    request_id: int
    location: str
    function: str
    n_tasks: int
    scheduler: str
    job_ids: str
    created: float
    status: str = "submitted"
    settings: str = "{}"


@dataclass(frozen=True)
class TaskRow:
    idx: int
    args: bytes
    status: str | None  # None: no outcome yet
    value: bytes | None
    error: str | None


class Store:
    """One dbfile. Use as a context manager, or call ``close``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(
                "INSERT OR IGNORE INTO store VALUES ('store_id', ?), ('schema', ?)",
                (str(uuid.uuid4()), SCHEMA_VERSION),
            )
        info = dict(self._db.execute("SELECT key, value FROM store").fetchall())
        if info["schema"] != SCHEMA_VERSION:
            self._db.close()
            raise SheepdogError(
                f"{self.path} was written by a sheepdog with store schema {info['schema']};"
                f" this one reads schema {SCHEMA_VERSION}. Use that sheepdog version for it,"
                " or another dbfile."
            )
        self.store_id: str = info["store_id"]

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so two writers queue
        # on busy_timeout instead of failing half-way with SQLITE_BUSY.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- writing ------------------------------------------------------------

    def add_request(self, row: RequestRow, func: bytes, args: Iterable[bytes]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO brokers VALUES (?, ?) ON CONFLICT (broker_id)"
                " DO UPDATE SET location = excluded.location",
                (row.broker_id, row.location),
            )
            db.execute(
                "INSERT INTO requests (broker_id, request_id, function, n_tasks, func,"
                " scheduler, job_ids, created, settings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.broker_id, row.request_id, row.function, row.n_tasks, func,
                 row.scheduler, row.job_ids, row.created, row.settings),
            )
            db.executemany(
                "INSERT INTO tasks VALUES (?, ?, ?, ?)",
                ((row.broker_id, row.request_id, i, a) for i, a in enumerate(args, start=1)),
            )

    def set_job_ids(self, broker_id: str, request_id: int, job_ids: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET job_ids = ? WHERE broker_id = ? AND request_id = ?",
                (job_ids, broker_id, request_id),
            )

    def set_status(self, broker_id: str, request_id: int, status: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET status = ? WHERE broker_id = ? AND request_id = ?",
                (status, broker_id, request_id),
            )

    def delete_request(self, broker_id: str, request_id: int) -> None:
        with self._transaction() as db:
            for table in ("incidents", "results", "tasks", "requests"):
                db.execute(
                    f"DELETE FROM {table} WHERE broker_id = ? AND request_id = ?",
                    (broker_id, request_id),
                )

    def save_outcomes(self, results: list[dict[str, object]], incidents: list[dict[str, object]]
                      ) -> None:
        """Upsert a batch of outcomes in one transaction; replays change nothing."""
        with self._transaction() as db:
            db.executemany(_UPSERT_RESULT, results)
            db.executemany(_INSERT_INCIDENT, incidents)

    # -- reading ------------------------------------------------------------

    def request(self, request_id: int) -> RequestRow:
        rows = self._db.execute(
            "SELECT r.broker_id, r.request_id, b.location, r.function, r.n_tasks,"
            " r.scheduler, r.job_ids, r.created, r.status, r.settings FROM requests r"
            " JOIN brokers b USING (broker_id) WHERE r.request_id = ?",
            (request_id,),
        ).fetchall()
        if not rows:
            raise RequestNotFound(
                f"request {request_id} is not in {self.path}; `sheepdog ls --dbfile"
                f" {self.path}` lists the requests it holds"
            )
        if len(rows) > 1:
            brokers = ", ".join(f"{r['broker_id']} ({r['location']})" for r in rows)
            raise RequestNotFound(
                f"request id {request_id} exists for several brokers in {self.path}: {brokers}."
                " Keep one dbfile per broker."
            )
        return RequestRow(**dict(rows[0]))

    def requests(self) -> list[RequestRow]:
        rows = self._db.execute(
            "SELECT r.broker_id, r.request_id, b.location, r.function, r.n_tasks,"
            " r.scheduler, r.job_ids, r.created, r.status, r.settings FROM requests r"
            " JOIN brokers b USING (broker_id) ORDER BY r.created"
        ).fetchall()
        return [RequestRow(**dict(r)) for r in rows]

    def counts(self, broker_id: str, request_id: int) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT status, count(*) AS n FROM results WHERE broker_id = ? AND request_id = ?"
            " GROUP BY status",
            (broker_id, request_id),
        ).fetchall()
        counts = {"ok": 0, "error": 0, "lost": 0}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    def tasks(self, broker_id: str, request_id: int) -> list[TaskRow]:
        """Every task in index order, with its outcome where one has arrived."""
        rows = self._db.execute(
            "SELECT t.idx, t.args, r.status, r.value, r.error FROM tasks t"
            " LEFT JOIN results r USING (broker_id, request_id, idx)"
            " WHERE t.broker_id = ? AND t.request_id = ? ORDER BY t.idx",
            (broker_id, request_id),
        ).fetchall()
        return [TaskRow(**dict(r)) for r in rows]

    def incidents(self, broker_id: str, request_id: int) -> list[str]:
        rows = self._db.execute(
            "SELECT error FROM incidents WHERE broker_id = ? AND request_id = ?"
            " ORDER BY stream_key",
            (broker_id, request_id),
        ).fetchall()
        return [r["error"] for r in rows]

    def outcome_detail(self, broker_id: str, request_id: int, idx: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM results WHERE broker_id = ? AND request_id = ? AND idx = ?",
            (broker_id, request_id, idx),
        ).fetchone()
        return row

