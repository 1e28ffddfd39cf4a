"""The payload codec: a msgpack envelope, signed with the request's key.

An envelope is the msgpack array ``[VERSION, kind, mac, body]``:

- ``kind`` 0: ``body`` is msgpack of a plain value (None, bool, int, float,
  str, bytes, list, dict of those). It comes back with the same types, except
  that nothing else is allowed in: a tuple or a subclass goes to kind 1.
- ``kind`` 1: ``body`` is cloudpickle of anything else, functions by value.
- ``kind`` 2: ``body`` is msgpack of the items of a plain tuple, which comes
  back as a tuple: a task's ``(a, b)`` arguments, the common case, without
  pickling.
- ``mac`` is HMAC-SHA256 of a context, ``kind`` and ``body`` under the
  request's key. The context says what the payload is for (``func``,
  ``args:7``, ``value``), so the arguments of task 7 cannot be replayed as
  those of task 8. Unpickling runs code, so nothing is unpickled before its
  mac checks out.

Every entry of a request's results stream carries a signature of its own
(``outcome_mac``) over the request's token, the task index, the attempt, the
status, the cause, the payload and the error text: a signed outcome means one
thing only, and cannot be replayed under another index, attempt or request.
"""

from __future__ import annotations

import hashlib
import hmac

try:  # the C unpickler alone: the pickle module imports re, which a worker need not load
    from _pickle import loads as _unpickle
except ImportError:  # not CPython
    from pickle import loads as _unpickle

import msgpack

from sheepdog.errors import IntegrityError, SerialisationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

VERSION = 1
KIND_MSGPACK = 0
KIND_PICKLE = 1
KIND_TUPLE = 2
_KINDS = (KIND_MSGPACK, KIND_PICKLE, KIND_TUPLE)


def _mac(key: bytes, context: bytes, kind: int, body: bytes) -> bytes:
    message = len(context).to_bytes(4, "big") + context + bytes([kind]) + body
    return hmac.digest(key, message, "sha256")  # one call in C: hmac.new costs 3x


def args_context(index: int) -> bytes:
    return b"args:%d" % index


FUNC_CONTEXT = b"func"
VALUE_CONTEXT = b"value"


def _pack_plain(obj: object) -> bytes | None:
    """msgpack of ``obj`` when it is made only of plain types, else None."""
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True, strict_types=True)
    except (TypeError, ValueError, OverflowError):
        return None
    return data


def encode(obj: object, key: bytes, context: bytes, *,
           what: str | Callable[[], str] = "value") -> bytes:
    """Envelope for ``obj``; ``what`` names it in the error if it cannot be pickled
    (a callable is called only then: naming a task costs a repr)."""
    kind = KIND_TUPLE if type(obj) is tuple else KIND_MSGPACK
    body = _pack_plain(list(obj) if kind == KIND_TUPLE else obj)  # type: ignore[call-overload]
    if body is None:
        kind = KIND_PICKLE
        body = _pickle(obj, what)
    mac = _mac(key, context, kind, body)
    packed: bytes = msgpack.packb([VERSION, kind, mac, body], use_bin_type=True)
    return packed


def _pickle(obj: object, what: str | Callable[[], str]) -> bytes:
    import pickle  # only here: a worker whose results are plain never needs either

    import cloudpickle

    try:
        data: bytes = cloudpickle.dumps(obj, protocol=pickle.DEFAULT_PROTOCOL)
    except Exception as exc:  # cloudpickle raises many types; all mean the same
        name = what if isinstance(what, str) else what()
        raise SerialisationError(
            f"cannot serialise the {name} ({type(obj).__module__}.{type(obj).__qualname__}):"
            f" {type(exc).__name__}: {exc}. Sheepdog pickles it with cloudpickle; objects"
            " holding locks, open files, sockets or database connections cannot be"
            " pickled - create them inside the function instead."
        ) from exc
    return data


