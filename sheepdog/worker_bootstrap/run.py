"""One array task: claim the task, run it under a lease, record how it ended.

Every path ends in exactly one of: an outcome recorded on the broker (ok or
error), a rejection recorded for an index outside the request, a clean exit
because there is nothing to do (the task is done, held by another attempt, or
cancelled), or - when the broker cannot be reached within the patience, or
the attempt was declared lost meanwhile - a message on stderr and a non-zero
exit status: the task is then lost when its lease runs out, and retried.
"""

from __future__ import annotations

import _socket  # gethostname; the socket module imports enum and selectors
import os
import sys
import time

from sheepdog.broker import codec, keys
from sheepdog.broker.tasks import FINAL, RETRIED, ClaimReply, TaskChannel
from sheepdog.broker.urls import redact
from sheepdog.errors import BrokerError, SheepdogError
from sheepdog.worker_bootstrap.capture import Capture
from sheepdog.worker_bootstrap.environment import (
    BadEnvironment,
    JobFile,
    job_reference,
    process_start,
    task_index,
)
from sheepdog.worker_bootstrap.link import BrokerLink, BrokerUnavailable, Keeper, log

# Every array task imports this module and what it imports, so none of them imports
# typing, dataclasses, pathlib, traceback, re, json, ssl, tempfile, socket, hashlib,
# threading...: each would cost more than the worker's start can spare. The list, and
# why each is on it: tests/test_worker_start.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Exit statuses, for the scheduler's accounting.
EXIT_OK = 0  # an outcome was recorded (the task itself may have failed), or nothing to do
EXIT_NOT_RECORDED = 1  # the outcome could not be written to the broker
EXIT_BAD_ENVIRONMENT = 2  # no job file, no index, no broker, no request
EXIT_REJECTED = 3  # the index is not part of the request

Fields = dict[str, str | bytes]


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


def load_function(func_payload: bytes, key: bytes) -> Any:
    f, ns = codec.decode(func_payload, key, codec.FUNC_CONTEXT)
    if ns:
        f.__globals__.update(ns)  # one dict shared by every by-value function of the pickle
    return f


def load_args(args_payload: bytes, key: bytes, index: int
              ) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments of task ``index``."""
    return codec.arguments(codec.decode(args_payload, key, codec.args_context(index)))


def _user_traceback(exc: BaseException) -> str:
    """The traceback from the user's function down, without sheepdog's own frame."""
    import traceback  # only here: most tasks do not raise

    tb = exc.__traceback__.tb_next if exc.__traceback__ else None
    return "".join(traceback.format_exception(type(exc), exc, tb))


class memory_limit:  # named as the contextmanager it replaces
    """Cap the address space (soft RLIMIT_AS) while the function runs, then lift it.

    Lifting it again leaves room to pickle and record the outcome. (A class, not
    a contextlib.contextmanager: contextlib is one import fewer for a worker.)
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.saved: tuple[int, int] | None = None

    def __enter__(self) -> None:
        if self.limit is None:
            return
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        capped = self.limit if hard == resource.RLIM_INFINITY else min(self.limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (capped, hard))
        self.saved = (soft, hard)

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, self.saved)
            self.saved = None


def _too_large(size: int, limit: int) -> str:
    return (
        f"SerialisationError: the return value is {size / 2**20:.1f} MiB pickled, more than the"
        f" broker takes in one value ({limit / 2**20:.1f} MiB: its proto-max-bulk-len). Return"
        " less - e.g. write large results to a file on shared storage and return its path."
    )


def _memory_error(exc: MemoryError, limit: int) -> str:
    return (
        f"MemoryError: the task needed more memory than its limit of {limit / 2**20:.0f} MiB"
        " (set by the job's memory request: -l mem_grab in ge_opts, --mem in slurm_opts; ask"
        " for more, e.g. '-l mem_grab=4G' or '--mem=4G', or set retry_memory_factor to retry"
        " it with more).\n" + _user_traceback(exc)
    )


