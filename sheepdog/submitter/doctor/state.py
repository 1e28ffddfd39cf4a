"""What the doctor's checks share: their state, how one fails, and head-node commands.

``State`` is filled in as the checks run (the config check makes the session, the
scheduler check may settle the scheduler). A check that finds something wrong
raises ``Failed`` with the cause and the fix; ``split_advice`` splits a sheepdog
error message into the two.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sheepdog.errors import SheepdogError
from sheepdog.submitter.config import Settings
from sheepdog.submitter.remote import Remote, check
from sheepdog.submitter.session import Session

#: Seconds a head-node command of a check may take.
COMMAND_TIMEOUT = 30.0

Config = Mapping[str, Any] | Settings | str | None

#: Where a sheepdog message turns from what is wrong to what to do about it:
#: they read "<cause>. Check ..." or "<cause>: set ...".
_ADVICE = re.compile(
    r"[.;:]\s+(?=(?:check|set|remove|use|ask|is|install|give|put|start|add)\b)", re.IGNORECASE)


class Failed(SheepdogError):
    """A check found something wrong: the cause, and what to do."""

    def __init__(self, cause: str, fix: str) -> None:
        self.cause = cause
        self.fix = fix
        super().__init__(f"{cause}. Fix: {fix}")

    def __reduce__(self) -> tuple[type[Failed], tuple[str, str]]:
        return (Failed, (self.cause, self.fix))


def split_advice(message: str) -> tuple[str, str]:
    """(cause, fix) of a sheepdog error message, on one line; fix '' if it gives none."""
    text = " ".join(message.split())
    found = _ADVICE.search(text)
    if found is None:
        return text.rstrip("."), ""
    fix = text[found.end():]
    return text[:found.start()].rstrip("."), fix[:1].lower() + fix[1:]


@dataclass
class State:
    """What the checks share: ``settings`` and ``session`` come from the config check;
    the scheduler check may settle the scheduler in the session's settings."""

    config: Config
    dbfile: str | None
    probe_timeout: float
    settings: Settings | None = None
    session: Session | None = None

    @property
    def ready(self) -> tuple[Settings, Session]:
        assert self.settings is not None and self.session is not None  # the config check
        return self.session.settings, self.session

    @property
    def remote(self) -> Remote:
        return self.ready[1].remote

    def run(self, command: str) -> str:
        """A head-node command's output; RemoteCommandError if it fails."""
        remote = self.remote
        return check(remote, remote.run(command, timeout=COMMAND_TIMEOUT)).stdout
