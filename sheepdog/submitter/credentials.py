"""Secrets kept out of the dbfile: broker URLs with passwords, and HMAC keys.

The dbfile names each broker only by id and a password-free location, so it
can be copied and shared. What is needed to talk to the broker and to check
payload signatures lives in ``credentials.json`` under ``paths.home()``, mode
0600, one entry per broker id::

    {"brokers": {"<broker id>": {"url": "redis://:pw@host:6379/0", "key": "<hex>"}}}

Each request signs its payloads with its own key, derived from the broker's
master key, so a worker never holds a key that opens another request.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sheepdog.submitter import paths


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """The file's contents, rewritten (0600) when the block ends."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        text = f.read()
        data: dict[str, Any] = json.loads(text) if text.strip() else {"brokers": {}}
        before = json.dumps(data, sort_keys=True)
        yield data
        if json.dumps(data, sort_keys=True) != before:
            f.seek(0)
            f.truncate()
            json.dump(data, f, indent=1, sort_keys=True)


def remember(broker_id: str, url: str) -> bytes:
    """Record ``url`` for ``broker_id``; return the broker's master key (made once)."""
    with _locked(paths.credentials_file()) as data:
        entry = data["brokers"].setdefault(broker_id, {})
        entry["url"] = url
        entry.setdefault("key", secrets.token_hex(32))
        return bytes.fromhex(entry["key"])


def lookup(broker_id: str) -> tuple[str, bytes] | None:
    """(url, master key) recorded for ``broker_id`` on this machine, if any."""
    with _locked(paths.credentials_file()) as data:
        entry = data["brokers"].get(broker_id)
        if not entry:
            return None
        return entry["url"], bytes.fromhex(entry["key"])


def request_key(master: bytes, request_id: int) -> bytes:
    return hmac.new(master, f"request:{request_id}".encode(), hashlib.sha256).digest()
