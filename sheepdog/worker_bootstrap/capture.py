"""Capture what a task writes to fds 1 and 2, keeping a tail for the record.

File descriptors are redirected, not just ``sys.stdout``, so output from C
extensions and child processes is caught too. They go to temporary files, not
pipes: a writer never blocks on us, even one that holds the GIL. ``pump``
passes what arrived since the last call on to the original descriptors; the
worker's keeper thread calls it every second, so the scheduler's own log files
hold a task's output as it runs - including the last words of a task that is
then killed.
"""

from __future__ import annotations

import _thread  # threading.Lock is _thread.allocate_lock; threading costs more
import os
import sys

TYPE_CHECKING = False  # typing costs more than a worker's start may
if TYPE_CHECKING:
    from typing import IO

#: Bytes of stdout and of stderr kept with each outcome.
TAIL_BYTES = 4096


def tail(f: IO[bytes]) -> str:
    """The last TAIL_BYTES of a file, as text."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - TAIL_BYTES))
    return f.read().decode("utf-8", errors="replace")


def temporary_file() -> IO[bytes]:
    """An anonymous file, read and written, gone when closed: ``tempfile.TemporaryFile()``.

    On Linux it is opened directly (O_TMPFILE) in $TMPDIR (or $TEMP, $TMP,
    /tmp): the tempfile module imports random, shutil, bz2 and lzma, which
    would cost every array task more than it starts in. Elsewhere, or on a
    file system without O_TMPFILE, tempfile does it.
    """
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        env = os.environ
        directory = env.get("TMPDIR") or env.get("TEMP") or env.get("TMP") or "/tmp"
        try:
            fd = os.open(directory, flag | os.O_RDWR, 0o600)
        except OSError:
            pass
        else:
            return open(fd, "w+b")
    import tempfile

    return tempfile.TemporaryFile()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Stream:
    """One redirected descriptor: its temp file, the saved original, and how much was passed on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.file = temporary_file()
        self.saved = -1
        self.sent = 0

    def redirect(self) -> None:
        """Start afresh (the file is reused: a worker runs many tasks) and redirect."""
        self.file.truncate(0)
        self.file.seek(0)
        self.sent = 0
        self.saved = os.dup(self.fd)
        os.dup2(self.file.fileno(), self.fd)

    def restore(self) -> None:
        os.dup2(self.saved, self.fd)
        self.pump()
        os.close(self.saved)
        self.saved = -1

    def pump(self) -> None:
        if self.saved < 0:
            return
        while chunk := os.pread(self.file.fileno(), 1 << 16, self.sent):
            _write_all(self.saved, chunk)
            self.sent += len(chunk)


class Capture:
    """fds 1 and 2 redirected to temp files from ``start`` to ``stop``, again and again
    (one pair of files per worker, not per task); ``close`` when done."""

    def __init__(self) -> None:
        self._streams: list[_Stream] = []
        self._lock = _thread.allocate_lock()
        self.stdout = ""
        self.stderr = ""

    def start(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        with self._lock:
            if not self._streams:
                self._streams = [_Stream(1), _Stream(2)]
            for stream in self._streams:
                stream.redirect()

    def pump(self) -> None:
        with self._lock:
            for stream in self._streams:
                stream.pump()

    def stop(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        with self._lock:
            for stream in self._streams:
                stream.restore()
            out, err = self._streams
            self.stdout, self.stderr = tail(out.file), tail(err.file)

    def close(self) -> None:
        with self._lock:
            for stream in self._streams:
                stream.file.close()
            self._streams = []
