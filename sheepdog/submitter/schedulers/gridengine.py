"""Grid Engine: one array job per request, submitted with qsub on the head node.

The job script is a Python script (run by ``shell``, passed as ``-S``): its
``#$`` lines carry ``-S``, ``-t 1-N``, ``-N`` and one line per ``ge_opts``
entry; its body starts worker_bootstrap, from the zipapp or from an installed
sheepdog. Paths never go into ``#$`` lines (Grid Engine's quoting there is
not to be relied on): they are Python literals in the body, and shell-quoted
arguments of qsub (``-o``, ``-e``, ``-wd``) unless ``ge_opts`` sets those.

A retry runs some tasks only. qsub takes one ``-t n-m:s`` range, so a retry
job is ``-t 1-K`` over a job file that lists the K tasks (task-list
indirection): array task i runs ``indices[i - 1]``.

What Grid Engine says, and what sheepdog takes from it (checked on SoGE 8.1.9):
``qstat -j ID`` exits 0 while the job is known; exits 1 with "Following jobs
do not exist" once it is over - the only answer taken as "ended"; and exits 1
with "unable to contact/send message to qmaster" (or anything else) when the
qmaster is down: that is "cannot tell", and the request waits.
"""

from __future__ import annotations

import contextlib
import math
import posixpath
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

from sheepdog.errors import ConfigError, SubmitError
from sheepdog.submitter import zipapp
from sheepdog.submitter.config import Settings
from sheepdog.submitter.remote import Remote, RemoteUnavailable, check, run_checked
from sheepdog.submitter.schedulers.base import ArrayJob, JobState

SUBMIT_COMMAND = "qsub"
CANCEL_COMMAND = "qdel"
#: Grid Engine's default max_aj_tasks, used when qconf cannot tell.
DEFAULT_MAX_ARRAY = 75000
#: Options sheepdog always sets itself; refused in ge_opts.
FORCED = {"-t": "the array range is always 1-N", "-S": "set the 'shell' config key instead"}
#: Options sheepdog sets unless ge_opts does.
DEFAULTED = ("-o", "-e", "-wd", "-cwd", "-N", "-j")
#: Resources whose value becomes the worker's address-space limit (RLIMIT_AS).
MEMORY_RESOURCES = ("mem_grab",)
#: Memory resources multiplied for a retry with more memory (retry_memory_factor).
SCALED_RESOURCES = ("mem_grab", "h_vmem", "s_vmem", "h_rss", "s_rss", "mem_free",
                    "virtual_free")
#: What qstat says of a job that is over (finished or deleted).
GONE = "do not exist"
JOB_ID = re.compile(r"\d+")
JOB_REF = re.compile(r"(\d+)\.(\d+)")
_HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
_UNITS = {"": 1, "k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2, "g": 1000**3, "G": 1024**3,
          "t": 1000**4, "T": 1024**4}


@dataclass(frozen=True)
class JobScript:
    """Everything the job script says; ``render`` turns it into text."""

    shell: str
    first: int
    last: int
    name: str
    ge_opts: tuple[str, ...]
    job_file: str  # absolute path on the cluster
    zipapp: str | None  # absolute path of the worker zipapp; None: sheepdog is installed


def render(script: JobScript) -> str:
    lines = [
        f"#!{script.shell}",
        f"#$ -S {script.shell}",
        f"#$ -t {script.first}-{script.last}",
        f"#$ -N {script.name}",
        *(f"#$ {opt}" for opt in script.ge_opts),
        "# sheepdog array job: every task runs worker_bootstrap for its $SGE_TASK_ID.",
        "import os",
        "# Grid Engine starts the -S interpreter as a bare 'python', which hides a venv",
        "# and leaves sys.executable empty: the worker is started again, by full path.",
    ]
    if script.zipapp is not None:
        # The zipapp unpacks itself once and starts from there, bytecode cached.
        worker = [script.shell, script.zipapp, script.job_file]
    else:
        worker = [script.shell, "-m", "sheepdog.worker_bootstrap", script.job_file]
    lines += [f"os.execv({script.shell!r}, {worker!r})", ""]
    return "\n".join(lines)


