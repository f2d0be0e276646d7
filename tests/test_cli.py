"""The command line as scripts use it: exit codes, printed run ids, JSON listings, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cryostack", *args], capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cryostack {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_project_run_runs_show_workflow(tmp_path: Path, plugin: Path) -> None:
    project = str(tmp_path / "p")
    cli("project", "create", project, "--name", "demo")
    catalogue = json.loads(cli("protocols", "--json").stdout)
    squares = next(p for p in catalogue if p["id"] == "test-squares")
    assert squares["params_schema"]["properties"]["sleep_s"]["unit"] == "s"
    assert squares["params_schema"]["properties"]["scale"]["group"] == "Advanced"

    out = cli("run", "test-squares", "-p", project, "--set", "n_items=2", "--seed", "5", "--wait")
    run_id = int(out.stdout.strip().splitlines()[0])
    out = cli("run", "test-sum", "-p", project, "--input", f"table={run_id}.table", "--wait")
    sum_id = int(out.stdout.strip().splitlines()[0])
    runs = json.loads(cli("runs", "-p", project, "--json").stdout)
    assert [(r["id"], r["status"]) for r in runs] == [(run_id, "finished"), (sum_id, "finished")]
    assert runs[1]["inputs"] == [{"name": "table", "run": run_id, "output": "table"}]
    details = json.loads(cli("show", str(run_id), "-p", project).stdout)
    assert details["seed"] == 5 and details["params"]["n_items"] == 2
    assert details["citations"] == ["cryostack test suite"]
    assert len(details["steps"]) == 2
    summary = json.loads(cli("project", "show", project, "--json").stdout)
    assert summary["runs_by_status"] == {"finished": 2}

    wf = tmp_path / "wf.json"
    cli("workflow", "export", str(wf), "-p", project)
    other = str(tmp_path / "q")
    cli("project", "create", other)
    cli("workflow", "import", str(wf), "-p", other, "--run")
    runs_b = json.loads(cli("runs", "-p", other, "--json").stdout)
    assert [r["status"] for r in runs_b] == ["finished", "finished"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "no-such-protocol"), "unknown protocol"),
        (("run", "test-squares", "--set", "n_items=zero"), "n_items"),
        (("run", "test-sum"), "input 'table' is required"),
        (("run", "test-sum", "--input", "table=99"), "run 99 does not exist"),
        (("continue", "1"), "run 1 does not exist"),
    ],
)
def test_errors_are_clear_and_exit_2(
    tmp_path: Path, plugin: Path, args: tuple[str, ...], message: str
) -> None:
    project = str(tmp_path / "p")
    cli("project", "create", project)
    proc = cli(*args, "-p", project, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr


def test_not_a_project(tmp_path: Path) -> None:
    proc = cli("runs", "-p", str(tmp_path), check=False)
    assert proc.returncode == 2 and "not a cryostack project" in proc.stderr
