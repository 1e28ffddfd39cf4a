"""Where sheepdog keeps its own files on the submitting machine.

All of them live under one private directory (mode 0700): ``$SHEEPDOG_HOME``
if set, else ``~/.local/share/sheepdog``. Read at call time, never at import.

    broker/             the embedded broker's state (see sheepdog.broker.embedded)
    credentials.json    broker URLs with passwords and HMAC master keys (0600)
    jobs/<broker>-<id>/ job files (0600, removed when the request is over) and
                        logs of local array jobs
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    configured = os.environ.get("SHEEPDOG_HOME")
    path = Path(configured) if configured else Path.home() / ".local" / "share" / "sheepdog"
    path = path.expanduser().absolute()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def embedded_broker_dir() -> Path:
    return home() / "broker"


def credentials_file() -> Path:
    return home() / "credentials.json"


def job_dir(name: str) -> Path:
    """The local directory of job ``name`` (``<broker id prefix>-<request id>``)."""
    path = home() / "jobs" / name
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
