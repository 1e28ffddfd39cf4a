"""Keeping a request going while someone waits for it (map, get_results, collect).

Every ``LIVENESS_INTERVAL`` seconds ``Watch.check`` looks at the request and
acts only on positive evidence:

- **the broker** no longer holds the request (its id changed: restarted
  empty, flushed, replaced): its unfinished tasks are pushed again from the
  dbfile and started as a new job. A broker that cannot be reached is only
  reported ("broker unreachable since 12:03:04, still waiting").
- **leases**: a running task whose lease ran out (no heartbeat for
  ``lease_timeout``) has its attempt recorded as lost, with what is known -
  host, pid, last heartbeat, and the scheduler's record of how it ended.
- **the scheduler** says the request's jobs ended: tasks their workers held
  are lost at once (Grid Engine kills a job's whole process tree); tasks that
  never started mean the job was deleted, and the request is cancelled.
  A scheduler that cannot be asked is only reported, never taken as an end.
- **retries**: tasks waiting for another attempt are started as a new array
  job over just those tasks (grouped by memory level).
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from sheepdog.broker import codec
from sheepdog.broker.client import Broker
from sheepdog.broker.tasks import Claim
from sheepdog.errors import BrokerError, SheepdogError
from sheepdog.submitter import repush
from sheepdog.submitter.brokers import worker_login
from sheepdog.submitter.launch import launch
from sheepdog.submitter.request import OpenRequest, job_name
from sheepdog.submitter.schedulers import JobState, job_id_list
from sheepdog.submitter.schedulers.base import job_of

#: Seconds between two checks of a request that is waited for.
LIVENESS_INTERVAL = 2.0

#: Seconds between two reminders that something is still unreachable.
REMIND_EVERY = 300.0

#: Tasks per check whose scheduler record (qacct, stderr) is fetched when lost.
LAST_WORDS_PER_CHECK = 5

#: Errors that mean "the broker cannot be asked right now".
BROKER_DOWN = (BrokerError, redis.RedisError, OSError)


def clock(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")


@dataclass
class Outage:
    since: float
    said_at: float | None = None


class Watch:
    """The checks of one waited-for request; ``say`` prints what users should know."""

    def __init__(self, request: OpenRequest, say: Callable[[str], None]) -> None:
        self.request = request
        self.say = say
        self.outages: dict[str, Outage] = {}
        self.words_left = LAST_WORDS_PER_CHECK
        self.to_cancel: list[tuple[str, list[str]]] = []  # jobs of a lost incarnation
        self.broker_back_at = float("-inf")  # monotonic time the broker answered again
        self.suspects: dict[tuple[int, str], float] = {}  # expired leases first seen, when
        self.ended: set[str] = set()  # jobs the scheduler said are over

    # -- reporting ------------------------------------------------------------

    def unreachable(self, what: str, detail: str) -> None:
        """``what`` could not be asked: say so on the second failure in a row, then now and then."""
        now = time.time()
        outage = self.outages.setdefault(what, Outage(now))
        first_time = outage.said_at is None and now > outage.since
        if first_time or (outage.said_at is not None and now - outage.said_at >= REMIND_EVERY):
            outage.said_at = now
            self.say(f"sheepdog: {what} unreachable since {clock(outage.since)} ({detail});"
                     " still waiting")

    def reachable(self, what: str) -> None:
        outage = self.outages.pop(what, None)
        if outage is not None and what == "the broker":
            self.broker_back_at = time.monotonic()
        if outage is not None and outage.said_at is not None:
            self.say(f"sheepdog: {what} reachable again after {time.time() - outage.since:.0f} s")

    # -- the checks -------------------------------------------------------------

    def check(self) -> JobState | None:
        """One round; raises RequestFailed when the request can no longer finish."""
        self.words_left = LAST_WORDS_PER_CHECK
        request = self.request
        try:
            broker = request.connect()
            meta = request.meta() if broker.current_id() == request.row.broker_id else {}
            if not meta:  # the broker lost its data, or the request
                self._recover(broker)
                return None
            self._keep_worker_user(broker, meta.get("worker_user", ""))
            self._reap_expired(broker)
            self._cancel_leftovers()
            state = self._scheduler_state()
            if state is not None:
                self._judge(broker, state)
            self._start_retries(broker, state)
        except BROKER_DOWN as exc:
            request.disconnect()
            self.unreachable("the broker", f"{type(exc).__name__}: {exc}")
            return None
        self.reachable("the broker")
        return state

    def _recover(self, broker: Broker) -> None:
        request = self.request
        seen = (request.row.broker_id, request.row.broker_request)
        request.reload()
        if (request.row.broker_id, request.row.broker_request) != seen:
            request.disconnect()  # another process waiting for it pushed it again already
            return
        pending = [t.idx for t in request.store.iter_tasks(request.request_id, statuses=("",),
                                                            values=False)]
        before = request.row.broker_id
        what = ("its data was replaced" if broker.current_id() != before
                else "the request's keys are gone")
        self.say(f"sheepdog: the broker lost request {request.request_id} ({what}); pushing"
                 f" its {len(pending)} unfinished task(s) again from the dbfile")
        request.disconnect()
        pushed = repush.push_again(request, pending, fresh=False,
                                   label=f"recover-{int(time.time())}")
        if pushed.not_cancelled[1]:
            self.to_cancel.append(pushed.not_cancelled)
        if pushed.launch_error is not None:
            self.unreachable(f"the {request.row.scheduler} scheduler",
                             f"starting the tasks again failed: {pushed.launch_error}")
            return
        self.say(f"sheepdog: request {request.request_id} goes on as broker request"
                 f" {request.row.broker_request}, {request.row.scheduler} job"
                 f" {','.join(pushed.job_ids)}")

    def _cancel_leftovers(self) -> None:
        """Jobs of a lost incarnation whose cancel failed: try again."""
        self.to_cancel = [(name, left) for name, job_ids in self.to_cancel
                          if (left := repush.cancel_jobs(self.request, name, job_ids))]

    def _keep_worker_user(self, broker: Broker, user: str) -> None:
        """A restarted broker forgets ACL users: make the request's again, same password."""
        request = self.request
        if user and not broker.worker_user_exists(user):
            name, password = worker_login(request.key, request.row.broker_request,
                                          request.row.token)
            broker.create_worker_user(name, password, request.row.broker_request)

    def _last_words(self, claim: Claim) -> str:
        if self.words_left <= 0 or not claim.job:
            return ""
        self.words_left -= 1
        session = self.request.session
        try:
            return session.scheduler().last_words(session.settings, job_name(self.request.row),
                                                  claim.job)
        except SheepdogError:
            return ""

    def _lose(self, broker: Broker, index: int, claim: Claim, reason: str, check: str) -> int:
        """Record the attempt ``claim`` of task ``index`` as lost; RECORD's reply."""
        request = self.request
        said = self._last_words(claim)
        if said:
            reason += f"; the scheduler's record:\n{said}"
        fields: dict[str, str | bytes] = {
            "error": reason, "host": claim.host, "pid": claim.pid, "job": claim.job,
            "started": f"{claim.started:.6f}", "finished": f"{time.time():.6f}"}
        return broker.tasks.record(request.row.broker_request, request.row.token, index,
                                   key=request.key, holder=claim.holder,
                                   attempt=claim.attempt, status="lost", cause="",
                                   fields=fields, check=check)

    def _reap_expired(self, broker: Broker) -> None:
        """Lost: attempts whose lease ran out while the broker could take heartbeats.

        A lease seen expired is only suspect; it is reaped if it is still expired
        ``2 * heartbeat_interval + 1`` s later - a live worker whose heartbeats
        could not land (the broker was busy, loading, unreachable) gets one through
        by then. After an outage this watch saw, nothing is reaped until a whole
        lease has passed with the broker answering.
        """
        row = self.request.row
        settings = self.request.session.settings
        lease = settings.lease_timeout
        now = time.monotonic()
        if now < self.broker_back_at + lease:
            return
        settle = 2 * settings.heartbeat_interval + 1.0
        suspects: dict[tuple[int, str], float] = {}
        lost = []
        for index, claim, deadline in broker.expired(row.broker_request, row.token):
            if claim is None or claim.holder == "-":
                continue
            first_seen = self.suspects.get((index, claim.holder), now)
            if now - first_seen < settle:
                suspects[(index, claim.holder)] = first_seen
                continue
            reason = (f"no heartbeat from {claim.host} pid {claim.pid} since"
                      f" {clock(deadline - lease)} (its lease ran out at {clock(deadline)}):"
                      " the worker died (killed, out of memory, node lost) or hung")
            if self._lose(broker, index, claim, reason, "expired") in (1, 2):
                lost.append((index, claim.attempt, reason))
        self.suspects = suspects
        self._say_lost(lost)

    def _say_lost(self, lost: list[tuple[int, int, str]]) -> None:
        if lost:
            index, attempt, reason = lost[0]
            self.say(f"sheepdog: {len(lost)} task(s) of request {self.request.request_id} lost"
                     f" (task {index}, attempt {attempt}: {reason.splitlines()[0]})")

    def _scheduler_state(self) -> JobState | None:
        """What the scheduler says of the request's jobs. A job it once said is over
        stays over: it is not asked about again (retries add jobs all night)."""
        request = self.request
        job_ids = job_id_list(request.row.job_ids)
        if not job_ids:
            return None
        asked = [j for j in job_ids if j not in self.ended]
        try:
            state = request.session.scheduler().state(asked) if asked else JobState()
        except SheepdogError as exc:
            state = JobState(unknown=str(exc))
        self.ended |= state.ended
        state = dataclasses.replace(state, ended=frozenset(self.ended & set(job_ids)))
        if state.unknown is not None:
            self.unreachable(f"the {request.row.scheduler} scheduler", state.unknown)
        else:
            self.reachable(f"the {request.row.scheduler} scheduler")
        return state

    def _judge(self, broker: Broker, state: JobState) -> None:
        """Act on what the scheduler said: a stuck job, or jobs that ended with tasks left."""
        request = self.request
        scheduler = request.session.scheduler()
        job_ids = job_id_list(request.row.job_ids)
        if state.problem:
            scheduler.cancel(job_ids)
            cancel_request(request, broker, f"{state.problem}; sheepdog deleted the job")
            return
        if not state.ended:
            return
        claims = broker.claims(request.row.broker_request)
        held = {i: c for i, c in claims.items() if c.holder != "-"}
        if state.unknown is None and state.all_ended(job_ids):
            waiting = set(broker.waiting_retries(request.row.broker_request))
            if request.session.settings.pilots:  # tasks tried before wait in the queue
                waiting |= {i for i, c in claims.items() if c.holder == "-"}
            pending = set(broker.pending_indices(request.row.broker_request))
            never = sorted(pending - waiting - set(held))
            if never:
                self._deleted(broker, job_ids, never, held)
                return
        if scheduler.job_end_kills_tasks:
            lost = []
            for index, claim in sorted(held.items()):
                if job_of(claim.job) in state.ended:
                    reason = (f"the {request.row.scheduler} job {job_of(claim.job)} ended while"
                              f" this task ran on {claim.host} (pid {claim.pid})")
                    if self._lose(broker, index, claim, reason, "") in (1, 2):
                        lost.append((index, claim.attempt, reason))
            self._say_lost(lost)

    def _deleted(self, broker: Broker, job_ids: list[str], never: list[int],
                 held: dict[int, Claim]) -> None:
        request = self.request
        rid = request.request_id
        reason = (f"the {request.row.scheduler} job {','.join(job_ids)} ended before every task"
                  f" had started ({len(never)} never did): it was deleted (e.g. with qdel) or"
                  " killed, or its tasks failed before they could start."
                  f" sheepdog.resubmit({rid}) runs the unfinished tasks again")
        said = ""
        for claim in list(held.values())[:1]:
            said = self._last_words(claim)
        if not said and job_ids:  # what became of the first task that never started
            said = self._last_words(Claim(0, 0, 0, "-", job=f"{job_ids[0]}.{never[0]}"))
        if said:
            reason += f"; the scheduler's record:\n{said}"
        cancel_request(request, broker, reason)

    def _start_retries(self, broker: Broker, state: JobState | None) -> None:
        request = self.request
        if request.session.settings.pilots:
            self._start_pilots(broker, state)
            return
        scheduler = request.session.scheduler()
        if scheduler.takes_retries and state is not None and state.active:
            return  # its running jobs start them
        row = request.row
        waiting = broker.take_retries(row.broker_request, row.token)
        levels: dict[int, list[int]] = {}
        for index, level in waiting.items():
            levels.setdefault(level, []).append(index)
        for level, indices in sorted(levels.items()):
            try:
                job_ids = launch(request.session, broker, row, request.key, request.worker_url,
                                 indices=sorted(indices), level=level,
                                 label=f"retry-{int(time.time() * 1000)}")
            except (SheepdogError, OSError) as exc:
                broker.put_back_retries(row.broker_request, waiting)
                self.unreachable(f"the {row.scheduler} scheduler",
                                 f"retrying {len(waiting)} task(s) failed: {exc}")
                return
            for index in indices:
                waiting.pop(index)
            joined = broker.add_job_ids(row.broker_request, job_ids)
            request.update(job_ids=joined)
            factor = (request.session.settings.retry_memory_factor or 1.0) ** level
            more = f" with {factor:g}x the memory" if level else ""
            self.say(f"sheepdog: running {len(indices)} task(s) of request"
                     f" {request.request_id} again{more} as {row.scheduler} job"
                     f" {','.join(job_ids)}")


    def _start_pilots(self, broker: Broker, state: JobState | None) -> None:
        """Worker mode: tasks left in the queue with no worker running (the others
        finished before these were lost, or a worker needs more memory): a new job."""
        request = self.request
        if state is not None and (state.unknown is not None or state.active):
            return  # running workers take them; or we cannot tell
        row = request.row
        level, queued = broker.tasks.requeue(row.broker_request, row.token)
        if not queued:
            return
        pending = broker.pending(row.broker_request)
        try:
            job_ids = launch(request.session, broker, row, request.key, request.worker_url,
                             indices=None, level=max(level, 0), tasks=pending,
                             label=f"retry-{int(time.time() * 1000)}")
        except (SheepdogError, OSError) as exc:
            self.unreachable(f"the {row.scheduler} scheduler",
                             f"starting workers for {pending} task(s) failed: {exc}")
            return
        joined = broker.add_job_ids(row.broker_request, job_ids)
        request.update(job_ids=joined)
        self.say(f"sheepdog: {pending} task(s) of request {request.request_id} left and no"
                 f" worker running: started {row.scheduler} job {','.join(job_ids)}")


def cancel_request(request: OpenRequest, broker: Broker, reason: str) -> int:
    """Give up every unfinished task of the request, with ``reason``; how many there were."""
    row = request.row
    mac = codec.outcome_mac(request.key, row.token, 0, 0, "cancelled", "", b"", reason)
    return broker.cancel(row.broker_request, row.token, reason, mac)


def say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
