"""Faults on this machine, against real brokers: every request ends complete and correct.

Each test injects one fault while a request runs and asserts that the final
results are all there, all right, and that nothing is duplicated (one result
row per task, earlier attempts in the history). docs/faults.md lists them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import sheepdog
from sheepdog.broker import keys
from sheepdog.submitter import results, store
from sheepdog.submitter.store import Store

from .conftest import FAST_LEASES, Server, history, rows, wait_for


def slow_square(x: int) -> int:
    import time

    time.sleep(1.0)
    return x * x


def _claims(request_id: int, dbfile: str) -> dict[int, object]:
    with results.open_request(request_id, dbfile) as request:
        return dict(request.connect().claims(request.row.broker_request))


def _request_id(dbfile: str) -> int:
    with Store(dbfile, create=False) as found:
        return found.requests()[-1].request_id


def test_kill_9_of_a_worker_mid_task_is_retried(dbfile: str) -> None:
    config = {"dbfile": dbfile, "local_workers": 2, **FAST_LEASES}
    rid = sheepdog.map_async(slow_square, range(6), config)
    wait_for(lambda: 3 in _claims(rid, dbfile), what="task 3 to start")
    victim = _claims(rid, dbfile)[3]
    os.kill(int(victim.pid), signal.SIGKILL)  # type: ignore[attr-defined]
    assert sheepdog.get_results(rid, dbfile, timeout=60) == [(x, x * x) for x in range(6)]
    assert rows(dbfile, rid) == [(i, 2 if i == 3 else 1, "ok") for i in range(1, 7)]
    assert history(dbfile, rid) == [(3, 1, "lost")]
    assert sheepdog.get_errors(rid, dbfile) == []


def test_a_hung_worker_is_lost_by_its_lease_and_its_task_runs_again(dbfile: str) -> None:
    """SIGSTOP: alive but silent, as a node that hangs. The lease says it is lost."""
    config = {"dbfile": dbfile, "local_workers": 1, **FAST_LEASES}
    rid = sheepdog.map_async(slow_square, [7], config)
    wait_for(lambda: 1 in _claims(rid, dbfile), what="the task to start")
    hung = int(_claims(rid, dbfile)[1].pid)  # type: ignore[attr-defined]
    os.kill(hung, signal.SIGSTOP)
    try:
        assert sheepdog.get_results(rid, dbfile, timeout=60) == [(7, 49)]
    finally:
        with contextlib.suppress(ProcessLookupError):  # the runner killed it: expected
            os.kill(hung, signal.SIGCONT)
    [(index, attempt, status)] = history(dbfile, rid)
    assert (index, attempt, status) == (1, 1, "lost")
    with Store(dbfile) as found:
        [earlier] = found.history(rid)[1]
    assert "no heartbeat from" in earlier["error"] and "its lease ran out" in earlier["error"]


def _restart_empty(server: Server) -> None:
    server.kill()
    server.start()  # empty: every key of the request is gone, and the broker's id


def _flushall(server: Server) -> None:
    client = server.client()
    client.flushall()
    client.close()


@pytest.mark.parametrize("lose_data", [_restart_empty, _flushall],
                         ids=["killed-and-restarted-empty", "flushall"])
def test_broker_loses_its_data_mid_request(
    server: Server, dbfile: str, capsys: pytest.CaptureFixture[str],
    lose_data: Callable[[Server], None],
) -> None:
    config = {"broker_url": server.url, "dbfile": dbfile, "local_workers": 2, **FAST_LEASES}
    rid = sheepdog.map_async(slow_square, range(8), config)
    client = server.client()
    wait_for(lambda: client.xlen(keys.results(rid)) >= 2, what="some outcomes")
    client.close()
    lose_data(server)
    assert sheepdog.get_results(rid, dbfile, timeout=90, verbose=True) == [
        (x, x * x) for x in range(8)]
    assert [r[0] for r in rows(dbfile, rid)] == list(range(1, 9))  # one row per task
    assert "the broker lost request" in capsys.readouterr().err


_SUBMITTER = """
import sys, time, sheepdog
from sheepdog.broker.client import Broker
from sheepdog.submitter import store
from sheepdog.submitter.store import Store

