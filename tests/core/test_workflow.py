"""Workflow export -> import into another project -> run reproduces output hashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryostack.core.project import FINISHED, InputLink, Project, ProjectError, ValidationError
from cryostack.core.workflow import export_workflow, import_workflow, load_workflow
from cryostack.execution.launch import launch, wait_for


def _run(project: Project, run_id: int) -> None:
    launch(project, run_id, workers=2)
    assert wait_for(project, run_id, timeout_s=120) == FINISHED


def test_export_import_rerun_reproduces_hashes(tmp_path: Path, plugin: Path) -> None:
    source = Project.create(tmp_path / "a")
    squares = source.create_run("test-squares", {"n_items": 3, "scale": 2.0}, seed=11)
    _run(source, squares)
    total = source.create_run(
        "test-sum", {"offset": 1.5}, {"table": [InputLink(squares, "table")]}, label="sums"
    )
    _run(source, total)
    workflow = export_workflow(source)
    assert [r["protocol"] for r in workflow["runs"]] == ["test-squares", "test-sum"]
    assert workflow["runs"][1]["inputs"] == {"table": [{"run": "r1", "output": "table"}]}
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(workflow))

    target = Project.create(tmp_path / "b")
    ids = import_workflow(target, load_workflow(path))
    assert [target.run(i).status for i in ids] == ["draft", "draft"]
    assert target.run(ids[1]).label == "sums"
    for run_id in ids:
        _run(target, run_id)
    for old, new in zip([squares, total], ids, strict=True):
        old_hashes = {o.name: o.content_hash for o in source.run(old).outputs}
        new_hashes = {o.name: o.content_hash for o in target.run(new).outputs}
        assert old_hashes == new_hashes
    # provenance in the new project points at the new runs
    (edge,) = target.run(ids[1]).inputs
    assert edge.source_run_id == ids[0]
    assert edge.content_hash == target.output(ids[0], "table").content_hash


def test_bad_workflows_are_refused_with_a_reason(tmp_path: Path, plugin: Path) -> None:
    project = Project.create(tmp_path / "p")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProjectError, match="not valid JSON"):
        load_workflow(bad)
    with pytest.raises(ProjectError, match="not a cryostack workflow"):
        import_workflow(project, {"runs": []})
    dangling = {
        "format": "cryostack-workflow",
        "version": 1,
        "runs": [
            {
                "key": "r1",
                "protocol": "test-sum",
                "params": {},
                "inputs": {"table": [{"run": "r0", "output": "table"}]},
            }
        ],
    }
    with pytest.raises(ProjectError, match="links to 'r0'"):
        import_workflow(project, dangling)
    bad_params = {
        "format": "cryostack-workflow",
        "version": 1,
        "runs": [{"key": "r1", "protocol": "test-squares", "params": {"n_items": -4}}],
    }
    with pytest.raises(ValidationError, match="run r1: parameter n_items"):
        import_workflow(project, bad_params)
    assert project.runs() == []