def qsub_command(script_path: str, job_dir: str, ge_opts: tuple[str, ...]) -> str:
    """The qsub command line: -terse, and defaults for what ge_opts leaves unset."""
    given = {shlex.split(opt)[0] for opt in ge_opts if opt.strip()}
    args = [SUBMIT_COMMAND, "-terse"]
    if "-o" not in given:
        args += ["-o", job_dir + "/"]
    if not given & {"-e", "-j"}:
        args += ["-e", job_dir + "/"]
    if not given & {"-wd", "-cwd"}:
        args += ["-wd", job_dir]
    return " ".join(shlex.quote(a) for a in [*args, script_path])


def parse_job_id(stdout: str) -> str:
    """The job id in qsub -terse output ('123' or, for an array, '123.1-4:1')."""
    match = re.match(r"\s*(\d+)", stdout)
    if not match:
        raise SubmitError(f"qsub printed no job id: {stdout!r}")
    return match.group(1)


def check_ge_opts(ge_opts: tuple[str, ...], shell: str) -> None:
    if any(c.isspace() for c in shell):
        raise ConfigError(
            f"shell {shell!r} contains white space, which Grid Engine's -S cannot carry;"
            " use a path without spaces (a symlink will do)"
        )
    for opt in ge_opts:
        words = shlex.split(opt)
        if not words or not words[0].startswith("-"):
            raise ConfigError(f"ge_opts entry {opt!r} is not an option (e.g. '-l h_rt=1:00:00')")
        if words[0] in FORCED:
            raise ConfigError(f"ge_opts must not set {words[0]}: {FORCED[words[0]]}")


