"""The SQLite store (the dbfile): requests, their tasks and their outcomes.

It keeps the function and every argument as well as the results, so a request
can be read - and pushed again, to the same broker or another - after its
broker is gone. WAL mode: many processes read while one writes; opening a
dbfile to read takes no lock, so ``sheepdog ls`` works while a collator
writes. New files are created mode 0600.

Schema (version 3; a version-2 file gains ``booted`` when opened to write)::

    store     (key PK, value)              store_id (uuid), schema
    brokers   (broker_id PK, location)     location: 'embedded:<dir>' or a
                                           password-free URL
    requests  request_id PK                the id users see: unique in the dbfile,
                                           whatever brokers it mixes
              token UNIQUE                 names the request on brokers and in
                                           every signature
              origin                       broker whose master key signs it
              broker_id, broker_request    where it lives now (after a broker
                                           was lost, another broker or id)
              function, n_tasks, func, scheduler, job_ids, created,
              status                       submitting | submitted | done | cancelled |
                                           incomplete (its submitter died mid-submit)
              settings                     the config as JSON, without broker_url
              submitter                    'host pid start' of the submitting process
    tasks     (request_id, idx) PK, args, first
                                           args: codec envelope of the item; first:
                                           the first attempt of the latest submission
                                           (outcomes of earlier attempts are history)
    results   (request_id, idx) PK         the task's final outcome: attempt, status
              (ok | error | lost), cause, value, error, mac, host, pid, job,
              started, finished, stdout, stderr, broker_id, stream_key,
              booted                       unix time the worker process started
                                           (keys.RESULT_FIELDS; NULL for a lost task)
    attempts  (request_id, idx, attempt) PK
                                           earlier attempts: lost or failed and retried,
                                           or replaced by a resubmit; the columns of
                                           results but value, mac, broker_id, stream_key
    incidents (request_id, broker_id, stream_key) PK, idx, error, host
                                           stream entries that are not outcomes: a worker
                                           with a wrong index, a forged or garbled entry
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from sheepdog.errors import RequestNotFound, SheepdogError

SCHEMA_VERSION = "3"

#: Statements that bring a dbfile of schema N (the key) to N + 1. Each only adds, so
#: a reader that never writes may read an older file as it is.
_MIGRATIONS = {
    "2": ("ALTER TABLE results ADD COLUMN booted REAL",
          "ALTER TABLE attempts ADD COLUMN booted REAL"),
}

#: Seconds a writer waits for another writer's lock (the original used 30 s too).
BUSY_TIMEOUT = 30.0

#: Rows per INSERT batch when a request's tasks are stored.
INSERT_BATCH = 10_000

#: Indices per ``IN (...)`` list.
IN_CHUNK = 500

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS store (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS brokers (
    broker_id TEXT PRIMARY KEY,
    location  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    request_id     INTEGER PRIMARY KEY,
    token          TEXT NOT NULL UNIQUE,
    origin         TEXT NOT NULL,
    broker_id      TEXT NOT NULL REFERENCES brokers(broker_id),
    broker_request INTEGER NOT NULL,
    function       TEXT NOT NULL,
    n_tasks        INTEGER NOT NULL,
    func           BLOB NOT NULL,
    scheduler      TEXT NOT NULL,
    job_ids        TEXT NOT NULL DEFAULT '',
    created        REAL NOT NULL,
    status         TEXT NOT NULL DEFAULT 'submitting',
    settings       TEXT NOT NULL DEFAULT '{}',
    submitter      TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS tasks (
    request_id INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    args       BLOB NOT NULL,
    first      INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE IF NOT EXISTS results (
    request_id INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('ok', 'error', 'lost')),
    cause      TEXT,
    value      BLOB,
    error      TEXT,
    mac        TEXT,
    host       TEXT,
    pid        INTEGER,
    job        TEXT,
    started    REAL,
    finished   REAL,
    stdout     TEXT,
    stderr     TEXT,
    broker_id  TEXT,
    stream_key INTEGER,
    booted     REAL,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE IF NOT EXISTS attempts (
    request_id INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    status     TEXT NOT NULL,
    cause      TEXT,
    error      TEXT,
    host       TEXT,
    pid        INTEGER,
    job        TEXT,
    started    REAL,
    finished   REAL,
    stdout     TEXT,
    stderr     TEXT,
    booted     REAL,
    PRIMARY KEY (request_id, idx, attempt)
);
CREATE TABLE IF NOT EXISTS incidents (
    request_id INTEGER NOT NULL,
    broker_id  TEXT NOT NULL,
    stream_key INTEGER NOT NULL,
    idx        INTEGER,
    error      TEXT NOT NULL,
    host       TEXT,
    PRIMARY KEY (request_id, broker_id, stream_key)
);
"""

