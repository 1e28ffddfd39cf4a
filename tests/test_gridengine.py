"""Against the real test cluster: what is Grid Engine's own (SSH, the zipapp, ge_opts, Eqw).

What every cluster scheduler must do is in test_clusters.py, run against Grid
Engine and Slurm alike.

Everything goes through a real sshd with paramiko as the non-root submit user,
and workers run on the node under a bare /usr/bin/python3 from the zipapp.
Without the testbed these tests skip, except under CI, where they fail:
CI must bring the cluster up (scripts/test does, as root on Debian).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

import sheepdog
from sheepdog.errors import RequestFailed, SSHError, SubmitError
from sheepdog.submitter.store import Store

from .conftest import testbed_ssh as _ssh


def add(a: int, b: int) -> int:
    return a + b


def test_workers_run_from_the_zipapp_on_a_bare_python(config: dict[str, object]) -> None:
    def where() -> tuple[str, str, str, str]:
        import os

        import msgpack

        import sheepdog

        return (sys.executable, sheepdog.__file__ or "", msgpack.__file__ or "",
                os.environ["SGE_TASK_ID"])

    [(python, own, packer, task)] = sheepdog.map(where, [()], config)
    assert os.path.realpath(python) == os.path.realpath("/usr/bin/python3")  # usrmerge: /bin
    assert task == "1"
    # from the zipapp, unpacked once next to itself (bytecode cached there)
    assert re.search(r"/sheepdog-[0-9a-f]{16}\.d/sheepdog/__init__\.py$", own), own
    assert re.search(r"/sheepdog-[0-9a-f]{16}\.d/msgpack/", packer), packer


def test_nodes_with_sheepdog_installed(config: dict[str, object],
                                       testbed: dict[str, str]) -> None:
    def where() -> str:
        import sheepdog

        return sheepdog.__file__ or ""

    config = dict(config, shell=testbed["SHEEPDOG_TESTBED_NODE_PYTHON"], ship_worker=False)
    [path] = sheepdog.map(where, [()], config)
    assert path.startswith("/opt/sheepdog-node/") and ".pyz" not in path


def test_ge_opts_reach_the_job(config: dict[str, object]) -> None:
    def env(name: str) -> str:
        import os

        return os.environ.get(name, "")

    config = dict(config, ge_opts=["-v SHEEPDOG_TEST_VAR=passed", "-l h_rt=0:10:0"])
    assert sheepdog.map(env, ["SHEEPDOG_TEST_VAR"], config) == ["passed"]


def _request_keys(broker: redis.Redis) -> list[bytes]:
    return list(broker.scan_iter("sheepdog:{req:*"))


def test_wrong_shell_is_refused_before_submitting(config: dict[str, object],
                                                  broker: redis.Redis) -> None:
    before = _request_keys(broker)
    with pytest.raises(SubmitError, match=r"the worker Python '/no/such/python' does not run on"
                       r" sgeuser@testbed .*Set the 'shell' config key"):
        sheepdog.map(add, [(1, 2)], dict(config, shell="/no/such/python"))
    assert _request_keys(broker) == before


def test_unknown_host_key_is_refused_with_how_to_add_it(config: dict[str, object],
                                                        ssh_home: Path) -> None:
    (ssh_home / ".ssh" / "known_hosts").write_text("")
    with pytest.raises(SSHError, match=r"\[127.0.0.1\]:2222 .* is not in ~/.ssh/known_hosts.*"
                       r"ssh-keyscan -p 2222 127.0.0.1 >> ~/.ssh/known_hosts"):
        sheepdog.map(add, [(1, 2)], config)


def test_changed_host_key_is_refused(config: dict[str, object], ssh_home: Path) -> None:
    import paramiko

    # Known hosts names the head node with another RSA key: paramiko then asks for
    # its RSA key, and the one it gets does not match.
    impostor = paramiko.RSAKey.generate(2048)
    (ssh_home / ".ssh" / "known_hosts").write_text(
        f"[127.0.0.1]:2222 ssh-rsa {impostor.get_base64()}\n"
    )
    with pytest.raises(SSHError, match=r"has CHANGED .*ssh-keygen -R '\[127.0.0.1\]:2222'"):
        sheepdog.map(add, [(1, 2)], config)


def _job_id(dbfile: str, request_id: int) -> str:
    with Store(dbfile) as store:
        return store.request(request_id).job_ids.split(",")[0]


def test_qdel_mid_run_stops_map_promptly(config: dict[str, object],
                                         testbed: dict[str, str]) -> None:
    """12 tasks on 8 slots: qdel catches some running and some never started, so the
    request was cancelled (tasks that all started and died are lost instead, below)."""
    def slow(x: int) -> int:
        import time

        time.sleep(120)
        return x

    outcome: list[BaseException | list[object]] = []

    def run() -> None:
        try:
            outcome.append(sheepdog.map(slow, range(12), config, verbose=False))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    dbfile = str(config["dbfile"])
    deadline = time.monotonic() + 60
    while True:  # until the job is queued and at least one task is running
        assert time.monotonic() < deadline, "the job never started"
        if Path(dbfile).exists():
            with Store(dbfile) as store:
                rows = store.requests()
            if rows and rows[0].job_ids:
                qstat = _ssh(testbed, f"qstat -j {rows[0].job_ids}")
                if "usage" in qstat.stdout:
                    break
        time.sleep(0.5)
    deleted = _ssh(testbed, f"qdel {rows[0].job_ids}")
    assert deleted.returncode == 0, deleted.stderr
    qdel_at = time.monotonic()
    thread.join(60)
    assert not thread.is_alive(), "map kept waiting after qdel"
    assert time.monotonic() - qdel_at < 20
    [error] = outcome
    assert isinstance(error, RequestFailed)
    assert "was cancelled (the gridengine job" in str(error) and "qdel" in str(error)
    assert "exit_status 137" in str(error)  # qacct's record of a killed task


def test_arrays_larger_than_max_aj_tasks_become_several_jobs(
    config: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sheepdog.submitter.schedulers.gridengine import GridEngine

    monkeypatch.setattr(GridEngine, "max_array", lambda self: 2)
    dbfile = str(config["dbfile"])
    request_id = sheepdog.map_async(add, [(i, 0) for i in range(5)], config)
    assert len(_job_id_list(dbfile, request_id)) == 3
    assert sheepdog.get_results(request_id, dbfile, timeout=120) == [
        ((i, 0), i) for i in range(5)
    ]


def _job_id_list(dbfile: str, request_id: int) -> list[str]:
    with Store(dbfile) as store:
        return store.request(request_id).job_ids.split(",")


def test_broker_reached_through_an_ssh_tunnel(config: dict[str, object]) -> None:
    from sheepdog.submitter.config import Settings
    from sheepdog.submitter.session import Session

    settings = Settings.from_config(dict(config, ssh_tunnel="always"))
    with Session(settings) as session:
        url = session.reachable_url(str(config["broker_url"]))
        assert url != config["broker_url"] and "@127.0.0.1:" in url
        client = redis.Redis.from_url(url)
        name = f"tunnel-check-{os.getpid()}"
        client.client_setname(name)
        sockets = subprocess.run(["ss", "-Htnp", "dport = :6390"], capture_output=True,
                                 text=True, check=True).stdout
        assert "sshd" in sockets  # the broker sees the head node's sshd as its client
        client.close()
    assert sheepdog.map(add, [(2, 3)], dict(config, ssh_tunnel="always")) == [5]


def test_a_job_that_cannot_be_scheduled_is_explained(
    config: dict[str, object], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sheepdog.submitter import results

    monkeypatch.setattr(results, "WAITING_HINT_AFTER", 3.0)
    monkeypatch.setattr(results, "_interactive", lambda: True)
    config = dict(config, ge_opts=["-l mem_grab=100G"])  # more than the node has
    dbfile = str(config["dbfile"])
    request_id = sheepdog.map_async(add, [(1, 1)], config)
    try:
        with pytest.raises(sheepdog.ResultsTimeout):
            sheepdog.get_results(request_id, dbfile, verbose=True, timeout=12)
    finally:
        sheepdog.cancel(request_id, dbfile)
    err = capsys.readouterr().err
    assert "nothing has run yet. Grid Engine job" in err
    assert "is waiting: (-l mem_grab=100G) cannot run" in err


def _config_with(ssh_home: Path, testbed: dict[str, str], extra: str) -> None:
    """Rewrite ~/.ssh/config: 'jumpbox' is the head node too, 'testbed' reached via ``extra``."""
    common = (f"  HostName {testbed['SHEEPDOG_TESTBED_SSH_HOST']}\n"
              f"  Port {testbed['SHEEPDOG_TESTBED_SSH_PORT']}\n"
              f"  User {testbed['SHEEPDOG_TESTBED_SSH_USER']}\n"
              f"  IdentityFile {testbed['SHEEPDOG_TESTBED_SSH_KEY']}\n")
    (ssh_home / ".ssh" / "config").write_text(
        f"Host jumpbox\n{common}\nHost testbed\n{common}{extra}"
    )


def test_proxy_command_from_ssh_config(config: dict[str, object], ssh_home: Path,
                                       testbed: dict[str, str]) -> None:
    known = ssh_home / ".ssh" / "known_hosts"
    _config_with(ssh_home, testbed, (
        f"  ProxyCommand ssh -F none -i {testbed['SHEEPDOG_TESTBED_SSH_KEY']} -o BatchMode=yes"
        f" -o UserKnownHostsFile={known} -p %p {testbed['SHEEPDOG_TESTBED_SSH_USER']}@%h"
        " -W %h:%p\n"
    ))
    assert sheepdog.map(add, [(20, 22)], config) == [42]


def test_proxy_jump_from_ssh_config(config: dict[str, object], ssh_home: Path,
                                    testbed: dict[str, str]) -> None:
    _config_with(ssh_home, testbed, "  ProxyJump jumpbox\n")
    from sheepdog.submitter import ssh

    target = ssh.resolve("testbed")
    assert target.proxy_jump == "jumpbox"
    assert sheepdog.map(add, [(40, 2)], config) == [42]


def test_key_from_the_ssh_agent(config: dict[str, object], ssh_home: Path,
                                testbed: dict[str, str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    _config_with(ssh_home, testbed, "")
    config_file = ssh_home / ".ssh" / "config"
    config_file.write_text(config_file.read_text().replace("  IdentityFile", "  # IdentityFile"))
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    env = dict(line.split(";")[0].split("=", 1) for line in agent.splitlines() if "=" in line)
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", env["SSH_AUTH_SOCK"])
        subprocess.run(["ssh-add", testbed["SHEEPDOG_TESTBED_SSH_KEY"]], check=True,
                       capture_output=True)  # to the agent named by SSH_AUTH_SOCK, set above
        assert sheepdog.map(add, [(1, 2)], config) == [3]
    finally:
        subprocess.run(["kill", env["SSH_AGENT_PID"]], check=False)


def test_one_ssh_connection_per_map_closed_afterwards(
    config: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sheepdog.submitter import ssh

    made: list[object] = []
    real_connect = ssh.connect

    def counting_connect(target: ssh.Target) -> tuple[object, ssh.Closer]:
        client, close = real_connect(target)
        made.append(client)
        return client, close

    monkeypatch.setattr(ssh, "connect", counting_connect)
    assert sheepdog.map(add, [(i, i) for i in range(5)], config) == [0, 2, 4, 6, 8]
    assert len(made) == 1  # submit, probes, uploads, qsub and every qstat shared it
    transport = made[0].get_transport()  # type: ignore[attr-defined]
    assert transport is None or not transport.is_active()


def test_worker_uploaded_once_per_version_and_job_files_private(
    config: dict[str, object], testbed: dict[str, str]
) -> None:
    from sheepdog.submitter import zipapp

    def slow(x: int) -> int:
        import time

        time.sleep(3)
        return x

    sheepdog.map(add, [(1, 1)], config)
    name = zipapp.file_name(zipapp.build()[1])
    stat = f"stat -c '%a %Y' ~/.sheepdog/{name}"
    first = _ssh(testbed, stat).stdout
    dbfile = str(config["dbfile"])
    request_id = sheepdog.map_async(slow, [1], config)
    assert _ssh(testbed, stat).stdout == first  # the same version is not uploaded again
    assert first.split()[0] == "644"
    with Store(dbfile) as store:
        row = store.request(request_id)
    job_file = f"~/.sheepdog/jobs/{row.broker_id[:8]}-{request_id}/job-main.json"
    assert _ssh(testbed, f"stat -c %a {job_file}").stdout.strip() == "600"
    assert sheepdog.get_results(request_id, dbfile) == [(1, 1)]
    assert _ssh(testbed, f"test -e {job_file}").returncode == 1  # gone with the request


def test_an_ssh_connection_that_drops_is_made_again(config: dict[str, object]) -> None:
    """The laptop slept: the next qstat finds the connection dead. Nothing is decided on it."""
    from sheepdog.submitter.config import Settings
    from sheepdog.submitter.remote import SSHRemote
    from sheepdog.submitter.session import Session

    def slow(x: int) -> int:
        import time

        time.sleep(5)
        return x

    dbfile = str(config["dbfile"])
    request_id = sheepdog.map_async(slow, [1], config)
    job_ids = _job_id_list(dbfile, request_id)
    with Session(Settings.from_config(config)) as session:
        scheduler = session.scheduler()
        assert scheduler.state(job_ids).active == set(job_ids)
        first = session.remote
        assert isinstance(first, SSHRemote)
        transport = first.client.get_transport()
        assert transport is not None
        transport.sock.close()  # type: ignore[union-attr]  # the network goes away under it
        dropped = scheduler.state(job_ids)
        assert not dropped.ended  # not taken as "the job ended"
        # "cannot tell" - unless paramiko saw the socket close first, and the session
        # connected again before asking (under load it may)
        assert dropped.unknown is None or "lost the SSH connection" in dropped.unknown
        again = scheduler.state(job_ids)
        assert session.remote is not first and again.active == set(job_ids)
    assert sheepdog.get_results(request_id, dbfile, timeout=60) == [(1, 1)]


def test_a_job_in_error_state_is_deleted_and_says_why(config: dict[str, object],
                                                      testbed: dict[str, str]) -> None:
    """A working directory the node cannot enter puts the job in Eqw: it will never run."""
    config = dict(config, ge_opts=["-wd /nonexistent/sheepdog"])
    dbfile = str(config["dbfile"])
    request_id = sheepdog.map_async(add, [(1, 2)], config)
    job_id = _job_id(dbfile, request_id)
    with pytest.raises(RequestFailed, match=rf"was cancelled \(Grid Engine job {job_id} is in"
                       r" error state: .*nonexistent.*; sheepdog deleted the job\)"):
        sheepdog.get_results(request_id, dbfile, timeout=60)
    assert _ssh(testbed, f"qstat -j {job_id}").returncode == 1  # gone
