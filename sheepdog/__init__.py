"""sheepdog: run a Python function over many argument tuples as one array job.

    >>> import sheepdog
    >>> def f(a, b):
    ...     return a + b
    >>> sheepdog.map(f, [(1, 1), (1, 2), (2, 2)])   # doctest: +SKIP
    [2, 3, 4]

Without ``host`` the array runs on this machine, through a private broker
that sheepdog starts itself. See README.md and docs/configuration.md.

The public names are resolved on first use (PEP 562): an array task imports
``sheepdog.worker_bootstrap`` thousands of times, and must not pay for the
submitter's imports each time.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs a worker's start twice over
if TYPE_CHECKING:
    from typing import Any

__version__ = "0.3.0.dev0"

#: Public name -> module that defines it.
_EXPORTS = {
    "map": "sheepdog.submitter.api",
    "map_async": "sheepdog.submitter.api",
    "get_results": "sheepdog.submitter.api",
    "get_errors": "sheepdog.submitter.api",
    "cancel": "sheepdog.submitter.api",
    "resubmit": "sheepdog.submitter.api",
    "export_request": "sheepdog.submitter.transfer",
    "import_request": "sheepdog.submitter.transfer",
    "TaskError": "sheepdog.submitter.api",
    "Executor": "sheepdog.submitter.executor",
    "imap": "sheepdog.submitter.stream",
    "aimap": "sheepdog.submitter.stream",
    "Call": "sheepdog.broker.codec",
    "Settings": "sheepdog.submitter.config",
    "SheepdogError": "sheepdog.errors",
    "ConfigError": "sheepdog.errors",
    "BrokerError": "sheepdog.errors",
    "SerialisationError": "sheepdog.errors",
    "IntegrityError": "sheepdog.errors",
    "SubmitError": "sheepdog.errors",
    "RequestNotFound": "sheepdog.errors",
    "RequestFailed": "sheepdog.errors",
    "TaskErrors": "sheepdog.errors",
    "TaskFailure": "sheepdog.errors",
    "TaskFailed": "sheepdog.errors",
    "ResultsTimeout": "sheepdog.errors",
    "TransferError": "sheepdog.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from sheepdog.broker.codec import Call
    from sheepdog.errors import (
        BrokerError,
        ConfigError,
        IntegrityError,
        RequestFailed,
        RequestNotFound,
        ResultsTimeout,
        SerialisationError,
        SheepdogError,
        SubmitError,
        TaskErrors,
        TaskFailed,
        TaskFailure,
        TransferError,
    )
    from sheepdog.submitter.api import (
        TaskError,
        cancel,
        get_errors,
        get_results,
        map,
        map_async,
        resubmit,
    )
    from sheepdog.submitter.config import Settings
    from sheepdog.submitter.executor import Executor
    from sheepdog.submitter.stream import aimap, imap
    from sheepdog.submitter.transfer import export_request, import_request


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sheepdog' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
