"""Config profiles (TOML), SHEEPDOG_<KEY> overrides, secret references and `sheepdog config`.

Each test writes its own config file and points SHEEPDOG_CONFIG at it; the
requests run on this machine through the embedded broker, or through the
password-protected ``server_url`` when a password has to be joined into a URL.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import sheepdog
from sheepdog.cli import main
from sheepdog.submitter import profiles, results
from sheepdog.submitter.config import Settings
from sheepdog.submitter.store import Store

Write = Callable[[str], Path]


@pytest.fixture
def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Write:
    """Write the config file (dedented) and make it the one sheepdog reads."""
    path = tmp_path / "conf" / "config.toml"
    path.parent.mkdir()
    monkeypatch.setenv("SHEEPDOG_CONFIG", str(path))

    def write(text: str) -> Path:
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


def _square(x: int) -> int:
    return x * x


def _die_on_one(x: int) -> int:
    if x == 1:
        os.kill(os.getpid(), 9)
    return x


def _only_request(dbfile: str | Path) -> int:
    with Store(dbfile, create=False) as store:
        [row] = store.requests()
        return row.request_id


# -- where the file is -------------------------------------------------------------


def test_config_file_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHEEPDOG_CONFIG", "~/elsewhere.toml")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert profiles.config_file() == tmp_path / "elsewhere.toml"
    monkeypatch.delenv("SHEEPDOG_CONFIG")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert profiles.config_file() == tmp_path / "xdg" / "sheepdog" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/is/ignored")
    assert profiles.config_file() == tmp_path / ".config" / "sheepdog" / "config.toml"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert profiles.config_file() == (
        tmp_path / "Library" / "Application Support" / "sheepdog" / "config.toml")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    assert profiles.config_file() == tmp_path / "Roaming" / "sheepdog" / "config.toml"


def test_no_file_means_the_defaults_and_a_named_profile_says_so(write_config: Write) -> None:
    assert profiles.resolve(None) == Settings()
    assert profiles.resolve({"retries": 3}) == Settings.from_config({"retries": 3})
    with pytest.raises(sheepdog.ConfigError, match=r"profile 'p' was asked for, but there is"
                       r" no config file .*config\.toml: write one with a \[p\] table"):
        profiles.resolve("p")


# -- layering ----------------------------------------------------------------------


def test_layers_default_then_profile_then_env_then_dict(
    write_config: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config("""
        [default]
        workers = 2
        retries = 3
        local_workers = 4
        rq_queue = "from-default"

        [p]
        retries = 5
        local_workers = 6
        rq_queue = "from-p"
    """)
    monkeypatch.setenv("SHEEPDOG_LOCAL_WORKERS", "7")
    monkeypatch.setenv("SHEEPDOG_RQ_QUEUE", "from-env")
    settings = profiles.resolve("p")
    assert (settings.workers, settings.retries, settings.local_workers, settings.rq_queue) == (
        2, 5, 7, "from-env")
    with_dict = profiles.resolve({"rq_queue": "from-dict"})  # no name: [default] alone
    assert (with_dict.retries, with_dict.local_workers, with_dict.rq_queue) == (
        3, 7, "from-dict")
    origins = {s.key: s.origin for s in profiles.explain("p")}
    assert origins["workers"] == f"{path} [default] line 2"
    assert origins["retries"] == f"{path} [p] line 8"
    assert origins["local_workers"] == "env SHEEPDOG_LOCAL_WORKERS"
    assert origins["heartbeat_interval"] == "default"
    assert {s.key: s.origin for s in profiles.explain({"rq_queue": "q"})}["rq_queue"] == "dict"


def test_map_runs_with_a_profile(write_config: Write, tmp_path: Path) -> None:
    dbfile = tmp_path / "from-profile.sqlite"
    write_config(f"""
        [default]
        dbfile = "{dbfile}"

        [two]
        workers = 2
        local_workers = 2
    """)
    assert sheepdog.map(_square, range(12), "two") == [x * x for x in range(12)]
    rid = _only_request(dbfile)  # the profile's dbfile, not ./sheepdog.sqlite
    with Store(dbfile, create=False) as store:
        assert Settings.from_public(store.request(rid).settings).workers == 2
        assert 1 <= store.worker_processes(rid) <= 2
    # Without a dbfile, reading back uses the default profile's.
    assert sheepdog.get_results(rid) == [(x, x * x) for x in range(12)]
    async_id = sheepdog.map_async(_square, [3], "two")
    assert sheepdog.get_results(async_id, timeout=60) == [(3, 9)]


def test_resubmit_takes_a_profile_but_runs_where_the_request_was(
    write_config: Write, tmp_path: Path
) -> None:
    dbfile = tmp_path / "r.sqlite"
    write_config(f"""
        [default]
        dbfile = "{dbfile}"

        [again]
        host = "not-a-host"   # names where a request lives: left out by resubmit
        retries = 2
    """)
    sheepdog.map(_die_on_one, [0, 1], {"retries": 0, "workers": 0}, verbose=False)
    rid = _only_request(dbfile)
    assert sheepdog.resubmit(rid, config="again") == 1
    assert sheepdog.get_results(rid, timeout=60) == [(0, 0), (1, None)]
    [lost] = sheepdog.get_errors(rid)
    assert lost.attempt == 4  # type: ignore[attr-defined]  # 1 before, 1 + 2 retries after


# -- refusals that name their source -------------------------------------------------


def test_unknown_key_names_file_profile_and_line(write_config: Write) -> None:
    path = write_config("""
        [default]
        retries = 2

        [mycluster]
        host = "head"
        wrokers = 4
    """)
    with pytest.raises(sheepdog.ConfigError) as caught:
        profiles.resolve("mycluster")
    said = str(caught.value)
    assert said.startswith(f"{path} [mycluster] line 6: unknown config key(s): 'wrokers'"
                           " (did you mean 'workers'?)")
    assert "heartbeat_interval = 10.0" in said  # the valid keys, with their defaults
    write_config("[default]\nport = 8080\n")
    with pytest.raises(sheepdog.ConfigError, match=r"\[default\] line 2: config key 'port' is"
                       " no longer used"):
        profiles.resolve()


def test_unknown_profile_lists_the_profiles_and_the_file(write_config: Write) -> None:
    path = write_config("[default]\n[gridengine]\n[slurm]\n")
    with pytest.raises(sheepdog.ConfigError) as caught:
        sheepdog.map(_square, [1], "slrum")
    assert str(caught.value) == (
        f"no profile 'slrum' in {path}; its profiles: default, gridengine, slurm")


def test_bad_values_name_where_they_came_from(
    write_config: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config("""
        [p]
        # workers as a string
        workers = "8"
    """)
    with pytest.raises(sheepdog.ConfigError, match=(
            rf"workers must be a whole number, 0 or more, got '8' \(from {path} \[p\] line 3\)")):
        profiles.resolve("p")
    write_config("[p]\nworkers = 8\n")
    monkeypatch.setenv("SHEEPDOG_WORKERS", "eight")
    with pytest.raises(sheepdog.ConfigError, match="SHEEPDOG_WORKERS must be a whole number,"
                       " got 'eight'"):
        profiles.resolve("p")
    monkeypatch.setenv("SHEEPDOG_WORKERS", "-1")
    with pytest.raises(sheepdog.ConfigError, match=r"got -1 \(from env SHEEPDOG_WORKERS\)"):
        profiles.resolve("p")


def test_syntax_errors_and_loose_keys_name_the_file(write_config: Write) -> None:
    path = write_config("[p]\nworkers = \n")
    with pytest.raises(sheepdog.ConfigError, match=rf"the config file {path} is not valid TOML:"
                       r" .*line 2"):
        profiles.resolve()
    write_config("workers = 2\n[p]\n")
    with pytest.raises(sheepdog.ConfigError, match=r"has 'workers' outside a profile: every"
                       r" key belongs to a profile table; put it below a \[default\] line"):
        profiles.resolve("p")


# -- the environment -----------------------------------------------------------------


@pytest.mark.parametrize(("var", "text", "key", "expected"), [
    ("SHEEPDOG_WORKERS", "8", "workers", 8),
    ("SHEEPDOG_HEARTBEAT_INTERVAL", "2.5", "heartbeat_interval", 2.5),
    ("SHEEPDOG_RETRY_ERRORS", "true", "retry_errors", True),
    ("SHEEPDOG_RETRY_ERRORS", "1", "retry_errors", True),
    ("SHEEPDOG_SHIP_WORKER", "False", "ship_worker", False),
    ("SHEEPDOG_SHIP_WORKER", "0", "ship_worker", False),
    ("SHEEPDOG_GE_OPTS", '["-l h_rt=1:00:00", "-r y"]', "ge_opts", ("-l h_rt=1:00:00", "-r y")),
    ("SHEEPDOG_GE_OPTS", "-l h_rt=1:00:00", "ge_opts", ("-l h_rt=1:00:00",)),
    ("SHEEPDOG_SLURM_OPTS", "", "slurm_opts", ()),
    ("SHEEPDOG_DBFILE", "/tmp/x.sqlite", "dbfile", "/tmp/x.sqlite"),
    ("SHEEPDOG_MAX_RUNNING", "", "max_running", None),
])
def test_env_values_are_read_by_type(
    write_config: Write, monkeypatch: pytest.MonkeyPatch, var: str, text: str, key: str,
    expected: object,
) -> None:
    write_config("[default]\nmax_running = 3\n")  # "" resets it to None
    monkeypatch.setenv(var, text)
    assert getattr(profiles.resolve(), key) == expected


def test_env_resets_and_refusals(monkeypatch: pytest.MonkeyPatch, write_config: Write) -> None:
    write_config('[default]\nhost = "head"\nbroker_url = "redis://head:6379/0"\n')
    monkeypatch.setenv("SHEEPDOG_HOST", "")  # back to None: this machine
    monkeypatch.setenv("SHEEPDOG_BROKER_URL", "")
    assert profiles.resolve() == Settings()
    monkeypatch.setenv("SHEEPDOG_RETRY_ERRORS", "yes")
    with pytest.raises(sheepdog.ConfigError, match="SHEEPDOG_RETRY_ERRORS must be true or"
                       " false"):
        profiles.resolve()
    monkeypatch.delenv("SHEEPDOG_RETRY_ERRORS")
    monkeypatch.setenv("SHEEPDOG_GE_OPTS", '["-r y", 3]')
    with pytest.raises(sheepdog.ConfigError, match="ge_opts must be a list of strings"):
        profiles.resolve()
    monkeypatch.setenv("SHEEPDOG_GE_OPTS", "[-r y]")
    with pytest.raises(sheepdog.ConfigError, match="SHEEPDOG_GE_OPTS starts with '\\[' but is"
                       " not a JSON array"):
        profiles.resolve()


def test_other_sheepdog_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SHEEPDOG_TASK_ID", "SHEEPDOG_JOB_ID", "SHEEPDOG_TESTBED_ENV",
                "SHEEPDOG_SOMETHING"):
        monkeypatch.setenv(var, "not a setting")
    assert profiles.resolve() == Settings()
    assert "SHEEPDOG_HOME" not in profiles.env_names()
    assert "SHEEPDOG_BROKER_URL" in profiles.env_names()


def test_reading_a_request_back_ignores_profiles_and_env(
    dbfile: str, write_config: Write, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rid = sheepdog.map_async(_square, range(4), {"dbfile": dbfile, "workers": 2, "retries": 3})
    write_config(f'[default]\nretries = 0\ndbfile = "{tmp_path / "other.sqlite"}"\n')
    monkeypatch.setenv("SHEEPDOG_WORKERS", "5")
    monkeypatch.setenv("SHEEPDOG_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SHEEPDOG_LEASE_TIMEOUT", "2")
    assert sheepdog.get_results(rid, dbfile, timeout=60) == [(x, x * x) for x in range(4)]
    with results.open_request(rid, dbfile) as request:
        kept = request.session.settings
    assert (kept.workers, kept.retries, kept.heartbeat_interval, kept.dbfile) == (
        2, 3, 10.0, dbfile)


# -- secrets -------------------------------------------------------------------------


def _split(server_url: str) -> tuple[str, str]:
    """``redis://:PW@host:port/0`` as the URL without its password, and the password."""
    password, _, host = server_url.removeprefix("redis://:").partition("@")
    return f"redis://{host}", password


