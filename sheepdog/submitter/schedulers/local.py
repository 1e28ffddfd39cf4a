"""The local scheduler: the array runs on this machine, like a one-node cluster.

``submit`` starts ``local_runner`` as a daemon (double fork, its own session),
which plays the part of Grid Engine's execution daemon: it starts one worker
process per task, at most ``local_workers`` at a time, each exactly as a node
would (``python -m sheepdog.worker_bootstrap JOB_FILE`` with the task index in
the scheduler's environment variable). The runner outlives the submitting
process, so ``map_async`` may return and Python exit.

A job id is ``host:pid:start``, where ``start`` is the boot id and the
process's start time: a pid reused after the runner died (or after a reboot)
is never taken for the runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from sheepdog.errors import SubmitError
from sheepdog.submitter import paths, zipapp
from sheepdog.submitter.config import Settings
from sheepdog.submitter.interpreter import part_of_interpreter, process_start
from sheepdog.submitter.remote import LocalRemote
from sheepdog.submitter.schedulers.base import ArrayJob, JobState

#: The job file every worker of a local request reads (one per request).
JOB_FILE = "job.json"


def job_id_for(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{process_start(pid) or '-'}"


def _parse(job_id: str) -> tuple[str, int, str]:
    parts = job_id.split(":")
    if len(parts) == 2:  # written by an earlier sheepdog
        parts.append("-")
    host, pid, start = parts[-3:]
    if not pid.isdigit():
        raise SubmitError(f"{job_id!r} is not a local job id")
    return host, int(pid), start


def _alive(pid: int, start: str) -> bool:
    if start != "-" and Path("/proc").is_dir():
        return process_start(pid) == start
    try:  # no /proc (macOS): signal 0 is all we can tell
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalScheduler:
    name = "local"
    job_end_kills_tasks = False  # workers outlive a runner killed on its own
    takes_retries = True  # a running runner takes the request's retries

    def prepare(self, settings: Settings) -> None:
        pass  # a wrong 'shell' shows as lost tasks with the reason (it cannot be probed cheaper)

    def submit(self, job: ArrayJob) -> list[str]:
        job_file = job.local_dir / JOB_FILE
        # The same for every job of the request: the runner gives each worker its
        # task's own index (or a pilot number), so the file lists no tasks. It is
        # written again each time: a resubmit may change the mode.
        job.job_file.replace(indices=None).dump(job_file)
        tasks_file = job.local_dir / f"tasks-{job.label}.json"
        indices = job.job_file.indices or list(range(1, job.size + 1))
        tasks_file.write_text(json.dumps(indices))
        at_once = job.size if job.job_file.mode == "workers" else job.settings.local_slots
        command = [
            sys.executable, "-m", "sheepdog.submitter.schedulers.local_runner", "--detach",
            str(job_file), str(tasks_file), str(at_once),
            job.settings.worker_python, str(job.local_dir / "runner.log"),
            self._worker(job.settings.worker_python),
        ]
        # Like multiprocessing's spawn: workers see the submitter's cwd and sys.path,
        # so functions from the user's own modules unpickle there. Another
        # interpreter gets only the user's own directories, not our stdlib.
        path = [p for p in sys.path if p]
        if command[-1] != "-m":
            path = [p for p in path if not part_of_interpreter(p)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        try:
            proc = subprocess.run(
                command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=60, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SubmitError(f"cannot start the local runner: {exc}") from exc
        if proc.returncode != 0 or not proc.stdout.split():
            raise SubmitError(
                f"the local runner did not start (exit status {proc.returncode}):"
                f" {proc.stderr.strip()[-2000:]}"
            )
        return [proc.stdout.split()[0]]

    @staticmethod
    def _worker(python: str) -> str:
        """How workers start: '-m' (this interpreter has sheepdog), or the zipapp for another.

        Another interpreter ('shell') may not have sheepdog at all: it gets the
        same one-file worker a cluster node gets.
        """
        if os.path.realpath(python) == os.path.realpath(sys.executable):
            return "-m"
        return zipapp.install(LocalRemote(), str(paths.home()))

    def cancel(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            host, pid, start = _parse(job_id)
            if host == socket.gethostname() and _alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)  # the runner and its workers

    def cancel_queued(self, job_ids: list[str]) -> None:
        self.cancel(job_ids)  # the runner starts no worker after the queue is empty anyway

    def last_words(self, settings: Settings, name: str, job_ref: str) -> str:
        """The end of the runner's log (a dead worker's output is recorded with its task)."""
        log = paths.job_dir(name) / "runner.log"
        try:
            lines = log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-5:]) if lines else ""

    def forget(self, settings: Settings, name: str) -> None:
        (paths.job_dir(name) / JOB_FILE).unlink(missing_ok=True)

    def state(self, job_ids: list[str]) -> JobState:
        active: set[str] = set()
        ended: set[str] = set()
        for job_id in job_ids:
            host, pid, start = _parse(job_id)
            if host != socket.gethostname():
                return JobState(frozenset(active), frozenset(ended),
                                unknown=f"local job {job_id} runs on another machine")
            (active if _alive(pid, start) else ended).add(job_id)
        return JobState(frozenset(active), frozenset(ended))
