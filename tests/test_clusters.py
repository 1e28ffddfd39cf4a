"""One suite, run unchanged against each cluster scheduler of the testbed: Grid Engine and Slurm.

Everything goes through the testbed's sshd as the non-root submit user, and
workers run from the zipapp on a bare /usr/bin/python3. What differs between
the schedulers is in ``tests/clusters.py``. Without the testbed these tests
skip, except under CI, where they fail.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

import sheepdog
from sheepdog.errors import RequestFailed, SubmitError, TaskErrors
from sheepdog.submitter.store import Store

from .clusters import Cluster, need_slurm
from .conftest import testbed_ssh as _ssh


@pytest.fixture(params=["gridengine", "slurm"])
def cluster(request: pytest.FixtureRequest, config: dict[str, object],
            testbed: dict[str, str]) -> Cluster:
    name: str = request.param
    if name == "slurm":
        need_slurm(testbed)
    return Cluster(name, dict(config, scheduler=name), testbed)


def add(a: int, b: int) -> int:
    return a + b


def _last_request(config: dict[str, object]) -> tuple[int, list[str]]:
    with Store(str(config["dbfile"])) as store:
        row = store.requests()[-1]
    return row.request_id, row.job_ids.split(",")


def test_seed_examples(cluster: Cluster) -> None:
    config = cluster.config
    assert sheepdog.map(add, [(1, 1), (1, 2), (2, 2)], config) == [2, 3, 4]
    constant = 12

    def g(x: int) -> int:
        return x * 2

    def f(a: int, b: int) -> int:
        return a + g(b) + constant  # g and constant come from ns

    ns = {"constant": constant, "g": g}
    assert sheepdog.map(f, [(1, 2), (2, 3), (3, 4)], config, ns=ns) == [17, 20, 23]


def test_a_200_task_array_in_order(cluster: Cluster) -> None:
    args = [(i, 1000) for i in range(200)]
    started = time.monotonic()
    values = sheepdog.map(add, args, cluster.config, raise_errors=True)
    assert values == [i + 1000 for i in range(200)]
    print(f"200-task array on {cluster.name}: {time.monotonic() - started:.1f} s")


def test_worker_mode_runs_the_array_as_eight_workers(cluster: Cluster) -> None:
    args = [(i, 1000) for i in range(500)]
    started = time.monotonic()
    values = sheepdog.map(add, args, dict(cluster.config, workers=8), raise_errors=True)
    assert values == [i + 1000 for i in range(500)]
    print(f"500 tasks on 8 workers on {cluster.name}: {time.monotonic() - started:.1f} s")
    rid, job_ids = _last_request(cluster.config)
    with sqlite3.connect(str(cluster.config["dbfile"])) as db:
        refs = {r[0] for r in db.execute("SELECT job FROM results WHERE request_id = ?", (rid,))}
    [job_id] = job_ids  # one array job
    assert refs <= {f"{job_id}.{k}" for k in range(1, 9)}  # of eight tasks
    # Workers still queued when the work was done are deleted, not left to start late.
    assert cluster.gone_within(job_id, 30)


def test_task_exception_comes_back_with_its_traceback(cluster: Cluster) -> None:
    def fail(x: int) -> int:
        raise ValueError(f"bad value {x}")

    with pytest.raises(TaskErrors) as caught:
        sheepdog.map(fail, [7], cluster.config, raise_errors=True)
    error = caught.value.failures[0].error
    assert error.startswith("Traceback") and "in fail" in error
    assert error.rstrip().endswith("ValueError: bad value 7")


def test_a_task_over_its_memory_request_is_a_memory_error(cluster: Cluster) -> None:
    def hog(megabytes: int) -> int:
        return len(bytearray(megabytes * 2**20))

    config = dict(cluster.config, **cluster.memory("300M"))
    with pytest.raises(TaskErrors) as caught:
        sheepdog.map(hog, [2048, 4], config, raise_errors=True)
    [failure] = caught.value.failures
    assert failure.index == 1
    assert failure.error.startswith("MemoryError: the task needed more memory than its limit"
                                    " of 300 MiB")


def test_a_task_over_its_memory_limit_is_retried_with_more(cluster: Cluster) -> None:
    def hog(megabytes: int) -> int:
        return len(bytearray(megabytes * 2**20))

    config = dict(cluster.config, **cluster.memory("300M"), retry_memory_factor=2.0)
    assert sheepdog.map(hog, [400, 4], config, raise_errors=True) == [400 * 2**20, 4 * 2**20]
    rid, job_ids = _last_request(config)
    with Store(str(config["dbfile"])) as store:
        [earlier] = store.history(rid)[1]
        retried = store.outcome_detail(rid, 1)
    assert earlier["error"].startswith("MemoryError: the task needed more memory than its"
                                       " limit of 300 MiB")
    assert earlier["cause"] == "memory" and len(job_ids) == 2  # the first job, and a retry
    assert retried is not None and retried["attempt"] == 2
    assert retried["job"].startswith(f"{job_ids[1]}.")
    assert cluster.memory_asked(rid, job_ids[1]) == "600M"  # the scheduler is asked for more


def _request_keys(broker: redis.Redis) -> list[bytes]:
    return list(broker.scan_iter("sheepdog:{req:*"))


def test_a_refused_option_is_quoted_back_and_nothing_is_left(
    cluster: Cluster, broker: redis.Redis
) -> None:
    before = _request_keys(broker)
    job_files = "ls ~/.sheepdog/jobs/*/job*.json 2>/dev/null"
    files_before = cluster.ssh(job_files)
    with pytest.raises(SubmitError, match=cluster.refused):
        sheepdog.map(add, [(1, 2)], dict(cluster.config, **cluster.bad_option))
    assert _request_keys(broker) == before
    with Store(str(cluster.config["dbfile"])) as store:
        assert store.requests() == []
    assert cluster.ssh(job_files) == files_before, "a job file with the password was left"


def _slow(x: int) -> int:
    time.sleep(120)
    return x


def test_cancel_deletes_the_job(cluster: Cluster) -> None:
    dbfile = str(cluster.config["dbfile"])
    request_id = sheepdog.map_async(_slow, range(3), cluster.config)
    _, [job_id] = _last_request(cluster.config)
    assert sheepdog.cancel(request_id, dbfile) == 3
    assert cluster.gone_within(job_id, 30), "the scheduler still has the job"
    with pytest.raises(RequestFailed, match="cancelled by the user"):
        sheepdog.get_results(request_id, dbfile, timeout=30)


def test_a_job_deleted_behind_our_back_stops_map_promptly(cluster: Cluster) -> None:
    dbfile = str(cluster.config["dbfile"])
    request_id = sheepdog.map_async(_slow, range(12), cluster.config)
    _, [job_id] = _last_request(cluster.config)
    deadline = time.monotonic() + 60
    while not cluster.running(job_id):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.5)
    cluster.delete(job_id)
    deleted_at = time.monotonic()
    with pytest.raises(RequestFailed, match=rf"was cancelled \(the {cluster.name} job {job_id}"
                       r" ended before every task had started"):
        sheepdog.get_results(request_id, dbfile, timeout=60)
    assert time.monotonic() - deleted_at < 20


def test_a_task_killed_on_the_node_is_lost_retried_and_the_rest_return(
    cluster: Cluster,
) -> None:
    def die_on_two(x: int) -> int:
        import os
        import signal

        if x == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    out = sheepdog.map(die_on_two, [1, 2, 3], cluster.config, verbose=False)
    assert out == [1, None, 3]
    rid, _ = _last_request(cluster.config)
    [failure] = sheepdog.get_errors(rid, str(cluster.config["dbfile"]))
    args, error = failure
    assert args == 2 and failure.attempt == 2  # type: ignore[attr-defined]  # retried once
    assert "ended while this task ran on" in error
    assert "earlier attempt 1: lost on" in error
    import re

    assert re.search(cluster.killed, error), error  # the scheduler's record of the kill


def test_collect_later_from_a_fresh_process(cluster: Cluster, ssh_home: Path) -> None:
    dbfile = str(cluster.config["dbfile"])
    request_id = sheepdog.map_async(add, [(i, i) for i in range(5)], cluster.config)
    proc = subprocess.run(
        [sys.executable, "-m", "sheepdog.cli", "collect", str(request_id), "--dbfile", dbfile],
        capture_output=True, text=True, timeout=120, check=False,
        env=dict(os.environ, HOME=str(ssh_home)),
    )
    assert proc.returncode == 0, proc.stderr
    assert "5 of 5 tasks have an outcome (5 ok, 0 failed)" in proc.stdout
    assert sheepdog.get_results(request_id, dbfile, block=False) == [
        ((i, i), 2 * i) for i in range(5)
    ]


def test_submitting_on_the_head_node_itself(cluster: Cluster, tmp_path: Path) -> None:
    testbed = cluster.testbed
    config = {
        "scheduler": cluster.name,  # no host: qsub/sbatch run here, without SSH
        "broker_url": testbed["SHEEPDOG_TESTBED_BROKER_URL"],
        "shell": testbed["SHEEPDOG_TESTBED_BARE_PYTHON"],
        "ssh_dir": str(tmp_path / "jobs dir"),
        "dbfile": str(tmp_path / "r.sqlite"),
    }
    os.chmod(tmp_path, 0o755)
    assert sheepdog.map(add, [(1, 1), (1, 2), (2, 2)], config, raise_errors=True) == [2, 3, 4]


def test_with_only_host_set_the_head_node_decides_and_grid_engine_wins(
    config: dict[str, object], testbed: dict[str, str], capfd: pytest.CaptureFixture[str],
) -> None:
    """The testbed's head node has both qsub and sbatch: the seed's meaning of 'host' holds."""
    assert "scheduler" not in config
    assert sheepdog.map(add, [(1, 2)], config) == [3]
    said = capfd.readouterr().err
    assert "testbed runs gridengine: using it (it also has slurm;" in said
    with Store(str(config["dbfile"])) as store:
        assert store.requests()[-1].scheduler == "gridengine"
    assert _ssh(testbed, "command -v sbatch").returncode == 0
