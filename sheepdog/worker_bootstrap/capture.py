"""Capture what a task writes to fds 1 and 2, keeping a tail for the record.

File descriptors are redirected, not just ``sys.stdout``, so output from C
extensions and child processes is caught too. Everything captured is passed on
to the original descriptors afterwards, so the scheduler's own log files still
hold the whole output.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

#: Bytes of stdout and of stderr kept with each outcome.
TAIL_BYTES = 4096


@dataclass
class Captured:
    stdout: str = ""
    stderr: str = ""


def tail(f: IO[bytes]) -> str:
    """The last TAIL_BYTES of a file, as text."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - TAIL_BYTES))
    return f.read().decode("utf-8", errors="replace")


def _pass_on(f: IO[bytes], fd: int) -> None:
    f.seek(0)
    while chunk := f.read(1 << 16):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    result = Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = (os.dup(1), os.dup(2))
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield result
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            result.stdout = tail(out)
            result.stderr = tail(err)
            _pass_on(out, 1)
            _pass_on(err, 2)
