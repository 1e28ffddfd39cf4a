"""Faults of a real Slurm controller under a running request (testbed/slurm)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

import sheepdog
from sheepdog.submitter.store import Store

from ..clusters import need_slurm
from ..conftest import testbed_ssh as _ssh
from .conftest import history, wait_for

SLURM = Path(__file__).resolve().parents[2] / "testbed" / "slurm"
#: squeue takes ~18 s to give up on a stopped slurmctld (MessageTimeout 10 s, and
#: retries); the wait says "unreachable" on the second failure in a row.
OUTAGE = 42.0


def slurm(command: str) -> None:
    subprocess.run([str(SLURM), command], check=True, timeout=120, capture_output=True)


def _sleep(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_slurmctld_down_mid_request_is_waited_out(
    config: dict[str, object], testbed: dict[str, str], capfd: pytest.CaptureFixture[str],
) -> None:
    """slurmctld stops while 4 tasks run and is back 42 s later: squeue cannot answer,
    which is "cannot tell", never "ended". Nothing is lost, retried or cancelled."""
    need_slurm(testbed)
    config = dict(config, scheduler="slurm")
    dbfile = str(config["dbfile"])
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(
        sheepdog.map(_sleep, [60.0] * 4, config, raise_errors=True)))
    thread.start()
    try:
        def running() -> bool:
            if not Path(dbfile).exists():
                return False
            with Store(dbfile) as store:
                rows = store.requests()
            job = rows[0].job_ids if rows else ""
            said = _ssh(testbed, f"squeue -h -j {job} -r -o %T").stdout if job else ""
            return said.split().count("RUNNING") == 4

        wait_for(running, 60, "4 tasks to run")
        try:
            slurm("ctld-stop")
            assert _ssh(testbed, "squeue").returncode != 0, "slurmctld still answers"
            time.sleep(OUTAGE)
            assert thread.is_alive(), f"map returned while slurmctld was down: {outcome}"
        finally:
            slurm("ctld-start")
        thread.join(120)
    finally:
        thread.join(1)
    assert outcome == [[60.0] * 4]
    err = capfd.readouterr().err
    assert "sheepdog: the slurm scheduler unreachable since" in err
    assert "sheepdog: the slurm scheduler reachable again after" in err
    with Store(dbfile) as store:
        rid = store.requests()[0].request_id
    assert history(dbfile, rid) == []  # nothing lost, nothing retried
