"""The task-side operations on a request, written once for both clients.

``TaskChannel`` is what a worker (and the local runner, and the submitter's
reaper) needs: claim a task for an attempt, keep its lease alive, record how
the attempt ended. It runs over anything with ``execute_command`` - the
workers' small ``resp.RespClient`` or redis-py's client - and uses only
replies both return alike. The same contract tests run it over both.
"""

from __future__ import annotations

from sheepdog.broker import codec, keys, resp, scripts
from sheepdog.record import Record

try:  # Python's own SHA-1: hashlib loads OpenSSL, which costs a worker's start 2 ms
    from _sha1 import sha1  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # a Python built without it
    from hashlib import sha1

TYPE_CHECKING = False  # typing, dataclasses: more than a worker's whole start may cost
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Protocol

    class Commands(Protocol):
        def execute_command(self, *args: Any) -> Any: ...


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClaimReply(Record):
    """What CLAIM said: ``kind`` is run, gone, cancelled, outside, done or busy."""

    _fields = ("kind", "attempt", "func", "args", "python", "detail")
    __slots__ = _fields
    kind: str
    attempt: int
    func: bytes
    args: bytes
    python: str
    detail: str  # outside: n_tasks; busy: the holder's claim

    def __init__(self, kind: str, attempt: int = 0, func: bytes = b"", args: bytes = b"",
                 python: str = "", detail: str = "") -> None:
        self._set(kind, attempt, func, args, python, detail)


class Batch(Record):
    """What CLAIM_NEXT said: ``kind`` is run, again (nothing taken, more to look at),
    empty, gone or cancelled; ``tasks`` are (index, attempt, args payload)."""

    _fields = ("kind", "python", "func", "tasks")
    __slots__ = _fields
    kind: str
    python: str
    func: bytes  # empty unless asked for
    tasks: list[tuple[int, int, bytes]]

    def __init__(self, kind: str, python: str = "", func: bytes = b"",
                 tasks: list[tuple[int, int, bytes]] | None = None) -> None:
        self._set(kind, python, func, [] if tasks is None else tasks)


class Claim(Record):
    """A ``claims`` hash value, split (see ``keys.CLAIM_FIELDS``)."""

    _fields = ("attempt", "first", "level", "holder", "started", "host", "pid", "job")
    __slots__ = _fields
    attempt: int
    first: int
    level: int
    holder: str
    started: float
    host: str
    pid: str
    job: str

    def __init__(self, attempt: int, first: int, level: int, holder: str,
                 started: float = 0.0, host: str = "", pid: str = "", job: str = "") -> None:
        self._set(attempt, first, level, holder, started, host, pid, job)

    @classmethod
    def parse(cls, text: str) -> Claim:
        parts = text.split() + [""] * len(keys.CLAIM_FIELDS)
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), parts[3],
                   float(parts[4] or 0), parts[5], parts[6], parts[7])


#: Record replies (see ``scripts.RECORD``).
FINAL, RETRIED, NOT_HOLDER, GONE, CANCELLED = 1, 2, 0, -1, -2


def _signed(
    key: bytes, token: str, index: int, attempt: int, status: str, cause: str,
    fields: Mapping[str, str | bytes],
) -> dict[str, str | bytes]:
    """``fields`` with the entry's signature added (over what ``codec.outcome_mac`` covers)."""
    payload = fields.get("payload", b"")
    error = fields.get("error", "")
    mac = codec.outcome_mac(
        key, token, index, attempt, status, cause,
        payload if isinstance(payload, bytes) else payload.encode(),
        error if isinstance(error, str) else error.decode("utf-8", "surrogateescape"),
    )
    return {**fields, "mac": mac}


