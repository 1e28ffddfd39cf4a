"""The report as one self-contained HTML page: inline CSS, figures as data: URIs.

Everything taken from the dbfile (function names, hosts, arguments, error
texts) is user data and goes through ``html.escape``.
"""

from __future__ import annotations

import datetime
import statistics
from html import escape

from sheepdog.submitter.report.data import Failure, ReportData, failure_groups
from sheepdog.submitter.report.timeline import Phases, Timeline

#: Failures listed one by one up to this many; beyond, grouped by exception line.
LISTED_FAILURES = 30

#: Groups of failures shown (the largest); the rest are counted.
FAILURE_GROUPS = 40

#: Task indices, hosts listed per group of failures before '…'.
LISTED_PER_GROUP = 12

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1120px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { margin-top: 1.6em; font-size: 1.2em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border-bottom: 1px solid #ddd; padding: .25em .8em .25em 0; text-align: left;
         vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 12.5px/1.35 ui-monospace, monospace; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
img { max-width: 100%; } .note { color: #555; font-size: .92em; }
.ok { color: #2b5d8a; } .bad { color: #b0202e; }
details { margin: .3em 0; } summary { cursor: pointer; }
"""


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float | None) -> str:
    """A duration for people: 21 µs, 12.3 ms, 4.56 s, 3 min 20 s, 2 h 05 min."""
    if value is None:
        return "-"
    if value < 0:  # clocks of two machines that disagree
        return f"-{seconds(-value)}"
    if value < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    if value < 10:
        return f"{value:.3g} s"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{int(value // 60)} min {int(value % 60):02d} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60):02d} min"


def render(data: ReportData, phases: Phases, tl: Timeline, histogram: str,
           timeline: str) -> str:
    row = data.request
    title = f"sheepdog request {row.request_id}: {row.function}"
    parts = [
        f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Request {row.request_id}: <code>{escape(row.function)}</code></h1>",
        _facts(data, tl),
        _outcomes(data),
        _phases(phases),
        "<h2>Run times</h2>",
        f"<img alt='histogram of task run times' src='{histogram}'>",
        "<h2>Timeline</h2>", _timeline_caption(tl),
        f"<img alt='timeline of the worker processes' src='{timeline}'>",
        _slowest(data),
        _failures(data.failures),
        f"<p class='note'>Written {escape(when(datetime.datetime.now().timestamp()))}"
        " by <code>sheepdog report</code> from the dbfile alone.</p></body></html>\n",
    ]
    return "\n".join(parts)


def _table(rows: list[tuple[str, str]]) -> str:
    """Rows of (heading, already escaped value)."""
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>"
                               for k, v in rows) + "</table>"


def _facts(data: ReportData, tl: Timeline) -> str:
    row = data.request
    finished = data.finished
    wall = None if finished is None else finished - row.created
    settings = ", ".join(f"{name}={'default' if value is None else repr(value)}"
                         for name, value in data.settings.items())
    return _table([
        ("status", escape(row.status)),
        ("tasks", f"{row.n_tasks:,}"),
        ("scheduler", escape(row.scheduler)),
        ("job ids", escape(row.job_ids or "-")),
        ("submitted", escape(when(row.created))),
        ("last outcome", escape(when(finished))),
        ("wall time", escape(seconds(wall))),
        ("worker processes", f"{tl.processes:,}"),
        ("settings", f"<code>{escape(settings or '-')}</code>"),
    ])


def _outcomes(data: ReportData) -> str:
    counts = data.counts
    rows = [("ok", counts["ok"]), ("raised (error)", counts["error"]),
            ("lost", counts["lost"]), ("no outcome yet", data.unfinished),
            ("attempts tried again", data.retried), ("incidents", len(data.incidents))]
    body = "".join(f"<tr><th>{escape(name)}</th><td class='n'>{n:,}</td></tr>"
                   for name, n in rows)
    incidents = "".join(f"<li>{escape(text)}</li>" for text in data.incidents[:50])
    more = f"<li>… {len(data.incidents) - 50:,} more</li>" if len(data.incidents) > 50 else ""
    listed = f"<p>Incidents (stream entries that were not outcomes):</p><ul>{incidents}" \
        f"{more}</ul>" if incidents else ""
    return f"<h2>Outcomes</h2><table id='counts'>{body}</table>{listed}"


def _phases(phases: Phases) -> str:
    rows = [("queue wait (submitted → worker process started)", phases.queue),
            ("start-up (process started → first task began)", phases.startup),
            ("run (one attempt)", phases.run),
            ("worker overhead between its tasks (worker mode)", phases.overhead)]
    body = "".join(
        f"<tr><th>{escape(name)}</th><td class='n'>{len(found):,}</td>"
        f"<td class='n'>{escape(seconds(statistics.median(found)))}</td>"
        f"<td class='n'>{escape(seconds(_percentile(found, 0.95)))}</td>"
        f"<td class='n'>{escape(seconds(max(found)))}</td></tr>"
        for name, found in rows if found)
    if not body:
        return "<h2>Where the time went</h2><p>No task has run yet.</p>"
    return ("<h2>Where the time went</h2><table><tr><th></th><th class='n'>count</th>"
            "<th class='n'>median</th><th class='n'>95th percentile</th>"
            f"<th class='n'>longest</th></tr>{body}</table>")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _timeline_caption(tl: Timeline) -> str:
    note = f" <b>{escape(tl.note)}.</b>" if tl.note else ""
    return (
        "<p class='note'>One lane per worker process, grouped by host and ordered by start."
        " Grey: from the request's submission until the process started: the scheduler's"
        " queue (for a job submitted later, e.g. after the broker lost the request, the time"
        " before it too; for a one-task process that retries a task: from the end of the"
        " attempt it replaces); orange: the process starting up (the interpreter, imports)"
        " until its first task began; blue: a task running;"
        " red: a task that raised; hatched: an earlier attempt that was tried again. A worker"
        " that runs many tasks shows them one after another: the gaps between them are its"
        " own overhead (taking tasks, recording outcomes). Runs closer than a pixel are"
        " drawn as one bar. The lower panel shows how many worker processes were starting"
        " up and how many were running a task, on average over short slices of time, counting"
        f" every process and attempt.{note}</p>"
    )


def _slowest(data: ReportData) -> str:
    if not data.slowest:
        return "<h2>Slowest tasks</h2><p>No task ran to an end.</p>"
    body = "".join(
        f"<tr><td class='n'>{s.idx}</td><td>{escape(s.status)}</td><td>{escape(s.host)}</td>"
        f"<td>{escape(s.job)}</td><td class='n'>{escape(seconds(s.seconds))}</td>"
        f"<td><code>{escape(s.args)}</code></td></tr>" for s in data.slowest)
    return (f"<h2>Slowest tasks</h2><table id='slowest'><tr><th class='n'>task</th>"
            "<th>outcome</th><th>host</th><th>job</th><th class='n'>run time</th>"
            f"<th>arguments</th></tr>{body}</table>")


def _failures(failures: list[Failure]) -> str:
    if not failures:
        return "<h2>Failures</h2><p>None: every attempt that ended returned.</p>"
    head = f"<h2>Failures</h2><p>{len(failures):,} attempt(s) raised or were lost"
    if len(failures) <= LISTED_FAILURES:
        return head + ".</p>" + "".join(_failure(f) for f in failures)
    groups = failure_groups(failures)
    shown = "".join(_group(line, found) for line, found in groups[:FAILURE_GROUPS])
    rest = groups[FAILURE_GROUPS:]
    more = (f"<p>… and {len(rest):,} more kinds of failure in"
            f" {sum(len(found) for _, found in rest):,} attempts.</p>") if rest else ""
    return head + f", grouped by what they said ({len(groups):,} kinds).</p>{shown}{more}"


def _attempt(f: Failure) -> str:
    final = "" if f.final else ", tried again"
    return f"task {f.idx} attempt {f.attempt}{final} on {f.host or '?'} {f.job}".rstrip()


def _failure(f: Failure) -> str:
    where = f"<br><code>{escape(f.where)}</code>" if f.where else ""
    return (f"<details class='failure'><summary><code class='bad'>{escape(f.line)}</code>"
            f" — {escape(_attempt(f))}</summary>{where}<pre>{escape(f.text)}</pre></details>")


def _group(line: str, found: list[Failure]) -> str:
    tasks = ", ".join(str(f.idx) for f in found[:LISTED_PER_GROUP])
    hosts = sorted({f.host or "?" for f in found})
    shown_hosts = ", ".join(hosts[:LISTED_PER_GROUP]) + (" …" if len(hosts) > 12 else "")
    retried = sum(not f.final for f in found)
    example = found[0]
    where = f"<br>raised at <code>{escape(example.where)}</code>" if example.where else ""
    return (
        f"<details class='failure'><summary><b>{len(found):,} &times;</b> <code class='bad'>"
        f"{escape(line)}</code></summary><p>tasks {escape(tasks)}"
        f"{' …' if len(found) > LISTED_PER_GROUP else ''}; on {escape(shown_hosts)};"
        f" {retried:,} of them tried again{where}</p><p>The first, "
        f"{escape(_attempt(example))}:</p><pre>{escape(example.text)}</pre></details>"
    )
