"""The ``sheepdog`` command: a demo, and a look at requests kept in a dbfile."""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
from collections.abc import Callable
from typing import Any

import click
import redis

from sheepdog.broker import embedded
from sheepdog.errors import SheepdogError
from sheepdog.submitter import api, paths, profiles, results, transfer
from sheepdog.submitter.config import Settings
from sheepdog.submitter.doctor import OK, PROBE_TIMEOUT, run_checks
from sheepdog.submitter.store import Store

_PROFILE = "sheepdog_profile"  # where --profile waits in ctx.meta for --dbfile's callback


def _remember_profile(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta[_PROFILE] = value


def _dbfile_of(ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    """An explicit --dbfile, else the dbfile of --profile (or of the default profile)."""
    if value is not None:
        return value
    try:
        return profiles.dbfile(ctx.meta.get(_PROFILE))
    except SheepdogError as exc:
        raise click.ClickException(str(exc)) from exc


def DBFILE(command: Callable[..., Any]) -> Callable[..., Any]:  # upper case: read as an option
    """``--dbfile`` and ``--profile``; the command gets ``dbfile`` alone, the profile's applied."""
    command = click.option(
        "--dbfile", default=None, callback=_dbfile_of,
        help="SQLite file of the requests.  [default: the profile's dbfile, else"
             f" {Settings().dbfile}]",
    )(command)
    return click.option(
        "--profile", default=None, is_eager=True, expose_value=False,
        callback=_remember_profile, help="Profile of the config file whose dbfile to use.",
    )(command)


def _fail_cleanly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Our own errors end as one line on stderr and exit status 1, not a traceback."""
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SheepdogError as exc:
            raise click.ClickException(str(exc)) from exc

    wrapped.__name__ = command.__name__
    wrapped.__doc__ = command.__doc__
    return wrapped


@click.group()
@click.version_option(package_name="sheepdog")
def main() -> None:
    """Run a Python function over many arguments as one array job."""


def _demo_f(a: int, b: int) -> int:
    return a + b


def _demo_square(x: int) -> int:
    return x * x


@main.command()
@click.option("--tasks", default=10_000, show_default=True, help="Tasks in the second array.")
@DBFILE
@_fail_cleanly
def demo(tasks: int, dbfile: str) -> None:
    """Run the quickstart on this machine, through the embedded broker."""
    config = Settings.from_config({"dbfile": dbfile})  # not a profile's cluster: this machine
    args = [(1, 1), (1, 2), (2, 2)]
    click.echo(f"sheepdog.map(f, {args}) where f(a, b) = a + b")
    click.echo(f"  -> {api.map(_demo_f, args, config)}")
    click.echo(f"sheepdog.map(square, range({tasks})): worker mode, one worker per CPU")
    started = time.monotonic()
    request_id = api.map_async(_demo_square, range(tasks), config)
    squares = [value for _, value in api.get_results(request_id, dbfile)]
    took = time.monotonic() - started
    ok = squares == [x * x for x in range(tasks)]
    with Store(dbfile, create=False) as store:
        pids = store.worker_processes(request_id)
    click.echo(f"  -> {len(squares)} results in {took:.1f} s ({tasks / took:,.0f} tasks/s) from"
               f" {pids} worker process(es), first {squares[:5]}, all correct: {ok}")
    click.echo(f"results are kept in {dbfile}; try `sheepdog ls --dbfile {dbfile}` or"
               f" `sheepdog status {request_id} --dbfile {dbfile}`")
    if not ok:
        sys.exit(1)


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@main.command("ls")
@DBFILE
@_fail_cleanly
def ls(dbfile: str) -> None:
    """List the requests in a dbfile, with their counts."""
    with Store(dbfile, create=False) as store:
        click.echo(f"{'id':>6}  {'created':19}  {'tasks':>6}  {'ok':>6}  {'failed':>6}"
                   f"  {'status':10}  function")
        for row in store.requests():
            counts = store.counts(row.request_id)
            failed = counts["error"] + counts["lost"]
            click.echo(
                f"{row.request_id:>6}  {_when(row.created)}  {row.n_tasks:>6}  {counts['ok']:>6}"
                f"  {failed:>6}  {row.status:10}  {row.function}"
            )


@main.command()
@click.argument("request_id", type=int, required=False)
@DBFILE
@click.pass_context
@_fail_cleanly
def status(ctx: click.Context, request_id: int | None, dbfile: str) -> None:
    """Counts of done, failed and remaining tasks (of every request without an id)."""
    if request_id is None:
        ctx.invoke(ls, dbfile=dbfile)
        return
    with results.open_request(request_id, dbfile) as request:
        results.collect_available(request)
        row = request.row
        counts = request.store.counts(request_id)
        remaining = row.n_tasks - sum(counts.values())
        state = "(broker unreachable)"
        with contextlib.suppress(SheepdogError, redis.RedisError, OSError):
            state = request.meta().get("status", "gone from the broker")
        on_broker = "" if row.broker_request == request_id else \
            f", request {row.broker_request} on its broker"
        click.echo(f"request {request_id}: {row.function}, {row.n_tasks} tasks,"
                   f" {row.scheduler} job {row.job_ids or '-'}, {row.status} (broker: {state}"
                   f"{on_broker})")
        click.echo(f"  done {counts['ok']}  failed {counts['error']}  lost {counts['lost']}"
                   f"  remaining {remaining}  retried {request.store.retried(request_id)}")
        for text in results.incidents(request):
            click.echo(f"  incident: {text}")


@main.command("results")
@click.argument("request_id", type=int)
@DBFILE
@click.option("--wait/--no-wait", default=False, help="Wait for every task (with progress).")
@_fail_cleanly
def results_command(request_id: int, dbfile: str, wait: bool) -> None:
    """Print each task's arguments and result, in order."""
    for args, value in api.get_results(request_id, dbfile, block=wait, verbose=True):
        click.echo(f"{args!r}\t{value!r}")


@main.command()
@click.argument("request_id", type=int)
@DBFILE
@_fail_cleanly
def errors(request_id: int, dbfile: str) -> None:
    """Print the failed tasks with their remote tracebacks."""
    found = api.get_errors(request_id, dbfile)
    for args, text in found:
        click.echo(f"--- args {args!r}")
        click.echo(text.rstrip())
    click.echo(f"{len(found)} failed task(s)")


@main.command()
@click.argument("request_id", type=int)
@DBFILE
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write.  [default: sheepdog-report-ID.html]")
@_fail_cleanly
def report(request_id: int, dbfile: str, output: str | None) -> None:
    """Write one self-contained HTML page about a request: counts, run times, a timeline
    of the workers, the slowest tasks and every failure. Reads the dbfile only."""
    from sheepdog.submitter.report import write_report  # matplotlib comes with it

    written = write_report(request_id, dbfile, output or f"sheepdog-report-{request_id}.html")
    click.echo(str(written))


@main.command()
@click.argument("request_id", type=int)
@DBFILE
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@_fail_cleanly
def collect(request_id: int, dbfile: str, timeout: float | None) -> None:
    """Keep collecting a request into the dbfile until every task has an outcome.

    Run it from any machine that reaches the broker (through the head node's
    SSH if need be) and holds the dbfile and credentials.json, e.g. after the
    process that submitted the request has gone.
    """
    with results.open_request(request_id, dbfile) as request:
        results.wait(request, verbose=True, timeout=timeout)
        counts = request.store.counts(request_id)
        total = request.row.n_tasks
    failed = counts["error"] + counts["lost"]
    click.echo(f"request {request_id}: {sum(counts.values())} of {total} tasks have an outcome"
               f" ({counts['ok']} ok, {failed} failed)")


@main.command()
@click.argument("request_id", type=int)
@DBFILE
@_fail_cleanly
def cancel(request_id: int, dbfile: str) -> None:
    """Kill a request's job; its unfinished tasks are recorded as lost."""
    n = api.cancel(request_id, dbfile)
    click.echo(f"request {request_id} cancelled; {n} task(s) had no outcome")


@main.command()
@click.argument("request_id", type=int)
@DBFILE
@click.option("--failed/--no-failed", default=True, show_default=True,
              help="Run the tasks whose function raised again.")
@click.option("--lost/--no-lost", default=True, show_default=True,
              help="Run the tasks that were lost (killed, cancelled) again.")
@_fail_cleanly
def resubmit(request_id: int, dbfile: str, failed: bool, lost: bool) -> None:
    """Run the failed and lost tasks of a finished request again, from the dbfile.

    New outcomes replace the old ones in the same request; collect them with
    `sheepdog collect ID` or `sheepdog results ID --wait`.
    """
    n = api.resubmit(request_id, dbfile, failed=failed, lost=lost, verbose=True)
    if n == 0:
        click.echo(f"request {request_id}: nothing to run again")


@main.command("export")
@click.argument("request_id", type=int)
@DBFILE
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="File to write; it must not exist.  [default: sheepdog-request-ID.sqlite]")
@click.option("--with-broker", is_flag=True,
              help="For a request that is not finished: also write its broker's URL WITH THE"
                   " PASSWORD, so the other machine can collect it. Whoever has the file can"
                   " then use that broker. Not for the embedded broker.")
@_fail_cleanly
def export_command(request_id: int, dbfile: str, output: str | None, with_broker: bool) -> None:
    """Write one request to one file, to read or collect it on another machine.

    The file is a dbfile holding only that request, and its own key (mode
    0600): the key opens this request's pickled results and nothing else -
    never the broker's master key. Read it there after `sheepdog import FILE`.
    """
    for line in transfer.write_export(request_id, dbfile, output,
                                      with_broker=with_broker).lines():
        click.echo(line)


@main.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@DBFILE
@_fail_cleanly
def import_command(path: str, dbfile: str) -> None:
    """Add the request of a file from `sheepdog export` to the dbfile, and its key here.

    Its id is kept unless another request has it (then it gets the next free
    one); importing the same request again replaces it, never duplicates it.
    Import only files from people whose code you would run: its key lets its
    pickled results be unpickled here.
    """
    for line in transfer.read_export(path, dbfile).lines():
        click.echo(line)


@main.group()
def broker() -> None:
    """The embedded broker (used when no broker_url is configured)."""


@broker.command("start")
@_fail_cleanly
def broker_start() -> None:
    """Start the embedded broker unless it runs."""
    embedded.ensure_running(paths.embedded_broker_dir())
    click.echo(f"embedded broker running in {paths.embedded_broker_dir()}")


@broker.command("stop")
@_fail_cleanly
def broker_stop() -> None:
    """Stop the embedded broker (its data is kept on disk)."""
    stopped = embedded.stop(paths.embedded_broker_dir())
    click.echo("embedded broker stopped" if stopped else "embedded broker was not running")


@main.command("doctor")
@click.option("--profile", default=None, help="Profile of the config file to check."
              "  [default: the default profile]")
@click.option("--dbfile", default=None, help="SQLite file the probe request is kept in."
              "  [default: the profile's dbfile]")
@click.option("--probe-timeout", type=float, default=PROBE_TIMEOUT, show_default=True,
              help="Seconds the probe job may take to run.")
@_fail_cleanly
def doctor_command(profile: str | None, dbfile: str | None, probe_timeout: float) -> None:
    """Check a config before a real run: broker, SSH, scheduler, and a one-task probe job.

    One line per check (ok, FAIL with the cause and the fix, or skip); exit
    status 0 only if every check passed. docs/doctor.md describes each check.
    """
    passed = True
    for check in run_checks(profile, dbfile=dbfile, probe_timeout=probe_timeout):
        click.echo(check.line())
        passed = passed and check.status == OK
    sys.exit(0 if passed else 1)


@main.group("config")
def config_group() -> None:
    """Profiles: the config file, and the settings in effect with their sources."""


@config_group.command("show")
@click.argument("profile", required=False)
@_fail_cleanly
def config_show(profile: str | None) -> None:
    """Each setting in effect (for PROFILE, else the default) and where it came from.

    Layers, lowest first: defaults, [default], [PROFILE], SHEEPDOG_<KEY>
    environment variables. Passwords are masked.
    """
    path = profiles.config_file()
    click.echo(f"# config file: {path} ({'exists' if path.is_file() else 'does not exist'})")
    click.echo(f"# profile: {profile or profiles.DEFAULT_PROFILE}")
    for source in profiles.explain(profile):
        value = list(source.value) if isinstance(source.value, tuple) else source.value
        click.echo(f"{source.key} = {value!r}  # {source.origin}")
    profiles.resolve(profile)  # values wrong together: one error line after the list


@config_group.command("path")
def config_path() -> None:
    """The config file's path ($SHEEPDOG_CONFIG, else the user config directory)."""
    click.echo(str(profiles.config_file()))
if __name__ == "__main__":
    main()
