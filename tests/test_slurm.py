"""What is Slurm's own, against the testbed's Slurm (slurmctld, slurmd, slurmdbd over sshd).

The behaviour every cluster scheduler shares (login-node submits included) is tested in
test_clusters.py.
"""

from __future__ import annotations

import os
import time

import pytest

import sheepdog
from sheepdog.errors import ConfigError
from sheepdog.submitter.config import Settings
from sheepdog.submitter.remote import Completed, Remote
from sheepdog.submitter.schedulers.slurm import Slurm
from sheepdog.submitter.session import Session
from sheepdog.submitter.store import Store

from .clusters import need_slurm
from .conftest import testbed_ssh as _ssh


@pytest.fixture
def slurm(config: dict[str, object], testbed: dict[str, str]) -> dict[str, object]:
    need_slurm(testbed)
    return dict(config, scheduler="slurm")


def add(a: int, b: int) -> int:
    return a + b


def _job_ids(config: dict[str, object], request_id: int) -> list[str]:
    with Store(str(config["dbfile"])) as store:
        return store.request(request_id).job_ids.split(",")


def test_an_array_longer_than_max_array_size_becomes_several_jobs(
    slurm: dict[str, object], testbed: dict[str, str]
) -> None:
    limit = _ssh(testbed, "scontrol show config | grep MaxArraySize").stdout.split()[-1]
    n = int(limit) + 9  # the testbed's MaxArraySize is low on purpose (251)
    dbfile = str(slurm["dbfile"])
    request_id = sheepdog.map_async(add, [(i, 0) for i in range(n)], slurm)
    assert len(_job_ids(slurm, request_id)) == 2
    assert sheepdog.get_results(request_id, dbfile, timeout=300) == [
        ((i, 0), i) for i in range(n)
    ]


def test_slurm_opts_reach_the_job_and_max_running_throttles_it(
    slurm: dict[str, object], testbed: dict[str, str]
) -> None:
    def env(name: str) -> str:
        import time

        time.sleep(1)
        return os.environ.get(name, "")

    config = dict(slurm, max_running=1, slurm_opts=[
        "--export=ALL,SHEEPDOG_TEST_VAR=passed", "--time=0:10:00"])
    request_id = sheepdog.map_async(env, ["SHEEPDOG_TEST_VAR"] * 3, config)
    [job_id] = _job_ids(config, request_id)
    shown = _ssh(testbed, f"scontrol show job {job_id}").stdout
    assert "ArrayTaskThrottle=1" in shown and "TimeLimit=00:10:00" in shown
    most = 0
    deadline = time.monotonic() + 60
    while (states := _ssh(testbed, f"squeue -h -j {job_id} -r -o %T").stdout.split()):
        most = max(most, states.count("RUNNING"))
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert most == 1  # one at a time
    assert sheepdog.get_results(request_id, str(config["dbfile"]), timeout=60) == [
        ("SHEEPDOG_TEST_VAR", "passed")] * 3


def test_options_sheepdog_sets_are_refused_before_anything_runs(
    slurm: dict[str, object],
) -> None:
    with pytest.raises(ConfigError, match=r"slurm_opts must not set --array: .*max_running"):
        sheepdog.map(add, [(1, 2)], dict(slurm, slurm_opts=["--array=1-5"]))


class _NoAccounting:
    """The head node, but its sacct answers as a site without slurmdbd does (notes item 12)."""

    def __init__(self, real: Remote) -> None:
        self.real = real
        self.where = real.where

    def run(self, command: str, timeout: float = 120.0) -> Completed:
        if command.startswith("sacct "):
            return Completed(command, 1, "", "sacct: error: Slurm accounting storage is disabled\n")
        return self.real.run(command, timeout)


def test_without_accounting_the_record_comes_from_scontrol(slurm: dict[str, object]) -> None:
    def die(x: int) -> int:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
        return x

    config = dict(slurm, retries=0)
    assert sheepdog.map(die, [1], config, verbose=False) == [None]
    with Store(str(config["dbfile"])) as store:
        row = store.requests()[-1]
    job_ref = f"{row.job_ids}.1"
    with Session(Settings.from_config(config)) as session:
        real = Slurm(lambda: session.remote)
        deadline = time.monotonic() + 20
        while not (said := real.accounting(row.job_ids, "1")).startswith("sacct: "):
            # before slurmdbd has the record, the controller's word stands in for it
            assert said.startswith("scontrol (not in sacct yet): FAILED, exit code 0:9"), said
            assert time.monotonic() < deadline, "slurmdbd never got the task's record"
            time.sleep(0.5)
        assert said.startswith("sacct: FAILED, exit code 0:9"), said
        fallback = Slurm(lambda: _NoAccounting(session.remote))  # type: ignore[arg-type,return-value]
        said = fallback.accounting(*job_ref.split("."))
    assert said.startswith("scontrol (no Slurm accounting): FAILED, exit code 0:9"), said
