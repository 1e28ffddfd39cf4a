"""Moving one request to another machine: ``export_request`` and ``import_request``.

An export file is itself a dbfile: the store schema, holding one request's rows
(``REQUEST_TABLES``) and its brokers' rows, so ``get_results(ID, file)`` reads it
directly once the machine knows the request's key. One more table holds what
credentials.json has for that request::

    credentials (kind, name, value)   PK (kind, name)
        request  <token>       the request's own key (hex): it checks this request's
                               signatures and nothing else (never the broker's master
                               key, which opens every request of that broker)
        broker   <broker id>   the URL, password included, of the broker that holds an
                               unfinished request (only with ``with_broker``)
        url      <redacted>    rq's Redis URL with its password (the same, rq only)

``import_request`` adds the rows to a dbfile in one transaction, and the
credentials to this machine's credentials.json (``credentials.receive``). Rows
are copied column by column by name (``PRAGMA table_info``), so an export of an
older schema imports into a newer dbfile, its missing columns taking their
defaults. Importing what a dbfile already holds (same token) replaces it, unless
the dbfile's copy is further along; it never makes a second copy.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sheepdog.errors import TransferError
from sheepdog.submitter import credentials, paths, results
from sheepdog.submitter.brokers import EMBEDDED
from sheepdog.submitter.config import Settings
from sheepdog.submitter.request import FINAL, OpenRequest
from sheepdog.submitter.store import BUSY_TIMEOUT, SCHEMA_VERSION, RequestRow, Store
from sheepdog.submitter.supervise import BROKER_DOWN

#: Tables whose rows belong to one request (by ``request_id``).
REQUEST_TABLES = ("requests", "tasks", "results", "attempts", "incidents")

_CREDENTIALS_TABLE = """
CREATE TABLE credentials (
    kind  TEXT NOT NULL CHECK (kind IN ('request', 'broker', 'url')),
    name  TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, name)
)"""

Secret = tuple[str, str, str]  # (kind, name, value): a row of the credentials table


def default_path(request_id: int) -> Path:
    return Path(f"sheepdog-request-{request_id}.sqlite")


# -- export ----------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """What ``write_export`` wrote, and what to say about it."""

    path: Path
    row: RequestRow
    done: int
    broker_asked: bool  # with_broker was given
    broker_given: bool  # the file holds the broker's URL and password

    def lines(self) -> list[str]:
        row, rid = self.row, self.row.request_id
        said = [f"wrote {self.path}: request {rid} ({row.function}), {self.done} of"
                f" {row.n_tasks} tasks with an outcome, {row.status}",
                f"it holds request {rid}'s own key (table 'credentials' of {self.path}, mode"
                " 0600): it opens this request's pickled results and nothing else"]
        if self.broker_given:
            said.append(f"it also holds the password of broker {row.location}: whoever has"
                        " the file can use that broker")
        elif self.broker_asked:
            said.append(f"request {rid} is {row.status}: its broker is not needed to read it,"
                        " so the file holds no broker password")
        elif row.status not in FINAL:
            said.append(f"request {rid} is not finished: the other machine reads what it has"
                        f" with get_results({rid}, dbfile, block=False); to collect the rest"
                        " there, export with --with-broker (it hands over the broker's"
                        f" password), or run `sheepdog collect {rid}` here and export again")
        said.append(f"on the other machine: sheepdog import {self.path.name}")
        return said


def export_request(request_id: int, dbfile: str, path: str | os.PathLike[str] | None = None,
                   *, with_broker: bool = False) -> Path:
    """Write request ``request_id`` of ``dbfile`` and its key to one new file (0600);
    return its path (default ``sheepdog-request-ID.sqlite``).

    ``with_broker`` also writes the URL *with the password* of the broker that
    holds the request, if it is not finished, so another machine can collect it.
    """
    return write_export(request_id, dbfile, path, with_broker=with_broker).path


def write_export(request_id: int, dbfile: str, path: str | os.PathLike[str] | None = None,
                 *, with_broker: bool = False) -> Exported:
    """``export_request``, saying what it wrote."""
    target = Path(path) if path is not None else default_path(request_id)
    if target.exists():
        raise TransferError(f"{target} exists; remove it, or name another file with -o")
    with results.open_request(request_id, dbfile) as request:
        key = request.key  # none on this machine: said before anything is done
        broker = _broker_secrets(request.row) \
            if with_broker and request.row.status not in FINAL else []
        _bring_up_to_date(request)
        row = request.row
        given = [("request", row.token, key.hex()), *(broker if row.status not in FINAL else [])]
        done = request.done()
    _write(target, Path(dbfile), request_id, given)
    return Exported(target, row, done, with_broker, any(s[0] == "broker" for s in given))


def _bring_up_to_date(request: OpenRequest) -> None:
    """Collect what the broker holds; a request with every outcome is marked final, so
    the other machine need not ask its broker."""
    if request.row.status != "submitted":
        return
    results.collect_available(request)
    if request.done() >= request.row.n_tasks:
        with contextlib.suppress(*BROKER_DOWN):
            results.finalise(request)


def _broker_secrets(row: RequestRow) -> list[Secret]:
    rid = row.request_id
    if row.location.startswith(EMBEDDED):
        raise TransferError(
            f"request {rid} runs on this machine's embedded broker, which no other machine"
            f" can reach: wait for it here (`sheepdog collect {rid}`) and export it without"
            " --with-broker, or run requests to be collected elsewhere on a shared broker"
            " (broker_url)")
    known = credentials.lookup(row.broker_id)
    if known is None:
        raise TransferError(
            f"this machine has no URL for broker {row.broker_id} ({row.location}) of request"
            f" {rid}; export it --with-broker on the machine that submitted it")
    found = [("broker", row.broker_id, known[0])]
    rq_url = Settings.from_public(row.settings).rq_url
    if rq_url is not None and credentials.full_url(rq_url) != rq_url:
        found.append(("url", rq_url, credentials.full_url(rq_url)))
    return found


def _write(target: Path, source: Path, request_id: int, given: list[Secret]) -> None:
    """The export file, built beside ``target`` and renamed to it once whole."""
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
    try:
        with Store(temp):
            pass  # this sheepdog's schema, in a new 0600 file
        with contextlib.closing(_connect(temp)) as db:
            db.execute("PRAGMA journal_mode=DELETE")  # one file: no -wal beside it
            db.execute("ATTACH DATABASE ? AS src", (_read_only(source),))
            db.execute("BEGIN")
            _copy_request(db, request_id, request_id)
            db.execute(_CREDENTIALS_TABLE)
            db.executemany("INSERT INTO credentials VALUES (?, ?, ?)", given)
            db.execute("COMMIT")
        os.replace(temp, target)
    except BaseException:
        for suffix in ("", "-journal", "-wal", "-shm"):
            temp.with_name(temp.name + suffix).unlink(missing_ok=True)
        raise


# -- copying rows ------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path.absolute().as_uri(), timeout=BUSY_TIMEOUT,
                           isolation_level=None, uri=True)  # uri: ATTACH reads ?mode=ro


def _read_only(path: Path) -> str:
    return path.absolute().as_uri() + "?mode=ro"


def _columns(db: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA {schema}.table_info({table})")]


def _copy(db: sqlite3.Connection, table: str, where: str, params: dict[str, int],
          verb: str = "INSERT") -> None:
    """Rows of ``table`` from ``src`` into ``main``, by column name; ``request_id``
    becomes ``:new``. A column only one side has is left out (its default)."""
    theirs = set(_columns(db, "src", table))
    names = [name for name in _columns(db, "main", table) if name in theirs]
    chosen = ", ".join(":new" if name == "request_id" else f'"{name}"' for name in names)
    listed = ", ".join(f'"{name}"' for name in names)
    db.execute(f"{verb} INTO main.{table} ({listed}) SELECT {chosen} FROM src.{table}"
               f" WHERE {where}", params)


def _copy_request(db: sqlite3.Connection, old: int, new: int) -> None:
    """Request ``old`` of ``src`` into ``main`` as request ``new``, with its brokers."""
    params = {"old": old, "new": new}
    _copy(db, "brokers", "broker_id IN (SELECT broker_id FROM src.requests WHERE"
          " request_id = :old UNION SELECT origin FROM src.requests WHERE request_id = :old)",
          params, "INSERT OR IGNORE")  # a dbfile's own row of a broker is kept
    for table in REQUEST_TABLES:
        _copy(db, table, "request_id = :old", params)


# -- import ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Export:
    """An export file, checked."""

    path: Path
    request_id: int
    token: str
    origin: str
    status: str
    given: dict[str, dict[str, str]]  # kind -> name -> value


def _inspect(path: Path) -> _Export:
    if not path.is_file():
        raise TransferError(f"there is no file {path}")
    try:
        with contextlib.closing(sqlite3.connect(_read_only(path), uri=True)) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if not {"store", "brokers", *REQUEST_TABLES, "credentials"} <= tables:
                raise TransferError(f"{path} is not a file written by `sheepdog export`")
            schema = db.execute("SELECT value FROM store WHERE key = 'schema'").fetchone()
            rows = db.execute("SELECT request_id, token, origin, status FROM requests").fetchall()
            given: dict[str, dict[str, str]] = {}
            for kind, name, value in db.execute("SELECT kind, name, value FROM credentials"):
                given.setdefault(kind, {})[name] = value
    except sqlite3.DatabaseError as exc:
        raise TransferError(f"{path} is not a file written by `sheepdog export`: {exc}"
                            ) from None
    if schema is None or int(schema[0]) > int(SCHEMA_VERSION):
        raise TransferError(f"{path} was written by a newer sheepdog (store schema"
                            f" {schema and schema[0]}; this one has {SCHEMA_VERSION}):"
                            " install that version here to import it")
    if len(rows) != 1 or rows[0][1] not in given.get("request", {}):
        raise TransferError(f"{path} holds {len(rows)} requests and {len(given.get('request', {}))}"
                            " keys, not one request with its key: it was not written by"
                            " `sheepdog export`")
    request_id, token, origin, status = rows[0]
    return _Export(path, request_id, token, origin, status, given)


@dataclass(frozen=True)
class Imported:
    """What ``read_export`` did, and what to say about it."""

    export: _Export
    dbfile: str
    request_id: int  # its id in dbfile
    how: str  # added | renumbered | replaced | kept

    def lines(self) -> list[str]:
        rid, theirs, db = self.request_id, self.export.request_id, self.dbfile
        said = {
            "added": f"imported request {rid} into {db}",
            "renumbered": f"request id {theirs} is taken in {db} by another request:"
                          f" imported it as request {rid}",
            "replaced": f"{db} already held this request (as {rid}): replaced it with the"
                        " export's copy",
            "kept": f"{db} already holds this request (as {rid}), further along than the"
                    " export: kept it as it is",
        }[self.how]
        lines = [said, f"its key is in {paths.credentials_file()}"]
        unfinished = self.export.status not in FINAL and "broker" not in self.export.given
        wait = ", block=False" if unfinished else ""
        lines.append(f"read it with: sheepdog.get_results({rid}, {db!r}{wait})")
        return lines


def import_request(path: str | os.PathLike[str], dbfile: str) -> int:
    """Add the request of an export file to ``dbfile``, and its key (and broker
    credentials, if it holds them) to this machine's credentials.json; return its id
    in ``dbfile``: the export's id, or the next free one if another request has it."""
    return read_export(path, dbfile).request_id


