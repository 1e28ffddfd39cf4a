"""The timeline of a request: worker processes as lanes, their phases as bars.

Each worker process (host, pid and job reference) gets a lane, ordered by
host and then by its start. On a lane: the **queue wait** from the request's
submission (or, for a one-task process retrying a task, from the end of the
attempt it replaces: its job was submitted then) to the process's start
(``booted``), its **start-up** up to its first task, then each task's **run**.
A worker that runs many tasks (worker mode) shows them one after another; the
gaps between them are its own overhead. Times are seconds since submission.

A figure has room for ``MAX_LANES`` lanes: with more processes, the ones with
a failure (up to half the room) and an even sample of the others are shown,
and the figure says so. Runs closer together than one pixel on a
lane are drawn as one bar, so 10^5 tasks draw as fast as a few hundred.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from sheepdog.submitter.report.data import Span

#: Most lanes a timeline draws (about two pixels each in the figure).
MAX_LANES = 400

#: Horizontal resolution: runs on a lane nearer than 1/RESOLUTION of the whole
#: timeline are merged into one bar.
RESOLUTION = 3000


class Bar(NamedTuple):
    lane: int
    start: float  # seconds since submission
    length: float  # seconds
    kind: str  # queue | startup | ok | error | lost
    earlier: bool  # an attempt that was tried again


class Mark(NamedTuple):
    lane: int
    at: float  # seconds since submission
    status: str  # error | lost
    earlier: bool


@dataclass
class Process:
    """One worker process: the attempts it ran, in order."""

    host: str
    name: str  # 'pid 1234 job 77.3': the process, and the scheduler's name of its task
    spans: list[Span] = field(default_factory=list)

    @property
    def booted(self) -> float | None:
        return min((s.booted for s in self.spans if s.booted is not None), default=None)

    @property
    def first(self) -> float:
        return min(s.started for s in self.spans if s.started is not None)

    @property
    def last(self) -> float:
        return max(s.finished or s.started or 0.0 for s in self.spans)

    @property
    def failed(self) -> bool:
        return any(s.status != "ok" for s in self.spans)


@dataclass
class Timeline:
    bars: list[Bar]
    marks: list[Mark]
    alive: list[tuple[int, float, float]]  # lane, from, to: a worker process's whole life
    labels: list[str]  # one per lane shown
    hosts: list[tuple[str, int, int]]  # host, first lane, last lane
    processes: int  # worker processes in all
    note: str  # what was left out or sampled, for the caption
    end: float  # seconds from submission to the last outcome
    # Of every process and attempt, sampled or not: (from, to) in seconds since submission.
    starting: list[tuple[float, float]] = field(default_factory=list)  # process start-ups
    running: list[tuple[float, float]] = field(default_factory=list)  # attempts that ended


def processes(spans: list[Span]) -> tuple[list[Process], int]:
    """Worker processes in lane order (host, then start), and how many attempts have no
    start to be drawn at (lost ones, as a worker's death or a cancel recorded them)."""
    found: dict[tuple[str, str], Process] = {}
    unplaced = 0
    for span in spans:
        if span.started is None:
            unplaced += 1
            continue
        name = f"pid {span.pid}" if span.pid is not None else f"task {span.idx}"
        if span.job:
            name += f" job {span.job}"
        # with the job reference, a pid used again by a later task is another process
        found.setdefault((span.host, name), Process(span.host or "?", name)).spans.append(span)
    for process in found.values():
        process.spans.sort(key=lambda s: s.started or 0.0)
    ordered = sorted(found.values(), key=lambda p: (p.host, p.booted or p.first))
    return ordered, unplaced


def sample(ordered: list[Process], limit: int = MAX_LANES) -> tuple[list[Process], str]:
    """At most ``limit`` processes: those with a failure (up to half the room) and an
    even sample of the rest, in their order; and a sentence saying what was kept."""
    if len(ordered) <= limit:
        return ordered, ""
    failed = [p for p in ordered if p.failed]
    kept_failed = _evenly(failed, limit // 2)
    others = [p for p in ordered if not p.failed]
    kept_others = _evenly(others, limit - len(kept_failed))
    kept = {id(p) for p in kept_failed + kept_others}
    shown = [p for p in ordered if id(p) in kept]
    said = f"{len(kept_failed)} of the {len(failed)} with a failure and " if failed else ""
    return shown, (f"showing {len(shown):,} of {len(ordered):,} worker processes: {said}"
                   f"every {math.ceil(len(others) / max(len(kept_others), 1))}th other one")


def _evenly(items: list[Process], n: int) -> list[Process]:
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def build(spans: list[Span], created: float) -> Timeline:
    """The timeline of ``spans`` for a request submitted at ``created`` (unix time)."""
    ordered, unplaced = processes(spans)
    shown, note = sample(ordered)
    waits = _waits(spans, ordered, created)
    end = max([s.finished or s.started or created for s in spans] + [created]) - created
    merge_below = max(end, 1e-3) / RESOLUTION
    timeline = Timeline([], [], [], [], [], len(ordered), note, end)
    _occupied(timeline, ordered, created)
    for lane, process in enumerate(shown):
        _lane(timeline, lane, process, waits.since(process) - created, created, merge_below)
    timeline.hosts = _host_blocks(shown)
    if unplaced:
        timeline.note = "; ".join(filter(None, [timeline.note, (
            f"{unplaced:,} lost attempt(s) without a recorded start are not drawn"
            " (they are among the failures below)")]))
    return timeline


class _Waits:
    """When a process began to wait for its start: the request's submission; with one
    process per task, a retry's from the end of the attempt it replaces (its job was
    submitted then). The dbfile does not say when a job was submitted: a worker of a
    job submitted later (a re-pushed request) shows the time before it as waiting too."""

    def __init__(self, ended: dict[tuple[int, int], float], created: float,
                 per_task: bool) -> None:
        self.ended = ended
        self.created = created
        self.per_task = per_task

    def since(self, process: Process) -> float:
        if not self.per_task:
            return self.created
        first = process.spans[0]
        return self.ended.get((first.idx, first.attempt - 1), self.created)


def _waits(spans: list[Span], ordered: list[Process], created: float) -> _Waits:
    ended = {(s.idx, s.attempt): s.finished for s in spans if s.finished is not None}
    per_task = all(len(p.spans) == 1 for p in ordered)
    return _Waits(ended, created, per_task)


def _lane(timeline: Timeline, lane: int, process: Process, queued: float, created: float,
          merge_below: float) -> None:
    first = process.first - created
    booted = process.booted
    up = first if booted is None else min(booted - created, first)
    if up > queued:
        timeline.bars.append(Bar(lane, queued, up - queued, "queue", False))
    if first > up:
        timeline.bars.append(Bar(lane, up, first - up, "startup", False))
    timeline.alive.append((lane, up, process.last - created))
    timeline.labels.append(f"{process.host} {process.name}")
    pending: Bar | None = None
    for span in process.spans:
        start = (span.started or 0.0) - created
        length = max((span.finished or span.started or 0.0) - created - start, 0.0)
        bar = Bar(lane, start, length, span.status, not span.final)
        if span.status != "ok":
            timeline.marks.append(Mark(lane, start + length, span.status, not span.final))
        if pending is not None and pending.kind == bar.kind and pending.earlier == bar.earlier \
                and bar.start - (pending.start + pending.length) < merge_below:
            pending = pending._replace(length=bar.start + bar.length - pending.start)
            continue
        if pending is not None:
            timeline.bars.append(pending)
        pending = bar
    if pending is not None:
        timeline.bars.append(pending)


def _occupied(timeline: Timeline, ordered: list[Process], created: float) -> None:
    for process in ordered:
        booted = process.booted
        if booted is not None:
            timeline.starting.append((booted - created, max(process.first, booted) - created))
        timeline.running += [((s.started or 0.0) - created, (s.finished or 0.0) - created)
                             for s in process.spans
                             if s.status != "lost" and s.finished is not None]


def _host_blocks(shown: list[Process]) -> list[tuple[str, int, int]]:
    blocks: list[tuple[str, int, int]] = []
    for lane, process in enumerate(shown):
        if blocks and blocks[-1][0] == process.host:
            blocks[-1] = (process.host, blocks[-1][1], lane)
        else:
            blocks.append((process.host, lane, lane))
    return blocks


class Phases(NamedTuple):
    """Seconds of each phase, one value per process (queue, startup) or attempt (run)."""

    queue: list[float]
    startup: list[float]
    run: list[float]
    overhead: list[float]  # per worker that ran several tasks: its life less its runs


def phases(spans: list[Span], created: float) -> Phases:
    """How long tasks waited, started and ran, over every worker process."""
    ordered, _ = processes(spans)
    waits = _waits(spans, ordered, created)
    queue: list[float] = []
    startup: list[float] = []
    overhead: list[float] = []
    for process in ordered:
        booted = process.booted
        if booted is not None:
            queue.append(max(booted - waits.since(process), 0.0))
            startup.append(max(process.first - booted, 0.0))
        if len(process.spans) > 1:
            busy = sum(s.run or 0.0 for s in process.spans)
            overhead.append(max(process.last - process.first - busy, 0.0))
    run = [s.run for s in spans if s.run is not None and s.status != "lost"]
    return Phases(queue, startup, run, overhead)
