"""What a report shows, read from the dbfile alone (the broker may be long gone).

The dbfile is opened read-only: a report never changes what it reports on.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sheepdog.errors import SheepdogError
from sheepdog.submitter import credentials, results
from sheepdog.submitter.store import RequestRow, Store

#: Rows of the slowest-tasks table.
SLOWEST = 20

#: Characters of an argument repr shown before it is cut.
ARGS_CHARS = 120

#: Settings the header shows, in this order (the rest rarely explain a run's shape).
SHOWN_SETTINGS = ("host", "workers", "local_workers", "max_running", "retries",
                  "retry_errors", "retry_memory_factor", "ge_opts", "slurm_opts", "rq_queue")


class Span(NamedTuple):
    """One attempt of one task: where and when it ran (unix seconds; None: not known)."""

    idx: int
    attempt: int
    status: str  # ok | error | lost
    final: bool  # the task's outcome (False: an earlier attempt, retried or replaced)
    host: str
    pid: int | None
    job: str
    booted: float | None  # the worker process's start
    started: float | None
    finished: float | None

    @property
    def run(self) -> float | None:
        """Seconds the attempt ran, or None."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


@dataclass(frozen=True)
class Failure:
    """One attempt that raised or was lost."""

    idx: int
    attempt: int
    status: str
    final: bool
    host: str
    job: str
    line: str  # the exception line ('ValueError: bad input'), or the reason it was lost
    where: str  # the innermost 'File ..., line N, in f' of its traceback, or ''
    text: str  # the whole error text


@dataclass(frozen=True)
class Slow:
    """A row of the slowest-tasks table."""

    idx: int
    status: str
    host: str
    job: str
    seconds: float
    args: str  # repr, cut to ARGS_CHARS


@dataclass(frozen=True)
class ReportData:
    request: RequestRow
    settings: dict[str, Any]
    counts: dict[str, int]  # ok, error, lost
    retried: int  # attempts that ended and were tried again
    incidents: list[str]
    spans: list[Span]
    failures: list[Failure]
    slowest: list[Slow] = field(default_factory=list)

    @property
    def finished(self) -> float | None:
        """When the last attempt ended."""
        ends = [s.finished for s in self.spans if s.finished is not None]
        return max(ends) if ends else None

    @property
    def unfinished(self) -> int:
        return self.request.n_tasks - sum(self.counts.values())


def read(request_id: int, dbfile: str | os.PathLike[str]) -> ReportData:
    """Everything the report shows about ``request_id``, from ``dbfile`` only."""
    with Store(dbfile, create=False, readonly=True) as store:
        row = store.request(request_id)
        spans = [Span(r["idx"], r["attempt"], r["status"], bool(r["final"]), r["host"] or "",
                      r["pid"], r["job"] or "", r["booted"], r["started"], r["finished"])
                 for r in store.attempt_times(request_id)]
        failures = [_failure(r) for r in store.failed_attempts(request_id)]
        slowest = _slowest(store, row, spans)
        return ReportData(
            request=row, settings=_settings(row.settings, row.scheduler),
            counts=store.counts(request_id), retried=store.retried(request_id),
            incidents=store.incidents(request_id),
            spans=spans, failures=failures, slowest=slowest,
        )


def _settings(text: str, scheduler: str) -> dict[str, Any]:
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    if scheduler != "rq":
        found.pop("rq_queue", None)
    return {name: found.get(name) for name in SHOWN_SETTINGS
            if found.get(name) not in (None, [], "") or name in ("workers", "retries")}


def exception_line(text: str) -> str:
    """The line that says what went wrong: a traceback's last unindented line
    ('ValueError: bad input'); for any other text (a lost task's reason, sheepdog's
    own one-line errors, a MemoryError's explanation), its first line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "(no error text)"
    if not lines[0].startswith("Traceback (most recent call last)"):
        return lines[0]
    unindented = [line for line in lines if not line[:1].isspace()]
    return unindented[-1]


def _where(text: str) -> str:
    """The innermost frame of a traceback: where the exception was raised."""
    frames = [line.strip() for line in text.splitlines() if line.lstrip().startswith("File ")]
    return frames[-1] if frames else ""


def _failure(row: Any) -> Failure:
    text = row["error"] or ""
    if row["status"] == "lost" and not text:
        text = "lost (no reason recorded)"
    return Failure(row["idx"], row["attempt"], row["status"], bool(row["final"]),
                   row["host"] or "", row["job"] or "", exception_line(text), _where(text), text)


def _slowest(store: Store, row: RequestRow, spans: list[Span]) -> list[Slow]:
    """The final outcomes that ran longest (lost ones did not run to an end)."""
    ran = [s for s in spans if s.final and s.status != "lost" and s.run is not None]
    ran.sort(key=lambda s: s.run or 0.0, reverse=True)
    top = ran[:SLOWEST]
    key = _key(row)
    payloads = dict(store.task_args(row.request_id, [s.idx for s in top]))
    return [Slow(s.idx, s.status, s.host, s.job, s.run or 0.0,
                 args_repr(payloads[s.idx], key, s.idx)) for s in top]


def _key(row: RequestRow) -> bytes | None:
    """The request's key, if this machine holds its broker's master key."""
    try:
        return credentials.key_for(row.origin, row.token)
    except (OSError, ValueError, KeyError, SheepdogError):
        return None


def args_repr(payload: bytes, key: bytes | None, idx: int) -> str:
    """The repr of a task's arguments, cut to ``ARGS_CHARS``; '(pickled)' when they
    cannot be loaded here (no key to check them, or a module they need is missing)."""
    try:
        text = repr(results.decode_args(payload, key, idx))
    except Exception:  # no key, or whatever unpickling raises: the report goes on
        return "(pickled)"
    return text if len(text) <= ARGS_CHARS else text[: ARGS_CHARS - 1] + "…"


def failure_groups(failures: list[Failure]) -> list[tuple[str, list[Failure]]]:
    """Failures grouped by their exception line, the largest group first."""
    groups: dict[str, list[Failure]] = {}
    for failure in failures:
        groups.setdefault(failure.line, []).append(failure)
    order = Counter({line: len(found) for line, found in groups.items()})
    return [(line, groups[line]) for line, _ in order.most_common()]
