"""The functions users call: ``map``, ``map_async``, ``get_results``, ``get_errors``,
``cancel`` and ``resubmit``.

Names and arguments follow the original Sheepdog, so its examples run as
they are; additions are keyword-only.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sheepdog.errors import ConfigError, TaskErrors, TaskFailure
from sheepdog.submitter import profiles, results
from sheepdog.submitter.config import Settings
from sheepdog.submitter.resubmit import FIXED_KEYS, resubmit_request
from sheepdog.submitter.schedulers import job_id_list
from sheepdog.submitter.session import Session
from sheepdog.submitter.submit import submit
from sheepdog.submitter.supervise import cancel_request

#: A config dict, a Settings, or the name of a profile in the config file (``profiles``).
Config = Mapping[str, Any] | Settings | str | None


def map_async(
    f: Callable[..., Any], args: Iterable[Any], config: Config = None,
    ns: Mapping[str, Any] | None = None,
) -> int:
    """Start ``f`` over every item of ``args`` as one array job; return the request id.

    A plain tuple item is unpacked into positional arguments (``(1, 2)`` calls
    ``f(1, 2)``); any other item is passed as the one argument. ``ns`` holds
    names ``f`` finds as globals when it runs (helper functions, constants).
    Collect with ``get_results(request_id, dbfile)``, from any later process.
    ``config`` may name a profile of the config file (docs/configuration.md).
    """
    with Session(profiles.resolve(config)) as session:
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
    items = iter(args)
    first = list(itertools.islice(items, 1))
    if not first:
        return []
    settings = profiles.resolve(config)
    with Session(settings) as session:  # one head-node connection for submit and wait
        request_id = submit(f, itertools.chain(first, items), ns, session)
        values, failures = _wait(request_id, settings.dbfile, session, verbose, timeout)
    if failures and raise_errors:
        raise TaskErrors(request_id, failures)
    if failures and verbose:
        dbfile = "" if settings.dbfile == _default_dbfile() else f", {settings.dbfile!r}"
        print(
            f"sheepdog: {len(failures)} of {len(values)} tasks of request {request_id} failed"
            f" (None in their places); see sheepdog.get_errors({request_id}{dbfile})"
            f" or `sheepdog errors {request_id}`",
            file=sys.stderr,
        )
    return values


def _default_dbfile() -> str | None:
    """The dbfile ``get_errors(request_id)`` reads; None if the config file is broken
    (a Settings passed to map does not read it, and the tasks have run)."""
    try:
        return profiles.dbfile()
    except ConfigError:
        return None


def _wait(request_id: int, dbfile: str, session: Session, verbose: bool,
          timeout: float | None) -> tuple[list[Any], list[TaskFailure]]:
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
        # Only the results are kept; arguments are read back for failed tasks alone.
        values, failures = [], []
        for o in results.iter_outcomes(request, args=lambda status: status != "ok"):
            values.append(o.value)
            if o.status != "ok":
                failures.append(TaskFailure(o.index, o.args, o.error or "", o.attempt or 0))
        return values, failures


def get_results(
    request_id: int, dbfile: str | None = None, block: bool = True, verbose: bool = False,
    timeout: float | None = None,
) -> list[tuple[Any, Any]]:
    """``[(args, result), ...]`` of a request, in the order of its ``args``.

    With ``block`` it waits until every task has an outcome; without, it
    returns what has arrived so far, with None for the tasks that have no
    outcome yet (as the original Sheepdog did). A failed task's result is None.
    Without ``dbfile``: the default profile's (or ``$SHEEPDOG_DBFILE``), else
    ./sheepdog.sqlite; the same for ``get_errors``, ``cancel`` and ``resubmit``.
    """
    with results.open_request(request_id, dbfile or profiles.dbfile()) as request:
        if block:
            results.wait(request, verbose=verbose, timeout=timeout)
        else:
            results.collect_available(request)
        return [(o.args, o.value) for o in results.outcomes(request)]


class TaskError(tuple[Any, str]):
    """``(args, error_text)`` of a failed task, as ``get_errors`` returns it.

    It unpacks and compares as that pair, and also says which task it was
    and how its attempts went: ``task`` (its 1-based index), ``status``
    (error or lost), ``attempt`` (of the final outcome) and ``history`` (one
    line per earlier attempt that was retried).
    """

    task: int
    status: str
    attempt: int
    history: list[str]

    def __new__(cls, args: Any, error: str, task: int, status: str, attempt: int,
                history: list[str]) -> TaskError:
        self = super().__new__(cls, (args, error))
        self.task, self.status, self.attempt, self.history = task, status, attempt, history
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (self[0], self[1], self.task, self.status, self.attempt, self.history)


def _history_line(row: Any) -> str:
    first = (row["error"] or "").strip().splitlines()
    where = f" on {row['host']}" if row["host"] else ""
    return f"attempt {row['attempt']}: {row['status']}{where}: {first[-1] if first else ''}"


def get_errors(request_id: int, dbfile: str | None = None) -> list[tuple[Any, str]]:
    """``[(args, error_text), ...]`` for every failed task so far, with remote tracebacks.

    Each item is a ``TaskError``: it also carries the task's index, status,
    attempt number and earlier attempts; a task that took more than one
    attempt has a last line in its text saying how the earlier ones ended.
    Workers that asked for an index outside the request, and stream entries
    whose signature did not check out, appear as ``(None, reason)``.
    """
    with results.open_request(request_id, dbfile or profiles.dbfile()) as request:
        results.collect_available(request)
        failed = results.outcomes(request, statuses=("error", "lost"), values=False)
        history = request.store.history(request_id)
        errors: list[tuple[Any, str]] = []
        for o in failed:
            earlier = [_history_line(row) for row in history.get(o.index, [])]
            text = o.error or ""
            if earlier:
                text = text.rstrip("\n") + "\n[sheepdog: attempt " + str(o.attempt) + \
                    "; earlier " + "; ".join(earlier) + "]"
            errors.append(TaskError(o.args, text, o.index, o.status or "", o.attempt or 0,
                                    earlier))
        return errors + [(None, text) for text in results.incidents(request)]


def cancel(request_id: int, dbfile: str | None = None) -> int:
    """Stop a request: its jobs are killed, tasks without an outcome are recorded as lost.

    Returns how many tasks were cancelled.
    """
    with results.open_request(request_id, dbfile or profiles.dbfile()) as request:
        broker = request.connect()
        cancelled = cancel_request(request, broker, "cancelled by the user")
        request.session.scheduler().cancel(job_id_list(request.row.job_ids))
        results.collect_available(request)
        return max(cancelled, 0)


def resubmit(
    request_id: int, dbfile: str | None = None, *, failed: bool = True, lost: bool = True,
    config: Mapping[str, Any] | str | None = None, verbose: bool = False,
) -> int:
    """Run the failed and/or lost tasks of a finished request again; return how many.

    Function, namespace and arguments come from the dbfile, so this works
    even if the broker has forgotten the request. Tasks that never ran (a
    cancelled or never fully submitted request) always go. New outcomes
    replace the old ones in the same request: ``get_results(request_id)``
    waits for them and then shows the new values; the old ones stay in the
    history that ``get_errors`` reports. ``config`` changes settings for the
    new run (e.g. ``{"ge_opts": ["-l mem_grab=8G"], "retries": 2}``), or
    names a profile whose own keys do (those naming where a request lives,
    ``FIXED_KEYS``, are left out: it runs again where it was submitted).
    Neither the default profile nor ``SHEEPDOG_*`` variables change a request's settings.
    """
    if isinstance(config, str):
        dbfile = dbfile or profiles.dbfile(config)
        config = {k: v for k, v in profiles.profile(config).items() if k not in FIXED_KEYS}
    return resubmit_request(request_id, dbfile or profiles.dbfile(), failed=failed, lost=lost,
                            config=config, verbose=verbose)
