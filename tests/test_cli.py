"""The sheepdog command, through click's runner and as a real process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import sheepdog
from sheepdog.cli import main


def _divide(a: float, b: float) -> float:
    return a / b


def test_ls_status_results_errors(dbfile: str) -> None:
    rid = sheepdog.map_async(_divide, [(1, 2), (1, 0)], {"dbfile": dbfile})
    runner = CliRunner()
    waited = runner.invoke(main, ["results", str(rid), "--dbfile", dbfile, "--wait"])
    assert waited.exit_code == 0, waited.output
    assert waited.output.splitlines() == ["(1, 2)\t0.5", "(1, 0)\tNone"]
    listing = runner.invoke(main, ["ls", "--dbfile", dbfile])
    assert listing.exit_code == 0
    assert f"{rid:>6}" in listing.output and "tests.test_cli._divide" in listing.output
    status = runner.invoke(main, ["status", str(rid), "--dbfile", dbfile])
    assert "done 1  failed 1  lost 0  remaining 0" in status.output
    assert ", done" in status.output.splitlines()[0]
    errors = runner.invoke(main, ["errors", str(rid), "--dbfile", dbfile])
    assert "ZeroDivisionError" in errors.output and "1 failed task(s)" in errors.output


def test_unknown_request_is_one_line_and_exit_1(dbfile: str) -> None:
    result = CliRunner().invoke(main, ["status", "777", "--dbfile", dbfile])
    assert result.exit_code == 1
    assert result.output.startswith("Error: request 777 is not in")
    assert "Traceback" not in result.output


def test_demo_runs_the_main_job(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sheepdog.cli", "demo", "--tasks", "6",
         "--dbfile", str(tmp_path / "demo.sqlite")],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "-> [2, 3, 4]" in proc.stdout
    assert re.search(r"-> 6 results in [\d.]+ s \([\d,]+ tasks/s\) from [12] worker"
                     r" process\(es\), first \[0, 1, 4, 9, 16\], all correct: True", proc.stdout)
