"""``sheepdog doctor`` against real parts: the embedded broker, the testbed's Grid Engine and
Slurm over its sshd, real rq workers.

Configs reach the command as a profile of a config file (``--profile``), as users give them.
"""

from __future__ import annotations

import json
import platform
import re
import socket
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from sheepdog.broker import embedded
from sheepdog.cli import main
from sheepdog.submitter import doctor, paths, profiles
from sheepdog.submitter.store import Store

from .clusters import need_slurm
from .conftest import testbed_ssh as _ssh
from .test_rq import Workers

# -- helpers -------------------------------------------------------------------


def _profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: Mapping[str, object],
             name: str = "under-test") -> str:
    """A config file with one profile holding ``values``; its name."""
    lines = [f"[{name}]"] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv(profiles.CONFIG_ENV, str(path))
    return name


def _doctor(*args: str) -> tuple[Result, dict[str, str]]:
    """Run `sheepdog doctor`; the result and each check's line by its name."""
    result = CliRunner().invoke(main, ["doctor", *args])
    lines = {}
    for line in result.stdout.splitlines():
        found = re.match(r"(ok  |FAIL|skip) ([^:]+): ", line)
        assert found, f"not a check line: {line!r}\n{result.output}"
        lines[found.group(2)] = line
    return result, lines


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- this machine ----------------------------------------------------------------


def test_embedded_default_all_ok(dbfile: str) -> None:
    result, lines = _doctor("--dbfile", dbfile)
    assert result.exit_code == 0, result.output
    assert list(lines) == ["config", "broker", "probe", "job directory"]
    assert all(line.startswith("ok   ") for line in lines.values()), result.output
    assert f"embedded broker in {paths.embedded_broker_dir()}" in lines["broker"]
    assert (f"ran on {socket.gethostname()}: Python {platform.python_version()}"
            in lines["probe"])
    # the test key is gone, and the probe is a request named as such
    client = redis.Redis.from_url(embedded.url_for(paths.embedded_broker_dir()))
    assert list(client.scan_iter("sheepdog:doctor:*")) == []
    client.close()
    with Store(dbfile) as store:
        assert [row.function for row in store.requests()] == ["sheepdog.submitter.doctor.probe"]


def test_unreachable_broker_fails_with_a_fix_and_skips_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dbfile: str
) -> None:
    port = _closed_port()
    name = _profile(tmp_path, monkeypatch, {"broker_url": f"redis://127.0.0.1:{port}/0",
                                            "dbfile": dbfile})
    started = time.monotonic()
    result, lines = _doctor("--profile", name)
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert lines["config"].startswith(f"ok   config: profile {name}: ")
    assert re.fullmatch(rf"FAIL broker: cannot reach the broker at redis://127.0.0.1:{port}/0:"
                        r" .*Connection refused\. Fix: is the server running.*Check broker_url\.",
                        lines["broker"]), lines["broker"]
    assert lines["probe"] == "skip probe: needs broker"
    assert not Path(dbfile).exists()  # no probe was submitted


def test_a_broker_that_never_answers_is_given_up_after_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dbfile: str
) -> None:
    monkeypatch.setattr(doctor, "CHECK_BOUND", 2.0)
    with socket.socket() as silent:  # takes connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        name = _profile(tmp_path, monkeypatch, {"broker_url": f"redis://127.0.0.1:{port}/0",
                                                "dbfile": dbfile})
        started = time.monotonic()
        result, lines = _doctor("--profile", name)
        assert time.monotonic() - started < 10
    assert result.exit_code == 1
    assert lines["broker"] == ("FAIL broker: no answer within 2 s. Fix: check broker_url, and"
                               " that the server runs")
    assert lines["probe"] == "skip probe: needs broker"


