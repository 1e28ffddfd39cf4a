"""``sheepdog report``: one self-contained HTML page about a request, from its dbfile.

    data      what the page shows, read from the dbfile opened read-only
    timeline  worker processes as lanes and their phases as bars (no plotting)
    figures   the run-time histogram and the timeline, drawn with matplotlib
    page      the HTML, every piece of user data escaped

matplotlib is an optional extra (``pip install 'sheepdog[report]'``), imported
only when a report is written. See docs/report.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from sheepdog.errors import MissingExtra


def _need_matplotlib() -> None:
    """Raise MissingExtra unless matplotlib can be imported. (figures draws on Agg
    canvases of its own: the process's pyplot backend is left as it is.)"""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtra("sheepdog report", "matplotlib", "report") from None


def write_report(request_id: int, dbfile: str | os.PathLike[str],
                 path: str | os.PathLike[str]) -> Path:
    """Write the report of ``request_id`` in ``dbfile`` to ``path``; return the path.

    Reads the dbfile only: works after the broker is gone, and changes nothing.
    """
    _need_matplotlib()
    from sheepdog.submitter.report import data, figures, page, timeline

    found = data.read(request_id, dbfile)
    created = found.request.created
    tl = timeline.build(found.spans, created)
    text = page.render(found, timeline.phases(found.spans, created), tl,
                       figures.histogram(found.spans),
                       figures.timeline(tl))
    target = Path(path)
    target.write_text(text, encoding="utf-8")
    return target
