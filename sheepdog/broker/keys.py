"""Every Redis key sheepdog uses, and nothing else builds key names.

Braces are Redis Cluster hash tags: all keys of one request share a slot, so
the Lua script that records an outcome may touch them together.

Key (type): contents; lifetime.

- ``sheepdog:broker`` (hash): ``id`` (uuid4, set once), ``schema``; for ever.
- ``sheepdog:seq`` (string): INCR counter, the last request id handed out; for ever.
- ``sheepdog:requests`` (zset): request id -> creation time (unix s); until expired.
- ``sheepdog:{req:ID}`` (hash): plain-text meta, see ``META_FIELDS``; kept
  ``RESULT_TTL`` after the request is fully collated, like every key below.
- ``sheepdog:{req:ID}:func`` (string): codec envelope of (function, namespace).
- ``sheepdog:{req:ID}:tasks`` (hash): index -> codec envelope of the positional
  args; a field leaves when its task's outcome is recorded.
- ``sheepdog:{req:ID}:leases`` (hash): running index -> "host pid started";
  a field leaves with its outcome.
- ``sheepdog:{req:ID}:results`` (stream): one entry per outcome, see ``RESULT_FIELDS``.

The same table, with examples for ``redis-cli``, is in docs/broker-keys.md.
"""

from __future__ import annotations

PREFIX = "sheepdog"
SCHEMA_VERSION = "1"

#: Fields of the request meta hash. All values are plain text.
META_FIELDS = (
    "status",  # submitting | queued | done | cancelled
    "n_tasks",  # number of array tasks, indices 1..n_tasks
    "function",  # module.qualname of the function
    "submitter",  # user@host of the submitting process
    "scheduler",  # local | gridengine | ...
    "job_ids",  # scheduler job ids, comma separated
    "python",  # major.minor.micro of the submitting interpreter
    "created",  # unix time, seconds
    "finished",  # unix time, seconds, set when the last outcome is recorded
    "n_ok",  # outcomes recorded as ok
    "n_error",  # outcomes recorded as error (f raised, bad result, ...)
    "n_lost",  # tasks that died without an outcome (killed, node lost)
    "n_rejected",  # workers that asked for an index that is not part of the request
    "runner",  # local scheduler only: "host pid" of the process running the array
    "reason",  # why the request was cancelled (by the user, or its job died or got stuck)
)

#: Fields of every entry of the results stream.
RESULT_FIELDS = (
    "index",  # 1-based array index
    "status",  # ok | error | lost | rejected
    "payload",  # ok: codec envelope of the return value; otherwise empty
    "error",  # error/lost/rejected: the traceback or reason, plain text
    "host",  # node that ran the task
    "pid",  # worker process id
    "started",  # unix time, seconds
    "finished",  # unix time, seconds
    "stdout",  # tail of the task's stdout
    "stderr",  # tail of the task's stderr
)

#: Statuses a results-stream entry may carry.
STATUSES = ("ok", "error", "lost", "rejected")


def broker() -> str:
    return f"{PREFIX}:broker"


def seq() -> str:
    return f"{PREFIX}:seq"


def requests() -> str:
    return f"{PREFIX}:requests"


def meta(request_id: int) -> str:
    return f"{PREFIX}:{{req:{request_id}}}"


def func(request_id: int) -> str:
    return f"{meta(request_id)}:func"


def tasks(request_id: int) -> str:
    return f"{meta(request_id)}:tasks"


def leases(request_id: int) -> str:
    return f"{meta(request_id)}:leases"


def results(request_id: int) -> str:
    return f"{meta(request_id)}:results"


def request_keys(request_id: int) -> tuple[str, str, str, str, str]:
    """All keys of one request, in the order the Lua scripts expect them."""
    return (
        meta(request_id),
        tasks(request_id),
        leases(request_id),
        results(request_id),
        func(request_id),
    )


def collator_group(store_id: str) -> str:
    """Consumer group of the results stream for one SQLite store.

    One group per store, so two dbfiles collecting the same request each get
    every outcome.
    """
    return f"store:{store_id}"
