"""The rq scheduler against real `rq worker` processes (rq's own CLI) on a real valkey.

The workers are plain rq workers with sheepdog installed, as a lab would run
them on its workstations; sheepdog only enqueues rq jobs and watches them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from rq.job import Job

import sheepdog
from sheepdog.errors import RequestFailed, TaskErrors
from sheepdog.submitter.store import Store

RQ = str(Path(sys.executable).with_name("rq"))


class Workers:
    """`rq worker` processes on the test broker's 'sheepdog' queue, each in its own session."""

    def __init__(self, url: str, log_dir: Path) -> None:
        self.url = url
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int = 1, queue: str = "sheepdog") -> None:
        client = redis.Redis.from_url(self.url)
        wanted = len(self.procs) + n
        for _ in range(n):
            with (self.log_dir / f"worker-{len(self.procs)}.log").open("wb") as log:
                self.procs.append(subprocess.Popen(
                    [RQ, "worker", "--url", self.url, queue], stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                ))
        deadline = time.monotonic() + 30
        while len(list(client.scan_iter("rq:worker:*"))) < wanted:  # registered: listening
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.1)
        client.close()

    def kill(self, index: int) -> None:
        """kill -9 of an rq worker and its work horse (with our worker): a machine lost."""
        proc = self.procs[index]
        for pid in [*_children(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        proc.wait(10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def stop(self) -> None:
        """Every worker and its work horse (in a process group of its own), so no
        horse finishes a job after the next test flushed the server."""
        for index, proc in enumerate(self.procs):
            if proc.poll() is None:
                self.kill(index)


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                           check=False).stdout.split()
    return [int(p) for p in found]


@pytest.fixture
def workers(server_url: str, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(server_url, tmp_path)
    yield started
    started.stop()


@pytest.fixture
def config(server_url: str, dbfile: str) -> dict[str, object]:
    return {"scheduler": "rq", "broker_url": server_url, "dbfile": dbfile}


def add(a: int, b: int) -> int:
    return a + b


def test_seed_examples_on_rq_workers(config: dict[str, object], workers: Workers) -> None:
    workers.start(2)
    assert sheepdog.map(add, [(1, 1), (1, 2), (2, 2)], config) == [2, 3, 4]
    constant = 12

    def g(x: int) -> int:
        return x * 2

    def f(a: int, b: int) -> int:
        return a + g(b) + constant

    assert sheepdog.map(f, [(1, 2), (2, 3), (3, 4)], config,
                        ns={"constant": constant, "g": g}) == [17, 20, 23]


def test_200_tasks_and_a_failure_with_its_traceback(config: dict[str, object],
                                                     workers: Workers, raw: redis.Redis) -> None:
    workers.start(2)

    def fail_on_7(x: int) -> int:
        if x == 7:
            raise ValueError(f"bad value {x}")
        return x * 2

    with pytest.raises(TaskErrors) as caught:
        sheepdog.map(fail_on_7, range(200), config, raise_errors=True)
    [failure] = caught.value.failures
    assert failure.index == 8 and failure.error.startswith("Traceback")
    assert failure.error.rstrip().endswith("ValueError: bad value 7")
    with Store(str(config["dbfile"])) as store:
        row = store.requests()[-1]
        ok = store.counts(row.request_id)
    assert ok == {"ok": 199, "error": 1, "lost": 0}
    # The rq jobs (their arguments hold the request's credentials) go with it: those
    # still finishing delete themselves when they do.
    _no_rq_jobs_left(raw)


def test_worker_mode_runs_two_rq_jobs(config: dict[str, object], workers: Workers,
                                     raw: redis.Redis) -> None:
    workers.start(2)
    values = sheepdog.map(add, [(i, 1) for i in range(300)], dict(config, workers=2))
    assert values == [i + 1 for i in range(300)]
    with Store(str(config["dbfile"])) as store:
        row = store.requests()[-1]
    assert row.job_ids.endswith("/2")  # two rq jobs ran all 300 tasks
    # The end of a request deletes its rq jobs while their workers may still be
    # finishing them (rq raised on that race, 1 run in 3): never an error for map.
    for _ in range(6):
        assert sheepdog.map(add, [(i, 1) for i in range(20)], dict(config, workers=2),
                            raise_errors=True) == [i + 1 for i in range(20)]
    _no_rq_jobs_left(raw)
    assert "stopped" not in workers.logs().lower()  # the end of a request stopped no worker


def _slow(x: int) -> int:
    time.sleep(60)
    return x


def _no_rq_jobs_left(raw: redis.Redis, seconds: float = 10) -> None:
    """The request's rq jobs are gone (those still finishing delete themselves)."""
    deadline = time.monotonic() + seconds
    while left := list(raw.scan_iter("rq:job:sheepdog-*")):
        if time.monotonic() > deadline:
            said = {key: (raw.hget(key, "status"), raw.hget(key, "worker_name"))
                    for key in left}
            raise AssertionError(f"rq jobs left: {said}")
        time.sleep(0.2)


def _wait_for(what: Callable[[], bool], seconds: float, why: str) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.2)


def _statuses(url: str, job_ids: str) -> dict[str, str]:
    prefix, _, size = job_ids.rpartition("/")
    client = redis.Redis.from_url(url)
    try:
        found = {}
        for i in range(1, int(size) + 1):
            status = client.hget(Job.key_for(f"{prefix}_{i}"), "status")
            found[f"{prefix}_{i}"] = status.decode() if status else "gone"
        return found
    finally:
        client.close()


def test_cancel_deletes_queued_rq_jobs_and_stops_the_started_one(
    config: dict[str, object], workers: Workers, server_url: str,
) -> None:
    workers.start(1)
    dbfile = str(config["dbfile"])
    request_id = sheepdog.map_async(_slow, range(3), config)
    with Store(dbfile) as store:
        job_ids = store.request(request_id).job_ids
    _wait_for(lambda: "started" in _statuses(server_url, job_ids).values(), 30,
              "no rq job started")
    assert sheepdog.cancel(request_id, dbfile) == 3
    _wait_for(lambda: set(_statuses(server_url, job_ids).values()) <= {"stopped", "gone"}, 30,
              f"rq jobs left: {_statuses(server_url, job_ids)}")
    assert list(_statuses(server_url, job_ids).values()).count("stopped") == 1
    assert workers.procs[0].poll() is None  # the rq worker itself lives on
    with pytest.raises(RequestFailed, match="cancelled by the user"):
        sheepdog.get_results(request_id, dbfile, timeout=30)


def test_a_killed_rq_worker_loses_its_task_by_the_lease_and_another_runs_it(
    config: dict[str, object], workers: Workers, server_url: str,
) -> None:
    def slow_once(x: int) -> int:
        import time

        time.sleep(4)
        return x

    workers.start(1)
    dbfile = str(config["dbfile"])
    config = dict(config, heartbeat_interval=0.5, lease_timeout=2.0)
    request_id = sheepdog.map_async(slow_once, [5], config)
    with Store(dbfile) as store:
        job_ids = store.request(request_id).job_ids
    _wait_for(lambda: "started" in _statuses(server_url, job_ids).values(), 30,
              "the rq job never started")
    time.sleep(1.0)  # the task is running (its claim is taken)
    workers.kill(0)
    workers.start(1)  # another machine's worker
    assert sheepdog.get_results(request_id, dbfile, timeout=90) == [(5, 5)]
    with Store(dbfile) as store:
        [earlier] = store.history(request_id)[1]
        final = store.outcome_detail(request_id, 1)
    assert earlier["status"] == "lost" and "no heartbeat" in earlier["error"]
    assert final is not None and final["attempt"] == 2


def test_no_rq_worker_listening_is_said(config: dict[str, object],
                                        capfd: pytest.CaptureFixture[str]) -> None:
    dbfile = str(config["dbfile"])
    request_id = sheepdog.map_async(add, [(1, 2)], config)
    assert "no rq worker listens on queue 'sheepdog'" in capfd.readouterr().err
    assert sheepdog.cancel(request_id, dbfile) == 1