def test_a_dbfile_that_cannot_be_written_fails_the_probe(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    dbfile = tmp_path / "a-file" / "results.sqlite"  # below a file: no directory to make
    result, lines = _doctor("--dbfile", str(dbfile))
    assert result.exit_code == 1
    assert re.fullmatch(rf"FAIL probe: cannot write the dbfile {dbfile}: .*\. Fix: set 'dbfile'"
                        r" \(or --dbfile\) to a file you can write, in a directory you can"
                        r" write", lines["probe"]), lines["probe"]
    assert lines["broker"].startswith("ok   ")


def test_a_wrong_config_is_the_first_failure(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    name = _profile(tmp_path, monkeypatch, {"retries": -1})
    result, lines = _doctor("--profile", name)
    assert result.exit_code == 1
    assert re.fullmatch(r"FAIL config: retries must be a whole number, 0 or more, got -1 \(from"
                        r" .*config.toml \[under-test\] line 2\)\. Fix: correct it; `sheepdog"
                        r" config show` lists every setting .*", lines["config"])
    assert lines["broker"] == "skip broker: needs config"
    _, lines = _doctor("--profile", "nosuchprofile")
    assert "FAIL config: no profile 'nosuchprofile' in" in lines["config"]


def test_split_advice_of_sheepdog_messages() -> None:
    from sheepdog.broker import urls

    cause, fix = doctor.split_advice(str(urls.refused_password("redis://:pw@h:1/0", "WRONGPASS")))
    assert cause == "the broker at redis://:***@h:1/0 refused the password: WRONGPASS"
    assert fix == "check the password in broker_url."
    assert doctor.split_advice("qsub said: no\nExiting.") == ("qsub said: no Exiting", "")


# -- Grid Engine ---------------------------------------------------------------------


@pytest.fixture
def cluster(config: dict[str, object]) -> dict[str, object]:
    """The testbed's Grid Engine; ``_run`` writes it as a profile and runs doctor on it."""
    return dict(config, scheduler="gridengine")


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: Mapping[str, object],
         *args: str) -> tuple[Result, dict[str, str]]:
    return _doctor("--profile", _profile(tmp_path, monkeypatch, config), *args)


def test_gridengine_all_ok(cluster: dict[str, object], testbed: dict[str, str],
                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = dict(cluster, ge_opts=["-l h_rt=0:10:0"])
    result, lines = _run(tmp_path, monkeypatch, config)
    assert result.exit_code == 0, result.output
    assert list(lines) == ["config", "broker", "ssh", "scheduler", "probe", "complexes",
                           "job directory"]
    node = _ssh(testbed, "hostname").stdout.strip()
    python = _ssh(testbed, "/usr/bin/python3 -c 'import platform;"
                                  " print(platform.python_version())'").stdout.strip()
    assert re.fullmatch(rf"ok   probe: request \d+ ran on {node}: Python {python}"
                        r" \(/usr/bin/python3\), [\d.]+ s", lines["probe"]), lines["probe"]
    assert "host key ssh-ed25519 SHA256:" in lines["ssh"]
    assert "all.q (8 of 8 slots usable)" in lines["scheduler"]
    assert lines["complexes"].startswith("ok   complexes: ge_opts requests h_rt: all defined")
    assert "/.sheepdog/jobs" in lines["job directory"]


def test_gridengine_detected_from_host_alone(cluster: dict[str, object], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = {k: v for k, v in cluster.items() if k != "scheduler"}
    result, lines = _run(tmp_path, monkeypatch, config)
    assert result.exit_code == 0, result.output
    assert "Grid Engine or Slurm on testbed (asked below)" in lines["config"]
    assert lines["scheduler"].startswith(
        "ok   scheduler: Grid Engine (found on testbed; it also has Slurm: set 'scheduler' to"
        " choose), qsub qstat qdel qconf found")


def test_unreachable_ssh_port(cluster: dict[str, object], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    result, lines = _run(tmp_path, monkeypatch, dict(cluster, ssh_port=port))
    assert result.exit_code == 1
    assert re.fullmatch(rf"FAIL ssh: cannot connect to sgeuser@127.0.0.1:{port} over SSH: .*\."
                        r" Fix: check 'host'/'ssh_port' and that the head node is reachable\.",
                        lines["ssh"]), lines["ssh"]
    assert lines["broker"].startswith("ok   broker:")  # reached directly, not through SSH
    for later in ("scheduler", "job directory"):
        assert lines[later] == f"skip {later}: needs ssh"
    assert lines["probe"] == "skip probe: needs scheduler"


def test_unknown_host_key(cluster: dict[str, object], ssh_home: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    (ssh_home / ".ssh" / "known_hosts").write_text("")
    result, lines = _run(tmp_path, monkeypatch, cluster)
    assert result.exit_code == 1
    assert re.fullmatch(r"FAIL ssh: the SSH host key of \[127.0.0.1\]:2222 \(ssh-ed25519"
                        r" SHA256:\S+\) is not in ~/.ssh/known_hosts, and sheepdog does not"
                        r" trust unknown hosts\. Fix: check that fingerprint with your"
                        r" cluster's admins, then add the key: .*`ssh-keyscan -p 2222"
                        r" 127.0.0.1 >> ~/.ssh/known_hosts`\.", lines["ssh"]), lines["ssh"]


def test_missing_key_file(cluster: dict[str, object], tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    missing = str(tmp_path / "no_such_key")
    result, lines = _run(tmp_path, monkeypatch, dict(cluster, ssh_keyfile=missing))
    assert result.exit_code == 1
    assert lines["ssh"] == (f"FAIL ssh: ssh_keyfile '{missing}' does not exist. Fix: set"
                            " 'ssh_keyfile' to your private key file (e.g. ~/.ssh/id_ed25519),"
                            " or leave it out to use your SSH agent and ~/.ssh keys")


def test_unknown_complex_is_named(cluster: dict[str, object], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = dict(cluster, ge_opts=["-l h_rt=0:10:0,nosuchcomplex=1"])
    result, lines = _run(tmp_path, monkeypatch, config)
    assert result.exit_code == 1
    assert lines["complexes"] == (
        "FAIL complexes: 'nosuchcomplex' is not a complex of this cluster (qconf -sc). Fix:"
        " remove '-l nosuchcomplex=...' from ge_opts, or use a name `qconf -sc` lists")
    # the probe went the real way, and qsub refused it
    assert re.match(r'FAIL probe: qsub on sgeuser@testbed refused the probe job \(exit status'
                    r' 1\): .*unknown resource "nosuchcomplex"', lines["probe"]), lines["probe"]
    assert lines["job directory"].startswith("ok   job directory:")


def test_wrong_shell_fails_the_probe(cluster: dict[str, object], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    result, lines = _run(tmp_path, monkeypatch, dict(cluster, shell="/no/such/python"))
    assert result.exit_code == 1
    assert re.fullmatch(r"FAIL probe: the worker Python '/no/such/python' does not run on"
                        r" sgeuser@testbed \(exit status 127: .*No such file or directory\)\."
                        r" Fix: set the 'shell' config key to a Python 3\.\d+ interpreter that"
                        r" the nodes have\.", lines["probe"]), lines["probe"]


def test_a_probe_that_cannot_start_says_why_and_is_cancelled(
    cluster: dict[str, object], testbed: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # More than the node has: qstat's scheduling info says so (or that the queue is full,
    # while other tests fill it), and the probe is cancelled after its bound.
    config = dict(cluster, ge_opts=["-l mem_grab=100G"])
    started = time.monotonic()
    result, lines = _run(tmp_path, monkeypatch, config, "--probe-timeout", "5")
    assert time.monotonic() - started < 30
    assert result.exit_code == 1
    found = re.fullmatch(r"FAIL probe: the probe \(request (\d+)\) had no outcome within 5 s and"
                         r" was cancelled: Grid Engine job (\d+) is waiting: .+\. Fix: if the"
                         r" cluster is only busy, give it longer"
                         r" \(--probe-timeout\); else ask for what it can give \(ge_opts\)",
                         lines["probe"])
    assert found, lines["probe"]
    assert _ssh(testbed, f"qstat -j {found.group(2)}").returncode == 1  # deleted
    assert lines["complexes"].startswith("ok   complexes: ge_opts requests mem_grab:")


_QCONF_SC = """\
#name               shortcut   type      relop requestable consumable default  urgency
#--------------------------------------------------------------------------------------
h_rt                h_rt       TIME      <=    FORCED      NO         0:0:0    0
load_avg            la         DOUBLE    >=    NO          NO         0        0
mem_grab            mg         MEMORY    <=    YES         NO         0        0
# >#< starts a comment but comments are not saved across edits --------
"""


def test_complex_problems_forced_and_not_requestable() -> None:
    """A site's FORCED complex (the testbed marks none: the table is the boundary here)."""
    assert doctor.complex_problems(_QCONF_SC, ("-l mg=2G",)) == [
        ("the cluster marks 'h_rt' FORCED: every job must request it",
         "add '-l h_rt=VALUE' to ge_opts (ask your admins for the value)")]
    assert doctor.complex_problems(_QCONF_SC, ("-hard -l h_rt=1:0:0", "-l la=1")) == [
        ("'la' is not requestable here", "remove '-l la=...' from ge_opts")]
    [(cause, fix)] = doctor.complex_problems(_QCONF_SC.replace("mem_grab", "h_vmem"),
                                             ("-l h_rt=1:0:0,mem_grab=2G",))
    assert cause == "'mem_grab' is not a complex of this cluster (qconf -sc)"
    assert "has no mem_grab complex" in fix and "ask for memory with h_vmem" in fix


# -- Slurm ---------------------------------------------------------------------------


def test_slurm_all_ok_and_an_unknown_partition(config: dict[str, object],
                                               testbed: dict[str, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    need_slurm(testbed)
    slurm = dict(config, scheduler="slurm", slurm_opts=["--partition=debug"])
    result, lines = _run(tmp_path, monkeypatch, slurm)
    assert result.exit_code == 0, result.output
    assert list(lines) == ["config", "broker", "ssh", "scheduler", "probe", "partition",
                           "job directory"]
    assert "partitions taking jobs: debug (default)" in lines["scheduler"]
    assert lines["partition"] == "ok   partition: partition debug exists and is up"
    assert re.match(r"ok   probe: request \d+ ran on \S+: Python 3\.", lines["probe"])
    result, lines = _run(tmp_path, monkeypatch, dict(slurm, slurm_opts=["-p nosuch"]))
    assert result.exit_code == 1
    assert lines["partition"] == (
        "FAIL partition: slurm_opts asks for partition nosuch, which this cluster does not have"
        " (sinfo: debug). Fix: set --partition to one of debug, or leave it out for the default"
        " (debug)")
    assert "sbatch on sgeuser@testbed refused the probe job" in lines["probe"]


# -- rq ------------------------------------------------------------------------------


def test_rq_needs_a_listening_worker(server_url: str, tmp_path: Path, dbfile: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"scheduler": "rq", "broker_url": server_url, "dbfile": dbfile}
    result, lines = _run(tmp_path, monkeypatch, config)
    assert result.exit_code == 1
    assert lines["rq redis"].startswith("ok   rq redis: redis://:***@127.0.0.1:")
    assert re.fullmatch(r"FAIL rq workers: no rq worker listens on queue 'sheepdog' at"
                        r" redis://:\*\*\*@127\.0\.0\.1:\d+/0\. Fix: start one where sheepdog"
                        r" is installed: `rq worker --url URL sheepdog`", lines["rq workers"])
    assert lines["probe"] == "skip probe: needs rq workers"
    workers = Workers(server_url, tmp_path)
    try:
        workers.start(1)
        result, lines = _run(tmp_path, monkeypatch, config)
        assert result.exit_code == 0, result.output + workers.logs()
        assert lines["rq workers"] == (
            f"ok   rq workers: 1 on queue 'sheepdog', on {socket.gethostname()}")
        assert f"ran on {socket.gethostname()}: Python {platform.python_version()}" \
            in lines["probe"]
    finally:
        workers.stop()
