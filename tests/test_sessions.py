"""Requests outlive the process that made them; several submitters share one broker."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import redis

import sheepdog
from sheepdog.broker import keys

from .conftest import run_python


def test_map_async_in_one_process_get_results_in_a_later_one(tmp_path: Path) -> None:
    submitted = run_python(
        """
        import sheepdog

        def f(a, b):
            return a * b

        print(sheepdog.map_async(f, [(i, 2) for i in range(6)], {"dbfile": "r.sqlite"}))
        """,
        cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stderr
    request_id = int(submitted.stdout)
    collected = run_python(
        f"""
        import sheepdog
        print(sheepdog.get_results({request_id}, "r.sqlite", timeout=60))
        """,
        cwd=tmp_path,
    )
    assert collected.returncode == 0, collected.stderr
    assert collected.stdout.strip() == str([((i, 2), i * 2) for i in range(6)])
    # And once more with the broker's copy expiring: the dbfile alone answers.
    assert sheepdog.get_results(request_id, str(tmp_path / "r.sqlite"), block=False) == [
        ((i, 2), i * 2) for i in range(6)
    ]


def test_results_survive_a_restart_of_the_embedded_broker(dbfile: str) -> None:
    from sheepdog.broker import embedded
    from sheepdog.submitter import paths

    def slow_square(x: int) -> int:
        import time

        time.sleep(0.5)
        return x * x

    request_id = sheepdog.map_async(slow_square, range(4), {"dbfile": dbfile})
    time.sleep(1.5)  # some outcomes are recorded but not collated
    assert embedded.stop(paths.embedded_broker_dir())  # its data is saved to disk
    embedded.ensure_running(paths.embedded_broker_dir())
    # Workers that found the broker gone mid-way waited for it and recorded their outcome.
    assert sheepdog.get_results(request_id, dbfile, timeout=60) == [(x, x * x) for x in range(4)]
    assert sheepdog.get_errors(request_id, dbfile) == []


def test_two_submitters_share_one_broker_at_once(server_url: str, tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys, sheepdog

        NAME = sys.argv[1]

        def f(a, b):
            return (NAME, a + b)  # NAME travels with f, by value

        config = {{"broker_url": {server_url!r}, "dbfile": sys.argv[1] + ".sqlite"}}
        rid = sheepdog.map_async(f, [(i, i) for i in range(8)], config)
        print(rid, sheepdog.get_results(rid, config["dbfile"], timeout=90) ==
              [((i, i), (sys.argv[1], 2 * i)) for i in range(8)])
        """
    )
    script = tmp_path / "submitter.py"
    script.write_text(code)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), name], cwd=tmp_path, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for name in ("alice", "bob")
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    ids = [int(out.split()[0]) for out, _ in outputs]
    assert sorted(ids) == [1, 2]  # from the broker's INCR: distinct, no collision
    assert [out.split()[1] for out, _ in outputs] == ["True", "True"]


def _count_rows(dbfile: Path) -> tuple[int, int]:
    with sqlite3.connect(dbfile) as db:
        rows = db.execute("SELECT count(*), count(DISTINCT idx) FROM results").fetchone()
    return int(rows[0]), int(rows[1])