#: A final outcome replaces only an outcome of an earlier attempt.
_KEEP_LATEST = """
ON CONFLICT (request_id, idx) DO UPDATE SET
    attempt = excluded.attempt, status = excluded.status, cause = excluded.cause,
    value = excluded.value, error = excluded.error, mac = excluded.mac,
    host = excluded.host, pid = excluded.pid, job = excluded.job,
    started = excluded.started, finished = excluded.finished, stdout = excluded.stdout,
    stderr = excluded.stderr, broker_id = excluded.broker_id, stream_key = excluded.stream_key,
    booted = excluded.booted
WHERE excluded.attempt > results.attempt
"""

#: A final outcome: kept unless it belongs to an attempt before the task's
#: latest submission, and only over an outcome of an earlier attempt.
_UPSERT_RESULT = """
INSERT INTO results (request_id, idx, attempt, status, cause, value, error, mac, host, pid,
                     job, started, finished, stdout, stderr, broker_id, stream_key, booted)
SELECT :request_id, :idx, :attempt, :status, :cause, :value, :error, :mac, :host, :pid,
       :job, :started, :finished, :stdout, :stderr, :broker_id, :stream_key, :booted
WHERE :attempt >= coalesce(
    (SELECT first FROM tasks WHERE request_id = :request_id AND idx = :idx), 1)
""" + _KEEP_LATEST

#: ``_UPSERT_RESULT`` for a request none of whose tasks was resubmitted: no look
#: at ``tasks.first`` per row.
_UPSERT_RESULT_PLAIN = """
INSERT INTO results (request_id, idx, attempt, status, cause, value, error, mac, host, pid,
                     job, started, finished, stdout, stderr, broker_id, stream_key, booted)
VALUES (:request_id, :idx, :attempt, :status, :cause, :value, :error, :mac, :host, :pid,
        :job, :started, :finished, :stdout, :stderr, :broker_id, :stream_key, :booted)
""" + _KEEP_LATEST

_INSERT_ATTEMPT = """
INSERT OR IGNORE INTO attempts (request_id, idx, attempt, status, cause, error, host, pid,
                                job, started, finished, stdout, stderr, booted)
VALUES (:request_id, :idx, :attempt, :status, :cause, :error, :host, :pid,
        :job, :started, :finished, :stdout, :stderr, :booted)
"""

#: A final outcome of an attempt before the task's latest submission: history.
_INSERT_EARLIER_FINAL = """
INSERT OR IGNORE INTO attempts (request_id, idx, attempt, status, cause, error, host, pid,
                                job, started, finished, stdout, stderr, booted)
SELECT :request_id, :idx, :attempt, :status, :cause, :error, :host, :pid,
       :job, :started, :finished, :stdout, :stderr, :booted
WHERE :attempt < coalesce(
    (SELECT first FROM tasks WHERE request_id = :request_id AND idx = :idx), 1)
"""

_INSERT_INCIDENT = """
INSERT OR IGNORE INTO incidents (request_id, broker_id, stream_key, idx, error, host)
VALUES (:request_id, :broker_id, :stream_key, :idx, :error, :host)
"""

#: Every task of a request without a final outcome becomes lost with ``reason``.
_CANCEL_PENDING = """
INSERT OR IGNORE INTO results (request_id, idx, attempt, status, error, finished,
                               broker_id, stream_key)
SELECT t.request_id, t.idx, 0, 'lost', :reason, :finished, :broker_id, :stream_key
FROM tasks t WHERE t.request_id = :request_id
"""


def _count_in(db: sqlite3.Connection, rows: list[dict[str, object]], query: str) -> int:
    """``query`` (a count, with ``{marks}`` for the indices) summed over the distinct
    (request, index) pairs of ``rows``, a chunk of indices at a time: O(rows)."""
    found = 0
    by_request: dict[object, set[object]] = {}
    for row in rows:
        by_request.setdefault(row["request_id"], set()).add(row["idx"])
    for request_id, indices in by_request.items():
        listed = sorted(indices)  # type: ignore[type-var]
        for chunk, marks in _in_chunks(listed):
            found += db.execute(query.format(marks=marks), (request_id, *chunk)).fetchone()[0]
    return found


