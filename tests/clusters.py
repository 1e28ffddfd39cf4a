"""The test cluster seen through one scheduler: what differs between Grid Engine and Slurm.

``tests/test_clusters.py`` runs unchanged against both; each difference it
needs (how to ask for memory, what a refused option looks like, how to ask the
scheduler about a job behind sheepdog's back) is one attribute or method here.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

import pytest

from .conftest import testbed_ssh


def need_slurm(testbed: dict[str, str]) -> None:
    """Skip without the testbed's Slurm - except under CI, which must have it."""
    if testbed.get("SHEEPDOG_TESTBED_SLURM") != "1":
        if os.environ.get("CI"):
            pytest.fail("the testbed has no Slurm: CI must bring it up (testbed/up)")
        pytest.skip("the testbed has no Slurm")


@dataclass
class Cluster:
    name: str  # the 'scheduler' config value
    config: dict[str, object]
    testbed: dict[str, str]

    def ssh(self, command: str) -> str:
        return testbed_ssh(self.testbed, command).stdout

    @property
    def options_key(self) -> str:
        return {"gridengine": "ge_opts", "slurm": "slurm_opts"}[self.name]

    def memory(self, size: str) -> dict[str, object]:
        """Config asking for ``size`` of memory per task (the worker's limit, too)."""
        if self.name == "gridengine":
            return {"ge_opts": [f"-l mem_grab={size}"]}
        return {"slurm_opts": [f"--mem={size}"]}

    @property
    def bad_option(self) -> dict[str, object]:
        if self.name == "gridengine":
            return {"ge_opts": ["-l foo=1"]}
        return {"slurm_opts": ["--partition=nosuchpartition"]}

    @property
    def refused(self) -> str:
        """What the submit error says of ``bad_option``: the scheduler's words, quoted."""
        if self.name == "gridengine":
            return r'qsub .* exited with status 1: .*unknown resource "foo"'
        return r"sbatch .* exited with status 1: .*invalid partition specified: nosuchpartition"

    @property
    def killed(self) -> str:
        """How the scheduler's record of a task killed by SIGKILL reads."""
        if self.name == "gridengine":
            return r"qacct: exit_status 137"
        # slurmdbd may not have the record yet when the loss is recorded
        return r"(sacct|scontrol \(not in sacct yet\)): \w+, exit code 0:9"

    def running(self, job_id: str) -> bool:
        """Whether some task of ``job_id`` runs, as the scheduler says."""
        if self.name == "gridengine":
            return "usage" in self.ssh(f"qstat -j {job_id}")
        return "RUNNING" in self.ssh(f"squeue -h -j {job_id} -o %T")

    def known(self, job_id: str) -> bool:
        """Whether the scheduler still lists ``job_id`` as queued or running."""
        if self.name == "gridengine":
            return testbed_ssh(self.testbed, f"qstat -j {job_id}").returncode == 0
        return bool(self.ssh(f"squeue -h -j {job_id} -o %i 2>/dev/null").strip())

    def gone_within(self, job_id: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.known(job_id):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def delete(self, job_id: str) -> None:
        command = "qdel" if self.name == "gridengine" else "scancel"
        result = testbed_ssh(self.testbed, f"{command} {job_id}")
        assert result.returncode == 0, result.stderr

    def memory_asked(self, rid: int, job_id: str) -> str:
        """The memory a job asked the scheduler for, as the scheduler has it."""
        if self.name == "gridengine":
            script = self.ssh(f"cat ~/.sheepdog/jobs/*-{rid}/job-retry-*-1.py")
            found = re.search(r"^#\$ -l mem_grab=(\S+)", script, re.MULTILINE)
            return found.group(1) if found else ""
        deadline = time.monotonic() + 10
        while True:  # accounting lands a moment after the job ('16?' until it has)
            said = self.ssh(f"sacct -n -X -P -j {job_id} -o ReqMem").split()
            if (said and not said[0].endswith("?")) or time.monotonic() > deadline:
                return said[0] if said else ""
            time.sleep(0.5)
