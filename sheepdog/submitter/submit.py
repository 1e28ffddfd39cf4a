"""Submitting a request: serialise, store, push to the broker, start the array.

Order matters for "nothing is lost":

1. the function is serialised before the broker is touched; the arguments
   are read, serialised and pushed in batches as they come (a generator of a
   million items is never held whole), each batch stored in the dbfile before
   it is pushed;
2. the request id is taken from the broker while the dbfile's write lock is
   held, raised above every id the dbfile holds, so ids are unique in a
   dbfile whichever brokers it mixes (and several submitters of one broker
   never collide: the broker's INCR);
3. the dbfile holds function and arguments before any task can run (the job
   starts after the last batch);
4. the broker's keys expire (``keys.SUBMIT_TTL``) until the job is queued, so
   a submitter killed mid-push leaves nothing on the broker, and its dbfile
   row says 'submitting' (``get_results`` then says it was never submitted);
5. anything that fails after that - an argument that cannot be pickled, the
   scheduler refusing the job, Ctrl-C, a locked dbfile - cancels the jobs
   already started and leaves neither job files, broker keys, broker users
   nor dbfile rows behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import itertools
import json
import os
import platform
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any

import cloudpickle

from sheepdog.broker import codec
from sheepdog.broker.client import Broker
from sheepdog.submitter import credentials
from sheepdog.submitter.brokers import connect_for_submit
from sheepdog.submitter.config import Settings
from sheepdog.submitter.interpreter import installed, process_start
from sheepdog.submitter.launch import launch, worker_access
from sheepdog.submitter.request import job_name
from sheepdog.submitter.session import Session
from sheepdog.submitter.store import RequestRow, Store


def function_name(f: Callable[..., Any]) -> str:
    module = getattr(f, "__module__", None) or "?"
    name = getattr(f, "__qualname__", None) or type(f).__qualname__
    return f"{module}.{name}"


def user_modules(objects: Iterable[object]) -> list[ModuleType]:
    """Modules of ``objects`` that are the user's own code, not installed packages.

    A node imports installed packages itself, but the user's own modules are
    usually not there: those are pickled by value, like ``__main__``.
    """
    found = []
    for obj in objects:
        name = getattr(obj, "__module__", None)
        module = sys.modules.get(name or "")
        path = getattr(module, "__file__", None)
        if (module is None or path is None or name in ("__main__", None)
                or str(name).split(".")[0] == "sheepdog" or installed(path)):
            continue
        found.append(module)
    return found


@contextlib.contextmanager
def by_value(modules: list[ModuleType]) -> Iterator[None]:
    """Pickle the functions and classes of ``modules`` by value while encoding."""
    added = []
    for module in modules:
        if module.__name__ not in cloudpickle.list_registry_pickle_by_value():
            cloudpickle.register_pickle_by_value(module)
            added.append(module)
    try:
        yield
    finally:
        for module in added:
            cloudpickle.unregister_pickle_by_value(module)


def _check_inputs(f: object, ns: object) -> None:
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__} {f!r}")
    if ns is not None and not (
        isinstance(ns, Mapping) and all(isinstance(k, str) for k in ns)
    ):
        raise TypeError("ns must be a dict of names to values, e.g. {'g': g, 'constant': 12}")


#: Arguments read, serialised, stored and pushed at a time.
SUBMIT_BATCH = 5000


def _naming(index: int, item: object) -> Callable[[], str]:
    """How an error names the arguments of task ``index`` (a repr, made only then)."""
    return lambda: f"arguments of task {index} ({item!r:.80})"


def _batches(items: Iterator[object], key: bytes) -> Iterator[list[tuple[int, bytes]]]:
    """(index, payload) of every item, a batch at a time: the same payload goes to the
    dbfile and the broker (the worker unpacks a plain tuple into arguments)."""
    index = 0
    while True:
        batch = []
        for item in itertools.islice(items, SUBMIT_BATCH):
            index += 1
            batch.append((index, codec.encode(item, key, codec.args_context(index),
                                              what=_naming(index, item))))
        if not batch:
            return
        yield batch


def submitter_identity() -> str:
    """'host pid start' of this process: a later reader can tell whether it still runs."""
    pid = os.getpid()
    return f"{socket.gethostname()} {pid} {process_start(pid) or '-'}"


def submit(
    f: Callable[..., Any], args: Iterable[object], ns: Mapping[str, Any] | None,
    session: Session,
) -> int:
    """Start ``f`` over ``args`` as one array job; return the request id."""
    _check_inputs(f, ns)
    items = iter(args)
    first = list(itertools.islice(items, 1))
    if first:
        session.choose_scheduler()  # before anything keeps the settings
    settings = session.settings
    if first:
        session.scheduler().prepare(settings)  # bad options or interpreter: refused first
    token = secrets.token_hex(16)
    broker, location, master, base_url = connect_for_submit(session)
    try:
        key = credentials.request_key(master, token)
        local = settings.scheduler_name == "local"  # local workers share our sys.path
        modules = [] if local else user_modules([f, *(ns or {}).values()])
        with by_value(modules):
            func_payload = codec.encode((f, dict(ns or {})), key, codec.FUNC_CONTEXT,
                                        what=f"function {function_name(f)}")
            # The first batch before anything is stored: most requests fit in it, and
            # an argument that cannot be pickled is then refused before any trace.
            batches = _batches(itertools.chain(first, items), key)
            head = list(itertools.islice(batches, 1))
        with Store(settings.dbfile) as store:
            with store.new_request() as (floor, add):
                request_id = broker.new_request_id(floor)
                row = RequestRow(
                    request_id=request_id, token=token, origin=broker.broker_id,
                    broker_id=broker.broker_id, broker_request=request_id, location=location,
                    function=function_name(f), n_tasks=0,
                    scheduler=settings.scheduler_name, job_ids="", created=time.time(),
                    settings=json.dumps(settings.public()), submitter=submitter_identity(),
                )
                add(row, func_payload)
            with by_value(modules):
                _push_and_start(session, broker, store, row, key, base_url, func_payload,
                                itertools.chain(head, batches))
        return request_id
    finally:
        broker.close()


def _push_and_start(
    session: Session, broker: Broker, store: Store, row: RequestRow, key: bytes, base_url: str,
    func_payload: bytes, batches: Iterator[list[tuple[int, bytes]]],
) -> None:
    """Everything after the id: undone completely if anything fails, Ctrl-C included."""
    rid = row.request_id
    job_ids: list[str] = []
    user = ""
    try:
        worker_url, user = worker_access(broker, key, row, base_url)
        broker.start_request(rid, request_meta(row, session.settings, user), func_payload)
        queue = session.settings.pilots > 0
        n_tasks = 0
        batch = next(batches, [])
        while batch:
            following = next(batches, [])  # read ahead: the last batch says it is the last
            n_tasks += len(batch)
            store.add_tasks(rid, batch, n_tasks=None if following else n_tasks)
            broker.push_tasks(rid, batch, queue=queue)
            batch = following
        row = dataclasses.replace(row, n_tasks=n_tasks)
        broker.set_meta(rid, n_tasks=n_tasks, status="submitting" if n_tasks else "done")
        if n_tasks:
            job_ids = launch(session, broker, row, key, worker_url, indices=None)
            store.update_request(rid, job_ids=",".join(job_ids))
        broker.queued(rid, ",".join(job_ids), "queued" if n_tasks else "done")
        store.update_request(rid, status="submitted" if n_tasks else "done")
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            _undo(session, broker, store, row, job_ids, user)
        raise


def _undo(session: Session, broker: Broker, store: Store, row: RequestRow,
          job_ids: list[str], user: str) -> None:
    """A submit that failed half-way leaves no job, job file, broker key or dbfile row."""
    try:
        if job_ids:
            scheduler = session.scheduler()
            scheduler.cancel(job_ids)
            scheduler.forget(session.settings, job_name(row))
    finally:
        broker.delete_request(row.request_id)
        if user:
            broker.delete_worker_user(user)
        store.delete_request(row.request_id)


def request_meta(row: RequestRow, settings: Settings, worker_user: str) -> dict[str, str | int]:
    """The broker's meta of a request (see keys.META_FIELDS)."""
    return {
        "token": row.token,
        "status": "submitting",
        "n_tasks": row.n_tasks,
        "function": row.function,
        "submitter": f"{getpass.getuser()}@{socket.gethostname()}",
        "scheduler": row.scheduler,
        "job_ids": row.job_ids,
        "python": platform.python_version(),
        "created": f"{row.created:.6f}",
        "max_attempts": settings.retries + 1,
        "retry_errors": int(settings.retry_errors),
        "retry_memory": int(settings.retry_memory_factor is not None),
        "worker_user": worker_user,
        **({"mode": "workers"} if settings.pilots else {}),
        "n_ok": 0, "n_error": 0, "n_lost": 0, "n_retried": 0, "n_rejected": 0,
    }