def parse_memory(value: str) -> int:
    """Bytes in a Grid Engine memory value: 2G, 512M, 1.5g, 1000."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)", value.strip())
    if not match:
        raise ConfigError(f"{value!r} is not a Grid Engine memory value like 2G or 512M")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def memory_limit(ge_opts: tuple[str, ...]) -> int | None:
    """The RLIMIT_AS for workers from ``-l mem_grab=...``, if any."""
    for opt in ge_opts:
        words = shlex.split(opt)
        if words[:1] != ["-l"]:
            continue
        for resource in ",".join(words[1:]).split(","):
            name, _, value = resource.partition("=")
            if name.strip() in MEMORY_RESOURCES:
                return parse_memory(value)
    return None


def scale_memory(ge_opts: tuple[str, ...], factor: float) -> tuple[str, ...]:
    """``ge_opts`` asking for ``factor`` times the memory, in whole MiB."""
    if factor == 1:
        return ge_opts
    scaled = []
    for opt in ge_opts:
        words = shlex.split(opt)
        if words[:1] != ["-l"]:
            scaled.append(opt)
            continue
        resources = []
        for resource in ",".join(words[1:]).split(","):
            name, eq, value = resource.partition("=")
            if eq and name.strip() in SCALED_RESOURCES:
                mib = math.ceil(parse_memory(value) * factor / 2**20)
                resource = f"{name.strip()}={mib}M"
            resources.append(resource)
        scaled.append("-l " + ",".join(resources))
    return tuple(scaled)


def chunks(n_tasks: int, size: int) -> list[tuple[int, int]]:
    """1-based index ranges of at most ``size`` tasks covering 1..n_tasks (0: no limit)."""
    size = size if size > 0 else n_tasks
    return [(start, min(start + size - 1, n_tasks)) for start in range(1, n_tasks + 1, size)]


def checked_job_ids(job_ids: list[str]) -> list[str]:
    """``job_ids`` if every one is a Grid Engine job number (they reach a shell)."""
    for job_id in job_ids:
        if not JOB_ID.fullmatch(job_id):
            raise SubmitError(f"{job_id!r} is not a Grid Engine job id; refusing to use it")
    return job_ids


class GridEngine:
    name = "gridengine"
    job_end_kills_tasks = True  # qdel or the end of a job kills its tasks' process trees
    takes_retries = False

    def __init__(self, remote: Callable[[], Remote]) -> None:
        self._remote = remote  # the session's: connected again if it broke
        self._zipapp_path: str | None = None

    @property
    def remote(self) -> Remote:
        return self._remote()

    def _absolute(self, path: str) -> str:
        return path if posixpath.isabs(path) else posixpath.join(self.remote.home(), path)

    def max_array(self) -> int:
        """Grid Engine's max_aj_tasks (0: no limit), or its default if qconf cannot tell."""
        result = self.remote.run("qconf -sconf")
        match = re.search(r"^max_aj_tasks\s+(\d+)", result.stdout, re.MULTILINE)
        return int(match.group(1)) if result.exit_status == 0 and match else DEFAULT_MAX_ARRAY

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
        check_ge_opts(settings.ge_opts, settings.worker_python)
        memory_limit(settings.ge_opts)  # a malformed mem_grab is refused here, not on a node
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

    def submit(self, job: ArrayJob) -> list[str]:
        settings = job.settings
        app = self._zipapp(settings)  # prepared already, unless this is a later process
        ge_opts = scale_memory(settings.ge_opts, job.memory_factor)
        job_dir = self._job_dir(settings, job.name)
        job_file = posixpath.join(job_dir, f"job-{job.label}.json")
        worker_job = job.job_file.replace(memory_limit=memory_limit(ge_opts))
        self.remote.put(job_file, worker_job.dumps().encode(), 0o600)
        job_ids: list[str] = []
        try:
            for part, (first, last) in enumerate(chunks(job.size, self.max_array()), 1):
                script = render(JobScript(settings.worker_python, first, last,
                                          f"sheepdog-{job.request_id}", ge_opts, job_file, app))
                script_path = posixpath.join(job_dir, f"job-{job.label}-{part}.py")
                self.remote.put(script_path, script.encode(), 0o600)
                stdout = run_checked(self.remote, qsub_command(script_path, job_dir, ge_opts))
                job_ids.append(parse_job_id(stdout))
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                self.cancel(job_ids)
                self.remote.remove(job_file)  # it holds the broker password
            raise
        return job_ids

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            result = self.remote.run(f"{CANCEL_COMMAND} {' '.join(checked_job_ids(job_ids))}")
            if result.exit_status != 0 and GONE not in result.stderr + result.stdout:
                check(self.remote, result)

    def _job_dir(self, settings: Settings, name: str) -> str:
        return posixpath.join(self._absolute(settings.ssh_dir), "jobs", name)

    def _accounting(self, job_id: str, index: str) -> str:
        """Grid Engine's record of how array task ``index`` of ``job_id`` ended, if it ran."""
        result = self.remote.run(f"qacct -j {job_id} -t {index}")
        fields = dict(
            line.split(None, 1) for line in result.stdout.splitlines() if len(line.split()) > 1
        )
        if result.exit_status == 0 and "exit_status" in fields:
            return (f"qacct: exit_status {fields['exit_status'].strip()},"
                    f" failed {fields.get('failed', '?').strip()}")
        return ""

    def last_words(self, settings: Settings, name: str, job_ref: str) -> str:
        match = JOB_REF.fullmatch(job_ref)
        if not match:
            return ""
        job_id, index = match.groups()
        job_dir = shlex.quote(self._job_dir(settings, name))
        stderr = self.remote.run(
            f"tail -q -n 5 {job_dir}/*.e{job_id}.{index} 2>/dev/null"
        ).stdout.strip()
        accounting = self._accounting(job_id, index)
        return "\n".join(part for part in (accounting, stderr) if part)

    def forget(self, settings: Settings, name: str) -> None:
        job_dir = self._job_dir(settings, name)
        for file_name in self.remote.list(job_dir):
            if file_name.startswith("job-") and file_name.endswith(".json"):
                self.remote.remove(posixpath.join(job_dir, file_name))

    def state(self, job_ids: list[str]) -> JobState:
        active: set[str] = set()
        ended: set[str] = set()
        unknown = waiting = None
        for job_id in checked_job_ids(job_ids):
            try:
                result = self.remote.run(f"qstat -j {job_id}")
            except RemoteUnavailable as exc:
                return JobState(frozenset(active), frozenset(ended), unknown=str(exc))
            said = (result.stderr.strip() or result.stdout.strip())[-300:]
            if result.exit_status != 0:
                if GONE in result.stderr + result.stdout:
                    ended.add(job_id)
                else:
                    unknown = f"qstat -j {job_id} on {self.remote.where}: {said}"
                continue
            active.add(job_id)
            reasons = re.findall(r"^error reason\s+[\d,-]*:?\s*(.+)$", result.stdout, re.MULTILINE)
            if reasons:
                return JobState(frozenset(active), frozenset(ended), unknown, problem=(
                    f"Grid Engine job {job_id} is in error state: {reasons[0]}"))
            info = re.search(r"^scheduling info:\s*(.+)$", result.stdout, re.MULTILINE)
            if info and not re.search(r"^usage\s", result.stdout, re.MULTILINE):
                waiting = f"Grid Engine job {job_id} is waiting: {info.group(1).strip()}"
        return JobState(frozenset(active), frozenset(ended), unknown, waiting=waiting)
