"""Runs in their own process: kill -9 and continue, stop, per-item failures, restart."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from cryostack.core.project import ABORTED, FAILED, FINISHED, RUNNING, Project
from cryostack.execution.launch import (
    continue_run,
    launch,
    process_alive,
    refresh_status,
    restart_run,
    stop,
    wait_for,
)
from helpers import wait_until


def _output_table(project: Project, run_id: int) -> tuple[np.ndarray, str]:
    out = project.output(run_id, "table")
    return np.load(project.path(out.path)), out.content_hash


def test_kill_9_midway_then_continue_equals_uninterrupted_run(tmp_path: Path, plugin: Path) -> None:
    project = Project.create(tmp_path / "p")
    params = {"n_items": 8, "sleep_s": 0.6}
    reference = project.create_run("test-squares", params, seed=42)
    launch(project, reference, workers=2)
    assert wait_for(project, reference, timeout_s=120) == FINISHED
    expected, expected_hash = _output_table(project, reference)

    run_id = project.create_run("test-squares", params, seed=42)
    proc = launch(project, run_id, workers=2)
    wait_until(lambda: project.count_steps(run_id).get("done", 0) >= 3, timeout_s=120)
    os.kill(proc.pid, signal.SIGKILL)  # the run's coordinator process, no chance to clean up
    proc.wait()
    assert not process_alive(proc.pid)
    assert refresh_status(project, run_id) == FAILED  # the vanished process is noticed
    done_before = project.done_steps(run_id)
    assert 3 <= len(done_before) < 8
    assert project.run(run_id).outputs == []  # nothing half-done is registered
    pids_before = {
        k: (project.path(project.run(run_id).run_dir) / "steps" / k / "pid").read_text()
        for k in done_before
    }

    continue_run(project, run_id, workers=2)
    assert wait_for(project, run_id, timeout_s=120) == FINISHED
    done_after = project.done_steps(run_id)
    assert len(done_after) == 8
    for key, step in done_before.items():  # done steps were not re-run
        assert done_after[key].finished_at == step.finished_at
        run_dir = project.path(project.run(run_id).run_dir)
        assert (run_dir / "steps" / key / "pid").read_text() == pids_before[key]
    table, content_hash = _output_table(project, run_id)
    np.testing.assert_array_equal(table, expected)
    assert content_hash == expected_hash
    log = project.path(project.run(run_id).log_path).read_text()
    assert "already done" in log


def test_stop_aborts_a_running_run(tmp_path: Path, plugin: Path) -> None:
    project = Project.create(tmp_path / "p")
    run_id = project.create_run("test-squares", {"n_items": 20, "sleep_s": 1.0})
    launch(project, run_id, workers=1)
    wait_until(lambda: project.run(run_id).status == RUNNING, timeout_s=60)
    assert stop(project, run_id) == ABORTED
    run = project.run(run_id)
    assert run.status == ABORTED and run.outputs == []
    wait_until(lambda: not process_alive(run.pid or 0), timeout_s=30)


def test_failed_item_is_reported_and_others_finish(tmp_path: Path, plugin: Path) -> None:
    project = Project.create(tmp_path / "p")
    run_id = project.create_run("test-squares", {"n_items": 4, "fail_item": 2})
    launch(project, run_id, workers=2)
    assert wait_for(project, run_id, timeout_s=120) == FINISHED
    run = project.run(run_id)
    assert "1 item(s) failed: item 2" in run.history[-1].message
    failed = [s for s in run.steps if s.status == "failed"]
    assert [s.key for s in failed] == ["item-002"]
    assert "broken on purpose" in (failed[0].error or "")
    assert project.output(run_id, "table").n_items == 3


def test_restart_runs_everything_again(tmp_path: Path, plugin: Path) -> None:
    project = Project.create(tmp_path / "p")
    run_id = project.create_run("test-squares", {"n_items": 2}, seed=3)
    launch(project, run_id)
    assert wait_for(project, run_id, timeout_s=120) == FINISHED
    first = {s.key: s.finished_at for s in project.run(run_id).steps}
    _, hash_before = _output_table(project, run_id)
    restart_run(project, run_id)
    assert wait_for(project, run_id, timeout_s=120) == FINISHED
    second = {s.key: s.finished_at for s in project.run(run_id).steps}
    assert all(second[k] != first[k] for k in first)
    assert _output_table(project, run_id)[1] == hash_before
