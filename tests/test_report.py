"""`sheepdog report`: a page about real requests run on the embedded default broker.

Each request really runs (worker mode, and one process per task); the page is
checked against the dbfile it was made from. The store's move from schema 2 to
3 (``booted``) is checked on a file made with the old schema itself.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import sheepdog
from sheepdog.broker import embedded
from sheepdog.cli import main
from sheepdog.submitter import paths
from sheepdog.submitter.report import write_report
from sheepdog.submitter.report.data import exception_line
from sheepdog.submitter.store import SCHEMA_VERSION, Store

GOLDEN = Path(__file__).parent / "golden"

HOSTILE = "<script>alert('owned')</script> & \"quotes\""
SLEEPERS = {40: 0.9, 120: 0.6, 7: 0.35}  # task argument -> seconds it sleeps


def work(i: int) -> int:
    import time

    if i % 37 == 5:
        raise ValueError(f"bad input {i}")
    if i == 101:
        raise KeyError(HOSTILE)
    time.sleep(SLEEPERS.get(i, 0.002 * (i % 5)))
    return i * i


def quick(i: int) -> int:
    if i == 3:
        raise ZeroDivisionError("division by zero in task three")
    return i


@pytest.fixture(scope="module")
def worker_mode(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, str]:
    """(request id, dbfile, report html) of 200 tasks run by two workers."""
    dbfile = str(tmp_path_factory.mktemp("report") / "db.sqlite")
    request_id = sheepdog.map_async(work, range(200), {"dbfile": dbfile, "workers": 2})
    sheepdog.get_results(request_id, dbfile, timeout=100)
    path = write_report(request_id, dbfile, Path(dbfile).with_name("report.html"))
    return request_id, dbfile, path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def per_task(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str]:
    """(request id, dbfile) of 12 tasks, one worker process each."""
    dbfile = str(tmp_path_factory.mktemp("report") / "db.sqlite")
    request_id = sheepdog.map_async(quick, range(12), {"dbfile": dbfile, "workers": 0})
    sheepdog.get_results(request_id, dbfile, timeout=100)
    return request_id, dbfile


def _section(page: str, heading: str) -> str:
    start = page.index(f"<h2>{heading}</h2>")
    end = page.find("<h2>", start + 1)
    return page[start:end if end > 0 else None]


def test_counts_match_the_dbfile(worker_mode: tuple[int, str, str]) -> None:
    request_id, dbfile, page = worker_mode
    with Store(dbfile, create=False) as store:
        counts = store.counts(request_id)
    assert counts["error"] == len([i for i in range(200) if i % 37 == 5]) + 1
    shown = dict(re.findall(r"<tr><th>([^<]+)</th><td class='n'>([\d,]+)</td></tr>",
                            _section(page, "Outcomes")))
    assert shown["ok"] == f"{counts['ok']:,}"
    assert shown["raised (error)"] == str(counts["error"])
    assert shown["lost"] == "0" and shown["no outcome yet"] == "0"


def test_every_failure_shows_its_exception_line(worker_mode: tuple[int, str, str]) -> None:
    _, _, page = worker_mode
    failures = _section(page, "Failures")
    for i in range(200):
        if i % 37 == 5:
            assert f"<code class='bad'>ValueError: bad input {i}</code>" in failures
            assert f"task {i + 1} attempt 1" in failures
    assert "raise ValueError(f&quot;bad input {i}&quot;)" in failures  # the traceback


def test_hostile_error_text_is_escaped(worker_mode: tuple[int, str, str]) -> None:
    _, _, page = worker_mode
    assert "<script>" not in page and "alert('owned')" not in page
    assert html.escape(f"KeyError: {HOSTILE!r}") in page


def test_slowest_tasks_come_first_with_their_arguments(
        worker_mode: tuple[int, str, str]) -> None:
    _, _, page = worker_mode
    rows = re.findall(r"<tr><td class='n'>(\d+)</td><td>(\w+)</td>.*?<code>([^<]*)</code>",
                      _section(page, "Slowest tasks"))
    by_time = sorted(SLEEPERS, key=SLEEPERS.__getitem__, reverse=True)
    assert [(int(idx), args) for idx, _, args in rows[:3]] == [(i + 1, str(i)) for i in by_time]


def test_the_page_is_self_contained(worker_mode: tuple[int, str, str]) -> None:
    _, _, page = worker_mode
    images = re.findall(r"<img alt='[^']+' src='data:image/png;base64,([^']+)'>", page)
    assert len(images) == 2
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<link" not in page and "<script" not in page
    assert "@import" not in page and "url(" not in page


def test_booted_is_recorded_once_per_worker_process(
        worker_mode: tuple[int, str, str]) -> None:
    request_id, dbfile, _ = worker_mode
    with Store(dbfile, create=False) as store:
        created = store.request(request_id).created
        rows = list(store.attempt_times(request_id))
    booted_of: dict[tuple[str, int], set[float]] = {}
    for row in rows:
        booted_of.setdefault((row["host"], row["pid"]), set()).add(row["booted"])
        assert created - 0.05 < row["booted"] <= row["started"] <= row["finished"]
    assert len(booted_of) == 2  # two workers, each with one start for all its tasks
    assert all(len(booted) == 1 for booted in booted_of.values())


def test_one_process_per_task_records_when_each_process_started(
        per_task: tuple[int, str]) -> None:
    request_id, dbfile = per_task
    with Store(dbfile, create=False) as store:
        created = store.request(request_id).created
        rows = list(store.attempt_times(request_id))
    assert len(rows) == 12 and len({(r["host"], r["pid"]) for r in rows}) == 12
    for row in rows:
        # The process started after the submission (its clock-tick start may read up to
        # a tick early), before its task, and its start-up took well under a minute.
        assert created - 0.05 < row["booted"] <= row["started"] <= row["finished"]
        assert row["started"] - row["booted"] < 30
    # booted is the interpreter's own start, not a moment inside sheepdog's worker
    assert any(row["started"] - row["booted"] > 0.005 for row in rows)


def test_report_of_one_process_per_task_shows_each_start(
        per_task: tuple[int, str], tmp_path: Path) -> None:
    request_id, dbfile = per_task
    page = write_report(request_id, dbfile, tmp_path / "r.html").read_text(encoding="utf-8")
    phases = _section(page, "Where the time went")
    assert re.search(r"queue wait .*?</th><td class='n'>12</td>", phases)
    assert re.search(r"start-up .*?</th><td class='n'>12</td>", phases)
    assert "worker overhead" not in phases  # no worker ran two tasks
    assert "ZeroDivisionError: division by zero in task three" in _section(page, "Failures")


def test_cli_writes_the_report_with_the_broker_stopped(
        per_task: tuple[int, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    request_id, dbfile = per_task
    before = hashlib.sha256(Path(dbfile).read_bytes()).hexdigest()
    embedded.stop(paths.embedded_broker_dir())
    try:
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(main, ["report", str(request_id), "--dbfile", dbfile])
        named = CliRunner().invoke(main, ["report", str(request_id), "--dbfile", dbfile,
                                          "-o", "named.html"])
    finally:
        embedded.ensure_running(paths.embedded_broker_dir())
    assert result.exit_code == 0, result.output
    default = f"sheepdog-report-{request_id}.html"
    assert result.output.strip() == default and (tmp_path / default).stat().st_size > 10_000
    assert named.exit_code == 0 and named.output.strip() == "named.html"
    assert hashlib.sha256(Path(dbfile).read_bytes()).hexdigest() == before  # read only


def test_cli_for_an_unknown_request_is_one_line(per_task: tuple[int, str]) -> None:
    _, dbfile = per_task
    result = CliRunner().invoke(main, ["report", "999", "--dbfile", dbfile])
    assert result.exit_code == 1
    assert result.output.startswith("Error: request 999 is not in")


def test_without_matplotlib_the_command_says_how_to_get_it(
        per_task: tuple[int, str], tmp_path: Path) -> None:
    request_id, dbfile = per_task
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from sheepdog.cli import main\n"
            f"main(['report', '{request_id}', '--dbfile', {dbfile!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr == "Error: sheepdog report needs matplotlib: pip install" \
        " 'sheepdog[report]'\n"
    assert list(tmp_path.iterdir()) == []


def test_importing_sheepdog_never_imports_matplotlib() -> None:
    code = ("import sys, sheepdog, sheepdog.cli, sheepdog.submitter.report\n"
            "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'numpy'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(("text", "line"), [
    ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    raise E\n"
     "ValueError: bad\n", "ValueError: bad"),
    ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nKeyError: 1\n\n"
     "During handling of the above exception, another exception occurred:\n\n"
     "Traceback (most recent call last):\n  File \"x.py\", line 3, in f\nTypeError: no\n",
     "TypeError: no"),
    ("MemoryError: the task needed more memory than its limit of 64 MiB (...)\n"
     "Traceback (most recent call last):\n  File \"x.py\", line 1\nMemoryError\n",
     "MemoryError: the task needed more memory than its limit of 64 MiB (...)"),
    ("lease ran out: the worker died or hung", "lease ran out: the worker died or hung"),
    ("", "(no error text)"),
])
def test_the_exception_line_of_an_error_text(text: str, line: str) -> None:
    assert exception_line(text) == line


# -- the store's schema 2 -> 3 -----------------------------------------------------


def _v2_file(path: Path) -> None:
    """A dbfile as sheepdog wrote it before ``booted``: one request, an outcome, an attempt."""
    with sqlite3.connect(path) as db:
        db.executescript(GOLDEN.joinpath("store-v2.sql").read_text())
        db.execute("INSERT INTO store VALUES ('store_id', 'old-store'), ('schema', '2')")
        db.execute("INSERT INTO brokers VALUES ('b1', 'embedded:/nowhere')")
        db.execute("INSERT INTO requests (request_id, token, origin, broker_id, broker_request,"
                   " function, n_tasks, func, scheduler, created, status) VALUES"
                   " (1, 't', 'b1', 'b1', 1, 'm.f', 1, x'00', 'local', 100.0, 'done')")
        db.execute("INSERT INTO tasks VALUES (1, 1, x'00', 1)")
        db.execute("INSERT INTO results (request_id, idx, attempt, status, error, host, pid,"
                   " started, finished) VALUES (1, 1, 2, 'error', 'E: x', 'h', 7, 101.0, 102.0)")
        db.execute("INSERT INTO attempts (request_id, idx, attempt, status, error, host, pid,"
                   " started, finished) VALUES (1, 1, 1, 'lost', 'gone', 'h', 6, 100.5, 100.9)")
    db.close()


def test_a_schema_2_dbfile_is_read_as_it_is_when_read_only(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    _v2_file(path)
    before = path.read_bytes()
    with Store(path, create=False, readonly=True) as store:
        assert "booted" not in store.columns("results")
        rows = sorted(store.attempt_times(1), key=lambda r: r["attempt"])
        assert [(r["attempt"], r["status"], r["booted"]) for r in rows] == [
            (1, "lost", None), (2, "error", None)]
        assert [r["error"] for r in store.failed_attempts(1)] == ["gone", "E: x"]
    assert path.read_bytes() == before


def test_a_schema_2_dbfile_gains_booted_when_opened_to_write(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    _v2_file(path)
    with Store(path) as store:
        assert store.store_id == "old-store"
        assert store.columns("results")[-1] == "booted"
        assert store.columns("attempts")[-1] == "booted"
        assert store.counts(1) == {"ok": 0, "error": 1, "lost": 0}
        store.restart_tasks(1, [1], {1: 3})  # the old outcome moves to history, booted too
        store.save_outcomes([{
            "request_id": 1, "idx": 1, "attempt": 3, "status": "ok", "cause": None,
            "value": b"v", "error": None, "mac": "m", "host": "h", "pid": 8, "job": None,
            "booted": 110.0, "started": 110.5, "finished": 111.0, "stdout": None,
            "stderr": None, "broker_id": "b1", "stream_key": 5}], [], [], [])
        rows = sorted(store.attempt_times(1), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["booted"], r["final"]) for r in rows] == [
        (1, None, 0), (2, None, 0), (3, 110.0, 1)]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM store WHERE key = 'schema'").fetchone() == (
            SCHEMA_VERSION,)
    db.close()
    Store(path).close()  # opened again: nothing left to migrate


def test_report_of_a_schema_2_dbfile_says_nothing_of_start_up(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    _v2_file(path)
    page = write_report(1, path, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "start-up (process" not in page  # no worker said when it started
    assert "<code class='bad'>E: x</code>" in page
    assert "<code class='bad'>gone</code> — task 1 attempt 1, tried again" in page


def test_report_of_a_request_without_any_outcome(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    _v2_file(path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM results")
        db.execute("DELETE FROM attempts")
    db.close()
    page = write_report(1, path, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<p>No task has run yet.</p>" in page
    assert "no outcome yet</th><td class='n'>1</td>" in page


def test_a_report_of_a_running_request_is_made_too(tmp_path: Path) -> None:
    """Tasks without an outcome yet are counted; the page is made all the same."""
    dbfile = str(tmp_path / "db.sqlite")

    def slow(i: int) -> int:
        import time

        time.sleep(2 if i else 0)
        return i

    request_id = sheepdog.map_async(slow, range(3), {"dbfile": dbfile, "workers": 1})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sheepdog.get_results(request_id, dbfile, block=False)
        with Store(dbfile, create=False) as store:
            if sum(store.counts(request_id).values()) >= 1:
                break
        time.sleep(0.1)
    page = write_report(request_id, dbfile, tmp_path / "r.html").read_text(encoding="utf-8")
    shown = dict(re.findall(r"<tr><th>([^<]+)</th><td class='n'>([\d,]+)</td></tr>",
                            _section(page, "Outcomes")))
    assert int(shown["ok"]) + int(shown["no outcome yet"]) == 3 and int(shown["ok"]) >= 1
    sheepdog.get_results(request_id, dbfile, timeout=60)


def test_report_of_a_grid_engine_request(config: dict[str, object], tmp_path: Path) -> None:
    """Workers from the zipapp on a bare Python say when they started; the page names
    each array task by its Grid Engine job reference."""
    dbfile = str(config["dbfile"])
    request_id = sheepdog.map_async(quick, range(6), config)
    sheepdog.get_results(request_id, dbfile, timeout=110)
    with Store(dbfile, create=False) as store:
        row = store.request(request_id)
        rows = list(store.attempt_times(request_id))
    assert len(rows) == 6
    for found in rows:  # the node's clock is this machine's on the testbed
        assert row.created - 0.05 < found["booted"] <= found["started"] <= found["finished"]
    page = write_report(request_id, dbfile, tmp_path / "r.html").read_text(encoding="utf-8")
    job = row.job_ids.split(",")[0]
    assert all(f"<td>{job}.{i}</td>" in _section(page, "Slowest tasks") for i in range(1, 7))
    failures = _section(page, "Failures")
    assert "ZeroDivisionError: division by zero in task three" in failures
    assert re.search(rf"task 4 attempt 1 on \S+ {job}\.4</summary>", failures)
