"""Starting a request's array jobs: the first one, retries, and after a broker loss.

Every job of a request goes through ``launch``: it writes the job file the
workers read (broker URL, request token and key, which tasks, lease and
patience settings) and hands the job to the scheduler. ``worker_access`` makes
the per-request broker user whose credentials go into that file instead of
the broker's password.
"""

from __future__ import annotations

import sys

import redis

from sheepdog.broker.client import RECORD_OVERHEAD, Broker
from sheepdog.broker.urls import with_user
from sheepdog.errors import SheepdogError, SubmitError
from sheepdog.submitter import paths
from sheepdog.submitter.brokers import worker_login
from sheepdog.submitter.request import job_name
from sheepdog.submitter.schedulers import ArrayJob
from sheepdog.submitter.session import Session
from sheepdog.submitter.store import RequestRow
from sheepdog.worker_bootstrap.environment import JobFile

#: Brokers already told to have no per-request users (said once per process).
_NO_ACL: set[str] = set()


def worker_access(broker: Broker, key: bytes, row: RequestRow, url: str) -> tuple[str, str]:
    """(URL the workers use, name of their per-request user or '').

    On a broker with ACLs the workers log in as a user that can touch only
    this request's keys. Without ACL permission it says so once, and the
    workers get ``url`` (the broker's own credentials).
    """
    user, password = worker_login(key, row.broker_request, row.token)
    try:
        broker.create_worker_user(user, password, row.broker_request)
    except redis.ResponseError as exc:
        if broker.broker_id not in _NO_ACL:
            _NO_ACL.add(broker.broker_id)
            print(f"sheepdog: the broker does not let us make per-request users ({exc});"
                  " workers will log in with the broker's own password", file=sys.stderr)
        return url, ""
    return with_user(url, user, password), user


def launch(
    session: Session, broker: Broker, row: RequestRow, key: bytes, worker_url: str, *,
    indices: list[int] | None, level: int = 0, label: str = "main", tasks: int | None = None,
) -> list[str]:
    """Start an array job over ``indices`` (None: every task); return its job ids.

    In worker mode (``settings.pilots``) the job is that many pilots, or fewer
    for fewer tasks, which take tasks from the request's queue: ``indices``
    then only counts them (or ``tasks`` does).
    """
    settings = session.settings
    name = job_name(row)
    if tasks is None:
        tasks = row.n_tasks if indices is None else len(indices)
    pilots = min(settings.pilots, tasks)
    job_file = JobFile(
        broker_url=worker_url, request_id=row.broker_request, token=row.token, key=key.hex(),
        scheduler=settings.scheduler_name, indices=None if pilots else indices, level=level,
        mode="workers" if pilots else "tasks",
        heartbeat_interval=settings.heartbeat_interval, lease_timeout=settings.lease_timeout,
        broker_patience=settings.broker_patience,
        max_payload=broker.max_value_size() - RECORD_OVERHEAD,
    )
    job = ArrayJob(
        row.broker_request, pilots or tasks, name, label,
        job_file, paths.job_dir(name), settings,
        memory_factor=(settings.retry_memory_factor or 1.0) ** level,
    )
    try:
        return session.scheduler().submit(job)
    except SheepdogError:
        raise
    except Exception as exc:
        raise SubmitError(f"the {row.scheduler} scheduler refused the job: {exc}") from exc
