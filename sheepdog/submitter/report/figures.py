"""The report's figures, drawn with matplotlib's Agg backend into embedded PNGs.

Only the report imports this module, and only after matplotlib was found:
``import sheepdog`` never loads matplotlib.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from sheepdog.submitter.report.data import Span
from sheepdog.submitter.report.timeline import Bar, Timeline

#: Colour of each kind of bar (colour-blind safe Tableau hues).
COLOURS = {
    "queue": "#cfcfcf",
    "startup": "#f28e2b",
    "ok": "#4e79a7",
    "error": "#e15759",
    "lost": "#9c755f",
}

#: Legend words of each kind of bar.
NAMES = {
    "queue": "queue wait",
    "startup": "start-up",
    "ok": "run (ok)",
    "error": "run (raised)",
    "lost": "lost (until declared)",
}

#: Lanes that each get their own label; with more, only hosts are named.
LABELLED_LANES = 40

#: Slices of time the lower panel averages over.
BINS = 250

DPI = 100
WIDTH = 11.0  # inches


def png(fig: Figure) -> str:
    """The figure as a data: URI of a PNG, for an <img> in a self-contained page."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram(spans: list[Span]) -> str:
    """Run times of the tasks' final outcomes, ok and raised stacked."""
    fig = Figure(figsize=(WIDTH, 3.6), layout="constrained")
    ax = fig.add_subplot()
    groups = {status: np.array([s.run for s in spans if s.final and s.status == status
                                and s.run is not None]) for status in ("ok", "error")}
    values = np.concatenate(list(groups.values()))
    if values.size == 0:
        ax.text(0.5, 0.5, "no task ran to an end", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return png(fig)
    low, high = max(float(values.min()), 1e-6), max(float(values.max()), 1e-5)  # µs floor
    logarithmic = high / low > 50
    bins = np.geomspace(low, high * 1.001, 50) if logarithmic else np.linspace(0, high, 50)
    kept = {status: found for status, found in groups.items() if found.size}
    ax.hist([np.clip(found, low, None) for found in kept.values()], bins=list(bins),
            stacked=True,
            color=[COLOURS[status] for status in kept],
            label=[f"{NAMES[status]}: {found.size:,}" for status, found in kept.items()])
    if logarithmic:
        ax.set_xscale("log")
    ax.set_xlabel("run time of a task (s" + (", log scale)" if logarithmic else ")"))
    ax.set_ylabel("tasks")
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def timeline(tl: Timeline) -> str:
    """The lanes of worker processes over time, above the count of tasks running."""
    lanes = len(tl.labels)
    height = min(2.4 + 0.22 * lanes, 9.0)
    fig = Figure(figsize=(WIDTH, height + 1.8), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[height, 1.4])
    _lanes(top, tl)
    _running(bottom, tl)
    bottom.set_xlabel("seconds since the request was submitted")
    bottom.set_xlim(0, max(tl.end, 1e-3) * 1.01)
    return png(fig)


def _lanes(ax: Axes, tl: Timeline) -> None:
    # Bars fill their lane when lanes are thin: gaps of a pixel or two would shimmer.
    half = 0.4 if len(tl.labels) <= LABELLED_LANES else 0.5
    for (kind, earlier), bars in _by_kind(tl.bars).items():
        ax.add_collection(PolyCollection(
            list(_boxes(bars, half)), facecolors=COLOURS[kind],
            # an edge of the bar's colour keeps a run of a millisecond visible
            edgecolors="none" if kind == "queue" else COLOURS[kind], linewidths=0.6,
            hatch="////" if earlier else None, alpha=0.55 if earlier else 1.0, zorder=2))
    if tl.alive:
        alive = np.array(tl.alive)
        ax.hlines(alive[:, 0], alive[:, 1], alive[:, 2], colors="#333333", linewidth=0.6,
                  alpha=0.5, zorder=1)
    for status, marker in (("error", "x"), ("lost", "v")):
        found = [(m.at, m.lane) for m in tl.marks if m.status == status]
        if found:
            at, lane = zip(*found, strict=True)
            ax.scatter(at, lane, marker=marker, s=22, color="#7a0010", linewidths=1.2,
                       zorder=3)
    _lane_axis(ax, tl)
    ax.legend(handles=_legend(tl), loc="lower left", bbox_to_anchor=(0, 1.01), ncol=4,
              fontsize="small", frameon=False)


def _by_kind(bars: list[Bar]) -> dict[tuple[str, bool], list[Bar]]:
    found: dict[tuple[str, bool], list[Bar]] = {}
    for bar in bars:
        found.setdefault((bar.kind, bar.earlier), []).append(bar)
    return found


def _boxes(bars: list[Bar], half: float) -> np.ndarray:
    """Rectangles (n, 4 corners, x/y) of the bars, ``2 * half`` of a lane high."""
    data = np.array([(b.start, b.start + b.length, b.lane) for b in bars])
    x0, x1, y = data[:, 0], data[:, 1], data[:, 2]
    return np.stack([np.stack([x0, y - half], 1), np.stack([x1, y - half], 1),
                     np.stack([x1, y + half], 1), np.stack([x0, y + half], 1)], 1)


def _lane_axis(ax: Axes, tl: Timeline) -> None:
    lanes = len(tl.labels)
    if not lanes:
        ax.text(0.5, 0.5, "no worker process has recorded a task yet", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_yticks([])
        return
    ax.set_ylim(lanes - 0.5, -0.5)  # the first lane on top
    if lanes <= LABELLED_LANES:
        ax.set_yticks(range(lanes), tl.labels, fontsize="small")
    else:
        ax.set_yticks([(first + last) / 2 for _, first, last in tl.hosts],
                      [f"{host}\n({last - first + 1} lanes)" for host, first, last in tl.hosts],
                      fontsize="small")
    for _, first, _last in tl.hosts[1:]:
        ax.axhline(first - 0.5, color="#888888", linewidth=0.8)
    ax.set_ylabel("worker processes, by host")
    ax.grid(axis="x", alpha=0.3)


def _legend(tl: Timeline) -> list[Patch | Line2D]:
    kinds = {bar.kind for bar in tl.bars}
    handles: list[Patch | Line2D] = [Patch(color=COLOURS[k], label=NAMES[k])
                                     for k in COLOURS if k in kinds]
    if any(bar.earlier for bar in tl.bars):
        handles.append(Patch(facecolor="#bbbbbb", hatch="////", alpha=0.55,
                             label="earlier attempt (tried again)"))
    handles.append(Line2D([], [], color="#333333", linewidth=0.6,
                          label="worker alive (gaps: its own overhead)"))
    for status, marker, word in (("error", "x", "raised"), ("lost", "v", "lost")):
        if any(m.status == status for m in tl.marks):
            handles.append(Line2D([], [], marker=marker, color="#7a0010", linestyle="none",
                                  label=f"attempt {word}"))
    return handles


def _running(ax: Axes, tl: Timeline) -> None:
    """How many worker processes were starting up and how many tasks were running, on
    average over each of ``BINS`` slices of time (every process and attempt: nothing
    sampled)."""
    edges = np.linspace(0.0, max(tl.end, 1e-3), BINS + 1)
    startup = _occupancy(tl.starting, edges)
    running = _occupancy(tl.running, edges)
    ax.stackplot(edges[:-1], startup, running, step="post",
                 colors=[COLOURS["startup"], COLOURS["ok"]],
                 labels=["starting up", "running a task"])
    ax.set_ylabel("processes\n(average)")
    ax.set_ylim(0, max(float((startup + running).max()), 1.0) * 1.4)  # room for the legend
    ax.legend(loc="upper right", fontsize="small", ncol=2)
    ax.grid(alpha=0.3)


def _occupancy(intervals: list[tuple[float, float]], edges: np.ndarray) -> np.ndarray:
    """How many of ``intervals`` were open, on average over each slice between ``edges``."""
    if not intervals:
        return np.zeros(len(edges) - 1)
    spans = np.array(intervals, dtype=float)
    times = np.concatenate([spans[:, 0], spans[:, 1]])
    steps = np.concatenate([np.ones(len(spans)), -np.ones(len(spans))])
    order = np.argsort(times, kind="stable")
    times, open_after = times[order], np.cumsum(steps[order])
    # the integral of the open count at each event, then read at the edges
    area = np.concatenate([[0.0], np.cumsum(open_after[:-1] * np.diff(times))])
    at_edges = np.interp(edges, times, area)
    average: np.ndarray = np.diff(at_edges) / np.diff(edges)
    return average
