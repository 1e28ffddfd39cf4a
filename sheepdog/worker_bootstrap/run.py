"""One array task: fetch function and arguments, run, record the outcome.

Every path ends in exactly one of: an outcome recorded on the broker (ok or
error), a rejection recorded for an index outside the request, or - only when
the broker itself cannot be reached or the request is gone - a message on
stderr and a non-zero exit status for the scheduler's log.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sheepdog.broker import codec, resp
from sheepdog.broker.tasks import TaskChannel
from sheepdog.broker.urls import redact
from sheepdog.errors import BrokerError, SheepdogError
from sheepdog.worker_bootstrap.capture import captured_output
from sheepdog.worker_bootstrap.environment import BadEnvironment, JobFile, task_index

#: Exit statuses, for the scheduler's accounting.
EXIT_OK = 0  # an outcome was recorded (the task itself may have failed)
EXIT_NOT_RECORDED = 1  # the outcome could not be written to the broker
EXIT_BAD_ENVIRONMENT = 2  # no job file, no index, no broker, no request
EXIT_REJECTED = 3  # the index is not part of the request

Fields = dict[str, str | bytes]
Outcome = tuple[str, Fields]


def log(message: str) -> None:
    print(f"sheepdog worker: {message}", file=sys.stderr, flush=True)


def python_mismatch(submitter_python: str) -> str | None:
    """Why this interpreter cannot load the request's pickles, or None if it can."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    there = ".".join(submitter_python.split(".")[:2])
    if here == there:
        return None
    return (
        f"this node runs Python {sys.version.split()[0]} ({sys.executable}) but the request"
        f" was submitted from Python {submitter_python}; functions are pickled by value and"
        f" need the same Python minor version on both sides. Set the 'shell' config key to a"
        f" Python {there} interpreter on the nodes."
    )


def _load(func_payload: bytes, args_payload: bytes, key: bytes) -> tuple[Any, list[Any]]:
    f, ns = codec.decode(func_payload, key)
    args = codec.decode(args_payload, key)
    if ns:
        f.__globals__.update(ns)  # one dict shared by every by-value function of the pickle
    return f, args


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the user's function down, without sheepdog's own frame."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None
    return "".join(traceback.format_exception(type(exc), exc, tb))


@contextlib.contextmanager
def memory_limit(limit: int | None) -> Iterator[None]:
    """Cap the address space (soft RLIMIT_AS) while the function runs, then lift it.

    Lifting it again leaves room to pickle and record the outcome.
    """
    if limit is None:
        yield
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    capped = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (capped, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _memory_error(exc: MemoryError, limit: int | None) -> str:
    if limit is None:
        return _user_traceback(exc)
    return (
        f"MemoryError: the task needed more memory than its limit of {limit / 2**20:.0f} MiB"
        " (set by -l mem_grab in ge_opts; ask for more, e.g. '-l mem_grab=4G').\n"
        + _user_traceback(exc)
    )


def execute(meta: dict[str, str], func_payload: bytes, args_payload: bytes, key: bytes,
            limit: int | None = None) -> Outcome:
    """Run the task and turn whatever happens into (status, fields)."""
    mismatch = python_mismatch(meta.get("python", ""))
    if mismatch:
        return "error", {"error": f"PythonVersionMismatch: {mismatch}"}
    status: str
    fields: Fields
    with captured_output() as out:
        try:
            f, args = _load(func_payload, args_payload, key)
            with memory_limit(limit):
                value = f(*args)
        except SheepdogError as exc:  # our own loading errors: the message is the point
            status, fields = "error", {"error": f"{type(exc).__name__}: {exc}"}
        except MemoryError as exc:
            status, fields = "error", {"error": _memory_error(exc, limit)}
        except BaseException as exc:
            status, fields = "error", {"error": _user_traceback(exc)}
        else:
            try:
                status, fields = "ok", {"payload": codec.encode(value, key, what="return value")}
            except SheepdogError as exc:
                status, fields = "error", {"error": f"{type(exc).__name__}: {exc}"}
    fields["stdout"] = out.stdout
    fields["stderr"] = out.stderr
    return status, fields


def _connect(job: JobFile) -> TaskChannel:
    client = resp.connect(
        job.broker_url, attempts=job.connect_attempts, retry_delay=job.connect_retry_delay
    )
    return TaskChannel(client)


def _record(channel: TaskChannel, job: JobFile, index: int, outcome: Outcome) -> int:
    """Record the outcome, reconnecting if the broker went away while the task ran."""
    status, fields = outcome
    for attempt in range(job.connect_attempts):
        try:
            written = channel.record(job.request_id, index, status, fields)
        except (BrokerError, OSError) as exc:
            log(f"recording task {index} failed (attempt {attempt + 1}): {exc}")
            time.sleep(job.connect_retry_delay)
            with contextlib.suppress(BrokerError):  # the next attempt says why
                channel = _connect(job)
            continue
        if not written:
            log(f"task {index} already had an outcome; this run's {status} was not recorded")
        return EXIT_OK
    log(f"giving up: task {index} finished with status {status} but it could not be recorded")
    return EXIT_NOT_RECORDED


def run_task(channel: TaskChannel, job: JobFile, index: int) -> int:
    host, pid = socket.gethostname(), os.getpid()
    meta = channel.meta(job.request_id)
    if not meta:
        log(f"request {job.request_id} is not on the broker {redact(job.broker_url)}"
            " (expired, deleted, or another broker); nothing to do")
        return EXIT_BAD_ENVIRONMENT
    n_tasks = int(meta["n_tasks"])
    if not 1 <= index <= n_tasks:
        reason = f"task index {index} is not part of request {job.request_id} (1..{n_tasks})"
        channel.reject(job.request_id, index, reason, host, pid)
        log(reason)
        return EXIT_REJECTED
    func_payload, args_payload = channel.fetch(job.request_id, index)
    if args_payload is None or func_payload is None:
        log(f"task {index} of request {job.request_id} already has an outcome; nothing to do")
        return EXIT_OK
    started = time.time()
    channel.take_lease(job.request_id, index, f"{host} {pid} {started:.3f}")
    status, fields = execute(meta, func_payload, args_payload, bytes.fromhex(job.key),
                             job.memory_limit)
    fields.update(host=host, pid=str(pid), started=f"{started:.6f}", finished=f"{time.time():.6f}")
    return _record(channel, job, index, (status, fields))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        log("usage: python -m sheepdog.worker_bootstrap JOB_FILE")
        return EXIT_BAD_ENVIRONMENT
    try:
        job = JobFile.load(Path(args[0]))
        index = task_index(job.scheduler, os.environ)
        channel = _connect(job)
    except (BadEnvironment, BrokerError) as exc:
        log(str(exc))
        return EXIT_BAD_ENVIRONMENT
    return run_task(channel, job, index)
