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

from sheepdog.broker import codec
from sheepdog.submitter.launch import launch, worker_access
from sheepdog.submitter.request import OpenRequest, job_name
from sheepdog.submitter.submit import positional, request_meta


def push_again(request: OpenRequest, indices: list[int], *, fresh: bool, label: str
               ) -> list[str]:
    """Push ``indices`` again and start a job over them; return its job ids.

    ``fresh`` (resubmit): the tasks' earlier outcomes move to history and they
    get a new budget of attempts. Otherwise (a broker lost them) attempts go
    on counting from where the dbfile knows they were.
    """
    store, session = request.store, request.session
    old = request.row
    broker = request.connect()
    key = request.key
    with contextlib.suppress(Exception):  # the old jobs and files: ours, and useless now
        scheduler = session.scheduler()
        scheduler.cancel([j for j in old.job_ids.split(",") if j])
        scheduler.forget(session.settings, job_name(old))
    if broker.broker_id == old.broker_id and broker.request_exists(old.broker_request):
        broker.delete_request(old.broker_request)  # collated already: the dbfile has it all
    last = store.last_attempts(old.request_id)
    firsts = store.firsts(old.request_id)
    if fresh:
        firsts = {i: last.get(i, 0) + 1 for i in indices}
        store.restart_tasks(old.request_id, indices, firsts)
    placeholders = {
        i: f"{last[i]} {firsts[i]} 0 -" for i in indices if last.get(i, 0) > 0
    }
    new_id = broker.new_request_id(1)
    store.add_broker(broker.broker_id, old.location)
    request.update(broker_id=broker.broker_id, broker_request=new_id, status="submitted",
                   job_ids="", settings=json.dumps(session.settings.public()))
    row = request.row
    worker_url, user = worker_access(broker, key, row, request.worker_url)
    args = {t.idx: t.args for t in store.tasks(row.request_id)}
    pushed = (
        (i, codec.encode(positional(codec.decode(args[i], key, codec.args_context(i))), key,
                         codec.args_context(i)))
        for i in indices
    )
    meta = request_meta(row, session.settings, user)
    broker.push_request(new_id, meta, store.function_payload(row.request_id), pushed,
                        placeholders)
    job_ids = launch(session, broker, row, key, worker_url, indices=indices, label=label)
    joined = ",".join(job_ids)
    broker.queued(new_id, joined)
    request.update(job_ids=joined)
    return job_ids
