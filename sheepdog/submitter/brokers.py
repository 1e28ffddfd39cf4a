"""Finding the broker for a new request, and again for an old one.

A request's row in the dbfile names its broker by id and a password-free
location: ``embedded:<state dir>`` for the private server, or the broker URL
with the password replaced by ``***``. The password and the HMAC master key
come from ``credentials`` on this machine.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from sheepdog.broker import embedded
from sheepdog.broker.client import Broker
from sheepdog.broker.urls import redact
from sheepdog.errors import CredentialsMissing
from sheepdog.submitter import credentials, paths
from sheepdog.submitter.session import Session

EMBEDDED = "embedded:"


def connect_for_submit(session: Session) -> tuple[Broker, str, bytes, str]:
    """(broker, location, master key, URL for the workers) for a new request."""
    broker_url = session.settings.broker_url
    if broker_url is None:
        state_dir = paths.embedded_broker_dir()
        worker_url = url = embedded.ensure_running(state_dir)
        location = f"{EMBEDDED}{state_dir}"
    else:
        worker_url = broker_url
        url = session.reachable_url(broker_url)
        location = redact(broker_url)
    broker = Broker.from_url(url)
    master = credentials.remember(broker.broker_id, worker_url)
    return broker, location, master, worker_url


def reconnect(broker_id: str, location: str, session: Session) -> tuple[Broker, str]:
    """(broker, URL for the workers) of a request recorded with ``broker_id`` at ``location``.

    The broker may have another id now (its data was lost): the caller checks.
    """
    known = credentials.lookup(broker_id)
    if known is None:
        raise CredentialsMissing(
            f"this machine has no credentials for broker {broker_id} ({location}); they are"
            f" kept in {paths.credentials_file()} on the machine that submitted the request."
            " Collect the request there, or move it here with `sheepdog export ID"
            " --with-broker` there and `sheepdog import FILE` here (docs/transfer.md)"
        )
    worker_url, _master = known
    if location.startswith(EMBEDDED):
        url = worker_url = embedded.ensure_running(Path(location[len(EMBEDDED):]))
    else:
        url = session.reachable_url(worker_url)
    broker = Broker.from_url(url)
    if broker.broker_id != broker_id:
        credentials.remember(broker.broker_id, worker_url)  # the same place, a new broker
    return broker, worker_url


def worker_login(key: bytes, broker_request: int, token: str) -> tuple[str, str]:
    """(user, password) of a request's per-request broker user.

    Derived from the request's key, so any process holding the credentials can
    make the user again after a broker restart (ACL users are not persisted).
    """
    password = hmac.new(key, b"worker-password", hashlib.sha256).hexdigest()
    return f"sheepdog-{broker_request}-{token[:12]}", password