def call(f: Any, args: tuple[list[Any], dict[str, Any]], key: bytes, limit: int | None,
         max_payload: int) -> tuple[str, str, Fields]:
    """Run ``f(*args, **kwargs)`` under the memory limit: (status, cause, fields), whatever
    happens."""
    positional, keywords = args
    try:
        with memory_limit(limit):
            value = f(*positional, **keywords)
    except MemoryError as exc:
        if limit is None:
            return "error", "", {"error": _user_traceback(exc)}
        return "error", "memory", {"error": _memory_error(exc, limit)}
    except BaseException as exc:
        return "error", "", {"error": _user_traceback(exc)}
    try:
        payload = codec.encode(value, key, codec.VALUE_CONTEXT, what="return value")
    except SheepdogError as exc:
        return "error", "", {"error": f"{type(exc).__name__}: {exc}"}
    if len(payload) > max_payload:
        return "error", "", {"error": _too_large(len(payload), max_payload)}
    return "ok", "", {"payload": payload}


class Attempt:
    """One attempt at one task, from its claim to its record."""

    def __init__(self, link: BrokerLink, job: JobFile, index: int, job_ref: str,
                 booted: float) -> None:
        self.link = link
        self.job = job
        self.index = index
        self.job_ref = job_ref
        self.key = bytes.fromhex(job.key)
        self.holder = os.urandom(8).hex()  # not secrets: it imports more than it is worth here
        self.host = _socket.gethostname()
        self.pid = os.getpid()
        self.booted = f"{booted:.6f}"  # when this process started: see RESULT_FIELDS
        self.started = time.time()

    def claim(self) -> ClaimReply:
        job = self.job

        def op(channel: TaskChannel) -> ClaimReply:
            reply = channel.claim(
                job.request_id, job.token, self.index, holder=self.holder, level=job.level,
                host=self.host, pid=self.pid, job=self.job_ref, lease=job.lease_timeout,
            )
            if reply.kind == "busy" and reply.detail.split()[3:4] == [self.holder]:
                return _own_claim(channel, job, self.index, int(reply.detail.split()[0]))
            return reply

        return self.link.call(f"claiming task {self.index}", op)

    def heartbeat(self) -> int:
        job = self.job
        return self.link.call(
            "heartbeat",
            lambda ch: ch.heartbeat(job.request_id, job.token, self.index, self.holder,
                                    job.lease_timeout),
            patience=job.heartbeat_interval,
        )

    def execute(self, claim: ClaimReply) -> tuple[str, str, Fields]:
        """Run the task: (status, cause, fields), whatever happens."""
        mismatch = python_mismatch(claim.python)
        if mismatch:
            return "error", "", {"error": f"PythonVersionMismatch: {mismatch}"}
        capture = Capture()
        capture.start()
        try:
            with Keeper(self.heartbeat, self.job.heartbeat_interval, capture.pump):
                status, cause, fields = self._call(claim)
        finally:
            capture.stop()
            capture.close()
        if capture.stdout:  # empty ones are left out: a million of them add up
            fields["stdout"] = capture.stdout
        if capture.stderr:
            fields["stderr"] = capture.stderr
        return status, cause, fields

    def _call(self, claim: ClaimReply) -> tuple[str, str, Fields]:
        try:
            f = load_function(claim.func, self.key)
            args = load_args(claim.args, self.key, self.index)
        except SheepdogError as exc:  # our own loading errors: the message is the point
            return "error", "", {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:
            return "error", "", {"error": _user_traceback(exc)}
        return call(f, args, self.key, self.job.memory_limit, self.job.max_payload)

    def record(self, attempt: int, status: str, cause: str, fields: Fields) -> int:
        fields.update(host=self.host, pid=str(self.pid), job=self.job_ref, booted=self.booted,
                      started=f"{self.started:.6f}", finished=f"{time.time():.6f}")
        try:
            written = self._send(attempt, status, cause, fields)
        except BrokerUnavailable:
            raise
        except BrokerError as exc:
            if status != "ok":
                raise
            # The broker refused the result itself (too large for it): say so instead.
            size = len(fields.pop("payload", b""))
            fields["error"] = f"SerialisationError: the broker refused this result of {size}" \
                f" bytes ({exc}). Return less - e.g. write large results to a file on" \
                " shared storage and return its path."
            written = self._send(attempt, "error", "", fields)
        if written in (FINAL, RETRIED):
            return EXIT_OK
        log(f"task {self.index} attempt {attempt} ended ({status}) but was not recorded: "
            + ("this attempt no longer held the task (it was declared lost, or another"
               " attempt finished it)" if written == 0 else
               "the request is gone from the broker or was cancelled"))
        return EXIT_NOT_RECORDED

    def _send(self, attempt: int, status: str, cause: str, fields: Fields) -> int:
        job = self.job
        return self.link.call(
            f"recording task {self.index}",
            lambda ch: ch.record(job.request_id, job.token, self.index, key=self.key,
                                 holder=self.holder, attempt=attempt, status=status,
                                 cause=cause, fields=fields),
        )

    def reject(self, n_tasks: str) -> int:
        reason = (f"task index {self.index} is not part of request {self.job.request_id}"
                  f" (1..{n_tasks})")
        fields: Fields = {"index": str(self.index), "error": reason, "host": self.host,
                          "pid": str(self.pid), "job": self.job_ref}
        self.link.call("recording a rejected index",
                       lambda ch: ch.reject(self.job.request_id, self.job.token, self.index,
                                            key=self.key, fields=fields))
        log(reason)
        return EXIT_REJECTED


def _own_claim(channel: TaskChannel, job: JobFile, index: int, attempt: int) -> ClaimReply:
    """Our claim went through but its reply was lost: read what it would have said."""
    meta = channel.meta(job.request_id)
    args = channel.conn.execute_command("HGET", keys.tasks(job.request_id), index)
    func = channel.conn.execute_command("GET", keys.func(job.request_id))
    if args is None or func is None:
        return ClaimReply("done")
    return ClaimReply("run", attempt, func, args, meta.get("python", ""))


def run_task(link: BrokerLink, job: JobFile, index: int, job_ref: str, booted: float) -> int:
    attempt = Attempt(link, job, index, job_ref, booted)
    claim = attempt.claim()
    if claim.kind == "gone":
        log(f"request {job.request_id} is not on the broker {redact(job.broker_url)}"
            " (expired, deleted, or another broker); nothing to do")
        return EXIT_BAD_ENVIRONMENT
    if claim.kind == "outside":
        return attempt.reject(claim.detail)
    if claim.kind != "run":
        why = {"cancelled": "the request was cancelled",
               "done": "it already has an outcome",
               "busy": f"another attempt holds it ({claim.detail})"}.get(claim.kind, claim.kind)
        log(f"task {index} of request {job.request_id}: {why}; nothing to do")
        return EXIT_OK
    status, cause, fields = attempt.execute(claim)
    return attempt.record(claim.attempt, status, cause, fields)


def main(argv: list[str] | None = None) -> int:
    booted = process_start(time.time())
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        log("usage: python -m sheepdog.worker_bootstrap JOB_FILE")
        return EXIT_BAD_ENVIRONMENT
    try:
        job = JobFile.load(args[0])
        array_index = task_index(job.scheduler, os.environ)
        index = job.task_for(array_index) if job.mode != "workers" else 0
    except BadEnvironment as exc:
        log(str(exc))
        return EXIT_BAD_ENVIRONMENT
    link = BrokerLink(job.broker_url, job.broker_patience)
    job_ref = job_reference(job.scheduler, os.environ, array_index)
    try:
        if job.mode == "workers":
            from sheepdog.worker_bootstrap.pilot import run_pilot

            return run_pilot(link, job, job_ref, booted)
        return run_task(link, job, index, job_ref, booted)
    except BrokerError as exc:
        log(f"giving up: {exc}")
        return EXIT_NOT_RECORDED
    finally:
        link.close()
