"""Submitting a request: serialise, store, push to the broker, start the array.

Order matters for "nothing is lost": everything is serialised before the
broker is touched, the dbfile holds function and arguments before any task
can run, and a scheduler that refuses the job leaves neither broker keys nor
dbfile rows behind.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import platform
import socket
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any

import cloudpickle

from sheepdog.broker import codec
from sheepdog.broker.client import Broker
from sheepdog.errors import SheepdogError, SubmitError
from sheepdog.submitter import credentials, paths
from sheepdog.submitter.brokers import connect_for_submit
from sheepdog.submitter.results import job_name
from sheepdog.submitter.schedulers import ArrayJob, Scheduler
from sheepdog.submitter.session import Session
from sheepdog.submitter.store import RequestRow, Store
from sheepdog.worker_bootstrap.environment import JobFile


def positional(item: object) -> list[object]:
    """The positional arguments an ``args`` item stands for.

    A plain tuple is the arguments themselves: ``(1, 2)`` calls ``f(1, 2)``.
    Anything else, a list or a namedtuple included, is one argument:
    ``[1, 2]`` calls ``f([1, 2])``, ``5`` calls ``f(5)``.
    """
    return list(item) if type(item) is tuple else [item]


def function_name(f: Callable[..., Any]) -> str:
    module = getattr(f, "__module__", None) or "?"
    name = getattr(f, "__qualname__", None) or type(f).__qualname__
    return f"{module}.{name}"


def _installed(path: str) -> bool:
    roots = {sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(os.path.abspath(path).startswith(os.path.abspath(r) + os.sep) for r in roots)


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
                or str(name).split(".")[0] == "sheepdog" or _installed(path)):
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


def _encode_tasks(items: list[object], key: bytes) -> tuple[list[bytes], list[bytes]]:
    """(payloads for the dbfile, payloads for the broker) of every item."""
    stored, pushed = [], []
    for index, item in enumerate(items, start=1):
        what = f"arguments of task {index} ({item!r:.80})"
        stored.append(codec.encode(item, key, what=what))
        pushed.append(codec.encode(positional(item), key, what=what))
    return stored, pushed


def submit(
    f: Callable[..., Any], args: Iterable[object], ns: Mapping[str, Any] | None,
    session: Session,
) -> int:
    """Start ``f`` over ``args`` as one array job; return the request id."""
    _check_inputs(f, ns)
    items = list(args)
    settings = session.settings
    scheduler = session.scheduler()
    if items:
        scheduler.prepare(settings)  # bad options or interpreter: refused before any push
    broker, location, master, worker_url = connect_for_submit(session)
    try:
        request_id = broker.new_request_id()
        key = credentials.request_key(master, request_id)
        local = settings.scheduler_name == "local"  # local workers share our sys.path
        with by_value([] if local else user_modules([f, *(ns or {}).values()])):
            func_payload = codec.encode((f, dict(ns or {})), key,
                                        what=f"function {function_name(f)}")
            stored, pushed = _encode_tasks(items, key)
        row = RequestRow(
            broker_id=broker.broker_id, request_id=request_id, location=location,
            function=function_name(f), n_tasks=len(items), scheduler=settings.scheduler_name,
            job_ids="", created=time.time(), settings=json.dumps(settings.public()),
        )
        with Store(settings.dbfile) as store:
            store.add_request(row, func_payload, stored)
            try:
                broker.create_request(request_id, _meta(row), func_payload, pushed)
                if pushed:
                    job = ArrayJob(
                        request_id, row.n_tasks, job_name(row),
                        JobFile(broker_url=worker_url, request_id=request_id, key=key.hex(),
                                scheduler=row.scheduler),
                        paths.job_dir(job_name(row)), settings,
                    )
                    _start(broker, store, row, scheduler, job)
            except BaseException:
                broker.delete_request(request_id)
                store.delete_request(broker.broker_id, request_id)
                raise
        return request_id
    finally:
        broker.close()


def _meta(row: RequestRow) -> dict[str, str | int]:
    return {
        "status": "submitting" if row.n_tasks else "done",
        "n_tasks": row.n_tasks,
        "function": row.function,
        "submitter": f"{getpass.getuser()}@{socket.gethostname()}",
        "scheduler": row.scheduler,
        "job_ids": "",
        "python": platform.python_version(),
        "created": f"{row.created:.6f}",
        "n_ok": 0, "n_error": 0, "n_lost": 0, "n_rejected": 0,
    }


def _start(broker: Broker, store: Store, row: RequestRow, scheduler: Scheduler, job: ArrayJob
           ) -> None:
    try:
        job_ids = scheduler.submit(job)
    except SheepdogError:
        raise
    except Exception as exc:
        raise SubmitError(f"the {row.scheduler} scheduler refused the job: {exc}") from exc
    joined = ",".join(job_ids)
    broker.set_meta(row.request_id, job_ids=joined, status="queued")
    store.set_job_ids(row.broker_id, row.request_id, joined)