def _in_chunks(indices: list[_T]) -> Iterator[tuple[list[_T], str]]:
    """``indices`` a chunk at a time, each with its ``?,?,...`` for an ``IN (...)``
    (well under SQLite's limit on bound parameters)."""
    for start in range(0, len(indices), IN_CHUNK):
        chunk = indices[start : start + IN_CHUNK]
        yield chunk, ",".join("?" * len(chunk))


def stream_key(entry_id: str) -> int:
    """A stream entry id ('ms-seq') as one integer that sorts the same way."""
    ms, seq = entry_id.split("-")
    return int(ms) * 1_000_000 + int(seq)


@dataclass(frozen=True)
class RequestRow:
    request_id: int
    token: str
    origin: str
    broker_id: str
    broker_request: int
    location: str
    function: str
    n_tasks: int
    scheduler: str
    job_ids: str
    created: float
    status: str = "submitting"
    settings: str = "{}"
    submitter: str = ""


_REQUEST_COLUMNS = ", ".join(
    "b.location" if f.name == "location" else f"r.{f.name}" for f in fields(RequestRow)
)


@dataclass(frozen=True)
class TaskRow:
    idx: int
    args: bytes
    attempt: int | None  # None: no final outcome yet
    status: str | None
    value: bytes | None
    error: str | None
    cause: str | None = None
    mac: str | None = None


