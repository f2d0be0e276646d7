"""Project store: creation, runs, validation, status history, outputs (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryostack.core.project import (
    DRAFT,
    FINISHED,
    QUEUED,
    RUNNING,
    InputLink,
    Project,
    ProjectError,
    ValidationError,
)
from cryostack.core.protocol import OutputValue
from cryostack.execution.local import LocalExecutor
from cryostack.execution.runner import run_in_this_process


def test_create_and_reopen(tmp_path: Path, database_url: str | None) -> None:
    project = Project.create(tmp_path / "p", name="apoferritin", database_url=database_url)
    assert (tmp_path / "p" / "cryostack-project.json").exists()
    assert project.meta()["name"] == "apoferritin"
    project.close()
    again = Project.open(tmp_path / "p")
    assert again.name == "apoferritin"
    assert again.runs() == []


def test_create_refuses_existing_project_and_nonempty_folder(tmp_path: Path) -> None:
    Project.create(tmp_path / "p")
    with pytest.raises(ProjectError, match="already holds"):
        Project.create(tmp_path / "p")
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "data.mrc").write_bytes(b"x")
    with pytest.raises(ProjectError, match="not empty"):
        Project.create(tmp_path / "q")


def test_open_rejects_non_project(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="not a cryostack project"):
        Project.open(tmp_path)


def test_run_records_params_seed_history_and_outputs(
    tmp_path: Path, plugin: Path, database_url: str | None
) -> None:
    project = Project.create(tmp_path / "p", database_url=database_url)
    run_id = project.create_run("test-squares", {"n_items": 3}, label="first", seed=7)
    run = project.run(run_id)
    assert run.status == DRAFT
    assert run.params == {"n_items": 3, "sleep_s": 0.0, "fail_item": -1, "scale": 1.0}
    assert run.seed == 7
    project.set_status(run_id, QUEUED)
    status = run_in_this_process(project, run_id, LocalExecutor(workers=2, cpu_threads=2))
    assert status == FINISHED
    run = project.run(run_id)
    assert [h.status for h in run.history] == [DRAFT, QUEUED, RUNNING, FINISHED]
    assert run.software["cryostack"] and run.software["torch"]
    assert run.device["cpu"] and run.device["cpu_count"] >= 1
    assert run.started_at is not None and run.finished_at is not None
    assert len(run.steps) == 3 and all(s.status == "done" for s in run.steps)
    assert all(s.duration_s is not None and s.worker for s in run.steps)
    (out,) = run.outputs
    assert out.name == "table" and out.n_items == 3 and len(out.content_hash) == 64
    assert project.path(out.path).is_file()


def test_validation_messages_name_the_problem(tmp_path: Path, plugin: Path) -> None:
    project = Project.create(tmp_path / "p")
    with pytest.raises(ValidationError) as err:
        project.create_run("test-squares", {"n_items": 0, "colour": "red"})
    text = str(err.value)
    assert "n_items" in text and "greater than or equal to 1" in text
    assert "colour" in text
    assert project.runs() == []  # nothing written


def test_input_type_is_checked(tmp_path: Path, plugin: Path, database_url: str | None) -> None:
    project = Project.create(tmp_path / "p", database_url=database_url)
    source = project.create_run("test-squares", {"n_items": 1}, seed=1)
    with pytest.raises(ValidationError, match="has no outputs"):
        project.create_run("test-takes-micrographs", {}, {"micrographs": [InputLink(source)]})
    project.set_status(source, QUEUED)
    project.set_status(source, RUNNING)
    out_file = project.root / "t.npy"
    out_file.write_bytes(b"table")
    project.register_outputs(source, {"table": OutputValue("Table", "t.npy", 1)})
    with pytest.raises(
        ValidationError, match="needs MicrographSet, but run 1's output 'table' is a Table"
    ):
        project.create_run("test-takes-micrographs", {}, {"micrographs": [InputLink(source)]})
    with pytest.raises(ValidationError, match="input 'micrographs' is required"):
        project.create_run("test-takes-micrographs", {})


def test_illegal_status_transition(tmp_path: Path, plugin: Path, database_url: str | None) -> None:
    project = Project.create(tmp_path / "p", database_url=database_url)
    run_id = project.create_run("test-squares", {})
    with pytest.raises(ProjectError, match="cannot become finished"):
        project.set_status(run_id, FINISHED)


def test_register_outputs_refuses_missing_file(tmp_path: Path, plugin: Path) -> None:
    project = Project.create(tmp_path / "p")
    run_id = project.create_run("test-squares", {})
    with pytest.raises(ProjectError, match="does not exist"):
        project.register_outputs(run_id, {"table": OutputValue("Table", "missing.npy")})
    assert project.run(run_id).outputs == []


def test_input_link_parsing() -> None:
    assert InputLink.parse("12") == InputLink(12, None)
    assert InputLink.parse("3.micrographs") == InputLink(3, "micrographs")
    with pytest.raises(ValidationError):
        InputLink.parse("three")