store.INSERT_BATCH = 10  # the dbfile gets the arguments in five transactions
owner, name = sys.argv[1].split(".")  # the method the submitter is killed in
original = getattr({{"Broker": Broker, "Store": Store}}[owner], name)

def stalled(self, *args, **kwargs):
    if sys.argv[2] == "after":  # in it, once it has done its work
        original(self, *args, **kwargs)
    print("stalled", flush=True)
    time.sleep(600)

setattr({{"Broker": Broker, "Store": Store}}[owner], name, stalled)

def f(x):
    return x + 1

sheepdog.map_async(f, range(50), {{"dbfile": {dbfile!r}, "broker_url": {url!r}}})
"""


def _kill_submitter_in(method: str, when: str, server: Server, dbfile: str,
                       tmp_path: Path) -> None:
    """kill -9 a real submitter of 50 tasks inside ``method``, 'before' or 'after' it ran."""
    script = tmp_path / "submitter.py"
    script.write_text(textwrap.dedent(_SUBMITTER.format(dbfile=dbfile, url=server.url)))
    with subprocess.Popen([sys.executable, str(script), method, when], stdout=subprocess.PIPE,
                          text=True, cwd=tmp_path) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "stalled\n"
        os.kill(proc.pid, signal.SIGKILL)


def test_submitter_killed_mid_submit_never_hangs_anyone(server: Server, dbfile: str,
                                                        tmp_path: Path) -> None:
    _kill_submitter_in("Broker.push_tasks", "after", server, dbfile, tmp_path)  # pushed
    rid = _request_id(dbfile)
    client = server.client()
    assert 0 < client.ttl(keys.tasks(rid)) <= keys.SUBMIT_TTL  # its keys would expire
    started = time.monotonic()
    with pytest.raises(sheepdog.RequestFailed, match=rf"request {rid} was never fully"
                       r" submitted: its submitter \(.* pid \d+\) stopped before its job was"
                       rf" queued.*sheepdog.resubmit\({rid}\)"):
        sheepdog.get_results(rid, dbfile, timeout=30)
    assert time.monotonic() - started < 10
    assert client.exists(*keys.request_keys(rid)) == 0  # gone from the broker now
    client.close()
    # Everything it needs is in the dbfile: resubmit runs it.
    assert sheepdog.resubmit(rid, dbfile) == 50
    assert sheepdog.get_results(rid, dbfile, timeout=60) == [(x, x + 1) for x in range(50)]


def test_submitter_killed_before_the_dbfile_had_every_argument(
    server: Server, dbfile: str, tmp_path: Path
) -> None:
    _kill_submitter_in("Store._insert_tasks", "after", server, dbfile, tmp_path)  # 10 of 50
    rid = _request_id(dbfile)
    message = (rf"request {rid} was never fully submitted: .* the dbfile holds only 10 of its"
               r" arguments \(its submitter stopped while reading them\), so it cannot be"
               " resubmitted: submit it again with map")
    with pytest.raises(sheepdog.RequestFailed, match=message):
        sheepdog.get_results(rid, dbfile, timeout=30)
    with pytest.raises(sheepdog.RequestFailed, match=message):
        sheepdog.resubmit(rid, dbfile)


def test_submitter_killed_after_its_job_started_cancels_the_job(
    server: Server, dbfile: str, tmp_path: Path
) -> None:
    _kill_submitter_in("Broker.queued", "before", server, dbfile, tmp_path)  # runner started
    with Store(dbfile) as found:
        row = found.requests()[-1]
    assert row.status == "submitting" and row.job_ids
    runner = int(row.job_ids.split(":")[1])
    with pytest.raises(sheepdog.RequestFailed, match="was never fully submitted"):
        sheepdog.get_results(row.request_id, dbfile, timeout=30)
    wait_for(lambda: not _alive(runner), timeout=10, what="the runner to be stopped")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sqlite_locked_longer_than_the_busy_timeout(
    dbfile: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(store, "BUSY_TIMEOUT", 0.5)
    rid = sheepdog.map_async(slow_square, range(4), {"dbfile": dbfile})
    with subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sqlite3, time
        db = sqlite3.connect({dbfile!r}, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        print("locked", flush=True)
        time.sleep(5)
        db.execute("ROLLBACK")
        """)], stdout=subprocess.PIPE, text=True) as locker:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        assert sheepdog.get_results(rid, dbfile, timeout=60, verbose=True) == [
            (x, x * x) for x in range(4)]
    err = capsys.readouterr().err
    assert f"the dbfile {dbfile} unreachable since" in err and "database is locked" in err
    assert [r[0] for r in rows(dbfile, rid)] == [1, 2, 3, 4]


