"""Every Redis key sheepdog uses, and nothing else builds key names.

Braces are Redis Cluster hash tags: all keys of one request share a slot, so
the Lua scripts that change a request may touch them together.

Key (type): contents; lifetime.

- ``sheepdog:broker`` (hash): ``id`` (uuid4, set once), ``schema``; for ever.
- ``sheepdog:seq`` (string): INCR counter, the last request id handed out; for ever.
- ``sheepdog:requests`` (zset): request id -> creation time (unix s); until expired.
- ``sheepdog:doctor:TOKEN`` (string): a random value ``sheepdog doctor`` writes,
  reads back and deletes at once; expires after ``DOCTOR_TTL`` if it dies first.
- ``sheepdog:{req:ID}`` (hash): plain-text meta, see ``META_FIELDS``. While the
  request is being submitted every key below expires after ``SUBMIT_TTL`` (a
  submitter that dies mid-push leaves nothing behind); once submitted they are
  kept until the request is fully collated, then ``RESULT_TTL``.
- ``sheepdog:{req:ID}:func`` (string): codec envelope of (function, namespace).
- ``sheepdog:{req:ID}:tasks`` (hash): index -> codec envelope of the positional
  args; a field leaves when its task's final outcome is recorded.
- ``sheepdog:{req:ID}:claims`` (hash): index -> the task's current attempt,
  ``CLAIM_FIELDS`` separated by spaces; ``-`` as holder means nobody holds it
  (declared lost, waiting for its next attempt). Leaves with the final outcome.
- ``sheepdog:{req:ID}:leases`` (zset): index -> lease deadline (broker time,
  unix s) of a running attempt; heartbeats push it forward.
- ``sheepdog:{req:ID}:retry`` (hash): index -> memory level, for tasks waiting
  for their next attempt to be started by the scheduler (one array task per
  index), or, in worker mode, for a worker with more memory than the running
  ones.
- ``sheepdog:{req:ID}:queue`` (list): worker mode only: ranges ``first-last``
  of task indices not yet handed to a worker; workers take from the head in
  batches, retries go back to the head. Ranges, not indices: a million-task
  request is a few hundred entries.
- ``sheepdog:{req:ID}:results`` (stream): one entry per finished attempt, see
  ``RESULT_FIELDS``.

The same table, with examples for ``redis-cli``, is in docs/broker-keys.md.
"""

from __future__ import annotations

PREFIX = "sheepdog"
SCHEMA_VERSION = "2"

#: Seconds the keys of a request being submitted live without a refresh.
SUBMIT_TTL = 600

#: Seconds the test key of ``sheepdog doctor`` lives if it is not deleted.
DOCTOR_TTL = 60

#: Seconds the broker keeps a request once every outcome is in a dbfile.
RESULT_TTL = 7 * 24 * 3600

#: Fields of the request meta hash. All values are plain text.
META_FIELDS = (
    "token",  # random hex naming this request everywhere; workers must present it
    "status",  # submitting | queued | done | cancelled
    "n_tasks",  # number of array tasks, indices 1..n_tasks
    "function",  # module.qualname of the function
    "submitter",  # user@host of the submitting process
    "scheduler",  # local | gridengine | ...
    "job_ids",  # scheduler job ids, comma separated
    "python",  # major.minor.micro of the submitting interpreter
    "created",  # unix time, seconds
    "finished",  # unix time, seconds, set when the last outcome is recorded
    "max_attempts",  # 1 + retries: attempts a task gets per submission
    "retry_errors",  # 1: a task whose function raised is retried too
    "retry_memory",  # 1: a task over its memory limit is retried with more
    "n_ok",  # outcomes recorded as ok
    "n_error",  # outcomes recorded as error (f raised, bad result, ...)
    "n_lost",  # tasks that died without an outcome, with no attempts left
    "n_retried",  # attempts that failed and were given another try
    "n_rejected",  # workers that asked for an index that is not part of the request
    "worker_user",  # the per-request ACL user the workers log in as, if any
    "reason",  # why the request was cancelled
    "mode",  # 'workers': pilot workers take tasks from the queue; absent: one task per index
)

#: Fields of a claim (``claims`` hash value), in order, separated by spaces.
CLAIM_FIELDS = (
    "attempt",  # 1 for the first run of a task, then 2, 3...
    "first",  # first attempt of this submission (resubmit starts a new one)
    "level",  # memory level: the limit is multiplied by retry_memory_factor ** level
    "holder",  # random token of the worker running it; '-' for nobody
    "started",  # broker time of the claim
    "host",  # node of the worker
    "pid",  # worker process id
    "job",  # scheduler job reference of the worker ('123.4' on Grid Engine)
)

#: Fields of every entry of the results stream.
RESULT_FIELDS = (
    "index",  # 1-based array index (0 for a whole-request entry: cancelled)
    "attempt",  # which attempt of the task this is
    "status",  # ok | error | lost | rejected | cancelled
    "next",  # 'retry' when another attempt follows; absent when this outcome is final
    "cause",  # 'memory' when the task went over its memory limit; 'cancelled' before it ran
    "payload",  # ok: codec envelope of the return value; otherwise absent
    "error",  # error/lost/rejected/cancelled: the traceback or reason, plain text
    "mac",  # hex HMAC of index, attempt, status, cause, payload and error
    "host",  # node that ran the task
    "pid",  # worker process id
    "job",  # scheduler job reference
    "booted",  # unix time, seconds: the worker process's start (its interpreter's included)
    "started",  # unix time, seconds: when the worker took this attempt up
    "finished",  # unix time, seconds
    "stdout",  # tail of the task's stdout
    "stderr",  # tail of the task's stderr
)

#: Statuses a results-stream entry may carry.
STATUSES = ("ok", "error", "lost", "rejected", "cancelled")

#: Statuses of a task's final outcome.
OUTCOMES = ("ok", "error", "lost")


def broker() -> str:
    return f"{PREFIX}:broker"


def seq() -> str:
    return f"{PREFIX}:seq"


def requests() -> str:
    return f"{PREFIX}:requests"


def doctor(token: str) -> str:
    return f"{PREFIX}:doctor:{token}"


def meta(request_id: int) -> str:
    return f"{PREFIX}:{{req:{request_id}}}"


def func(request_id: int) -> str:
    return f"{meta(request_id)}:func"


def tasks(request_id: int) -> str:
    return f"{meta(request_id)}:tasks"


def claims(request_id: int) -> str:
    return f"{meta(request_id)}:claims"


def leases(request_id: int) -> str:
    return f"{meta(request_id)}:leases"


def retry(request_id: int) -> str:
    return f"{meta(request_id)}:retry"


def results(request_id: int) -> str:
    return f"{meta(request_id)}:results"


def queue(request_id: int) -> str:
    return f"{meta(request_id)}:queue"


def request_pattern(request_id: int) -> str:
    """Glob of every key of one request (for ACL key patterns)."""
    return f"{meta(request_id)}*"


def request_keys(request_id: int) -> tuple[str, ...]:
    """All keys of one request, in the order the Lua scripts expect them."""
    return (
        meta(request_id),
        tasks(request_id),
        leases(request_id),
        results(request_id),
        func(request_id),
        claims(request_id),
        retry(request_id),
        queue(request_id),
    )


def collator_group(store_id: str) -> str:
    """Consumer group of the results stream for one SQLite store.

    One group per store, so two dbfiles collecting the same request each get
    every outcome.
    """
    return f"store:{store_id}"
