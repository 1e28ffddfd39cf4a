"""The doctor's checks that every scheduler has, or every batch scheduler.

    config         the settings resolve
    broker         connects as ``map`` does; writes, reads back and deletes a key
    ssh            logs in to the head node, host key checked
    scheduler      its commands on the head node; a queue or partition that takes
                   jobs (listed by ``sites``)
    probe          one task through ``submit`` and ``results``
    job directory  create and delete a file where job files go

Each takes the ``State`` and returns its ok line's detail, or raises ``Failed``.
What one scheduler's site adds (complexes, partitions, rq) is in ``sites``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
import secrets
import sqlite3
import sys
import time

import redis

from sheepdog.broker import keys
from sheepdog.broker.client import Broker
from sheepdog.broker.urls import redact
from sheepdog.errors import (
    ConfigError,
    RemoteCommandError,
    ResultsTimeout,
    SheepdogError,
    SSHError,
    SubmitError,
)
from sheepdog.submitter import api, paths, profiles, results
from sheepdog.submitter.brokers import EMBEDDED, connect_for_submit
from sheepdog.submitter.config import SCHEDULER_TITLES, Settings
from sheepdog.submitter.doctor import sites
from sheepdog.submitter.doctor.state import Failed, State, split_advice
from sheepdog.submitter.remote import SSHRemote
from sheepdog.submitter.request import OpenRequest, job_name
from sheepdog.submitter.schedulers import job_id_list
from sheepdog.submitter.schedulers.batch import BatchScheduler
from sheepdog.submitter.session import Session
from sheepdog.submitter.store import Store
from sheepdog.submitter.submit import by_value, submit

#: The head-node commands each scheduler needs: sheepdog's, and the doctor's own.
COMMANDS = {"gridengine": ("qsub", "qstat", "qdel", "qconf"),
            "slurm": ("sbatch", "squeue", "scancel", "sinfo")}

#: The probe's fix when its failure brings none of its own.
PROBE_FIX = "see `sheepdog status ID` for the probe request (`sheepdog ls` lists it)"

_HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


# -- config and broker -----------------------------------------------------------


def check_config(state: State) -> str:
    try:
        settings = profiles.resolve(state.config)
    except ConfigError as exc:  # its first line: an unknown key's is followed by every key
        cause, fix = split_advice(str(exc).splitlines()[0])
        raise Failed(cause, fix or "correct it; `sheepdog config show` lists every setting"
                     " in effect and where it came from (docs/configuration.md)") from exc
    if state.dbfile is not None:
        settings = dataclasses.replace(settings, dbfile=state.dbfile)
    state.settings = settings
    state.session = Session(settings)
    profile = f"profile {state.config}: " if isinstance(state.config, str) else ""
    broker = redact(settings.broker_url) if settings.broker_url else "embedded"
    shell = "" if settings.scheduler_name == "rq" else f", shell {settings.worker_python}"
    return f"{profile}{_where(settings)}, broker {broker}{shell}, dbfile {settings.dbfile}"


def _where(settings: Settings) -> str:
    name = settings.scheduler_name
    if name == "rq":
        return f"rq queue {settings.rq_queue!r}"
    if name == "local":
        return "local scheduler (this machine)"
    if settings.host is None:
        return f"{SCHEDULER_TITLES[name]} on this machine"
    if settings.scheduler is None:
        return f"Grid Engine or Slurm on {settings.host} (asked below)"
    return f"{SCHEDULER_TITLES[name]} on {settings.host}"


def check_broker(state: State) -> str:
    settings, session = state.ready
    try:
        broker, location, _master, worker_url = connect_for_submit(session)
    except SSHError as exc:  # the broker is reached through the head node
        why = "ssh_tunnel is 'always'" if settings.ssh_tunnel == "always" else \
            "it cannot be reached directly from here"
        cause, fix = split_advice(str(exc))
        raise Failed(f"{redact(settings.broker_url or '')} is reached through an SSH tunnel"
                     f" ({why}), and SSH failed: {cause}", fix or "see the ssh check") from exc
    try:
        written = _round_trip(broker)
    except redis.ResponseError as exc:
        raise Failed(f"the broker refused a write: {exc}", "use a broker that takes writes (a"
                     " primary, not a replica; with memory left), as a user that may write"
                     f" {keys.PREFIX}:* keys") from exc
    finally:
        broker.close()
    where = f"embedded broker in {location[len(EMBEDDED):]}" \
        if location.startswith(EMBEDDED) else location
    via = " (through an SSH tunnel)" if broker.url != worker_url else ""
    return f"{where}{via}, broker id {broker.broker_id[:8]}: wrote, read back and deleted {written}"


def _round_trip(broker: Broker) -> str:
    """Write, read back and delete a test key; its name."""
    name, value = keys.doctor(secrets.token_hex(8)), secrets.token_hex(8).encode()
    got = broker.round_trip(name, value, keys.DOCTOR_TTL)
    if got != value:
        raise Failed(f"the broker gave back {got!r} for {name}, not what was written",
                     "check that broker_url names a Redis or Valkey server and no proxy that"
                     " changes values")
    return name


# -- the head node ---------------------------------------------------------------


def check_ssh(state: State) -> str:
    remote = state.remote
    assert isinstance(remote, SSHRemote)
    transport = remote.client.get_transport()
    assert transport is not None
    key = transport.get_remote_server_key()
    home = state.run("echo $HOME").strip()  # a command runs there, too
    target = remote.target
    return (f"{target.user}@{target.hostname}:{target.port}, host key {key.get_name()}"
            f" {key.fingerprint} known, home {home}")


def check_scheduler(state: State) -> str:
    settings, session = state.ready
    detected = settings.scheduler is None and settings.host is not None
    session.choose_scheduler()  # what it says on stderr, this check's line says too
    state.settings = settings = session.settings
    name = settings.scheduler_name
    every = [command for commands in COMMANDS.values() for command in commands]
    found = {path.rsplit("/", 1)[-1]
             for path in state.run(f"command -v {' '.join(every)} || true").split()}
    missing = [command for command in COMMANDS[name] if command not in found]
    if missing:
        raise Failed(f"{', '.join(missing)} not on the PATH of a non-interactive login on"
                     f" {state.remote.where}", "make the scheduler's commands reachable there"
                     " (e.g. source its settings in ~/.bashrc, before its interactive check),"
                     " or set 'scheduler' if this is another scheduler")
    queues = sites.gridengine_queues(state) if name == "gridengine" \
        else sites.slurm_partitions(state)
    how = ""
    if detected:
        others = [SCHEDULER_TITLES[other] for other, commands in COMMANDS.items()
                  if other != name and commands[0] in found]
        how = f" (found on {settings.host}" + (
            f"; it also has {', '.join(others)}: set 'scheduler' to choose)" if others else ")")
    return f"{SCHEDULER_TITLES[name]}{how}, {' '.join(COMMANDS[name])} found; {queues}"


# -- the probe -------------------------------------------------------------------


def check_probe(state: State) -> str:
    from sheepdog.submitter.doctor import probe  # the package's: requests name it there

    settings, session = state.ready
    started = time.monotonic()
    _writable(settings.dbfile)
    try:
        with by_value([sys.modules[probe.__module__]]):  # nodes have no sheepdog.submitter
            request_id = submit(probe, [()], None, session)
    except RemoteCommandError as exc:  # the scheduler's own words, without its command line
        said = " ".join((exc.stderr.strip() or exc.stdout.strip() or "(no output)").split())
        raise Failed(f"{exc.command.split()[0]} on {exc.where} refused the probe job (exit"
                     f" status {exc.exit_status}): {said}", f"correct the"
                     f" {_options_key(settings)} entry it names (the checks below look at"
                     " them)") from exc
    except SubmitError as exc:
        cause, fix = split_advice(str(exc))
        raise Failed(cause, fix or PROBE_FIX) from exc
    with results.open_request(request_id, settings.dbfile, session) as request:
        try:
            results.wait(request, verbose=False, timeout=state.probe_timeout)
        except ResultsTimeout:
            raise _not_run(request, state.probe_timeout) from None
        except SheepdogError as exc:  # cancelled: the scheduler's record says why
            cause, fix = split_advice(str(exc))
            raise Failed(cause, fix or f"`sheepdog status {request_id} --dbfile"
                         f" {settings.dbfile}` and `sheepdog errors ...` say more") from exc
        [outcome] = results.outcomes(request)
    if outcome.status != "ok":
        raise _task_failed(outcome.error or "", settings)
    host, version, python = outcome.value
    if ".".join(version.split(".")[:2]) != _HERE:
        raise Failed(f"{host} runs Python {version} ({python}), this is Python"
                     f" {sys.version.split()[0]}", _shell_fix(settings))
    return (f"request {request_id} ran on {host}: Python {version} ({python}),"
            f" {time.monotonic() - started:.1f} s")


def _writable(dbfile: str) -> None:
    """Raise Failed unless ``dbfile`` can be written (it is made if need be)."""
    try:
        with Store(dbfile) as store:
            why = "it is read-only for you" if store.readonly else ""
    except (sqlite3.Error, OSError, SheepdogError) as exc:
        why = str(exc)
    if why:
        raise Failed(f"cannot write the dbfile {dbfile}: {why}", "set 'dbfile' (or --dbfile)"
                     " to a file you can write, in a directory you can write")


def _options_key(settings: Settings) -> str:
    return "slurm_opts" if settings.scheduler_name == "slurm" else "ge_opts"


def _shell_fix(settings: Settings) -> str:
    return (f"set 'shell' to a Python {_HERE} interpreter the nodes have (now"
            f" {settings.worker_python}); functions travel pickled by value, so the minor"
            " version must match")


def _task_failed(error: str, settings: Settings) -> Failed:
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    cause, fix = split_advice(lines[-1] if lines else "no reason recorded")
    return Failed(f"the probe task failed: {cause}", fix or _shell_fix(settings))


def _not_run(request: OpenRequest, seconds: float) -> Failed:
    """The probe had no outcome in time: what the scheduler says; the request is cancelled."""
    said, fix = _why_not_run(request)
    with contextlib.suppress(SheepdogError, redis.RedisError, OSError):
        api.cancel(request.request_id, request.session.settings.dbfile)
    return Failed(f"the probe (request {request.request_id}) had no outcome within"
                  f" {seconds:g} s and was cancelled: {said}", fix)


def _why_not_run(request: OpenRequest) -> tuple[str, str]:
    """(what the scheduler says of the probe's job, what to do)."""
    settings, row = request.session.settings, request.row
    scheduler = request.session.scheduler()
    job_ids = job_id_list(row.job_ids)
    state = scheduler.state(job_ids)
    if settings.scheduler_name == "rq":
        return (state.waiting or "no rq worker has taken it", "start an rq worker where"
                f" sheepdog is installed (`rq worker --url URL {settings.rq_queue}`), or"
                " give the busy ones longer (--probe-timeout)")
    said = state.problem or state.waiting or state.unknown
    if said:
        return said, ("if the cluster is only busy, give it longer (--probe-timeout); else ask"
                      f" for what it can give ({_options_key(settings)})")
    words = scheduler.last_words(settings, job_name(row), f"{job_ids[0]}.1") if job_ids else ""
    record = f"; the task's record: {' '.join(words.split())[-300:]}" if words else ""
    return (f"its job ran, but no outcome came back: can the nodes reach the broker{record}",
            "set 'broker_url' to an address the nodes can reach (the broker check above tried"
            " it from here only)")


# -- job directories -------------------------------------------------------------


def check_job_directory(state: State) -> str:
    settings = state.ready[0]
    remote = state.remote
    scheduler = state.ready[1].scheduler()
    assert isinstance(scheduler, BatchScheduler)
    path = scheduler.job_dir(settings, f".doctor-{secrets.token_hex(4)}")
    try:
        remote.put(path, b"sheepdog doctor\n", 0o600)
        found = remote.exists(path)
        remote.remove(path)
    except OSError as exc:
        raise Failed(f"cannot write {path} on {remote.where}: {exc}", "make that directory"
                     " writable for you, or set 'ssh_dir' to one that is (relative to $HOME,"
                     " or absolute)") from exc
    if not found:
        raise Failed(f"{path} on {remote.where} was written but is not there", "check the"
                     " file system of 'ssh_dir' (a full or read-only disk?)")
    return f"created and deleted a file in {posixpath.dirname(path)}"


def check_local_directory(state: State) -> str:
    try:
        directory = paths.job_dir(f"doctor-{secrets.token_hex(4)}")
        test = directory / "written"
        test.write_text("sheepdog doctor\n")
        test.unlink()
        directory.rmdir()
    except OSError as exc:
        raise Failed(f"cannot write in {paths.home() / 'jobs'}: {exc}", "make it writable, or"
                     " set SHEEPDOG_HOME to a directory of your own") from exc
    return f"created and deleted a file in {directory.parent}"