class TaskChannel:
    def __init__(self, conn: Commands) -> None:
        self.conn = conn

    def eval_script(self, script: str, request_id: int, argv: list[Any]) -> Any:
        request_keys = keys.request_keys(request_id)
        return self._run_script(script, [*request_keys], argv)

    def _run_script(self, script: str, script_keys: list[str], argv: list[Any]) -> Any:
        """EVALSHA, and EVAL the first time (NOSCRIPT): a worker sends the text of a
        script once, not with each of its thousands of records."""
        try:
            return self.conn.execute_command("EVALSHA", _sha(script), len(script_keys),
                                             *script_keys, *argv)
        except Exception as exc:
            if not _no_script(exc):
                raise
        return self.conn.execute_command("EVAL", script, len(script_keys), *script_keys, *argv)

    def meta(self, request_id: int) -> dict[str, str]:
        """The request's meta fields that are set; empty if the request is unknown."""
        values = self.conn.execute_command("HMGET", keys.meta(request_id), *keys.META_FIELDS)
        pairs = zip(keys.META_FIELDS, values, strict=True)
        return {field: value.decode() for field, value in pairs if value is not None}

    def claim(
        self, request_id: int, token: str, index: int, *, holder: str, level: int, host: str,
        pid: int, job: str, lease: float,
    ) -> ClaimReply:
        """Take task ``index`` for a new attempt, with a lease of ``lease`` seconds."""
        reply = self.eval_script(scripts.CLAIM, request_id, [
            token, index, holder, level, _word(host), pid, _word(job), f"{lease:.3f}",
        ])
        kind = _text(reply[0])
        if kind == "run":
            return ClaimReply(kind, int(reply[1]), reply[2] or b"", reply[3], _text(reply[4]))
        return ClaimReply(kind, detail=_text(reply[1]) if len(reply) > 1 else "")

    def heartbeat(self, request_id: int, token: str, index: int, holder: str, lease: float
                  ) -> int:
        """Push the lease forward; 1, or 0 if no longer the holder, -1 if the request is gone."""
        return self.heartbeat_many(request_id, token, holder, [index], lease)

    def heartbeat_many(self, request_id: int, token: str, holder: str, indices: list[int],
                       lease: float) -> int:
        """Push the leases of ``indices`` forward; how many ``holder`` still holds (-1: the
        request is gone)."""
        return int(self.eval_script(scripts.HEARTBEAT, request_id,
                                    [token, holder, f"{lease:.3f}", *indices]))

    def claim_next(
        self, request_id: int, token: str, *, holder: str, level: int, host: str, pid: int,
        job: str, lease: float, count: int, with_function: bool,
    ) -> Batch:
        """Worker mode: take up to ``count`` tasks from the request's queue."""
        reply = self.eval_script(scripts.CLAIM_NEXT, request_id, [
            token, holder, level, _word(host), pid, _word(job), f"{lease:.3f}", count,
            "1" if with_function else "0",
        ])
        kind = _text(reply[0])
        if kind != "run":
            return Batch(kind)
        tasks = [(int(reply[i]), int(reply[i + 1]), reply[i + 2]) for i in range(3, len(reply), 3)]
        return Batch("run" if tasks else "again", _text(reply[1]), reply[2] or b"", tasks)

    def requeue(self, request_id: int, token: str) -> tuple[int, bool]:
        """Worker mode: parked tasks back into the queue; (their highest memory level or -1,
        whether the queue holds anything)."""
        reply = self.eval_script(scripts.REQUEUE, request_id, [token])
        return int(reply[0]), bool(int(reply[1]))

    def record(
        self, request_id: int, token: str, index: int, *, key: bytes, holder: str,
        attempt: int, status: str, cause: str, fields: Mapping[str, str | bytes],
        check: str = "",
    ) -> int:
        """Record how an attempt ended, signed here with ``key`` over exactly what is
        recorded; see ``scripts.RECORD``."""
        if status not in keys.OUTCOMES:
            raise ValueError(f"unknown status {status!r}")
        signed = _signed(key, token, index, attempt, status, cause, fields)
        argv: list[Any] = [token, index, holder, attempt, status, cause, check]
        for name, value in signed.items():
            argv += [name, value]
        return int(self.eval_script(scripts.RECORD, request_id, argv))

    def record_many(
        self, request_id: int, token: str, *, key: bytes, holder: str,
        outcomes: Sequence[tuple[int, int, str, str, Mapping[str, str | bytes]]],
    ) -> list[int | Exception]:
        """``record`` of several (index, attempt, status, cause, fields), in one round trip
        where the connection can pipeline; the replies in order, an error reply as the
        exception (one that means "not now" is raised, for the caller to try again)."""
        request_keys = keys.request_keys(request_id)
        commands = []
        for index, attempt, status, cause, fields in outcomes:
            if status not in keys.OUTCOMES:
                raise ValueError(f"unknown status {status!r}")
            argv: list[Any] = [token, index, holder, attempt, status, cause, ""]
            for name, value in _signed(key, token, index, attempt, status, cause,
                                       fields).items():
                argv += [name, value]
            commands.append(("EVAL", scripts.RECORD, len(request_keys), *request_keys, *argv))
        pipeline = getattr(self.conn, "execute_pipeline", None)
        replies: list[Any] = []
        if pipeline is not None:
            replies = pipeline(commands)
        else:
            for command in commands:
                try:
                    replies.append(self.conn.execute_command(*command))
                except Exception as exc:
                    replies.append(exc)
        for reply in replies:
            if isinstance(reply, Exception) and resp.transient(reply):
                raise reply
        return [reply if isinstance(reply, Exception) else int(reply) for reply in replies]

    def reject(self, request_id: int, token: str, index: int, *, key: bytes,
               fields: Mapping[str, str | bytes]) -> bool:
        """Record that a worker asked for ``index``, which is not part of the request."""
        argv: list[Any] = [token]
        for name, value in _signed(key, token, index, 0, "rejected", "", fields).items():
            argv += [name, value]
        return bool(self.eval_script(scripts.REJECT, request_id, argv))

    def claim_of(self, request_id: int, index: int) -> Claim | None:
        text = self.conn.execute_command("HGET", keys.claims(request_id), index)
        return Claim.parse(_text(text)) if text else None


_SHAS: dict[str, str] = {}


def _no_script(exc: Exception) -> bool:
    """The broker does not know the script yet (our client's error, or redis-py's)."""
    return str(exc).startswith("NOSCRIPT") or type(exc).__name__ == "NoScriptError"


def _sha(script: str) -> str:
    """The SHA1 a broker knows ``script`` by (EVALSHA)."""
    if script not in _SHAS:
        _SHAS[script] = sha1(script.encode()).hexdigest()  # Redis's name for it
    return _SHAS[script]


def _word(text: str) -> str:
    """``text`` as one space-free word, for a claim's fields."""
    return "_".join(text.split()) or "-"
