"""The process that runs a local array job (started by ``LocalScheduler.submit``).

``python -m sheepdog.submitter.schedulers.local_runner
--detach JOB_FILE TASKS_FILE WORKERS PYTHON LOG WORKER``

WORKER is ``-m`` when PYTHON has sheepdog (``PYTHON -m sheepdog.worker_bootstrap``),
else the path of the worker zipapp (``PYTHON WORKER JOB_FILE``).

With ``--detach`` it prints the job id of a daemon that does the work and
exits at once, so the runner belongs to no one's process tree (its process
group id is its pid, for ``cancel``) and its output goes to LOG.

It runs the tasks listed in TASKS_FILE (a JSON list of indices) that still
have no outcome, at most WORKERS at a time; then it takes the tasks waiting
for a retry, until none is left. In worker mode (the job file says so)
TASKS_FILE lists the pilots' array indices instead: it starts them all, and a
pilot that dies has the tasks it held recorded as lost (they go back to the
queue for the others) and is replaced. A worker that exits without an outcome
(killed, crashed, could not start) has its attempt recorded as lost, with the
exit status and the tail of its output: it is retried if attempts are left,
else final. The runner speaks to the broker as the workers do, with the
request's own credentials.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sheepdog.broker import keys, scripts
from sheepdog.broker.tasks import Claim, TaskChannel
from sheepdog.errors import BrokerError
from sheepdog.submitter.schedulers.local import job_id_for
from sheepdog.worker_bootstrap.capture import tail
from sheepdog.worker_bootstrap.environment import JOB_ID_VARS, TASK_INDEX_VARS, JobFile
from sheepdog.worker_bootstrap.link import BrokerLink, LoginRefused

#: Seconds between the runner's looks at its workers' claims (and at retries).
CHECK_INTERVAL = 1.0


@dataclass
class Running:
    index: int
    proc: subprocess.Popen[bytes]
    output: IO[bytes]
    attempt: int = 0  # the attempt it was seen holding, once it claimed its task


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class LocalRunner:
    def __init__(self, job_file: Path, indices: list[int], workers: int, python: str,
                 worker: str = "-m") -> None:
        self.job_file = job_file
        self.worker = ["-m", "sheepdog.worker_bootstrap"] if worker == "-m" else [worker]
        self.job = JobFile.load(job_file)
        self.indices = indices
        self.workers = workers
        self.python = python
        self.link = BrokerLink(self.job.broker_url, self.job.broker_patience)
        self.key = bytes.fromhex(self.job.key)
        self.host = socket.gethostname()
        self.pilots = self.job.mode == "workers"
        self._listed = iter(indices) if self.pilots else self._listed_tasks()
        self._retries: collections.deque[int] = collections.deque()
        self._replacements: list[int] = []  # array indices of pilots that replace dead ones
        self._last_pilot = max(indices, default=0)
        self._seen: dict[int, dict[int, int]] = {}  # pilot pid -> tasks seen held: attempt
        self._fenced: set[int] = set()  # pilots killed because their tasks were taken away

    def _next_pilot(self) -> int:
        self._last_pilot += 1
        return self._last_pilot

    def _start(self, index: int) -> Running | None:
        env = dict(os.environ, **{TASK_INDEX_VARS["local"]: str(index),
                                  JOB_ID_VARS["local"]: str(os.getpid())})
        output = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _finished
        command = [self.python, *self.worker, str(self.job_file)]
        try:
            proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )
        except OSError as exc:
            output.close()
            self._lost(index, None, f"cannot start the worker with {self.python!r}: {exc}."
                       " Check the 'shell' config key.", "")
            return None
        return Running(index, proc, output)

    def _lost_pilot(self, run: Running) -> int:
        """A pilot died: record every task it held as lost; how many."""
        said = tail(run.output)
        why = f"worker process {run.proc.pid} {exit_reason(run.proc.returncode)}"
        try:
            claims = self._claims(refused_ends=True)
        except LoginRefused:  # the request is over (or the broker forgot its user, and
            # the leases of what it held run out): nothing left to record here
            print(f"{why}; the broker refused the request's user; its last words:\n{said}",
                  file=sys.stderr, flush=True)
            return 0
        held = [(index, claim) for index, claim in claims.items()
                if claim.holder != "-" and claim.pid == str(run.proc.pid)
                and claim.host == self.host]
        if not held:
            print(f"{why} holding no task; its last words:\n{said}", file=sys.stderr, flush=True)
        for index, claim in held:
            fields: dict[str, str | bytes] = {
                "error": f"{why} without an outcome for this task (it ran it, or held it"
                         " in its batch)",
                "stderr": said, "host": self.host, "pid": str(run.proc.pid),
                "job": claim.job, "started": f"{claim.started:.6f}"}
            self.link.call(f"recording task {index} as lost", self._record_lost(
                index, claim, fields))
        return len(held)

    def _record_lost(self, index: int, claim: Claim, fields: dict[str, str | bytes]
                     ) -> Callable[[TaskChannel], int]:
        rid, token = self.job.request_id, self.job.token
        return lambda ch: ch.record(rid, token, index, key=self.key, holder=claim.holder,
                                    attempt=claim.attempt, status="lost", cause="",
                                    fields=fields)

    def _lost(self, index: int, pid: int | None, reason: str, output: str) -> None:
        """Record the attempt of ``index`` that worker ``pid`` was running as lost."""
        rid, token = self.job.request_id, self.job.token
        claim = self._claim(index)
        if claim is not None and pid is not None and claim.pid == str(pid):
            if claim.holder == "-":
                return  # it claimed its task, and that attempt was declared lost already
            holder, attempt = claim.holder, claim.attempt
        elif claim is not None and claim.holder != "-":
            return  # another worker holds it: not ours to judge
        else:  # the worker died before it claimed the task: this was its next attempt
            holder, attempt = "-", (claim.attempt if claim else 0) + 1
        fields: dict[str, str | bytes] = {
            "error": reason, "stderr": output, "host": self.host, "pid": str(pid or ""),
            "job": f"{os.getpid()}.{index}"}
        self.link.call(f"recording task {index} as lost", lambda ch: ch.record(
            rid, token, index, key=self.key, holder=holder, attempt=attempt, status="lost",
            cause="", fields=fields))

    def _finished(self, run: Running) -> None:
        code = run.proc.returncode
        if self.pilots and code != 0:
            lost = self._lost_pilot(run)
            if lost or run.proc.pid in self._fenced:  # its tasks wait in the queue
                self._replacements.append(self._next_pilot())
            run.output.close()
            return
        said = tail(run.output)
        run.output.close()
        if code == 0:
            return
        hint = ""
        if "No module named" in said:
            hint = f" Is sheepdog installed for {self.python}? (the 'shell' config key)"
        reason = (
            f"worker process for task {run.index} {exit_reason(code)} without an outcome.{hint}"
        )
        self._lost(run.index, run.proc.pid, reason, said)

    def _claims(self, *, patience: float | None = None, refused_ends: bool = False
                ) -> dict[int, Claim]:
        """Every claim of the request (tasks running or waiting for a retry)."""
        rid = self.job.request_id
        flat = self.link.call("reading claims", lambda ch: ch.conn.execute_command(
            "HGETALL", keys.claims(rid)), patience=patience, refused_ends=refused_ends)
        return {int(flat[i]): Claim.parse(flat[i + 1].decode()) for i in range(0, len(flat), 2)}

    def _claim(self, index: int, patience: float | None = None) -> Claim | None:
        rid = self.job.request_id
        return self.link.call("reading a claim", lambda ch: ch.claim_of(rid, index),
                              patience=patience)

    def _listed_tasks(self) -> Iterator[int]:
        """The tasks of TASKS_FILE that have no outcome yet."""
        rid = self.job.request_id
        pending = {int(i) for i in self.link.call(
            "reading the tasks", lambda ch: ch.conn.execute_command("HKEYS", keys.tasks(rid)))}
        yield from (i for i in self.indices if i in pending)

    def _next(self) -> int | None:
        """The next task to start: a listed one, else one waiting for a retry, else None."""
        index = next(self._listed, None)
        if self.pilots:  # pilots take retries from the queue themselves
            return index if index is not None else (
                self._replacements.pop() if self._replacements else None)
        if index is None and not self._retries:
            self._retries.extend(self._take_retries())
        if index is None and self._retries:
            index = self._retries.popleft()
        return index

    def _take_retries(self) -> list[int]:
        """Tasks waiting for a retry, now this runner's. Asked once, not waited for: with
        the broker gone, the waiting side starts a new runner for retries it finds later."""
        rid, token = self.job.request_id, self.job.token
        try:
            flat = self.link.call("taking retries", lambda ch: ch.eval_script(
                scripts.TAKE_RETRIES, rid, [token]), patience=0)
        except BrokerError:
            return []
        return sorted(int(flat[i]) for i in range(0, len(flat), 2))

    def run(self) -> None:
        running: dict[int, Running] = {}
        wake = self._wake_on_child_exit()
        next_check = time.monotonic() + CHECK_INTERVAL
        while True:
            while len(running) < self.workers:  # every wake-up, so retries start as they come
                index = self._next()
                if index is None:
                    break
                run = self._start(index)
                if run is not None:
                    running[run.proc.pid] = run
            if not running:
                return
            select.select([wake], [], [], CHECK_INTERVAL)
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 512)
            self._reap(running)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + CHECK_INTERVAL
                if self.pilots:
                    self._stop_fenced_pilots(running)
                else:
                    self._stop_fenced(running)

    @staticmethod
    def _wake_on_child_exit() -> int:
        """A pipe that becomes readable when a worker exits (SIGCHLD)."""
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd is written
        return read

    def _reap(self, running: dict[int, Running]) -> None:
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            run = running.pop(pid, None)
            if run is not None:
                run.proc.returncode = os.waitstatus_to_exitcode(status)
                self._finished(run)

    def _stop_fenced(self, running: dict[int, Running]) -> None:
        """Kill workers whose attempt was declared lost (hung past their lease).

        Their outcome can no longer be recorded, and they hold a slot the
        retry needs.
        """
        for run in list(running.values()):
            try:  # a look now and then: not worth waiting for (the request may be over)
                claim = self._claim(run.index, patience=0)
            except BrokerError:
                return
            if claim is not None and claim.holder != "-" and claim.pid == str(run.proc.pid):
                run.attempt = claim.attempt  # it holds its task
            elif run.attempt:  # it held it once, and no longer does
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run.proc.pid, signal.SIGKILL)


    def _stop_fenced_pilots(self, running: dict[int, Running]) -> None:
        """Kill pilots that hold a task whose attempt was declared lost (they hung past
        its lease): its retry needs their slot. A replacement takes the slot."""
        try:  # a look now and then: not worth waiting for (the request may be over)
            claims = self._claims(patience=0)
        except BrokerError:
            return
        for pid in list(running):
            seen = self._seen.get(pid, {})
            for index, attempt in seen.items():
                claim = claims.get(index)
                taken = claim is not None and (claim.holder == "-" or (
                    claim.attempt > attempt and claim.pid != str(pid)))
                if taken and pid not in self._fenced:
                    self._fenced.add(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self._seen[pid] = {i: c.attempt for i, c in claims.items()
                               if c.holder != "-" and c.pid == str(pid) and c.host == self.host}


def _detach(log_file: str) -> None:
    """Double fork: the caller gets the daemon's job id on stdout and returns at once."""
    if os.fork():
        os._exit(0)  # first child: its exit orphans the daemon to init
    os.setsid()
    pid = os.fork()
    if pid:
        print(job_id_for(pid), flush=True)
        os._exit(0)
    os.setpgid(0, 0)  # its own process group, which cancel kills with every worker in it
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--detach":
        job_file, tasks_file, workers, python, log, worker = args[1:]
        _detach(log)
    else:
        job_file, tasks_file, workers, python, worker = args
    indices = json.loads(Path(tasks_file).read_text())
    runner = LocalRunner(Path(job_file), indices, int(workers), python, worker)
    try:
        runner.run()
    except BrokerError as exc:  # gone for longer than the patience: the supervisor takes over
        print(f"sheepdog local runner: giving up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        runner.link.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
