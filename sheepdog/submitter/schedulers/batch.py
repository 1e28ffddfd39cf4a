"""What Grid Engine and Slurm share: a head node reached by ``Remote``, a job
directory there, the worker shipped as a zipapp, and arrays split at the
scheduler's limit.

An adapter (``gridengine.py``, ``slurm.py``) says only what is its own: how its
options are checked and read for memory, the job script and the submit command,
and how to ask for state, cancel and accounting. ``BatchScheduler.submit`` does
the rest the same way for both:

- the job file is written once per job (mode 0600: it holds the broker
  password). An array longer than the scheduler takes becomes several jobs,
  each ``1-K`` over its own job file listing its K tasks (task-list
  indirection, as for a retry), so no array index ever passes the limit;
- a job refused half-way cancels the parts already queued and removes the
  job files before the error is raised.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import shlex
import sys
from collections.abc import Callable

from sheepdog.errors import SubmitError
from sheepdog.submitter import zipapp
from sheepdog.submitter.config import Settings
from sheepdog.submitter.remote import Remote, check
from sheepdog.submitter.schedulers.base import ArrayJob, JobState
from sheepdog.worker_bootstrap.environment import JobFile

_HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
#: A job id of both schedulers: a number (ids reach a shell, so nothing else passes).
JOB_ID = re.compile(r"\d+")
#: A task's job reference, '<job id>.<array index>' (environment.job_reference).
JOB_REF = re.compile(r"(\d+)\.(\d+)")


def chunks(n_tasks: int, size: int) -> list[tuple[int, int]]:
    """1-based index ranges of at most ``size`` tasks covering 1..n_tasks (0: no limit)."""
    size = size if size > 0 else n_tasks
    return [(start, min(start + size - 1, n_tasks)) for start in range(1, n_tasks + 1, size)]


def part_file(job_file: JobFile, size: int, first: int, last: int) -> JobFile:
    """The job file of array part ``first..last`` of a ``size``-task job, as ``1-K``."""
    if (first, last) == (1, size) or job_file.mode == "workers":
        return job_file  # one part; or pilots, which take any task from the queue
    tasks = job_file.indices or list(range(1, size + 1))
    return job_file.replace(indices=tasks[first - 1:last])


class BatchScheduler:
    """The shared part of a head-node scheduler; subclasses fill in what follows."""

    name: str
    title: str  # how messages name it
    options_key: str  # the config key of its options: ge_opts, slurm_opts
    cancel_command: str  # cancels whole jobs by id: qdel, scancel
    gone: str  # what its commands say of a job that is over
    job_end_kills_tasks = True  # ending a job kills its tasks' process trees
    takes_retries = False

    def __init__(self, remote: Callable[[], Remote]) -> None:
        self._remote = remote  # the session's: connected again if it broke
        self._zipapp_path: str | None = None
        self._max_array: int | None = None

    # -- hooks ------------------------------------------------------------------

    def check_options(self, settings: Settings) -> None:
        """Refuse options sheepdog sets itself, or that cannot be passed; ConfigError."""
        raise NotImplementedError

    @staticmethod
    def memory_limit(options: tuple[str, ...]) -> int | None:
        """Bytes of address space each task gets (RLIMIT_AS), from the options."""
        raise NotImplementedError

    @staticmethod
    def scale_memory(options: tuple[str, ...], factor: float) -> tuple[str, ...]:
        """``options`` asking for ``factor`` times the memory (a retry with more)."""
        raise NotImplementedError

    def array_limit(self) -> int:
        """Most array tasks one job may have here (0: no limit)."""
        raise NotImplementedError

    def submit_part(self, job: ArrayJob, options: tuple[str, ...], job_dir: str,
                    job_file: str, part: int, size: int, app: str | None) -> str:
        """Write the job script of one part (array ``1-size``), submit it; its job id."""
        raise NotImplementedError

    def cancel_queued(self, job_ids: list[str]) -> None:
        raise NotImplementedError

    def state(self, job_ids: list[str]) -> JobState:
        raise NotImplementedError

    def accounting(self, job_id: str, index: str) -> str:
        """The scheduler's record of how array task ``index`` of ``job_id`` ended, if any."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------

    def options(self, settings: Settings) -> tuple[str, ...]:
        """The user's options for this scheduler."""
        options: tuple[str, ...] = getattr(settings, self.options_key)
        return options

    def checked_job_ids(self, job_ids: list[str]) -> list[str]:
        """``job_ids`` if every one is a job number (they reach a shell)."""
        for job_id in job_ids:
            if not JOB_ID.fullmatch(job_id):
                raise SubmitError(f"{job_id!r} is not a {self.title} job id; refusing to use it")
        return job_ids

    def cancel(self, job_ids: list[str], *flags: str) -> None:
        """``cancel_command [flags] JOB...``; a job already over is not an error."""
        if job_ids:
            words = [self.cancel_command, *flags, *self.checked_job_ids(job_ids)]
            result = self.remote.run(" ".join(words))
            if result.exit_status != 0 and self.gone not in result.stderr + result.stdout:
                check(self.remote, result)

    @property
    def remote(self) -> Remote:
        return self._remote()

    def _absolute(self, path: str) -> str:
        return path if posixpath.isabs(path) else posixpath.join(self.remote.home(), path)

    def job_dir(self, settings: Settings, name: str) -> str:
        return posixpath.join(self._absolute(settings.ssh_dir), "jobs", name)

    def _probe(self, settings: Settings) -> None:
        """Run the worker's Python on the head node: it exists, and its version matches."""
        code = 'import sys; print("%d.%d" % sys.version_info[:2])'
        if not settings.ship_worker:
            code += "; import sheepdog.worker_bootstrap.run"
        result = self.remote.run(f"{shlex.quote(settings.worker_python)} -c {shlex.quote(code)}")
        needs = " with sheepdog installed" if not settings.ship_worker else ""
        if result.exit_status != 0:
            said = (result.stderr.strip() or result.stdout.strip())[-500:]
            raise SubmitError(
                f"the worker Python {settings.worker_python!r} does not run on"
                f" {self.remote.where} (exit status {result.exit_status}: {said}). Set the"
                f" 'shell' config key to a Python {_HERE} interpreter{needs} that the nodes have."
            )
        there = result.stdout.strip()
        if there != _HERE:
            raise SubmitError(
                f"the worker Python {settings.worker_python!r} on {self.remote.where} is"
                f" Python {there}, but this is Python {_HERE}; functions travel pickled by"
                f" value and need the same minor version. Set 'shell' to a Python {_HERE}."
            )

    def prepare(self, settings: Settings) -> None:
        self.check_options(settings)
        self.memory_limit(self.options(settings))  # a malformed limit is refused here
        self._probe(settings)
        self._zipapp(settings)

    def _zipapp(self, settings: Settings) -> str | None:
        """The worker zipapp on the head node (uploaded if missing, once per session);
        None when the nodes have sheepdog installed."""
        if not settings.ship_worker:
            return None
        if self._zipapp_path is None:
            self._zipapp_path = zipapp.install(self.remote, self._absolute(settings.ssh_dir))
        return self._zipapp_path

    def max_array(self) -> int:
        """``array_limit``, asked once per session."""
        if self._max_array is None:
            self._max_array = self.array_limit()
        return self._max_array

    def submit(self, job: ArrayJob) -> list[str]:
        settings = job.settings
        app = self._zipapp(settings)  # prepared already, unless this is a later process
        options = self.scale_memory(self.options(settings), job.memory_factor)
        job_dir = self.job_dir(settings, job.name)
        worker_job = job.job_file.replace(memory_limit=self.memory_limit(options))
        parts = chunks(job.size, self.max_array())
        job_ids: list[str] = []
        written: list[str] = []
        try:
            for part, (first, last) in enumerate(parts, 1):
                suffix = "" if len(parts) == 1 else f"-{part}"
                job_file = posixpath.join(job_dir, f"job-{job.label}{suffix}.json")
                data = part_file(worker_job, job.size, first, last).dumps().encode()
                self.remote.put(job_file, data, 0o600)
                written.append(job_file)
                job_ids.append(self.submit_part(job, options, job_dir, job_file, part,
                                                last - first + 1, app))
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                self.cancel(job_ids)
                for path in written:  # they hold the broker password
                    self.remote.remove(path)
            raise
        return job_ids

    def last_words(self, settings: Settings, name: str, job_ref: str) -> str:
        ref = JOB_REF.fullmatch(job_ref)
        if ref is None:
            return ""
        job_id, index = ref.groups()
        job_dir = shlex.quote(self.job_dir(settings, name))
        stderr = self.remote.run(
            f"tail -q -n 5 {job_dir}/*.e{job_id}.{index} 2>/dev/null"
        ).stdout.strip()
        accounting = self.accounting(job_id, index)
        return "\n".join(part for part in (accounting, stderr) if part)

    def forget(self, settings: Settings, name: str) -> None:
        job_dir = self.job_dir(settings, name)
        for file_name in self.remote.list(job_dir):
            if file_name.startswith("job-") and file_name.endswith(".json"):
                self.remote.remove(posixpath.join(job_dir, file_name))
