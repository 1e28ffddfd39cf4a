"""export / import: a request moved to "another machine" - here a fresh SHEEPDOG_HOME,
whose credentials.json is empty - and read, or collected, there."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from click.testing import CliRunner

import sheepdog
from sheepdog.cli import main
from sheepdog.errors import IntegrityError, SerialisationError, TransferError
from sheepdog.submitter import credentials, paths
from sheepdog.submitter.store import Store
from sheepdog.submitter.transfer import export_request, import_request, read_export


class Sample:
    """A result msgpack cannot carry: it travels pickled, so reading it needs the key."""

    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sample) and other.x == self.x

    def __hash__(self) -> int:
        return self.x


def _sample(x: int) -> Sample:
    if x == 3:
        raise ValueError(f"no sample for {x}")
    return Sample(x)


def _sample_when(marker: str, x: int) -> Sample:
    """A task that runs until ``marker`` exists: a request still running."""
    while not os.path.exists(marker):
        time.sleep(0.05)
    return Sample(x)


EXPECTED = [(1, Sample(1)), (2, Sample(2)), (3, None), (4, Sample(4))]


@pytest.fixture
def finished(tmp_path: Path) -> tuple[int, str]:
    """(id, dbfile) of a finished request on the embedded default: pickled results, and
    task 3 failed."""
    dbfile = str(tmp_path / "here.sqlite")
    rid = sheepdog.map_async(_sample, [1, 2, 3, 4], {"dbfile": dbfile})
    assert sheepdog.get_results(rid, dbfile, timeout=60) == EXPECTED
    return rid, dbfile


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """The SHEEPDOG_HOME of "the other machine" (``_move_to`` it): no credentials."""
    home = tmp_path / "elsewhere"
    home.mkdir()
    return home


def _move_to(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHEEPDOG_HOME", str(home))
    assert not paths.credentials_file().exists()


def _secrets_here(origin: str) -> tuple[str, str]:
    """(broker password, master key hex) of broker ``origin`` on this machine."""
    known = credentials.lookup(origin)
    assert known is not None and known[1] is not None
    password = urlsplit(known[0]).password
    assert password
    return password, known[1].hex()


def test_an_export_opens_pickled_results_only_after_import_elsewhere(
    finished: tuple[int, str], elsewhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rid, dbfile = finished
    with Store(dbfile) as store:
        row = store.request(rid)
    password, master = _secrets_here(row.origin)
    key = credentials.key_for(row.origin, row.token)
    assert key is not None
    exported = sheepdog.export_request(rid, dbfile, tmp_path / "moved.sqlite")
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    data = exported.read_bytes()
    assert key.hex().encode() in data  # the request's own key ...
    assert master.encode() not in data and password.encode() not in data  # ... only

    _move_to(elsewhere, monkeypatch)
    with pytest.raises(SerialisationError, match="this machine has no key"):
        sheepdog.get_results(rid, str(exported))
    there = str(elsewhere / "there.sqlite")
    assert sheepdog.import_request(exported, there) == rid
    assert sheepdog.get_results(rid, there) == EXPECTED
    assert sheepdog.get_results(rid, str(exported)) == EXPECTED  # the export is a dbfile
    errors = sheepdog.get_errors(rid, there)
    assert [args for args, _ in errors] == [3]
    assert "ValueError: no sample for 3" in errors[0][1] and "Traceback" in errors[0][1]
    kept = json.loads(paths.credentials_file().read_text())
    assert kept["brokers"] == {} and kept["requests"] == {row.token: key.hex()}


def test_a_taken_id_gets_the_next_free_one_and_importing_twice_adds_once(
    server_url: str, raw: redis.Redis, tmp_path: Path,
) -> None:
    first, second = str(tmp_path / "first.sqlite"), str(tmp_path / "second.sqlite")
    sheepdog.map(_sample, [1, 2], {"broker_url": server_url, "dbfile": first}, verbose=False)
    raw.flushdb()  # a broker that forgot its ids: the next request gets the same id
    sheepdog.map(_sample, [4], {"broker_url": server_url, "dbfile": second}, verbose=False)
    with Store(first) as a, Store(second) as b:
        rid = a.requests()[0].request_id
        assert b.requests()[0].request_id == rid
    exported = export_request(rid, first, tmp_path / "moved.sqlite")

    imported = read_export(exported, second)
    assert (imported.request_id, imported.how) == (rid + 1, "renumbered")
    assert f"request id {rid} is taken in {second}" in imported.lines()[0]
    again = read_export(exported, second)
    assert (again.request_id, again.how) == (rid + 1, "replaced")
    assert sheepdog.get_results(rid + 1, second) == [(1, Sample(1)), (2, Sample(2))]
    assert sheepdog.get_results(rid, second) == [(4, Sample(4))]
    with sqlite3.connect(second) as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == 2
        assert db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 3
        assert db.execute("SELECT count(*) FROM results").fetchone()[0] == 3


def test_with_broker_another_machine_collects_a_running_request(
    server_url: str, elsewhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = str(tmp_path / "go")
    here = str(tmp_path / "here.sqlite")
    args = [(marker, x) for x in range(4)]
    rid = sheepdog.map_async(_sample_when, args,
                             {"broker_url": server_url, "dbfile": here, "scheduler": "local"})
    with Store(here) as store:
        origin = store.request(rid).origin
    password, master = _secrets_here(origin)
    exported = export_request(rid, here, tmp_path / "moved.sqlite", with_broker=True)
    data = exported.read_bytes()
    assert password.encode() in data  # handed over, as asked
    assert master.encode() not in data

    _move_to(elsewhere, monkeypatch)
    there = str(elsewhere / "there.sqlite")
    imported = read_export(exported, there)
    assert imported.lines()[-1] == f"read it with: sheepdog.get_results({rid}, {there!r})"
    Path(marker).touch()
    assert sheepdog.get_results(rid, there, timeout=60) == [(a, Sample(a[1])) for a in args]
    with Store(there) as store:
        assert store.request(rid).status == "done"
    entry = json.loads(paths.credentials_file().read_text())["brokers"][origin]
    assert entry == {"url": server_url}  # its URL, never its master key

    stale = read_export(exported, there)  # the export predates every outcome
    assert stale.how == "kept"
    assert sheepdog.get_results(rid, there) == [(a, Sample(a[1])) for a in args]


def test_with_broker_is_refused_for_the_embedded_broker(tmp_path: Path) -> None:
    marker = str(tmp_path / "go")
    dbfile = str(tmp_path / "here.sqlite")
    rid = sheepdog.map_async(_sample_when, [(marker, 1)], {"dbfile": dbfile})
    try:
        result = CliRunner().invoke(main, ["export", str(rid), "--dbfile", dbfile,
                                           "--with-broker", "-o", str(tmp_path / "x.sqlite")])
        assert result.exit_code == 1
        assert f"request {rid} runs on this machine's embedded broker" in result.output
        assert "Traceback" not in result.output and not (tmp_path / "x.sqlite").exists()
    finally:
        Path(marker).touch()
        assert sheepdog.get_results(rid, dbfile, timeout=60) == [((marker, 1), Sample(1))]


def test_cli_round_trip(
    finished: tuple[int, str], elsewhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rid, dbfile = finished
    runner = CliRunner()
    path = str(tmp_path / "moved here; 'q' #1?.sqlite")  # URIs (ATTACH) must quote it
    exported = runner.invoke(main, ["export", str(rid), "--dbfile", dbfile, "-o", path])
    assert exported.exit_code == 0, exported.output
    assert f"it holds request {rid}'s own key (table 'credentials' of {path}" \
        in exported.output
    again = runner.invoke(main, ["export", str(rid), "--dbfile", dbfile, "-o", path])
    assert again.exit_code == 1 and f"Error: {path} exists" in again.output

    _move_to(elsewhere, monkeypatch)
    there = str(elsewhere / "there %20 ?mode=ro.sqlite")
    imported = runner.invoke(main, ["import", path, "--dbfile", there])
    assert imported.exit_code == 0, imported.output
    assert f"read it with: sheepdog.get_results({rid}, {there!r})" in imported.output
    shown = runner.invoke(main, ["results", str(rid), "--dbfile", there])
    assert shown.output.splitlines()[2] == "3\tNone"
    assert len(shown.output.splitlines()) == 4


def test_import_refuses_what_is_not_an_export(
    finished: tuple[int, str], tmp_path: Path,
) -> None:
    rid, dbfile = finished
    there = str(tmp_path / "there.sqlite")
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all, " * 100)
    for path, said in [(dbfile, "is not a file written by `sheepdog export`"),
                       (str(text), "is not a file written by `sheepdog export`"),
                       (str(tmp_path / "nowhere.sqlite"), "there is no file")]:
        result = CliRunner().invoke(main, ["import", path, "--dbfile", there])
        assert result.exit_code == 1 and said in result.output, result.output
    newer = export_request(rid, dbfile, tmp_path / "newer.sqlite")
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE store SET value = '99' WHERE key = 'schema'")
    with pytest.raises(TransferError, match="written by a newer sheepdog"):
        import_request(newer, there)
    forged = export_request(rid, dbfile, tmp_path / "forged.sqlite")
    with sqlite3.connect(forged) as db:
        db.execute("UPDATE credentials SET value = ? WHERE kind = 'request'", ("ab" * 32,))
    with pytest.raises(IntegrityError, match="differs from the key this machine holds"):
        import_request(forged, there)  # this machine knows the request's real key
    assert not Path(there).exists()  # refused before the dbfile is touched


def test_rows_are_copied_by_column_name_and_a_failed_import_adds_nothing(
    finished: tuple[int, str], tmp_path: Path,
) -> None:
    rid, dbfile = finished
    exported = export_request(rid, dbfile, tmp_path / "moved.sqlite")
    older = tmp_path / "older.sqlite"  # as an export made before results had 'stderr'
    shutil.copy(exported, older)
    with sqlite3.connect(older) as db:
        db.execute("ALTER TABLE results DROP COLUMN stderr")
    there = str(tmp_path / "there.sqlite")
    assert import_request(older, there) == rid
    assert sheepdog.get_results(rid, there) == EXPECTED

    damaged = tmp_path / "damaged.sqlite"  # its last outcome breaks a constraint
    shutil.copy(exported, damaged)
    with sqlite3.connect(damaged) as db:
        db.execute("PRAGMA ignore_check_constraints = ON")
        db.execute("UPDATE results SET status = 'bogus' WHERE idx = 4")
    fresh = str(tmp_path / "fresh.sqlite")
    with pytest.raises(TransferError, match="the dbfile is unchanged"):
        import_request(damaged, fresh)
    with sqlite3.connect(fresh) as db:
        for table in ("requests", "tasks", "results", "brokers"):
            assert db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table


def test_waiting_without_the_brokers_credentials_fails_at_once(
    tmp_path: Path, elsewhere: Path, server_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A running request whose broker this machine has no credentials for: a blocking
    wait says so and how to fix it, instead of waiting out an 'outage' for ever."""
    marker = str(tmp_path / "go")
    dbfile = str(tmp_path / "here.sqlite")
    rid = sheepdog.map_async(_sample_when, [(marker, 1)],
                             {"dbfile": dbfile, "broker_url": server_url})
    copied = str(elsewhere / "copied.sqlite")
    shutil.copy(dbfile, copied)
    _move_to(elsewhere, monkeypatch)
    started = time.monotonic()
    with pytest.raises(sheepdog.BrokerError, match=r"no credentials for broker.*--with-broker"):
        sheepdog.get_results(rid, copied)
    assert time.monotonic() - started < 10
    monkeypatch.undo()
    Path(marker).touch()
    assert sheepdog.get_results(rid, dbfile, timeout=60) == [((marker, 1), Sample(1))]
