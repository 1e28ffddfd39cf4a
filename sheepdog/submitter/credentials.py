"""Secrets kept out of the dbfile: broker URLs with passwords, and HMAC keys.

The dbfile names each broker only by id and a password-free location, so it
can be copied and shared. What is needed to talk to the broker and to check
payload signatures lives in ``credentials.json`` under ``paths.home()``, mode
0600, one entry per broker id::

    {"brokers": {"<broker id>": {"url": "redis://:pw@host:6379/0", "key": "<hex>"}},
     "requests": {"<request token>": "<hex>"},
     "urls": {"redis://:***@host:6379/0": "redis://:pw@host:6379/0"}}

``urls`` holds other URLs with passwords the dbfile names redacted (``rq_url``).
``requests`` holds the keys of single requests brought in by ``sheepdog import``
(see ``transfer``): a machine that receives a request gets its key, never the
master key of its broker; a broker entry it receives (``--with-broker``) has a
``url`` and no ``key``.

Each request signs its payloads with its own key, derived from its token and
the master key of the broker it was first submitted to (its *origin*), so a
worker never holds a key that opens another request, and the key stays the
same when the request is pushed again to another broker.

The file is rewritten atomically (a private temp file renamed over it) under a
lock on a separate lock file: a crash mid-write leaves the old file whole.
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

from sheepdog.errors import IntegrityError
from sheepdog.submitter import paths


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """The file's contents; written back atomically (0600) if the block changed them."""
    lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        text = path.read_text() if path.exists() else ""
        data: dict[str, Any] = json.loads(text) if text.strip() else {"brokers": {}}
        before = json.dumps(data, sort_keys=True)
        yield data
        if json.dumps(data, sort_keys=True) != before:
            _write_atomically(path, json.dumps(data, indent=1, sort_keys=True))
    finally:
        os.close(lock_fd)  # closing releases the lock


def _write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def remember(broker_id: str, url: str) -> bytes:
    """Record ``url`` for ``broker_id``; return the broker's master key (made once)."""
    with _locked(paths.credentials_file()) as data:
        entry = data["brokers"].setdefault(broker_id, {})
        entry["url"] = url
        entry.setdefault("key", secrets.token_hex(32))
        return bytes.fromhex(entry["key"])


def lookup(broker_id: str) -> tuple[str, bytes | None] | None:
    """(url, master key) recorded for ``broker_id`` on this machine, if any; the key is
    None for a broker whose URL was handed over with a request (``receive``)."""
    with _locked(paths.credentials_file()) as data:
        return _broker_entry(data, broker_id)


def _broker_entry(data: dict[str, Any], broker_id: str) -> tuple[str, bytes | None] | None:
    entry = data["brokers"].get(broker_id)
    if not entry:
        return None
    return entry["url"], bytes.fromhex(entry["key"]) if "key" in entry else None


def remember_url(url: str, redacted: str) -> None:
    """Keep ``url`` (with its password) under ``redacted``, the form the dbfile keeps."""
    if url != redacted:
        with _locked(paths.credentials_file()) as data:
            data.setdefault("urls", {})[redacted] = url


def full_url(redacted: str) -> str:
    """The URL kept under ``redacted`` on this machine; ``redacted`` itself if none."""
    with _locked(paths.credentials_file()) as data:
        url: str = data.get("urls", {}).get(redacted, redacted)
        return url


def request_key(master: bytes, token: str) -> bytes:
    return hmac.new(master, f"request:{token}".encode(), hashlib.sha256).digest()


def key_for(origin: str, token: str) -> bytes | None:
    """The key of the request ``token`` first submitted to broker ``origin``, if known here."""
    with _locked(paths.credentials_file()) as data:
        return _key_in(data, origin, token)


def _key_in(data: dict[str, Any], origin: str, token: str) -> bytes | None:
    given = data.get("requests", {}).get(token)
    if given is not None:
        return bytes.fromhex(given)
    known = _broker_entry(data, origin)
    return None if known is None or known[1] is None else request_key(known[1], token)


def receive(origin: str, token: str, key: bytes, brokers: dict[str, str],
            urls: dict[str, str]) -> None:
    """Keep what an export file carries, in one atomic write: the request's own key, and
    (``--with-broker``) broker URLs by broker id and other URLs by their redacted form.

    A URL this machine already has is kept: it is this machine's own. A key that
    differs from the one known here for the same request is refused.
    """
    with _locked(paths.credentials_file()) as data:
        known = _key_in(data, origin, token)
        if known is not None and not hmac.compare_digest(known, key):
            raise IntegrityError(
                f"the export's key for request token {token[:12]}... differs from the key"
                f" this machine holds for it ({paths.credentials_file()}): it was not"
                " exported from that request; nothing was imported"
            )
        if known is None:
            data.setdefault("requests", {})[token] = key.hex()
        for broker_id, url in brokers.items():
            data["brokers"].setdefault(broker_id, {}).setdefault("url", url)
        for redacted, url in urls.items():
            data.setdefault("urls", {}).setdefault(redacted, url)
