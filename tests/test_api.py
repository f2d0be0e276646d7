"""The notebook API: runs as a DataFrame, sets as Arrow/pandas tables, images and maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cryostack import api
from cryostack.core.datamodel import ItemSet, OpticsGroup, SetKind
from cryostack.core.project import FINISHED, Project, ProjectError
from cryostack.execution.launch import launch, wait_for
from cryostack.io.mrc import write_mrc
from cryostack.io.star import write_star


def test_runs_sets_and_images_across_stacks(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    stacks = [rng.normal(size=(4, 12, 12)).astype(np.float32) for _ in range(2)]
    for i, stack in enumerate(stacks):
        write_mrc(tmp_path / f"s{i}.mrcs", stack, 1.7, stack=True)
    # particles interleaved between the two stacks
    order = [(0, 3), (1, 0), (0, 1), (1, 2), (1, 3)]
    table = pa.table(
        {
            "image_path": [str(tmp_path / f"s{s}.mrcs") for s, _ in order],
            "image_index": [i for _, i in order],
            "optics_group": [1] * len(order),
            "defocus_u_A": [10000.0 + 100 * k for k in range(len(order))],
        }
    )
    group = OpticsGroup(pixel_size_A=1.7, image_size_px=12)
    write_star(ItemSet(SetKind.PARTICLES, table, [group]), tmp_path / "p.star")

    project = Project.create(tmp_path / "project")
    run_id = project.create_run("import-particles", {"file": str(tmp_path / "p.star")}, seed=3)
    launch(project, run_id, workers=1)
    assert wait_for(project, run_id, poll_s=0.2, timeout_s=120) == FINISHED
    draft = project.create_run("import-particles", {"file": str(tmp_path / "p.star")}, label="x")

    opened = api.open_project(tmp_path / "project")
    runs = api.runs(opened)
    assert runs["id"].tolist() == [run_id, draft]
    assert runs["status"].tolist() == ["finished", "draft"]
    assert runs["protocol"].tolist() == ["import-particles"] * 2
    assert runs["label"].tolist() == ["", "x"]
    assert runs.loc[0, "outputs"] == "particles:ParticleSet"

    arrow = api.read_set(opened, f"{run_id}.particles")
    assert arrow.num_rows == 5
    frame = api.read_set_df(opened, run_id)
    np.testing.assert_array_equal(frame["defocus_u_A"], [10000, 10100, 10200, 10300, 10400])
    assert frame["image_index"].tolist() == [3, 0, 1, 2, 3]

    images = api.read_images(opened, run_id, [4, 0, 1, 2])
    expected = np.stack([stacks[1][3], stacks[0][3], stacks[1][0], stacks[0][1]])
    np.testing.assert_array_equal(images, expected)

    with pytest.raises(IndexError, match="row 5 out of range"):
        api.read_images(opened, run_id, [5])
    with pytest.raises(ProjectError, match="is a ParticleSet, not a map"):
        api.read_volume(opened, run_id)
    with pytest.raises(ProjectError, match="has no outputs"):
        api.read_set(opened, draft)
