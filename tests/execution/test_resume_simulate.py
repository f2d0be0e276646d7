"""kill -9 of a real protocol's run midway: continue gives the uninterrupted run's outputs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from cryostack.core.project import FINISHED, Project
from cryostack.execution.launch import continue_run, launch, wait_for
from helpers import wait_until

PARAMS = {
    "kind": "micrographs",
    "n_micrographs": 6,
    "micrograph_size_px": 512,
    "particles_per_micrograph": 12,
    "box_size_px": 48,
    "pixel_size_A": 4.0,
}


def test_simulate_killed_midway_continues_to_identical_outputs(tmp_path: Path) -> None:
    # Sets hold project-relative paths that name the run's folder: compare runs with the same id
    # in two projects.
    uninterrupted = Project.create(tmp_path / "a")
    reference = uninterrupted.create_run("simulate", PARAMS, seed=9)
    launch(uninterrupted, reference, workers=1)
    assert wait_for(uninterrupted, reference, timeout_s=300) == FINISHED
    expected = {o.name: o.content_hash for o in uninterrupted.run(reference).outputs}

    project = Project.create(tmp_path / "b")
    run_id = project.create_run("simulate", PARAMS, seed=9)
    proc = launch(project, run_id, workers=1)
    wait_until(lambda: project.count_steps(run_id).get("done", 0) >= 3, timeout_s=300)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = project.done_steps(run_id)
    assert 3 <= len(done_before) < 7  # volume + 6 micrographs
    continue_run(project, run_id, workers=1)
    assert wait_for(project, run_id, timeout_s=300) == FINISHED
    done_after = project.done_steps(run_id)
    assert all(done_after[k].finished_at == s.finished_at for k, s in done_before.items())
    assert {o.name: o.content_hash for o in project.run(run_id).outputs} == expected