class Store:
    """One dbfile. Use as a context manager, or call ``close``."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 readonly: bool = False) -> None:
        """``readonly``: never write (no schema is created or migrated): for readers that
        must not change what they read, e.g. a report."""
        self.path = Path(path)
        if not self.path.exists():
            if not create or readonly:
                raise RequestNotFound(f"there is no dbfile {self.path}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        target = str(self.path)
        self.readonly = readonly or not os.access(self.path, os.W_OK)
        if self.readonly:
            target = f"file:{self.path}?mode=ro"
        # Not tied to its thread: a result stream (imap) dropped without being closed
        # is closed by the garbage collector in whatever thread runs it. A Store is still
        # used by one thread at a time; SQLite itself is built serialized.
        self._db = sqlite3.connect(target, timeout=BUSY_TIMEOUT, isolation_level=None,
                                   uri=target.startswith("file:"), check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        try:
            self.store_id = self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> str:
        """The store id, after creating the schema if this is a new file (reads take no lock)."""
        info = self._info()
        if info is None and self.readonly:
            raise RequestNotFound(f"{self.path} is not a sheepdog dbfile (it is empty)")
        if info is None:
            self._db.execute("PRAGMA journal_mode=WAL")
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(
                    "INSERT OR IGNORE INTO store VALUES ('store_id', ?), ('schema', ?)",
                    (str(uuid.uuid4()), SCHEMA_VERSION),
                )
            info = self._info()
            assert info is not None
        self._db.execute("PRAGMA synchronous=NORMAL")
        schema = info.get("schema")
        if schema in _MIGRATIONS and not self.readonly:
            schema = self._migrate()
        if schema != SCHEMA_VERSION and not (self.readonly and schema in _MIGRATIONS):
            raise SheepdogError(
                f"{self.path} was written by a sheepdog with store schema {schema};"
                f" this one reads schema {SCHEMA_VERSION}. Use that sheepdog version for it,"
                " or another dbfile."
            )
        return info["store_id"]

    def _migrate(self) -> str:
        """Bring an older schema up to this one in one transaction (a second process
        opening the file meanwhile waits, then finds it done); the schema it is now."""
        with self._transaction() as db:
            while (schema := self._schema()) in _MIGRATIONS:
                for statement in _MIGRATIONS[schema]:
                    db.execute(statement)
                db.execute("UPDATE store SET value = ? WHERE key = 'schema'",
                           (str(int(schema) + 1),))
        return self._schema()

    def _schema(self) -> str:
        return str(self._db.execute("SELECT value FROM store WHERE key = 'schema'").fetchone()[0])

    def columns(self, table: str) -> list[str]:
        """The columns ``table`` has in this file (an older schema read-only lacks some)."""
        return [row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")]

    def _info(self) -> dict[str, str] | None:
        found = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store'"
        ).fetchone()
        if found is None:
            return None
        return dict(self._db.execute("SELECT key, value FROM store").fetchall())

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

    @contextlib.contextmanager
    def new_request(self) -> Iterator[tuple[int, Any]]:
        """(lowest free request id, add) under the write lock.

        The caller takes its id from the broker (raised to at least that floor),
        then calls ``add(row, func)`` before the block ends, so two submitters
        writing to one dbfile never get the same id.
        """
        with self._transaction() as db:
            floor = db.execute("SELECT coalesce(max(request_id), 0) FROM requests").fetchone()[0]

            def add(row: RequestRow, func: bytes) -> None:
                db.execute(
                    "INSERT INTO brokers VALUES (?, ?) ON CONFLICT (broker_id)"
                    " DO UPDATE SET location = excluded.location",
                    (row.broker_id, row.location),
                )
                values = {f.name: getattr(row, f.name) for f in fields(row)
                          if f.name != "location"}
                names = ", ".join(values)
                marks = ", ".join(f":{n}" for n in values)
                db.execute(f"INSERT INTO requests ({names}, func) VALUES ({marks}, :func)",
                           {**values, "func": func})

            yield int(floor) + 1, add

    def add_tasks(self, request_id: int, args: Iterable[tuple[int, bytes]], *,
                  n_tasks: int | None = None) -> None:
        """Store task arguments, in batches of one transaction each; ``n_tasks`` (when
        these are the last) is written with the last batch: the dbfile then knows it
        has them all."""
        batch: list[tuple[int, int, bytes]] = []
        for idx, payload in args:
            batch.append((request_id, idx, payload))
            if len(batch) >= INSERT_BATCH:
                self._insert_tasks(batch)
                batch = []
        if batch or n_tasks is not None:
            self._insert_tasks(batch, (request_id, n_tasks) if n_tasks is not None else None)

    def _insert_tasks(self, batch: list[tuple[int, int, bytes]],
                      n_tasks: tuple[int, int] | None = None) -> None:
        with self._transaction() as db:
            db.executemany("INSERT INTO tasks (request_id, idx, args) VALUES (?, ?, ?)", batch)
            if n_tasks is not None:
                db.execute("UPDATE requests SET n_tasks = ? WHERE request_id = ?",
                           (n_tasks[1], n_tasks[0]))

    def update_request(self, request_id: int, **values: object) -> None:
        allowed = {"job_ids", "status", "broker_id", "broker_request", "submitter", "settings"}
        if not values or set(values) - allowed:
            raise ValueError(f"cannot update {sorted(set(values) - allowed)}")
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        with self._transaction() as db:
            db.execute(f"UPDATE requests SET {assignments} WHERE request_id = :request_id",
                       {**values, "request_id": request_id})

    def add_broker(self, broker_id: str, location: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO brokers VALUES (?, ?) ON CONFLICT (broker_id)"
                " DO UPDATE SET location = excluded.location",
                (broker_id, location),
            )

    def delete_request(self, request_id: int) -> None:
        with self._transaction() as db:
            for table in ("incidents", "attempts", "results", "tasks", "requests"):
                db.execute(f"DELETE FROM {table} WHERE request_id = ?", (request_id,))

    def save_outcomes(
        self, finals: list[dict[str, object]], earlier: list[dict[str, object]],
        incidents: list[dict[str, object]], cancels: list[dict[str, object]],
    ) -> int | None:
        """Upsert a batch of outcomes in one transaction; replays change nothing.

        Returns how many tasks got their first final outcome, so a reader can
        count without counting the table again (None after a cancel: count).
        """
        with self._transaction() as db:
            before = self._with_outcome(db, finals)
            db.executemany(_INSERT_ATTEMPT, earlier)
            if self._resubmitted(db, finals):  # outcomes of an earlier submission may be here
                db.executemany(_UPSERT_RESULT, finals)
                db.executemany(_INSERT_EARLIER_FINAL, finals)
            else:  # the common case: no per-row look at tasks.first
                db.executemany(_UPSERT_RESULT_PLAIN, finals)
            db.executemany(_INSERT_INCIDENT, incidents)
            db.executemany(_CANCEL_PENDING, cancels)
            gained = self._with_outcome(db, finals) - before
        return None if cancels else gained

    @staticmethod
    def _resubmitted(db: sqlite3.Connection, finals: list[dict[str, object]]) -> bool:
        """Whether a task of ``finals`` was resubmitted (its latest submission's first
        attempt is not 1)."""
        return _count_in(db, finals, "SELECT count(*) FROM tasks WHERE request_id = ?"
                         " AND first > 1 AND idx IN ({marks})") > 0

    @staticmethod
    def _with_outcome(db: sqlite3.Connection, finals: list[dict[str, object]]) -> int:
        """How many of the tasks of ``finals`` have a final outcome in the table."""
        return _count_in(db, finals, "SELECT count(*) FROM results WHERE request_id = ?"
                         " AND idx IN ({marks})")

    def restart_tasks(self, request_id: int, indices: list[int], firsts: dict[int, int]) -> None:
        """Move the outcomes of ``indices`` to history; their next attempt is ``firsts[i]``."""
        with self._transaction() as db:
            for chunk, marks in _in_chunks(indices):
                db.execute(
                    "INSERT OR REPLACE INTO attempts (request_id, idx, attempt, status, cause,"
                    " error, host, pid, job, started, finished, stdout, stderr, booted)"
                    " SELECT request_id, idx, attempt, status, cause, error, host, pid, job,"
                    " started, finished, stdout, stderr, booted FROM results"
                    f" WHERE request_id = ? AND idx IN ({marks})", (request_id, *chunk))
                db.execute(f"DELETE FROM results WHERE request_id = ? AND idx IN ({marks})",
                           (request_id, *chunk))
            db.executemany("UPDATE tasks SET first = ? WHERE request_id = ? AND idx = ?",
                           [(firsts[i], request_id, i) for i in indices])

    # -- reading ------------------------------------------------------------

    def request(self, request_id: int) -> RequestRow:
        rows = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests r JOIN brokers b USING (broker_id)"
            " WHERE r.request_id = ?",
            (request_id,),
        ).fetchall()
        if not rows:
            raise RequestNotFound(
                f"request {request_id} is not in {self.path}; `sheepdog ls --dbfile"
                f" {self.path}` lists the requests it holds"
            )
        return RequestRow(**dict(rows[0]))

    def requests(self) -> list[RequestRow]:
        rows = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests r JOIN brokers b USING (broker_id)"
            " ORDER BY r.request_id"
        ).fetchall()
        return [RequestRow(**dict(r)) for r in rows]

    def counts(self, request_id: int) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT status, count(*) AS n FROM results WHERE request_id = ? GROUP BY status",
            (request_id,),
        ).fetchall()
        counts = {"ok": 0, "error": 0, "lost": 0}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    def retried(self, request_id: int) -> int:
        """How many attempts of the request's tasks ended and were retried or replaced."""
        row = self._db.execute("SELECT count(*) FROM attempts WHERE request_id = ?",
                               (request_id,)).fetchone()
        return int(row[0])

    def tasks(self, request_id: int, *, statuses: tuple[str, ...] | None = None
              ) -> list[TaskRow]:
        """``iter_tasks`` as a list."""
        return list(self.iter_tasks(request_id, statuses=statuses))

    def iter_tasks(self, request_id: int, *, statuses: tuple[str, ...] | None = None,
                   values: bool = True, start: int = 1, stop: int | None = None,
                   ) -> Iterator[TaskRow]:
        """Tasks in index order, with their final outcome where there is one, read as
        they are used (a million rows are never held at once).

        ``statuses`` keeps only tasks whose outcome has one of them ('' for
        tasks without an outcome); ``values=False`` leaves result values out;
        ``start`` and ``stop`` bound the indices (``stop`` excluded).
        """
        value = "r.value" if values else "NULL AS value"
        cursor = self._db.execute(
            f"SELECT t.idx, t.args, r.attempt, r.status, {value}, r.error, r.cause, r.mac"
            " FROM tasks t LEFT JOIN results r USING (request_id, idx)"
            " WHERE t.request_id = ? AND t.idx >= ? AND t.idx < ? ORDER BY t.idx",
            (request_id, start, stop if stop is not None else 2**62),
        )
        while rows := cursor.fetchmany(1000):
            for r in rows:
                row = TaskRow(*r)
                if statuses is None or (row.status or "") in statuses:
                    yield row

    def outcomes_of(self, request_id: int, indices: list[int]) -> list[TaskRow]:
        """The tasks among ``indices`` that have a final outcome, with it, in index order."""
        found: list[TaskRow] = []
        for chunk, marks in _in_chunks(indices):
            found += (TaskRow(*r) for r in self._db.execute(
                "SELECT t.idx, t.args, r.attempt, r.status, r.value, r.error, r.cause, r.mac"
                " FROM results r JOIN tasks t USING (request_id, idx)"
                f" WHERE r.request_id = ? AND r.idx IN ({marks})", (request_id, *chunk)))
        return sorted(found, key=lambda row: row.idx)

    def task_args(self, request_id: int, indices: list[int]) -> Iterator[tuple[int, bytes]]:
        """(index, args payload) of ``indices``, in their order, read a chunk at a time."""
        for chunk, marks in _in_chunks(indices):
            rows = dict(self._db.execute(
                f"SELECT idx, args FROM tasks WHERE request_id = ? AND idx IN ({marks})",
                (request_id, *chunk)).fetchall())
            yield from ((i, bytes(rows[i])) for i in chunk)

    def stored_tasks(self, request_id: int) -> int:
        row = self._db.execute("SELECT count(*) FROM tasks WHERE request_id = ?",
                               (request_id,)).fetchone()
        return int(row[0])

    def worker_processes(self, request_id: int) -> int:
        """How many distinct (host, pid) recorded the request's outcomes."""
        row = self._db.execute("SELECT count(*) FROM (SELECT DISTINCT host, pid FROM results"
                               " WHERE request_id = ?)", (request_id,)).fetchone()
        return int(row[0])

    def function_payload(self, request_id: int) -> bytes:
        row = self._db.execute("SELECT func FROM requests WHERE request_id = ?",
                               (request_id,)).fetchone()
        return bytes(row["func"])

    def firsts(self, request_id: int) -> dict[int, int]:
        rows = self._db.execute("SELECT idx, first FROM tasks WHERE request_id = ?",
                                (request_id,)).fetchall()
        return {r["idx"]: r["first"] for r in rows}

    def last_attempts(self, request_id: int) -> dict[int, int]:
        """The highest attempt of each task that has one, outcome or history."""
        rows = self._db.execute(
            "SELECT idx, max(attempt) AS a FROM (SELECT idx, attempt FROM results"
            " WHERE request_id = :r UNION ALL SELECT idx, attempt FROM attempts"
            " WHERE request_id = :r) GROUP BY idx", {"r": request_id},
        ).fetchall()
        return {r["idx"]: r["a"] for r in rows}

    def history(self, request_id: int) -> dict[int, list[sqlite3.Row]]:
        """Earlier attempts of each task, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM attempts WHERE request_id = ? ORDER BY idx, attempt", (request_id,)
        ).fetchall()
        found: dict[int, list[sqlite3.Row]] = {}
        for row in rows:
            found.setdefault(row["idx"], []).append(row)
        return found

    def incidents(self, request_id: int) -> list[str]:
        rows = self._db.execute(
            "SELECT error FROM incidents WHERE request_id = ? ORDER BY broker_id, stream_key",
            (request_id,),
        ).fetchall()
        return [r["error"] for r in rows]

    def outcome_detail(self, request_id: int, idx: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM results WHERE request_id = ? AND idx = ?", (request_id, idx),
        ).fetchone()
        return row

    def attempt_times(self, request_id: int) -> Iterator[sqlite3.Row]:
        """Where and when every attempt ran: idx, attempt, status, host, pid, job, booted,
        started, finished, and final (1: the task's outcome, 0: an earlier attempt).
        ``booted`` is NULL in a file read as it is from before that column."""
        booted = "booted" if "booted" in self.columns("results") else "NULL AS booted"
        picked = f"idx, attempt, status, host, pid, job, {booted}, started, finished"
        yield from self._read_all(
            f"SELECT {picked}, 1 AS final FROM results WHERE request_id = :r UNION ALL"
            f" SELECT {picked}, 0 FROM attempts WHERE request_id = :r", {"r": request_id})

    def failed_attempts(self, request_id: int) -> Iterator[sqlite3.Row]:
        """Every attempt that raised or was lost, final or earlier, in task order: idx,
        attempt, status, cause, error, host, job, final."""
        picked = "idx, attempt, status, cause, error, host, job"
        yield from self._read_all(
            f"SELECT {picked}, 1 AS final FROM results WHERE request_id = :r"
            f" AND status != 'ok' UNION ALL SELECT {picked}, 0 FROM attempts"
            " WHERE request_id = :r AND status != 'ok' ORDER BY idx, attempt",
            {"r": request_id})

    def _read_all(self, query: str, params: dict[str, object]) -> Iterator[sqlite3.Row]:
        """The rows of ``query``, fetched a thousand at a time."""
        cursor = self._db.execute(query, params)
        while rows := cursor.fetchmany(1000):
            yield from rows
