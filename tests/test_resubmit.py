"""resubmit: the failed and lost tasks of a finished request run again, from the dbfile."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

import sheepdog
from sheepdog.broker import keys
from sheepdog.cli import main
from sheepdog.submitter.store import Store


def _needs_marker(x: int, marker: str) -> int:
    """Fails for odd x until ``marker`` exists: a fault fixed between two runs."""
    import os

    if x % 2 and not os.path.exists(marker):
        raise RuntimeError(f"{marker} is missing")
    return x * 10


def _request(dbfile: str) -> int:
    with Store(dbfile) as store:
        return store.requests()[-1].request_id


def test_resubmit_runs_the_failed_tasks_and_their_new_outcomes_replace_the_old(
    dbfile: str, tmp_path: Path
) -> None:
    marker = str(tmp_path / "fixed")
    args = [(x, marker) for x in range(5)]
    assert sheepdog.map(_needs_marker, args, {"dbfile": dbfile}, verbose=False) == [
        0, None, 20, None, 40]
    rid = _request(dbfile)
    Path(marker).touch()
    assert sheepdog.resubmit(rid, dbfile) == 2  # tasks 2 and 4 (x = 1 and 3)
    assert sheepdog.get_results(rid, dbfile, timeout=60) == [
        (a, a[0] * 10) for a in args]
    assert sheepdog.get_errors(rid, dbfile) == []
    with sqlite3.connect(dbfile) as db:
        earlier = db.execute("SELECT idx, attempt, status FROM attempts ORDER BY idx").fetchall()
        now = db.execute("SELECT idx, attempt FROM results WHERE idx IN (2, 4)").fetchall()
    assert earlier == [(2, 1, "error"), (4, 1, "error")]  # the old outcomes are history
    assert sorted(now) == [(2, 2), (4, 2)]
    assert sheepdog.resubmit(rid, dbfile) == 0  # nothing failed any more
    with Store(dbfile) as store:
        assert store.request(rid).broker_request == rid  # the id in the keys is still its id


def test_resubmit_works_after_the_broker_forgot_the_request(
    server_url: str, raw: redis.Redis, dbfile: str, tmp_path: Path
) -> None:
    marker = str(tmp_path / "fixed")
    config = {"broker_url": server_url, "dbfile": dbfile}
    sheepdog.map(_needs_marker, [(1, marker), (2, marker)], config, verbose=False)
    rid = _request(dbfile)
    raw.flushall()  # expired, flushed, replaced: the dbfile has all it needs
    Path(marker).touch()
    result = CliRunner().invoke(main, ["resubmit", str(rid), "--dbfile", dbfile])
    assert result.exit_code == 0, result.output
    assert f"request {rid}: 1 task(s) run again" in result.output
    assert sheepdog.get_results(rid, dbfile, timeout=60) == [((1, marker), 10),
                                                            ((2, marker), 20)]


def test_resubmit_chooses_failed_or_lost_and_takes_new_settings(
    dbfile: str, tmp_path: Path
) -> None:
    def die_or_fail(x: int) -> int:
        import os

        if x == 1:
            os.kill(os.getpid(), 9)
        if x == 2:
            raise ValueError("no")
        return x

    # One task per worker: in worker mode the tasks a killed worker held in its batch
    # would be lost with the one it ran.
    sheepdog.map(die_or_fail, [0, 1, 2], {"dbfile": dbfile, "retries": 0, "workers": 0},
                 verbose=False)
    rid = _request(dbfile)
    assert sheepdog.resubmit(rid, dbfile, failed=False, config={"retries": 2}) == 1  # lost
    assert sheepdog.get_results(rid, dbfile, timeout=60) == [(0, 0), (1, None), (2, None)]
    [lost, failed] = sheepdog.get_errors(rid, dbfile)
    assert lost.attempt == 4 and failed.attempt == 1  # type: ignore[attr-defined]
    assert lost[1].count("lost on") == 3  # 1 before the resubmit, 2 retries after it
    with pytest.raises(sheepdog.ConfigError, match="broker_url cannot change"):
        sheepdog.resubmit(rid, dbfile, config={"broker_url": "redis://x"})
    with pytest.raises(sheepdog.ConfigError, match="unknown config key"):
        sheepdog.resubmit(rid, dbfile, config={"retires": 2})


def test_resubmit_refuses_a_request_that_still_runs(dbfile: str) -> None:
    def slow(x: int) -> int:
        import time

        time.sleep(30)
        return x

    rid = sheepdog.map_async(slow, [1], {"dbfile": dbfile})
    try:
        with pytest.raises(sheepdog.RequestFailed, match=f"request {rid} is still running"):
            sheepdog.resubmit(rid, dbfile)
    finally:
        sheepdog.cancel(rid, dbfile)
    assert sheepdog.resubmit(rid, dbfile) == 1  # cancelled: its task runs again
    assert sheepdog.get_results(rid, dbfile, block=False) == [(1, None)]
    sheepdog.cancel(rid, dbfile)


def test_two_brokers_one_dbfile(server_url: str, raw: redis.Redis, dbfile: str) -> None:
    """The issue's reproduction: a broker_url run after the embedded default, same dbfile."""
    first = sheepdog.map_async(abs, [-1], {"dbfile": dbfile})
    second = sheepdog.map_async(abs, [-2], {"dbfile": dbfile, "broker_url": server_url})
    assert first != second
    assert sheepdog.get_results(first, dbfile) == [(-1, 1)]
    assert sheepdog.get_results(second, dbfile) == [(-2, 2)]
    assert raw.exists(keys.meta(second))  # its id on that broker is the one users see
