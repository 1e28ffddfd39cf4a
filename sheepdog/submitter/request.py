"""A request read back from a dbfile, with its broker connected on first use.

``OpenRequest`` is what waiting, collecting, cancelling and resubmitting work
on: the dbfile row, the session (head node, tunnels), the broker that holds the
request now, and the request's signing key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sheepdog.broker.client import Broker
from sheepdog.errors import BrokerError, RequestNotFound
from sheepdog.submitter import credentials
from sheepdog.submitter.brokers import reconnect
from sheepdog.submitter.collator import Collator
from sheepdog.submitter.config import Settings
from sheepdog.submitter.session import Session
from sheepdog.submitter.store import RequestRow, Store

#: Request statuses (dbfile and broker) after which nothing more will arrive.
FINAL = ("done", "cancelled")


def job_name(row: RequestRow) -> str:
    """Names a request's jobs and files: unique per broker and broker request id."""
    return f"{row.broker_id[:8]}-{row.broker_request}"


@dataclass
class OpenRequest:
    store: Store
    row: RequestRow
    session: Session
    _broker: Broker | None = None
    worker_url: str = ""

    @property
    def request_id(self) -> int:
        return self.row.request_id

    @property
    def key(self) -> bytes:
        key = credentials.key_for(self.row.origin, self.row.token)
        if key is None:
            raise BrokerError(
                f"this machine has no key for request {self.request_id}: the credentials of"
                f" broker {self.row.origin} are kept in credentials.json on the machine that"
                " submitted it"
            )
        return key

    def connect(self) -> Broker:
        """The broker that holds the request (connected again after a failure)."""
        if self._broker is None:
            self._broker, self.worker_url = reconnect(self.row.broker_id, self.row.location,
                                                      self.session)
        return self._broker

    def meta(self) -> dict[str, str]:
        """The broker's meta of this request; {} if the broker holds no such request
        (gone, or its id belongs to another request now)."""
        found = self.connect().meta(self.row.broker_request)
        return found if found.get("token") == self.row.token else {}

    def disconnect(self) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):
                self._broker.close()
            self._broker = None

    def reload(self) -> None:
        self.row = self.store.request(self.request_id)

    def update(self, **values: object) -> None:
        self.store.update_request(self.request_id, **values)
        self.reload()

    def collator(self) -> Collator:
        return Collator(self.connect(), self.store, self.row, self.key)

    def done(self) -> int:
        return sum(self.store.counts(self.request_id).values())


@contextlib.contextmanager
def open_request(
    request_id: int, dbfile: str, session: Session | None = None, *, create: bool = False,
) -> Iterator[OpenRequest]:
    """The request in ``dbfile``; its broker and head node are connected on first use.

    Without a ``session``, one is made from the settings the dbfile kept, and
    closed at the end.
    """
    if not create and not Path(dbfile).exists():
        raise RequestNotFound(
            f"request {request_id} is not in {dbfile}: there is no such file (check the"
            " dbfile argument, or the directory you run in)"
        )
    with Store(dbfile, create=create) as store:
        row = store.request(request_id)
        owned = session is None
        active = Session(Settings.from_public(row.settings)) if session is None else session
        request = OpenRequest(store, row, active)
        try:
            yield request
        finally:
            request.disconnect()
            if owned:
                active.close()
