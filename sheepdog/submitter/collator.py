"""Moving outcomes from the broker's results stream into the SQLite store.

The collator reads with a consumer group named after the store, writes each
batch in one SQLite transaction (upserts keyed by request id and task index,
a later attempt winning) and acknowledges the batch only after the commit.
Killed at any moment, it loses nothing: unacknowledged entries are read again
on the next start, and writing them again changes nothing.

Every entry's signature (``codec.outcome_mac``) is checked before anything
else is done with it. An entry that fails - forged, replayed from another
task or request, garbled - is kept as a text incident and never unpickled.
"""

from __future__ import annotations

from sheepdog.broker import codec, keys
from sheepdog.broker.client import Broker, StreamEntry
from sheepdog.errors import BrokerError
from sheepdog.submitter.store import RequestRow, Store, stream_key


class StreamNotOurs(BrokerError):
    """The stream under this request's id belongs to another request now."""


#: Stream entries read (XREADGROUP COUNT) and written per SQLite transaction.
BATCH = 2000

#: One consumer per group: collators of the same store share the pending list.
CONSUMER = "collator"

Row = dict[str, object]


def _text(fields: dict[str, bytes], name: str) -> str:
    value = fields.get(name)
    return value.decode("utf-8", errors="replace") if value is not None else ""


def _number(fields: dict[str, bytes], name: str) -> float | None:
    try:
        return float(fields.get(name) or "")
    except ValueError:
        return None


class Collator:
    """Collates one request, from the broker that holds it, into one store."""

    def __init__(self, broker: Broker, store: Store, row: RequestRow, key: bytes) -> None:
        self.broker = broker
        self.store = store
        self.row = row
        self.key = key
        self.stream = row.broker_request
        self.group = keys.collator_group(store.store_id)
        self._replaying = True  # first re-read what an earlier collator left unacknowledged
        self._gained: int | None = 0  # tasks that got their final outcome here; None: unknown
        self._touched: list[int] | None = []  # indices of the final outcomes saved; None: unknown
        broker.ensure_group(self.stream, self.group)

    def step(self, block_ms: int | None = 500) -> int:
        """Collate one batch, waiting up to ``block_ms`` (None: not at all); return its size."""
        entries = self.broker.read_results(
            self.stream, self.group, CONSUMER,
            count=BATCH, block_ms=block_ms, pending=self._replaying,
        )
        if self._replaying and not entries:
            self._replaying = False
            return self.step(block_ms)
        if entries:
            self._save(entries)
        return len(entries)

    def take_gained(self) -> int | None:
        """Tasks given their first final outcome since the last call (None: count them)."""
        gained, self._gained = self._gained, 0
        return gained

    def take_touched(self) -> list[int] | None:
        """Indices whose final outcome was saved since the last call (perhaps not their
        first one). None when that is not known: a cancel entry gave every task left an
        outcome, or the whole stream was written again."""
        touched, self._touched = self._touched, []
        return touched

    def resync(self) -> int:
        """Write every entry of the stream again, whatever was acknowledged; how many."""
        self._touched = None
        written = 0
        for entries in self.broker.all_results(self.stream, chunk=BATCH):
            self._save(entries)
            written += len(entries)
        return written

    def _save(self, entries: list[StreamEntry]) -> None:
        finals: list[Row] = []
        earlier: list[Row] = []
        incidents: list[Row] = []
        cancels: list[Row] = []
        rows = [(self._row(entry_id, fields), fields, entry_id) for entry_id, fields in entries]
        problems = [self._problem(entry_id, fields, row) for row, fields, entry_id in rows]
        if any(problems) and not self._still_ours():
            raise StreamNotOurs(
                f"request {self.row.request_id}'s stream on the broker now belongs to another"
                " request (the broker lost its data and gave the id out again)"
            )
        for (row, fields, _entry_id), problem in zip(rows, problems, strict=True):
            status = row["status"]
            if problem is not None:
                incidents.append(self._incident(row, problem))
            elif status == "cancelled":
                cancels.append({"request_id": row["request_id"], "reason": row["error"],
                                "finished": row["finished"], "broker_id": row["broker_id"],
                                "stream_key": row["stream_key"]})
            elif status == "rejected":
                incidents.append(self._incident(row, str(row["error"])))
            elif _text(fields, "next") == "retry":
                earlier.append(row)
            else:
                finals.append(row)
        gained = self.store.save_outcomes(finals, earlier, incidents, cancels)
        if cancels:
            self._touched = None
        elif self._touched is not None:
            self._touched.extend(row["idx"] for row in finals)  # type: ignore[misc]
        self._gained = None if gained is None or self._gained is None else self._gained + gained
        self.broker.ack(self.stream, self.group, [entry_id for entry_id, _ in entries])

    def _still_ours(self) -> bool:
        meta = self.broker.meta(self.stream)
        return meta.get("token") == self.row.token

    def _row(self, entry_id: str, fields: dict[str, bytes]) -> Row:
        # One pass over the fields: this runs for every one of a million outcomes.
        text = {name: value.decode("utf-8", errors="replace")
                for name, value in fields.items() if name != "payload"}
        get = text.get
        pid = get("pid", "")
        return {
            "request_id": self.row.request_id,
            "idx": _whole(get("index", "")),
            "attempt": _whole(get("attempt", "")),
            "status": get("status", ""),
            "cause": get("cause") or None,
            "value": fields.get("payload"),
            "error": get("error") or None,
            "mac": get("mac", ""),
            "host": get("host") or None,
            "pid": int(pid) if pid.isdigit() else None,
            "job": get("job") or None,
            "booted": _seconds(get("booted")),
            "started": _seconds(get("started")),
            "finished": _seconds(get("finished")),
            "stdout": get("stdout") or None,
            "stderr": get("stderr") or None,
            "broker_id": self.broker.broker_id,
            "stream_key": stream_key(entry_id),
        }

    def _problem(self, entry_id: str, fields: dict[str, bytes], row: Row) -> str | None:
        """Why the entry is not an outcome of this request, or None if it is one."""
        status, idx, attempt = row["status"], row["idx"], row["attempt"]
        if status not in keys.STATUSES or not isinstance(idx, int) \
                or not isinstance(attempt, int):
            return f"stream entry {entry_id} is not a sheepdog outcome (status {status!r})"
        valid = codec.check_outcome_mac(
            str(row["mac"]), self.key, self.row.token, idx, attempt, str(status),
            str(row["cause"] or ""), fields.get("payload", b""), str(row["error"] or ""),
        )
        if valid:
            return None
        return (
            f"stream entry {entry_id} says task {idx} attempt {attempt} is {status}, but its"
            " signature does not match this request's key: it was not written by this"
            " request's workers (forged, or replayed from another task or request), so it"
            " was ignored and nothing in it was unpickled"
        )

    @staticmethod
    def _incident(row: Row, error: str) -> Row:
        return {"request_id": row["request_id"], "broker_id": row["broker_id"],
                "stream_key": row["stream_key"], "idx": row["idx"], "error": error,
                "host": row["host"]}


def _seconds(text: str | None) -> float | None:
    try:
        return float(text or "")
    except ValueError:
        return None


def _whole(text: str) -> int | None:
    return int(text) if text.isdigit() else None
