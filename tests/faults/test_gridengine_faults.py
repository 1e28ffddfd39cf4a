"""Faults on the real test cluster (testbed/up): every request ends complete and correct.

Each test runs ``sheepdog.map`` in a thread, injects one fault into Grid
Engine or the broker while tasks run, and then asserts that every value came
back right and in order, that the dbfile holds exactly one result row per
task, and what the attempt history says. Short leases (heartbeat 0.5 s, lease
3 s) make lost tasks show within seconds.

The qmaster is stopped and started with ``testbed/sge`` (as testbed/up starts
it), always restarted in a ``finally``. These tests run as root, like
testbed/up; under CI the ``testbed`` fixture fails when the cluster is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import sheepdog
from sheepdog.broker import keys
from sheepdog.broker.tasks import Claim

from ..conftest import REPO
from ..conftest import testbed_ssh as _ssh

SGE = REPO / "testbed" / "sge"

#: Lost tasks show within seconds instead of a minute.
FAST = {"heartbeat_interval": 0.5, "lease_timeout": 3.0, "retries": 1}

#: How long the qmaster stays down in the outage test.
OUTAGE = 60.0


def square_after(x: int, seconds: float) -> int:
    import time

    time.sleep(seconds)
    return x * x


# -- helpers -----------------------------------------------------------------------


class Mapping:
    """``sheepdog.map`` in a thread, so the test can break things meanwhile."""

    def __init__(self, args: list[tuple[int, float]], config: dict[str, object]) -> None:
        self.args = args
        self.config = config
        self.dbfile = str(config["dbfile"])
        self.outcome: list[Any] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome.append(sheepdog.map(square_after, self.args, self.config))
        except BaseException as exc:  # handed to the test in result()
            self.outcome.append(exc)

    def result(self, timeout: float) -> list[Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"map did not return within {timeout:.0f} s"
        [found] = self.outcome
        if isinstance(found, BaseException):
            raise found
        assert isinstance(found, list)
        return found

    def request(self) -> sqlite3.Row | None:
        """The request's row in the dbfile, once it has one."""
        if not Path(self.dbfile).exists():
            return None
        with sqlite3.connect(self.dbfile) as db:
            db.row_factory = sqlite3.Row
            try:
                row: sqlite3.Row | None = db.execute(
                    "SELECT * FROM requests ORDER BY request_id DESC LIMIT 1").fetchone()
            except sqlite3.OperationalError:  # the schema is being created
                return None
        return row

    def submitted(self) -> sqlite3.Row:
        """The request's row once its job is queued."""
        found: list[sqlite3.Row] = []

        def queued() -> bool:
            row = self.request()
            if row is not None and row["job_ids"] and row["status"] == "submitted":
                found[:] = [row]
            return bool(found)

        wait_for(queued, 60, "the job to be queued")
        return found[0]

    def stop(self) -> None:
        """A test that failed half-way leaves no job behind."""
        row = self.request()
        if row is not None and row["status"] not in ("done", "cancelled"):
            try:
                sheepdog.cancel(row["request_id"], self.dbfile)
            except Exception as exc:  # the test's own failure is the one to see
                print(f"cleanup: cancelling request {row['request_id']} failed: {exc}")
        self.thread.join(30)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


def claims(broker: redis.Redis, broker_request: int) -> dict[int, Claim]:
    """Who holds which task now (``HGETALL sheepdog:{req:ID}:claims``)."""
    raw: dict[bytes, bytes] = broker.hgetall(keys.claims(broker_request))  # type: ignore[assignment]
    return {int(k): Claim.parse(v.decode()) for k, v in raw.items()}


def running(broker: redis.Redis, broker_request: int) -> dict[int, Claim]:
    return {i: c for i, c in claims(broker, broker_request).items() if c.holder != "-"}


def results_rows(dbfile: str, request_id: int) -> list[tuple[int, int, str]]:
    """(index, attempt, status) of every row of ``results`` for the request."""
    with sqlite3.connect(dbfile) as db:
        return [(int(r[0]), int(r[1]), str(r[2])) for r in db.execute(
            "SELECT idx, attempt, status FROM results WHERE request_id = ? ORDER BY idx",
            (request_id,))]


def attempts_rows(dbfile: str, request_id: int) -> list[sqlite3.Row]:
    with sqlite3.connect(dbfile) as db:
        db.row_factory = sqlite3.Row
        return list(db.execute(
            "SELECT * FROM attempts WHERE request_id = ? ORDER BY idx, attempt", (request_id,)))


