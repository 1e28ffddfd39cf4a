"""A frozen record without dataclasses, for the modules a worker imports.

``dataclasses`` imports inspect, ast and dis: a good part of a worker's start.
Records of the worker's path (claims, job files, task failures) derive from
``Record`` instead.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Record:
    """Immutable fields named by ``_fields`` (in order; also the ``__slots__``),
    compared, hashed and shown by value, and picklable: what ``dataclass(frozen=True)``
    would make, without importing dataclasses."""

    _fields: tuple[str, ...] = ()
    __slots__ = ()

    def _set(self, *values: object) -> None:
        """Set every field, in ``_fields`` order (for ``__init__``)."""
        for name, value in zip(self._fields, values, strict=True):
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a {type(self).__name__} is"
                             " immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: a {type(self).__name__} is"
                             " immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__ or not isinstance(other, Record):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({shown})"

    def __reduce__(self) -> tuple[type[Record], tuple[Any, ...]]:
        return (type(self), self._values())