def test_broker_password_by_env_joins_a_real_servers_url(
    server_url: str, write_config: Write, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url, password = _split(server_url)
    path = write_config(f"""
        [shared]
        broker_url = "{url}"
        broker_password = {{ env = "SHEEPDOG_TEST_BROKER_PASSWORD" }}
        dbfile = "{tmp_path / 'shared.sqlite'}"
    """)
    with pytest.raises(sheepdog.ConfigError, match=rf"{path} \[shared\] line 3 refers to"
                       " environment variable SHEEPDOG_TEST_BROKER_PASSWORD, which is not set"):
        profiles.resolve("shared")
    monkeypatch.setenv("SHEEPDOG_TEST_BROKER_PASSWORD", password)
    assert profiles.resolve("shared").broker_url == server_url
    assert sheepdog.map(_square, range(5), "shared") == [0, 1, 4, 9, 16]
    monkeypatch.setenv("SHEEPDOG_TEST_BROKER_PASSWORD", "wrong")
    with pytest.raises(sheepdog.BrokerError, match="refused the password"):
        sheepdog.map(_square, range(5), "shared")


def test_broker_password_by_file_and_config_show_masks_it(
    server_url: str, write_config: Write, tmp_path: Path
) -> None:
    url, password = _split(server_url)
    path = write_config(f"""
        [shared]
        broker_url = "{url}"
        broker_password = {{ file = "broker-password" }}
        dbfile = "{tmp_path / 'shared.sqlite'}"
    """)
    secret = path.parent / "broker-password"
    with pytest.raises(sheepdog.ConfigError, match=f"refers to {secret}, which does not exist"):
        profiles.resolve("shared")
    secret.write_text(password + "\n")
    secret.chmod(0o644)
    with pytest.raises(sheepdog.ConfigError, match=f"other users may read or change \\(mode"
                       f" 0644\\); make it private: chmod 600 {secret}"):
        profiles.resolve("shared")
    secret.chmod(0o600)
    assert sheepdog.map(_square, [7], "shared") == [49]
    shown = CliRunner().invoke(main, ["config", "show", "shared"])
    assert shown.exit_code == 0, shown.output
    assert password not in shown.output
    lines = shown.output.splitlines()
    assert lines[:2] == [f"# config file: {path} (exists)", "# profile: shared"]
    masked = url.replace("redis://", "redis://:***@")
    assert f"broker_url = '{masked}'  # {path} [shared] line 2, password from {path} [shared]" \
           f" line 3 (file {secret})" in lines
    assert "retries = 1  # default" in lines


def test_a_secret_reference_for_any_string_and_passwords_given_twice(
    write_config: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config("""
        [p]
        host = { env = "SHEEPDOG_TEST_HEAD" }
        broker_url = "redis://:inline@head:6379/0"
    """)
    monkeypatch.setenv("SHEEPDOG_TEST_HEAD", "head.example.org")
    assert profiles.resolve("p").host == "head.example.org"
    assert {s.key: s.origin for s in profiles.explain("p")}["host"] == (
        f"{path} [p] line 2 (env SHEEPDOG_TEST_HEAD)")
    write_config('[p]\nbroker_url = "redis://:inline@head/0"\nbroker_password = "again"\n')
    with pytest.raises(sheepdog.ConfigError, match="broker_url holds a password and"
                       " broker_password is set too"):
        profiles.resolve("p")
    write_config('[p]\nrq_password = "pw"\n')
    with pytest.raises(sheepdog.ConfigError, match=r"rq_password is set .* but rq_url is not"):
        profiles.resolve("p")
    write_config('[p]\nhost = { command = "cat pw" }\n')
    with pytest.raises(sheepdog.ConfigError, match=r"\[p\] line 2: a table value must be a"
                       " secret reference"):
        profiles.resolve("p")
    # A later layer's URL with its own password wins over a profile's broker_password.
    write_config('[p]\nbroker_url = "redis://head/0"\nbroker_password = "profile"\n')
    monkeypatch.setenv("SHEEPDOG_BROKER_URL", "redis://:env@other/0")
    assert profiles.resolve("p").broker_url == "redis://:env@other/0"
    monkeypatch.setenv("SHEEPDOG_BROKER_URL", "redis://other/0")
    assert profiles.resolve("p").broker_url == "redis://:profile@other/0"


# -- the command line ----------------------------------------------------------------


def test_profile_option_on_ls_and_results(write_config: Write, tmp_path: Path) -> None:
    dbfile = tmp_path / "cli.sqlite"
    write_config(f'[mine]\ndbfile = "{dbfile}"\n')
    rid = sheepdog.map_async(_square, [(2,), (3,)], "mine")
    runner = CliRunner()
    shown = runner.invoke(main, ["results", str(rid), "--profile", "mine", "--wait"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines() == ["(2,)\t4", "(3,)\t9"]
    listing = runner.invoke(main, ["ls", "--profile", "mine"])
    assert listing.exit_code == 0, listing.output
    assert "tests.test_profiles._square" in listing.output
    elsewhere = tmp_path / "elsewhere.sqlite"  # an explicit --dbfile wins
    missing = runner.invoke(main, ["results", str(rid), "--profile", "mine", "--dbfile",
                                   str(elsewhere)])
    assert missing.exit_code == 1
    assert missing.output.startswith(f"Error: request {rid} is not in {elsewhere}")
    unknown = runner.invoke(main, ["ls", "--profile", "theirs"])
    assert unknown.exit_code == 1
    assert unknown.output.strip().splitlines() == [
        f"Error: no profile 'theirs' in {tmp_path / 'conf' / 'config.toml'}; its profiles: mine"]


def test_config_path_and_show_without_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    absent = tmp_path / "none.toml"
    monkeypatch.setenv("SHEEPDOG_CONFIG", str(absent))
    monkeypatch.setenv("SHEEPDOG_RETRIES", "4")
    runner = CliRunner()
    assert runner.invoke(main, ["config", "path"]).output == f"{absent}\n"
    shown = runner.invoke(main, ["config", "show"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[:2] == [f"# config file: {absent} (does not exist)",
                                             "# profile: default"]
    assert "retries = 4  # env SHEEPDOG_RETRIES" in shown.output.splitlines()
    assert "ge_opts = []  # default" in shown.output.splitlines()


def test_config_show_lists_then_reports_values_wrong_together(write_config: Write) -> None:
    path = write_config('[ge]\nhost = "head"\nge_opts = ["-l h_rt=1:00:00"]\n')
    shown = CliRunner().invoke(main, ["config", "show", "ge"])
    assert shown.exit_code == 1
    lines = shown.output.splitlines()
    assert f"host = 'head'  # {path} [ge] line 2" in lines
    assert "ge_opts = ['-l h_rt=1:00:00']  # " + f"{path} [ge] line 3" in lines
    assert lines[-1].startswith("Error: Cluster workers run on other machines and need a broker")
