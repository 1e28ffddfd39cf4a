"""``resubmit``: run the failed and/or lost tasks of a finished request again.

Everything comes from the dbfile (function, namespace, arguments, settings),
so it works after the broker has forgotten the request. The tasks go out as a
new incarnation of the same request (``repush.push_again``); their old
outcomes move to the history, and ``get_results`` waits for the new ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from sheepdog.errors import ConfigError, RequestFailed, SubmitError
from sheepdog.submitter import config, repush, results
from sheepdog.submitter.config import Settings
from sheepdog.submitter.request import FINAL, open_request
from sheepdog.submitter.session import Session
from sheepdog.submitter.store import Store

#: Keys that name where a request lives: a resubmit runs it there again.
FIXED_KEYS = ("host", "broker_url", "dbfile", "scheduler", "ssh_port", "ssh_user")


def _settings(stored: str, overrides: Mapping[str, Any] | None) -> Settings:
    """The settings kept in the dbfile, with ``overrides`` checked and applied."""
    values = json.loads(stored)
    if overrides:
        fixed = sorted(set(overrides) & set(FIXED_KEYS))
        if fixed:
            raise ConfigError(
                f"resubmit runs a request where it was submitted; {', '.join(fixed)} cannot"
                " change (submit it anew with map_async for another place)"
            )
        config.refuse_unknown(overrides)
        values.update({k: config.coerce(k, v) for k, v in overrides.items()})
    settings = Settings.from_public(json.dumps(values, default=list))
    settings.check(need_broker_url=False)
    return settings


def resubmit_request(
    request_id: int, dbfile: str, *, failed: bool, lost: bool,
    config: Mapping[str, Any] | None, verbose: bool,
) -> int:
    with Store(dbfile, create=False) as store:
        settings = _settings(store.request(request_id).settings, config)
    with Session(settings) as session, open_request(request_id, dbfile, session) as request:
        row = request.row
        if row.status == "submitting":
            results.settle_submission(request, timeout=None)
        if request.row.status not in (*FINAL, "incomplete"):
            results.collect_available(request)
            if not results.over_on_broker(request):
                raise RequestFailed(
                    f"request {request_id} is still running ({request.done()} of"
                    f" {row.n_tasks} tasks have an outcome); wait for it with"
                    f" get_results({request_id}), or cancel it first"
                )
            results.finalise(request)  # every outcome it will ever have is in the dbfile
        wanted = ("",) + (("error",) if failed else ()) + (("lost",) if lost else ())
        indices = [t.idx for t in request.store.iter_tasks(request_id, statuses=wanted,
                                                             values=False)]
        if not results.all_arguments_stored(request):
            raise results.incomplete(request)
        if not indices:
            return 0
        pushed = repush.push_again(request, indices, fresh=True,
                                   label=f"resubmit-{int(time.time() * 1000)}")
        if pushed.launch_error is not None:
            raise SubmitError(
                f"request {request_id}: its {len(indices)} task(s) are on the broker again,"
                f" but the {row.scheduler} scheduler did not take the job"
                f" ({pushed.launch_error}); get_results({request_id}) or `sheepdog collect"
                f" {request_id}` starts them once it does"
            ) from pushed.launch_error
        if verbose:
            print(f"sheepdog: request {request_id}: {len(indices)} task(s) run again as"
                  f" {request.row.scheduler} job {','.join(pushed.job_ids)}")
        return len(indices)

