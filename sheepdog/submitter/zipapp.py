"""The worker as one file: a zipapp of worker_bootstrap and what it imports.

Nodes need only a Python interpreter. The archive holds the worker's own
modules, cloudpickle and msgpack's pure-Python fallback (its C extension
cannot load from a zip), as source, so it runs on any Python 3 the request
pickles allow. It is built deterministically - fixed timestamps, sorted names
- so its sha256 names it, and a head node receives each version once.
"""

from __future__ import annotations

import functools
import hashlib
import io
import posixpath
import zipfile
from pathlib import Path

import cloudpickle
import msgpack

import sheepdog
from sheepdog.submitter.remote import Remote

#: The sheepdog modules a worker imports (checked by a test that imports
#: nothing else from the zip).
WORKER_MODULES = (
    "__init__.py",
    "errors.py",
    "record.py",
    "broker/__init__.py",
    "broker/codec.py",
    "broker/keys.py",
    "broker/resp.py",
    "broker/scripts.py",
    "broker/tasks.py",
    "broker/urls.py",
    "worker_bootstrap/__init__.py",
    "worker_bootstrap/__main__.py",
    "worker_bootstrap/capture.py",
    "worker_bootstrap/environment.py",
    "worker_bootstrap/link.py",
    "worker_bootstrap/pilot.py",
    "worker_bootstrap/run.py",
)

#: The archive's entry point. Python cannot keep compiled bytecode in a zip, so
#: every start would compile the worker (and cloudpickle) from source: ~30 ms of
#: CPU per array task. Instead the first start on a machine unpacks the archive
#: next to itself (``sheepdog-<hash>.d``, renamed into place whole, so workers
#: starting together never see half of it) and every start imports from there,
#: where Python keeps the bytecode it compiles (per Python version).
_MAIN = """\
# Run one array task: python sheepdog-<hash>.pyz JOB_FILE
import os
import sys

archive = sys.path[0]
unpacked = archive[:-len(".pyz")] + ".d"
if not os.path.isdir(unpacked):
    try:
        import zipfile

        part = f"{unpacked}.{os.getpid()}"
        with zipfile.ZipFile(archive) as contents:
            contents.extractall(part)
        os.rename(part, unpacked)
    except OSError:  # another worker was first, or we may not write here
        import shutil

        shutil.rmtree(part, ignore_errors=True)
if os.path.isdir(unpacked):
    sys.path[0] = unpacked
    sys.dont_write_bytecode = False  # the point of unpacking: bytecode cached there
from sheepdog.worker_bootstrap.run import main

raise SystemExit(main())
"""


def _package_sources(package_dir: Path, prefix: str) -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}/{path.relative_to(package_dir).as_posix()}", path.read_bytes())
        for path in sorted(package_dir.rglob("*.py"))
        if "__pycache__" not in path.parts
    ]


def _entries() -> list[tuple[str, bytes]]:
    own = Path(sheepdog.__file__).parent
    entries = [(f"sheepdog/{name}", (own / name).read_bytes()) for name in WORKER_MODULES]
    entries += _package_sources(Path(cloudpickle.__file__).parent, "cloudpickle")
    entries += _package_sources(Path(msgpack.__file__).parent, "msgpack")
    entries.append(("__main__.py", _MAIN.encode()))
    return sorted(entries)


@functools.cache
def build() -> tuple[bytes, str]:
    """(archive bytes, sha256 hex) of the worker zipapp for this sheepdog."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in _entries():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def file_name(digest: str) -> str:
    return f"sheepdog-{digest[:16]}.pyz"


def install(remote: Remote, directory: str) -> str:
    """The path of this version's zipapp in ``directory``, written there if missing."""
    data, digest = build()
    path = posixpath.join(directory, file_name(digest))
    if not remote.exists(path):
        remote.put(path, data, 0o644)
    return path
