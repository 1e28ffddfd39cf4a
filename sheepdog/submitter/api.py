"""The functions users call: ``map``, ``map_async``, ``get_results``, ``get_errors``, ``cancel``.

Names and arguments follow the original Sheepdog, so its examples run as
they are; additions are keyword-only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sheepdog.errors import TaskErrors, TaskFailure
from sheepdog.submitter import results
from sheepdog.submitter.config import Settings
from sheepdog.submitter.schedulers import job_id_list
from sheepdog.submitter.session import Session
from sheepdog.submitter.submit import submit

Config = Mapping[str, Any] | Settings | None

_DEFAULT_DBFILE = Settings().dbfile


def map_async(
    f: Callable[..., Any], args: Iterable[Any], config: Config = None,
    ns: Mapping[str, Any] | None = None,
) -> int:
    """Start ``f`` over every item of ``args`` as one array job; return the request id.

    A plain tuple item is unpacked into positional arguments (``(1, 2)`` calls
    ``f(1, 2)``); any other item is passed as the one argument. ``ns`` holds
    names ``f`` finds as globals when it runs (helper functions, constants).
    Collect with ``get_results(request_id, dbfile)``, from any later process.
    """
    with Session(Settings.from_config(config)) as session:
        return submit(f, args, ns, session)


def map(
    f: Callable[..., Any], args: Iterable[Any], config: Config = None,
    ns: Mapping[str, Any] | None = None, verbose: bool = True, *,
    raise_errors: bool = False, timeout: float | None = None,
) -> list[Any]:
    """Run ``f`` over ``args`` and return the results in the order of ``args``.

    A task that failed gives ``None`` in its place, and (when ``verbose``) a
    line on stderr says how many failed and how to see why; with
    ``raise_errors=True`` a ``TaskErrors`` carrying every remote traceback is
    raised instead. ``timeout`` (seconds) bounds the wait: ``ResultsTimeout``.
    """
    items = list(args)
    if not items:
        return []
    settings = Settings.from_config(config)
    with Session(settings) as session:  # one head-node connection for submit and wait
        request_id = submit(f, items, ns, session)
        outcomes = _wait(request_id, settings.dbfile, session, verbose, timeout)
    failures = [TaskFailure(o.index, o.args, o.error or "") for o in outcomes if o.status != "ok"]
    if failures and raise_errors:
        raise TaskErrors(request_id, failures)
    if failures and verbose:
        dbfile = "" if settings.dbfile == _DEFAULT_DBFILE else f", {settings.dbfile!r}"
        print(
            f"sheepdog: {len(failures)} of {len(items)} tasks of request {request_id} failed"
            f" (None in their places); see sheepdog.get_errors({request_id}{dbfile})"
            f" or `sheepdog errors {request_id}`",
            file=sys.stderr,
        )
    return [o.value for o in outcomes]


def _wait(request_id: int, dbfile: str, session: Session, verbose: bool,
          timeout: float | None) -> list[results.Outcome]:
    with results.open_request(request_id, dbfile, session) as request:
        try:
            results.wait(request, verbose=verbose, timeout=timeout)
        except KeyboardInterrupt:
            print(
                f"\nsheepdog: request {request_id} keeps running; collect it with"
                f" sheepdog.get_results({request_id}) or stop it with `sheepdog cancel"
                f" {request_id}`",
                file=sys.stderr,
            )
            raise
        return results.outcomes(request)


def get_results(
    request_id: int, dbfile: str | None = None, block: bool = True, verbose: bool = False,
    timeout: float | None = None,
) -> list[tuple[Any, Any]]:
    """``[(args, result), ...]`` of a request, in the order of its ``args``.

    With ``block`` it waits until every task has an outcome; without, it
    returns the tasks that have one so far. A failed task's result is None.
    """
    with results.open_request(request_id, dbfile or _DEFAULT_DBFILE) as request:
        if block:
            results.wait(request, verbose=verbose, timeout=timeout)
        else:
            results.collect_available(request)
        return [(o.args, o.value) for o in results.outcomes(request) if o.status is not None]


def get_errors(request_id: int, dbfile: str | None = None) -> list[tuple[Any, str]]:
    """``[(args, error_text), ...]`` for every failed task so far, with remote tracebacks.

    Workers that asked for an index outside the request appear as ``(None, reason)``.
    """
    with results.open_request(request_id, dbfile or _DEFAULT_DBFILE) as request:
        results.collect_available(request)
        errors = [
            (o.args, o.error or "") for o in results.outcomes(request)
            if o.status in ("error", "lost")
        ]
        return errors + [(None, text) for text in results.incidents(request)]


def cancel(request_id: int, dbfile: str | None = None) -> int:
    """Stop a request: its job is killed, tasks without an outcome are recorded as lost.

    Returns how many tasks were cancelled.
    """
    with results.open_request(request_id, dbfile or _DEFAULT_DBFILE) as request:
        broker = request.connect()
        cancelled = broker.cancel(request_id, "cancelled by the user")
        job_ids = job_id_list(request.row.job_ids)
        request.session.scheduler().cancel(job_ids)
        results.collect_available(request)
        return max(cancelled, 0)