def assert_complete(mapping: Mapping, values: list[Any], request_id: int) -> None:
    """Every value right and in order, one ok result row per task, no errors."""
    expected = [x * x for x, _ in mapping.args]
    assert values == expected
    assert sheepdog.get_results(request_id, mapping.dbfile, block=False) == [
        ((x, seconds), x * x) for x, seconds in mapping.args]
    rows = results_rows(mapping.dbfile, request_id)
    assert [i for i, _, _ in rows] == list(range(1, len(mapping.args) + 1))  # one per task
    assert {status for _, _, status in rows} == {"ok"}
    assert sheepdog.get_errors(request_id, mapping.dbfile) == []


def sge(command: str) -> str:
    """``testbed/sge COMMAND``: stop or start the qmaster as testbed/up does."""
    done = subprocess.run([str(SGE), command], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"testbed/sge {command} failed:\n{done.stdout}{done.stderr}"
    return done.stderr


def in_qstat(testbed: dict[str, str], job_id: str) -> bool:
    return _ssh(testbed, f"qstat -j {job_id}").returncode == 0


@pytest.fixture(autouse=True, scope="module")
def _qmaster_running(testbed: dict[str, str]) -> Iterator[None]:
    """The qmaster runs before and after this module, whatever happened in it."""
    sge("qmaster-start")
    yield
    sge("qmaster-start")


# -- the faults ----------------------------------------------------------------------


def _six_tasks_with_a_victim(
    config: dict[str, object], broker: redis.Redis, victim: int,
) -> tuple[Mapping, sqlite3.Row, Claim]:
    """Tasks 1-6 in one job (the victim takes 4 s, the others 15 s), once the victim runs:
    the map, its dbfile row and the victim's claim. The caller stops the map."""
    args = [(x, 4.0 if x == victim else 15.0) for x in range(1, 7)]
    mapping = Mapping(args, dict(config, **FAST))
    try:
        row = mapping.submitted()
        wait_for(lambda: victim in running(broker, row["broker_request"]), 60,
                 f"task {victim} to start")
    except BaseException:
        mapping.stop()
        raise
    return mapping, row, running(broker, row["broker_request"])[victim]



def test_kill_9_of_a_worker_mid_task_is_lost_by_its_lease_and_retried(
    config: dict[str, object], broker: redis.Redis, testbed: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The worker of task 3 is SIGKILLed on the node while tasks 1-6 run in one job."""
    victim = 3
    mapping, row, claim = _six_tasks_with_a_victim(config, broker, victim)
    try:
        job_id = row["job_ids"].split(",")[0]
        assert claim.attempt == 1 and claim.job == f"{job_id}.{victim}"
        assert claim.host == socket.gethostname()  # the node is this machine
        pid = int(claim.pid)
        uid = pwd.getpwnam(testbed["SHEEPDOG_TESTBED_SSH_USER"]).pw_uid
        assert os.stat(f"/proc/{pid}").st_uid == uid, "the claim's pid is not sgeuser's"
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        values = mapping.result(120)
    finally:
        mapping.stop()
    rid = row["request_id"]
    assert_complete(mapping, values, rid)
    assert results_rows(mapping.dbfile, rid) == [
        (i, 2 if i == victim else 1, "ok") for i in range(1, 7)]
    [lost] = attempts_rows(mapping.dbfile, rid)
    assert (lost["idx"], lost["attempt"], lost["status"]) == (victim, 1, "lost")
    assert lost["job"] == f"{job_id}.{victim}" and int(lost["pid"]) == pid
    assert "no heartbeat from" in lost["error"] and "its lease ran out" in lost["error"]
    # Found by its lease while the job still ran the other tasks (they take 15 s).
    assert killed_at < lost["finished"] < killed_at + 10
    with sqlite3.connect(mapping.dbfile) as db:
        others_done = min(r[0] for r in db.execute(
            "SELECT finished FROM results WHERE request_id = ? AND idx != ?", (rid, victim)))
    assert lost["finished"] < others_done
    said = capsys.readouterr()
    assert f"1 task(s) of request {rid} lost (task {victim}, attempt 1" in said.out + said.err
    assert f"running 1 task(s) of request {rid} again" in said.out + said.err


def test_qdel_of_one_running_array_task_is_retried(
    config: dict[str, object], broker: redis.Redis, testbed: dict[str, str],
) -> None:
    """``qdel JOB -t N`` on a running task: Grid Engine SIGKILLs it, the others go on."""
    victim = 2
    mapping, row, claim = _six_tasks_with_a_victim(config, broker, victim)
    try:
        job_id, task = claim.job.split(".")
        assert job_id == row["job_ids"].split(",")[0] and task == str(victim)
        deleted = _ssh(testbed, f"qdel {job_id} -t {task}")
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        assert f"job-array task {job_id}.{task} for deletion" in deleted.stdout
        values = mapping.result(120)
    finally:
        mapping.stop()
    rid = row["request_id"]
    assert_complete(mapping, values, rid)
    assert results_rows(mapping.dbfile, rid) == [
        (i, 2 if i == victim else 1, "ok") for i in range(1, 7)]
    [lost] = attempts_rows(mapping.dbfile, rid)
    assert (lost["idx"], lost["attempt"], lost["status"]) == (victim, 1, "lost")
    assert lost["job"] == f"{job_id}.{victim}"
    with sqlite3.connect(mapping.dbfile) as db:
        [(retry_job,)] = db.execute("SELECT job FROM results WHERE request_id = ? AND idx = ?",
                                    (rid, victim))
    assert retry_job.split(".")[0] != job_id  # the retry ran as a job of its own
    wait_for(lambda: not in_qstat(testbed, job_id), 30, f"job {job_id} to end")


@pytest.mark.timeout(300)
def test_qmaster_down_for_a_minute_mid_request(
    config: dict[str, object], broker: redis.Redis, testbed: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """sge_qmaster stops while 8 tasks run and 2 wait, and is back 60 s later.

    Tasks 1-6 end while it is down, 7-8 run across the restart, 9-10 start after
    it. Nothing is lost or cancelled; the wait says the scheduler was unreachable,
    then reachable again.
    """
    args = [(x, 20.0 if x <= 4 else 35.0 if x <= 6 else 85.0 if x <= 8 else 10.0)
            for x in range(1, 11)]
    mapping = Mapping(args, dict(config, **FAST))
    said: list[Any] = []
    try:
        row = mapping.submitted()
        wait_for(lambda: len(running(broker, row["broker_request"])) >= 8, 60,
                 "8 tasks to run")
        waiting = set(range(1, 11)) - set(running(broker, row["broker_request"]))
        assert waiting, "no task was left pending"
        try:
            sge("qmaster-stop")
            assert _ssh(testbed, "qstat -u '*'").returncode != 0, "the qmaster still answers"
            time.sleep(OUTAGE)
            said.append(capsys.readouterr())
            so_far = "".join(s.out + s.err for s in said)
            # It kept collecting meanwhile: tasks 1-6 are done, none is lost or cancelled.
            assert mapping.thread.is_alive(), f"map returned: {mapping.outcome}\n{so_far}"
            done = results_rows(mapping.dbfile, row["request_id"])
            assert [i for i, _, _ in done if i <= 6] == [1, 2, 3, 4, 5, 6], so_far
            assert all(a == 1 and s == "ok" for _, a, s in done), so_far
            meta = broker.hget(keys.meta(row["broker_request"]), "status")
            assert meta == b"queued", so_far
        finally:
            sge("qmaster-start")
        values = mapping.result(180)
    finally:
        mapping.stop()
    said.append(capsys.readouterr())
    rid = row["request_id"]
    assert_complete(mapping, values, rid)
    assert results_rows(mapping.dbfile, rid) == [(i, 1, "ok") for i in range(1, 11)]
    assert attempts_rows(mapping.dbfile, rid) == []  # nothing lost, nothing retried
    assert mapping.request()["status"] == "done"  # type: ignore[index]
    out = "".join(s.out for s in said)
    err = "".join(s.err for s in said)
    unreachable = "sheepdog: the gridengine scheduler unreachable since"
    again = "sheepdog: the gridengine scheduler reachable again after"
    assert unreachable in out + err and "Connection refused" in out + err
    assert again in out + err
    # map's messages go to stderr (as its "N of M tasks failed" line does).
    assert unreachable in err and again in err, (
        f"the wait's messages are not on stderr; stdout had:\n{out}")


def test_broker_flushall_mid_request_pushes_the_tasks_again(
    config: dict[str, object], broker: redis.Redis, testbed: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """FLUSHALL of the broker while tasks run: the request goes on from the dbfile."""
    args = [(x, 10.0) for x in range(1, 7)]
    mapping = Mapping(args, dict(config, **FAST))
    try:
        row = mapping.submitted()
        wait_for(lambda: len(running(broker, row["broker_request"])) == 6, 60,
                 "every task to run")
        old_job = row["job_ids"]
        broker.flushall()
        values = mapping.result(120)
    finally:
        mapping.stop()
    rid = row["request_id"]
    assert_complete(mapping, values, rid)
    now = mapping.request()
    assert now is not None and now["status"] == "done"
    assert now["job_ids"] != old_job and now["broker_id"] != row["broker_id"]
    said = capsys.readouterr()
    assert f"sheepdog: the broker lost request {rid} (its data was replaced); pushing its 6" \
        " unfinished task(s) again from the dbfile" in said.out + said.err
    wait_for(lambda: not in_qstat(testbed, old_job), 30, "the old job to be deleted")


@pytest.mark.timeout(240)
def test_broker_flushed_while_the_qmaster_is_down(
    config: dict[str, object], broker: redis.Redis, capsys: pytest.CaptureFixture[str],
) -> None:
    """Broker and qmaster on one head node that reboots: the broker is back (empty) first.

    sheepdog finds the request gone and pushes its tasks again, but cannot qsub the new
    job until the qmaster is back: that is an outage to report and wait out, as a failing
    qstat is, not the end of the wait.
    """
    args = [(x, 20.0) for x in range(1, 5)]
    mapping = Mapping(args, dict(config, **FAST))
    try:
        row = mapping.submitted()
        wait_for(lambda: len(running(broker, row["broker_request"])) == 4, 60,
                 "every task to run")
        try:
            sge("qmaster-stop")
            broker.flushall()  # the tasks still run: none has an outcome yet
            time.sleep(8)  # a few checks: the request is gone, and qsub cannot run
            so_far = capsys.readouterr()
            assert mapping.thread.is_alive(), (
                f"map gave up: {mapping.outcome!r}\n{so_far.out}{so_far.err}")
        finally:
            sge("qmaster-start")
        values = mapping.result(120)
    finally:
        mapping.stop()
    assert_complete(mapping, values, row["request_id"])


def test_resubmit_while_the_qmaster_is_down_starts_the_tasks_once_it_is_back(
    config: dict[str, object],
) -> None:
    """resubmit pushes the tasks again; qsub fails, and it says so: the tasks wait on the
    broker as retries, and the next get_results starts them when Grid Engine answers."""
    shared = Path(tempfile.mkdtemp(prefix="sheepdog-fixed-"))  # the node's user reads it
    shared.chmod(0o755)
    marker = shared / "fixed"

    def fails_until_fixed(x: int) -> int:
        if x == 2 and not marker.exists():
            raise RuntimeError("not yet")
        return x * 10

    dbfile = str(config["dbfile"])
    assert sheepdog.map(fails_until_fixed, [1, 2], config, verbose=False) == [10, None]
    request_id = _last(dbfile)
    marker.touch()
    sge("qmaster-stop")
    try:
        with pytest.raises(sheepdog.SubmitError, match=(
                rf"(?s)request {request_id}: its 1 task\(s\) are on the broker again, but the"
                r" gridengine scheduler did not take the job \(.*qsub.*\); get_results")):
            sheepdog.resubmit(request_id, dbfile)
    finally:
        sge("qmaster-start")
    try:
        assert sheepdog.get_results(request_id, dbfile, timeout=120) == [(1, 10), (2, 20)]
    finally:
        shutil.rmtree(shared)


def _last(dbfile: str) -> int:
    with sqlite3.connect(dbfile) as db:
        return int(db.execute("SELECT max(request_id) FROM requests").fetchone()[0])


def test_a_pilot_killed_mid_batch_on_the_node_its_tasks_finish_elsewhere(
    config: dict[str, object], broker: redis.Redis, testbed: dict[str, str],
) -> None:
    """Worker mode: 4 pilots share 24 tasks of 1 s; one is SIGKILLed on the node. The
    tasks it held are lost by their leases and run by the three others."""
    args = [(x, 1.0) for x in range(1, 25)]
    mapping = Mapping(args, dict(config, workers=4, **FAST))
    try:
        row = mapping.submitted()
        wait_for(lambda: len({c.pid for c in running(broker, row["broker_request"]).values()})
                 >= 2, 90, "two pilots to hold tasks")
        held = running(broker, row["broker_request"])
        victim = next(iter(held.values()))
        batch = sorted(i for i, c in held.items() if c.pid == victim.pid)
        uid = pwd.getpwnam(testbed["SHEEPDOG_TESTBED_SSH_USER"]).pw_uid
        assert os.stat(f"/proc/{victim.pid}").st_uid == uid, "the claim's pid is not sgeuser's"
        os.kill(int(victim.pid), signal.SIGKILL)
        values = mapping.result(180)
    finally:
        mapping.stop()
    rid = row["request_id"]
    assert_complete(mapping, values, rid)
    with sqlite3.connect(mapping.dbfile) as db:
        refs = {r[0] for r in db.execute("SELECT job FROM results WHERE request_id = ?", (rid,))}
    assert victim.job not in refs  # others ran them (the other pilots, or a new job)
    lost = attempts_rows(mapping.dbfile, rid)
    assert {r["idx"] for r in lost} >= set(batch)
    assert all(r["status"] == "lost" and r["job"] == victim.job for r in lost)
