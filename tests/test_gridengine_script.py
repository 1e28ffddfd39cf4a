"""The Grid Engine job script and qsub command: pure functions, golden file, hostile paths."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest

from sheepdog.errors import ConfigError, SubmitError
from sheepdog.submitter.schedulers.batch import chunks
from sheepdog.submitter.schedulers.gridengine import (
    JobScript,
    check_ge_opts,
    memory_limit,
    parse_job_id,
    parse_memory,
    qsub_command,
    render,
)

GOLDEN = Path(__file__).parent / "golden" / "gridengine_job.py.txt"

EXAMPLE = JobScript(
    shell="/usr/bin/python3", first=1, last=200, name="sheepdog-12",
    ge_opts=("-l h_rt=1:00:00", "-l mem_grab=2G", "-r y"),
    job_file="/home/u/.sheepdog/jobs/ab12cd34-12/job.json",
    zipapp="/home/u/.sheepdog/sheepdog-0123456789abcdef.pyz",
)


def test_job_script_matches_the_golden_file() -> None:
    assert render(EXAMPLE) == GOLDEN.read_text(), (
        f"the job script changed; if that is intended, delete {GOLDEN} and write the new"
        " rendering there (render(EXAMPLE)) after reading it"
    )


def test_job_script_without_zipapp_imports_the_installed_sheepdog() -> None:
    text = render(JobScript("/opt/py/bin/python", 1, 3, "sheepdog-1", (), "/j.json", None))
    assert "sheepdog.worker_bootstrap" in text and ".pyz" not in text
    assert text.splitlines()[:4] == ["#!/opt/py/bin/python", "#$ -S /opt/py/bin/python",
                                     "#$ -t 1-3", "#$ -N sheepdog-1"]


HOSTILE = "/home/u/we ird 'dir\"; rm -rf ~ #/x"


def test_hostile_paths_stay_data_in_the_script() -> None:
    script = JobScript("/usr/bin/python3", 1, 2, "sheepdog-3", (), f"{HOSTILE}/job.json",
                       f"{HOSTILE}/w.pyz")
    text = render(script)
    directives = [line for line in text.splitlines() if line.startswith("#$")]
    assert all(HOSTILE not in line for line in directives)
    tree = ast.parse(text)  # the body is valid Python, and the paths are plain literals in it
    literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    assert f"{HOSTILE}/job.json" in literals and f"{HOSTILE}/w.pyz" in literals


def test_hostile_paths_are_single_arguments_of_qsub() -> None:
    command = qsub_command(f"{HOSTILE}/job-1.py", HOSTILE, ())
    assert shlex.split(command) == [
        "qsub", "-terse", "-o", f"{HOSTILE}/", "-e", f"{HOSTILE}/", "-wd", HOSTILE,
        f"{HOSTILE}/job-1.py",
    ]


def test_ge_opts_that_set_output_or_workdir_replace_the_defaults() -> None:
    assert shlex.split(qsub_command("/s.py", "/d", ("-j y", "-cwd"))) == [
        "qsub", "-terse", "-o", "/d/", "/s.py",
    ]
    assert shlex.split(qsub_command("/s.py", "/d", ("-o /logs", "-e /errs"))) == [
        "qsub", "-terse", "-wd", "/d", "/s.py",
    ]


@pytest.mark.parametrize(
    ("opts", "shell", "message"),
    [
        (("-t 1-5",), "/usr/bin/python3", "must not set -t"),
        (("-S /bin/sh",), "/usr/bin/python3", "set the 'shell' config key instead"),
        (("h_rt=1:00:00",), "/usr/bin/python3", "is not an option"),
        ((), "/opt/my python/bin/python", "contains white space"),
    ],
)
def test_bad_ge_opts_and_shells_are_refused(opts: tuple[str, ...], shell: str,
                                             message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_ge_opts(opts, shell)


def test_job_id_from_terse_output() -> None:
    assert parse_job_id("4711.1-200:1\n") == "4711"
    assert parse_job_id("4712\n") == "4712"
    with pytest.raises(SubmitError, match="qsub printed no job id"):
        parse_job_id("Your job was not submitted\n")


def test_memory_values_and_mem_grab() -> None:
    assert parse_memory("2G") == 2 * 1024**3
    assert parse_memory("512M") == 512 * 1024**2
    assert parse_memory("1.5g") == 1_500_000_000
    assert parse_memory("1000") == 1000
    with pytest.raises(ConfigError, match="not a Grid Engine memory value"):
        parse_memory("lots")
    assert memory_limit(("-l h_rt=60,mem_grab=300M", "-r y")) == 300 * 1024**2
    assert memory_limit(("-l h_vmem=2G",)) is None


def test_arrays_larger_than_max_aj_tasks_are_split() -> None:
    assert chunks(5, 75000) == [(1, 5)]
    assert chunks(7, 3) == [(1, 3), (4, 6), (7, 7)]
    assert chunks(6, 3) == [(1, 3), (4, 6)]