class Call:
    """A task's arguments with keywords: ``Call(1, 2, scale=3)`` calls ``f(1, 2, scale=3)``.

    (Here, not in the submitter: the worker unpickles it.)
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, /, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __reduce__(self) -> tuple[Callable[..., Call], tuple[tuple[Any, ...], dict[str, Any]]]:
        return (_call_of, (self.args, self.kwargs))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Call):
            return NotImplemented
        return (self.args, self.kwargs) == (other.args, other.kwargs)

    __hash__ = None  # type: ignore[assignment]  # it holds a dict

    def __repr__(self) -> str:
        shown = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"Call({', '.join(shown)})"


def _call_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    return Call(*args, **kwargs)


def positional(item: object) -> list[object]:
    """The positional arguments a task's item stands for.

    A plain tuple is the arguments themselves: ``(1, 2)`` calls ``f(1, 2)``.
    Anything else, a list or a namedtuple included, is one argument:
    ``[1, 2]`` calls ``f([1, 2])``, ``5`` calls ``f(5)``. A ``Call`` holds
    positional and keyword arguments (see ``arguments``).
    """
    if type(item) is Call:
        return list(item.args)
    return list(item) if type(item) is tuple else [item]


def arguments(item: object) -> tuple[list[object], dict[str, Any]]:
    """The positional and keyword arguments a task's item stands for."""
    return positional(item), item.kwargs if type(item) is Call else {}


def _unpack_envelope(data: bytes) -> tuple[int, bytes, bytes]:
    try:
        version, kind, mac, body = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise SerialisationError(f"not a sheepdog payload: {exc}") from exc
    if version != VERSION or kind not in _KINDS:
        raise SerialisationError(
            f"payload version {version}/kind {kind} is not understood by this sheepdog;"
            " use the same sheepdog version on the submitter and the workers"
        )
    return kind, mac, body


def verify(data: bytes, key: bytes, context: bytes) -> None:
    """Raise IntegrityError unless ``data`` was signed with ``key`` for ``context``."""
    kind, mac, body = _unpack_envelope(data)
    if not hmac.compare_digest(mac, _mac(key, context, kind, body)):
        raise IntegrityError(
            "payload signature does not match this request's key: it was not written by"
            " this request's submitter or workers, so it is not unpickled"
        )


def decode(data: bytes, key: bytes, context: bytes) -> Any:
    """The object in ``data``, after its signature has been checked."""
    verify(data, key, context)
    return _loads(data)


def is_plain(data: bytes) -> bool:
    """Whether ``data`` holds plain msgpack, which decodes without running any code."""
    return _unpack_envelope(data)[0] != KIND_PICKLE


def decode_checked(data: bytes) -> Any:
    """The object in ``data`` whose signature the caller has checked some other way.

    Only for a payload covered by a verified ``outcome_mac``.
    """
    return _loads(data)


def _loads(data: bytes) -> Any:
    kind, _mac_unused, body = _unpack_envelope(data)
    if kind == KIND_MSGPACK:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    if kind == KIND_TUPLE:
        return tuple(msgpack.unpackb(body, raw=False, strict_map_key=False))
    try:
        return _unpickle(body)
    except Exception as exc:
        raise SerialisationError(
            f"cannot unpickle payload: {type(exc).__name__}: {exc}. A module the object"
            " needs may be missing here, or this Python differs from the one that pickled it."
        ) from exc



def outcome_mac(
    key: bytes, token: str, index: int, attempt: int, status: str, cause: str,
    payload: bytes, error: str,
) -> str:
    """Hex signature of one results-stream entry (see the module docstring)."""
    parts = (b"outcome", token.encode(), b"%d" % index, b"%d" % attempt, status.encode(),
             cause.encode(), hashlib.sha256(payload).digest(),
             hashlib.sha256(error.encode("utf-8", "surrogateescape")).digest())
    message = bytearray()
    for part in parts:  # each part length-prefixed: no two entries sign the same bytes
        message += len(part).to_bytes(4, "big")
        message += part
    return hmac.digest(key, bytes(message), "sha256").hex()


def check_outcome_mac(
    mac: str, key: bytes, token: str, index: int, attempt: int, status: str, cause: str,
    payload: bytes, error: str,
) -> bool:
    expected = outcome_mac(key, token, index, attempt, status, cause, payload, error)
    return hmac.compare_digest(mac.encode(), expected.encode())