def test_kill_9_of_the_collator_loses_and_duplicates_nothing(
    server_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    dbfile = tmp_path / "r.sqlite"
    config = {"broker_url": server_url, "dbfile": str(dbfile), "local_workers": 4}
    n = 40
    request_id = sheepdog.map_async(pow, [(i, 2) for i in range(n)], config)
    deadline = time.monotonic() + 90
    while raw.hget(keys.meta(request_id), "status") != b"done":
        assert time.monotonic() < deadline, "the tasks did not finish"
        time.sleep(0.1)
    # A collator that commits five entries at a time and dawdles before each
    # acknowledgement, so the kill lands between a commit and its ack.
    collector = tmp_path / "collect.py"
    collector.write_text(textwrap.dedent(
        f"""
        import time, sheepdog
        from sheepdog.broker.client import Broker
        from sheepdog.submitter import collator
        collator.BATCH = 5
        ack = Broker.ack
        def slow_ack(self, *args):
            time.sleep(0.3)
            ack(self, *args)
        Broker.ack = slow_ack
        sheepdog.get_results({request_id}, {str(dbfile)!r})
        """
    ))
    proc = subprocess.Popen([sys.executable, str(collector)], cwd=tmp_path)
    while _count_rows(dbfile)[0] < 10:
        assert proc.poll() is None, "the collator ended before it was killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial, _ = _count_rows(dbfile)
    assert 10 <= partial < n
    group = keys.collator_group(_store_id(dbfile))
    pending = raw.xpending(keys.results(request_id), group)["pending"]
    assert pending > 0  # committed or not, some entries were never acknowledged

    assert sheepdog.get_results(request_id, str(dbfile)) == [((i, 2), i * i) for i in range(n)]
    assert _count_rows(dbfile) == (n, n)
    assert raw.xpending(keys.results(request_id), group)["pending"] == 0


def _store_id(dbfile: Path) -> str:
    with sqlite3.connect(dbfile) as db:
        return str(db.execute("SELECT value FROM store WHERE key = 'store_id'").fetchone()[0])


def test_two_dbfiles_collect_the_same_request_independently(
    server_url: str, tmp_path: Path
) -> None:
    first = str(tmp_path / "a.sqlite")
    request_id = sheepdog.map_async(abs, [-1, -2], {"broker_url": server_url, "dbfile": first})
    assert sheepdog.get_results(request_id, first) == [(-1, 1), (-2, 2)]
    # A second store of the same request (copied before collation) gets every outcome too.
    second = tmp_path / "b.sqlite"
    with sqlite3.connect(first) as src, sqlite3.connect(second) as dst:
        for table in ("brokers", "requests", "tasks"):
            rows = src.execute(f"SELECT * FROM {table}").fetchall()
            if rows:
                marks = ",".join("?" * len(rows[0]))
                dst.execute(_create_sql(src, table))
                dst.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    assert sheepdog.get_results(request_id, str(second)) == [(-1, 1), (-2, 2)]


def _create_sql(db: sqlite3.Connection, table: str) -> str:
    row = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    return str(row[0])


def test_outcomes_missing_from_the_dbfile_are_read_again_from_the_stream(
    server_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    dbfile = str(tmp_path / "r.sqlite")
    config = {"broker_url": server_url, "dbfile": dbfile}
    request_id = sheepdog.map_async(abs, [-1, -2, -3], config)
    deadline = time.monotonic() + 60
    while raw.hget(keys.meta(request_id), "status") != b"done":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with sqlite3.connect(dbfile) as db:  # collate everything, then lose two rows
        sheepdog.get_results(request_id, dbfile, block=False)
        db.execute("DELETE FROM results WHERE idx > 1")
        db.execute("UPDATE requests SET status = 'submitted'")
    assert sheepdog.get_results(request_id, dbfile, timeout=30) == [(-1, 1), (-2, 2), (-3, 3)]

    # Gone from both the dbfile and the broker: said so, not waited for.
    with sqlite3.connect(dbfile) as db:
        db.execute("DELETE FROM results WHERE idx = 3")
        db.execute("UPDATE requests SET status = 'submitted'")
    [third] = [i for i, f in raw.xrange(keys.results(request_id)) if f[b"index"] == b"3"]
    raw.xdel(keys.results(request_id), third)
    raw.persist(keys.meta(request_id))
    try:
        sheepdog.get_results(request_id, dbfile, timeout=30)
    except sheepdog.RequestFailed as exc:
        assert "only 2 of 3 outcomes are in its results stream" in str(exc)
    else:
        raise AssertionError("a lost outcome was not reported")
