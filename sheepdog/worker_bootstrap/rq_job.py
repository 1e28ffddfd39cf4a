"""What an rq worker runs for one array task of a sheepdog request.

The submitter enqueues ``run`` by name (``sheepdog.worker_bootstrap.rq_job.run``),
so an rq worker needs sheepdog installed, as it needs any job's code. ``run``
starts the same worker a cluster node starts (``python -m
sheepdog.worker_bootstrap JOB_FILE``), as a child process, with the task index
in ``SHEEPDOG_TASK_ID``: outcomes go to the request's broker and dbfile through
the same recording path, and rq's own result is only the worker's exit status.

A child process, not a call in the rq worker: the task gets its own memory
limit, signal handling and interpreter state, and rq's stop-job command kills
it with the work horse's process group.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile


class WorkerFailed(Exception):
    """The sheepdog worker could not record the task's outcome (see its stderr)."""


def run(job_file: str, array_index: int, job_id: str) -> int:
    """Run array task ``array_index`` of the job whose job file text is ``job_file``."""
    with tempfile.TemporaryDirectory(prefix="sheepdog-rq-") as directory:
        path = os.path.join(directory, "job.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds secrets
        with os.fdopen(fd, "w") as f:
            f.write(job_file)
        env = dict(os.environ, SHEEPDOG_TASK_ID=str(array_index), SHEEPDOG_JOB_ID=job_id)
        status = subprocess.call(
            [sys.executable, "-m", "sheepdog.worker_bootstrap", path],
            env=env, stdin=subprocess.DEVNULL,
        )
    if status != 0:
        raise WorkerFailed(
            f"sheepdog worker for array task {array_index} of {job_id} exited with status"
            f" {status}; its stderr is in this rq worker's log"
        )
    return status
