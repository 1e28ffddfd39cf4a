"""This interpreter and this process, as a later reader or another Python sees them.

- ``process_start``: names a process by boot and start time, so a reused pid
  is never taken for a process that is gone (local job ids, submitters).
- ``installed`` / ``part_of_interpreter``: whether a path is this interpreter's
  own (its stdlib and site-packages, and for sys.path entries also anything
  under its prefixes, like ``python311.zip``) rather than the user's code.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path


def process_start(pid: int) -> str:
    """'<boot id>-<start time>' of process ``pid``; '' if it does not exist (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a dead process stays a zombie until init reaps it
        return ""
    return f"{boot}-{fields[19]}"


def _site_dirs() -> set[str]:
    return {sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}


def _under(path: str, dirs: Iterable[str]) -> bool:
    absolute = os.path.abspath(path)
    return any(absolute == os.path.abspath(d) or absolute.startswith(os.path.abspath(d) + os.sep)
               for d in dirs)


def installed(path: str) -> bool:
    """Whether the file ``path`` is in this interpreter's stdlib or site-packages."""
    return _under(path, _site_dirs())


def part_of_interpreter(path: str) -> bool:
    """Whether the sys.path entry ``path`` is this interpreter's, not the user's."""
    return _under(path, _site_dirs() | {sys.prefix, sys.base_prefix, sys.exec_prefix})