def read_export(path: str | os.PathLike[str], dbfile: str) -> Imported:
    """``import_request``, saying what it did."""
    export = _inspect(Path(path))
    if Path(dbfile).exists() and Path(dbfile).samefile(export.path):
        raise TransferError(f"{dbfile} is the export file itself: import it into another"
                            " dbfile (--dbfile)")
    credentials.receive(export.origin, export.token,
                        bytes.fromhex(export.given["request"][export.token]),
                        export.given.get("broker", {}), export.given.get("url", {}))
    with Store(dbfile):
        pass  # a new dbfile gets the schema, an older one is brought up to it
    try:
        request_id, how = _merge(export, Path(dbfile))
    except sqlite3.DatabaseError as exc:
        raise TransferError(f"{export.path} could not be imported into {dbfile} ({exc});"
                            " the dbfile is unchanged") from exc
    return Imported(export, dbfile, request_id, how)


def _merge(export: _Export, dbfile: Path) -> tuple[int, str]:
    """Add the export's request to ``dbfile`` in one transaction: never half a request."""
    with contextlib.closing(_connect(dbfile)) as db:
        db.execute("ATTACH DATABASE ? AS src", (_read_only(export.path),))
        db.execute("BEGIN IMMEDIATE")
        try:
            request_id, how = _place(db, export)
            if how == "replaced":
                for table in REQUEST_TABLES:
                    db.execute(f"DELETE FROM main.{table} WHERE request_id = ?", (request_id,))
            if how != "kept":
                _copy_request(db, export.request_id, request_id)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return request_id, how


def _progress(db: sqlite3.Connection, schema: str, request_id: int) -> tuple[int, bool]:
    """(outcomes, final) of a request: which of two copies is further along."""
    outcomes = db.execute(f"SELECT count(*) FROM {schema}.results WHERE request_id = ?",
                          (request_id,)).fetchone()[0]
    status = db.execute(f"SELECT status FROM {schema}.requests WHERE request_id = ?",
                        (request_id,)).fetchone()[0]
    return int(outcomes), status in FINAL


def _place(db: sqlite3.Connection, export: _Export) -> tuple[int, str]:
    """(id in the dbfile, how) for the export's request."""
    same = db.execute("SELECT request_id FROM main.requests WHERE token = ?",
                      (export.token,)).fetchone()
    if same is not None:
        here = _progress(db, "main", same[0])
        further = here > _progress(db, "src", export.request_id)
        return same[0], "kept" if further else "replaced"
    taken = db.execute("SELECT 1 FROM main.requests WHERE request_id = ?",
                       (export.request_id,)).fetchone()
    if taken is None:
        return export.request_id, "added"
    top = db.execute("SELECT max(request_id) FROM main.requests").fetchone()[0]
    return int(top) + 1, "renumbered"