@pytest.mark.timeout(600)
def test_ten_submitters_on_one_broker_and_one_dbfile(server: Server, tmp_path: Path) -> None:
    dbfile = str(tmp_path / "shared.sqlite")
    code = textwrap.dedent(f"""
        import sys, sheepdog
        me = int(sys.argv[1])

        def f(x):
            return (me, x * 2)

        config = {{"broker_url": {server.url!r}, "dbfile": {dbfile!r}, "local_workers": 2}}
        rid = sheepdog.map_async(f, range(200), config)
        out = sheepdog.get_results(rid, {dbfile!r}, timeout=600)
        print(rid, out == [(x, (me, x * 2)) for x in range(200)])
        """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for i in range(10)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    ids = sorted(int(out.split()[0]) for out, _ in outputs)
    assert len(set(ids)) == 10  # unique in the dbfile and on the broker
    assert all(out.split()[1] == "True" for out, _ in outputs)
    with sqlite3.connect(dbfile) as db:
        count, distinct = db.execute(
            "SELECT count(*), count(DISTINCT request_id || ':' || idx) FROM results").fetchone()
    assert count == distinct == 2000


def test_a_result_too_large_for_the_broker_is_a_clear_error(tmp_path: Path) -> None:
    """The broker takes at most 1 MiB in one value here: a 2 MiB result is refused, clearly."""
    limited = Server(tmp_path)
    limited.start("--proto-max-bulk-len", "1mb")
    try:
        config = {"broker_url": limited.url, "dbfile": str(tmp_path / "r.sqlite")}
        with pytest.raises(sheepdog.TaskErrors) as caught:
            sheepdog.map(bytes, [2 * 2**20, 10], config, raise_errors=True, timeout=60)
        [failure] = caught.value.failures
        assert failure.index == 1
        assert failure.error.startswith("SerialisationError: the return value is 2.0 MiB"
                                        " pickled, more than the broker takes in one value")
        assert "write large results to a file" in failure.error
    finally:
        limited.stop()


def test_a_result_refused_by_a_broker_that_did_not_say_its_limit(tmp_path: Path) -> None:
    """broker_url's user may not read CONFIG, so the limit is not known in advance: the
    broker's refusal of the result is recorded as the task's error, clearly."""
    limited = Server(tmp_path)
    limited.start("--proto-max-bulk-len", "1mb")
    try:
        admin = limited.client()
        admin.acl_setuser("noconfig", enabled=True, passwords=["+pw"], keys=["*"],
                          channels=["*"], commands=["+@all", "-config"])
        admin.close()
        url = limited.url.replace(f":{limited.password}@", ":pw@").replace(
            "://", "://noconfig", 1)
        config = {"broker_url": url, "dbfile": str(tmp_path / "r.sqlite"), "retries": 0}
        with pytest.raises(sheepdog.TaskErrors) as caught:
            sheepdog.map(bytes, [2 * 2**20, 10], config, raise_errors=True, timeout=60)
        [failure] = caught.value.failures
        assert failure.index == 1
        assert failure.error.startswith("SerialisationError: the broker refused this result"
                                        " of 2097")
        assert "invalid bulk length" in failure.error
        assert "write large results to a file" in failure.error
    finally:
        limited.stop()


def eight_seconds(x: int) -> int:
    import time

    time.sleep(8)
    return x * x


def test_a_busy_broker_is_ridden_out(server: Server, dbfile: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A script keeps the broker BUSY for 5 s, longer than the tasks' 3 s leases, while
    they run: their heartbeats cannot land, yet none of them is declared lost."""
    import threading

    monkeypatch.setattr(results, "LIVENESS_INTERVAL", 0.2)  # look the moment it is back
    admin = server.client()
    admin.config_set("busy-reply-threshold", 100)  # BUSY replies after 0.1 s of a script
    config = {"broker_url": server.url, "dbfile": dbfile, "local_workers": 3, **FAST_LEASES}
    rid = sheepdog.map_async(eight_seconds, range(3), config)
    wait_for(lambda: admin.zcard(keys.leases(rid)) == 3, what="the tasks to start")
    busy = threading.Thread(target=admin.eval, args=(
        "local t = redis.call('TIME') local s = tonumber(t[1])"
        " while tonumber(redis.call('TIME')[1]) < s + 5 do end return 1", 0))
    busy.start()
    try:
        assert sheepdog.get_results(rid, dbfile, timeout=60) == [(x, x * x) for x in range(3)]
    finally:
        busy.join()
        admin.close()
    with Store(dbfile) as found:
        said = " ".join(found.outcome_detail(rid, i)["stderr"] or ""  # type: ignore[index]
                        for i in (1, 2, 3))
        assert found.retried(rid) == 0  # alive all along: none of them was declared lost
    assert "the broker is unavailable (RespError: BUSY" in said  # and the task went on


def test_an_expired_lease_is_reaped_only_if_it_stays_expired(dbfile: str) -> None:
    """A lease that ran out while its worker could not heartbeat (stopped here; a busy or
    unreachable broker in life) is only suspect: a heartbeat that lands soon after saves
    it. Only a lease still expired a while later means a dead worker."""
    from sheepdog.submitter.supervise import Watch

    config = {"dbfile": dbfile, "local_workers": 1, **FAST_LEASES}  # heartbeat 0.5, lease 3
    rid = sheepdog.map_async(eight_seconds, [4], config)
    wait_for(lambda: 1 in _claims(rid, dbfile), what="the task to start")
    worker = int(_claims(rid, dbfile)[1].pid)  # type: ignore[attr-defined]
    said: list[str] = []
    with results.open_request(rid, dbfile) as request:
        broker = request.connect()
        watch = Watch(request, said.append)

        def expired() -> bool:
            return bool(broker.expired(request.row.broker_request, request.row.token))

        os.kill(worker, signal.SIGSTOP)
        wait_for(expired, timeout=10, what="the lease to run out")
        watch.check()  # seen expired once: suspect, not lost
        os.kill(worker, signal.SIGCONT)
        wait_for(lambda: not expired(), timeout=5, what="a heartbeat")
        time.sleep(2.5)  # longer than it takes to settle (2 x 0.5 + 1 s)
        watch.check()
        assert broker.claims(request.row.broker_request)[1].holder != "-"  # not reaped

        watch.unreachable("the broker", "test")  # an outage this watch saw...
        watch.reachable("the broker")
        back = time.monotonic()
        os.kill(worker, signal.SIGSTOP)

        def reaped() -> bool:
            watch.check()
            return broker.claims(request.row.broker_request)[1].holder == "-"

        try:  # ... then a worker that stays silent is lost: not before a whole lease
            wait_for(reaped, timeout=15, what="the silent worker to be declared lost")
            assert time.monotonic() - back >= FAST_LEASES["lease_timeout"]
        finally:
            with contextlib.suppress(ProcessLookupError):  # its runner may have killed it
                os.kill(worker, signal.SIGCONT)
    assert any("lost (task 1, attempt 1: no heartbeat" in line for line in said)
    assert sheepdog.get_results(rid, dbfile, timeout=60) == [(4, 16)]  # its retry
