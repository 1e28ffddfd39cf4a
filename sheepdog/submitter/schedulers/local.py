"""The local scheduler: the array runs on this machine, like a one-node cluster.

``submit`` starts ``local_runner`` as a daemon (double fork, its own session),
which plays the part of Grid Engine's execution daemon: it starts one worker
process per array task, at most ``local_workers`` at a time, each exactly as a
node would (``python -m sheepdog.worker_bootstrap JOB_FILE`` with the task index
in the scheduler's environment variable). The runner outlives the submitting
process, so ``map_async`` may return and Python exit. Its job id is
``host:pid``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from sheepdog.errors import SubmitError
from sheepdog.submitter import paths
from sheepdog.submitter.config import Settings
from sheepdog.submitter.schedulers.base import ArrayJob, JobState


def _parse(job_id: str) -> tuple[str, int]:
    host, _, pid = job_id.rpartition(":")
    return host, int(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A dead runner stays a zombie until init reaps it, which can take seconds.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): signal 0 is all we can tell
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class LocalScheduler:
    name = "local"

    def prepare(self, settings: Settings) -> None:
        pass  # a wrong 'shell' shows as lost tasks with the reason (it cannot be probed cheaper)

    def submit(self, job: ArrayJob) -> list[str]:
        job_file = job.local_dir / "job.json"
        job.job_file.dump(job_file)
        command = [
            sys.executable, "-m", "sheepdog.submitter.schedulers.local_runner", "--detach",
            str(job_file), str(job.n_tasks), str(job.settings.workers),
            job.settings.worker_python, str(job.local_dir / "runner.log"),
        ]
        # Like multiprocessing's spawn: workers see the submitter's cwd and sys.path,
        # so functions from the user's own modules unpickle there.
        path = os.pathsep.join(p for p in sys.path if p)
        env = dict(os.environ, PYTHONPATH=path)
        try:
            proc = subprocess.run(
                command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=60, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SubmitError(f"cannot start the local runner: {exc}") from exc
        if proc.returncode != 0 or not proc.stdout.strip().isdigit():
            raise SubmitError(
                f"the local runner did not start (exit status {proc.returncode}):"
                f" {proc.stderr.strip()[-2000:]}"
            )
        return [f"{socket.gethostname()}:{int(proc.stdout)}"]

    def cancel(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            host, pid = _parse(job_id)
            if host == socket.gethostname():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)  # the runner and its workers

    def last_words(self, settings: Settings, name: str, job_ids: list[str], index: int) -> str:
        return ""  # the runner itself records a dead worker's output with its task

    def forget(self, settings: Settings, name: str) -> None:
        (paths.job_dir(name) / "job.json").unlink(missing_ok=True)

    def state(self, job_ids: list[str]) -> JobState:
        hosts_pids = [_parse(j) for j in job_ids]
        if any(host != socket.gethostname() for host, _ in hosts_pids):
            return JobState(None)
        return JobState(any(_pid_alive(pid) for _, pid in hosts_pids))
