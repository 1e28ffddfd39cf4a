"""Pushing tasks of a request again from the dbfile: after a broker loss, and for resubmit.

The dbfile keeps the function and every argument, so a request can be put
back on a broker that forgot it (restarted empty, flushed, replaced) or that
expired it long ago. The tasks go out as a new *incarnation* of the same
request: a fresh id on the broker, the same token and key, new jobs. Workers
of the old incarnation can record nothing into it: every outcome must come
from the holder of a claim, and the new incarnation's claims are its own.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

from sheepdog.errors import SheepdogError
from sheepdog.submitter.launch import launch, worker_access
from sheepdog.submitter.request import OpenRequest, job_name
from sheepdog.submitter.submit import request_meta


@dataclass(frozen=True)
class Pushed:
    """What ``push_again`` did: the new job, or why it could not start one yet."""

    job_ids: list[str]
    not_cancelled: tuple[str, list[str]]  # (job name, ids) of old jobs the scheduler did
    # not cancel yet (it did not answer)
    launch_error: SheepdogError | None  # the tasks wait in the retry set meanwhile


def push_again(request: OpenRequest, indices: list[int], *, fresh: bool, label: str) -> Pushed:
    """Push ``indices`` again and start a job over them.

    ``fresh`` (resubmit): the tasks' earlier outcomes move to history and they
    get a new budget of attempts. Otherwise (a broker lost them) attempts go
    on counting from where the dbfile knows they were. If the scheduler does
    not take the job now, the tasks wait on the broker as retries, which the
    next wait starts when it does.
    """
    store, session = request.store, request.session
    old = request.row
    broker = request.connect()
    key = request.key
    not_cancelled = (job_name(old),
                     cancel_jobs(request, job_name(old), [j for j in old.job_ids.split(",") if j]))
    same_broker = broker.broker_id == old.broker_id
    if same_broker:  # its old keys are ours, collated already: the dbfile has it all
        broker.delete_request(old.broker_request)
    last = store.last_attempts(old.request_id)
    firsts = store.firsts(old.request_id)
    if fresh:
        firsts = {i: last.get(i, 0) + 1 for i in indices}
        store.restart_tasks(old.request_id, indices, firsts)
    placeholders = {
        i: f"{last[i]} {firsts[i]} 0 -" for i in indices if last.get(i, 0) > 0
    }
    # The same id on the same broker (its INCR never gives it out again); after a
    # broker lost its data, a fresh one: the old id may be someone else's now.
    new_id = old.broker_request if same_broker else broker.new_request_id(1)
    store.add_broker(broker.broker_id, old.location)
    request.update(broker_id=broker.broker_id, broker_request=new_id, status="submitted",
                   job_ids="", settings=json.dumps(session.settings.public()))
    row = request.row
    worker_url, user = worker_access(broker, key, row, request.worker_url)
    pushed = store.task_args(row.request_id, indices)  # as stored: the worker unpacks them
    meta = request_meta(row, session.settings, user)
    broker.push_request(new_id, meta, store.function_payload(row.request_id), pushed,
                        placeholders)
    try:
        job_ids = launch(session, broker, row, key, worker_url, indices=indices, label=label)
    except SheepdogError as exc:
        broker.queued(new_id, "")
        broker.put_back_retries(new_id, dict.fromkeys(indices, 0))
        return Pushed([], not_cancelled, exc)
    joined = ",".join(job_ids)
    broker.queued(new_id, joined)
    request.update(job_ids=joined)
    return Pushed(job_ids, not_cancelled, None)


def cancel_jobs(request: OpenRequest, name: str, job_ids: list[str]) -> list[str]:
    """Cancel ``job_ids`` (of job name ``name``) and forget their files; the ids the
    scheduler could not cancel."""
    session = request.session
    scheduler = session.scheduler()
    try:
        scheduler.cancel(job_ids)
    except (SheepdogError, OSError):
        return job_ids
    with contextlib.suppress(SheepdogError, OSError):
        scheduler.forget(session.settings, name)
    return []
