"""The Slurm job script, sbatch command and the parsing of Slurm's answers: pure functions."""

from __future__ import annotations

import shlex

import pytest

from sheepdog.errors import ConfigError, SubmitError
from sheepdog.submitter.schedulers.slurm import (
    array_limit_of,
    check_slurm_opts,
    job_lines,
    memory_limit,
    parse_job_id,
    parse_memory,
    render,
    sbatch_command,
    scale_memory,
)


def test_the_job_script_execs_the_worker_with_every_path_quoted() -> None:
    script = render("/opt/py 3/bin/python", "/home/u/.sheepdog/x'y.pyz", "/home/u/job $HOME.json")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert shlex.split(lines[-1]) == ["exec", "/opt/py 3/bin/python",
                                      "/home/u/.sheepdog/x'y.pyz", "/home/u/job $HOME.json"]
    installed = render("/usr/bin/python3", None, "/j.json").splitlines()[-1]
    assert installed == "exec /usr/bin/python3 -m sheepdog.worker_bootstrap /j.json"


def test_sbatch_gets_defaults_only_for_what_slurm_opts_leaves_unset() -> None:
    command = sbatch_command("/d/job.sh", "/d", "sheepdog-12", 200,
                             ("--time=1:00:00", "-p short", "--output=/x/%j.out"), None)
    words = shlex.split(command)
    assert words[:3] == ["sbatch", "--parsable", "--array=1-200"]
    assert "--error=/d/%x.e%A.%a" in words and "--chdir=/d" in words
    assert "--job-name=sheepdog-12" in words
    assert not any(w.startswith("--output=/d") for w in words)  # the user's --output stays
    assert words[-5:] == ["--time=1:00:00", "-p", "short", "--output=/x/%j.out", "/d/job.sh"]
    throttled = shlex.split(sbatch_command("/d/j.sh", "/d", "n", 9, (), 3))
    assert "--array=1-9%3" in throttled


def test_hostile_paths_stay_one_word() -> None:
    command = sbatch_command("/d d/j;rm -rf ~.sh", "/d d/$(x)", "n", 2, (), None)
    assert shlex.split(command)[-1] == "/d d/j;rm -rf ~.sh"
    assert "--chdir=/d d/$(x)" in shlex.split(command)


@pytest.mark.parametrize("option", ["--array=1-3", "-a 1-3", "--parsable", "--wrap=true",
                                    "--wait", "-W"])
def test_options_sheepdog_sets_are_refused(option: str) -> None:
    with pytest.raises(ConfigError, match="slurm_opts must not set"):
        check_slurm_opts((option,))


def test_a_word_that_is_not_an_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="is not an option"):
        check_slurm_opts(("time=1:00:00",))


def test_memory_from_mem_is_the_workers_limit_and_scales_for_retries() -> None:
    assert parse_memory("2G") == 2 * 2**30
    assert parse_memory("4096") == 4096 * 2**20  # no unit: MiB, as Slurm reads it
    assert parse_memory("512m") == 512 * 2**20
    assert memory_limit(("--time=1:0:0", "--mem=300M")) == 300 * 2**20
    assert memory_limit(("--mem 1G",)) == 2**30
    assert memory_limit(("--mem=0",)) is None  # Slurm's "all the node has"
    assert memory_limit(("--mem-per-cpu=1G",)) is None
    assert scale_memory(("--mem=300M", "-p short"), 2.0) == ("--mem=600M", "-p short")
    with pytest.raises(ConfigError, match="is not a Slurm memory size"):
        memory_limit(("--mem=lots",))


def test_slurm_answers_are_read() -> None:
    assert parse_job_id("1234\n") == "1234"
    assert parse_job_id("1234;cluster\n") == "1234"
    with pytest.raises(SubmitError, match="printed no job id"):
        parse_job_id("sbatch: error: Batch job submission failed\n")
    config = "MaxArraySize            = 251\nSchedulerParameters     = bf_interval=1\n"
    assert array_limit_of(config) == 250
    assert array_limit_of(config + "x max_array_tasks=100,y\n") == 100
    assert array_limit_of("") == 1000
    said = "12_[3-200]|PENDING|Resources\n12_1|RUNNING|None\nnoise\n"
    assert job_lines(said) == [("12_[3-200]", "PENDING", "Resources"),
                               ("12_1", "RUNNING", "None")]
