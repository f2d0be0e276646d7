"""pick-particles, edit-coordinates and extract-particles end to end on simulated micrographs."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from cryostack.core.project import FINISHED, InputLink, Project, ValidationError
from cryostack.core.protocol import StepSpec, step_context
from cryostack.core.registry import protocol_classes
from cryostack.em.scoring import picking_scores
from cryostack.execution.launch import launch, wait_for
from cryostack.io.mrc import read_images, read_mrc
from cryostack.io.star import write_star
from cryostack.protocols.pick_particles import (
    EditCoordinatesParams,
    PickParticles,
    apply_edits,
    edit_coordinates,
)

DIAMETERS = {"min_diameter_A": 100.0, "max_diameter_A": 160.0}
MATCH_RADIUS_PX = 140.0 / 3.0 / 4.0  # a quarter of TRPV1's diameter, at 3 Å/px


def _finish(project: Project, run_id: int) -> None:
    launch(project, run_id, workers=2)
    status = wait_for(project, run_id, timeout_s=300)
    log = project.path(project.run(run_id).log_path).read_text()
    assert status == FINISHED, log[-3000:]


def _xy(item_set, name: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    table = item_set.table
    names = np.asarray(table.column("micrograph_name").to_pylist())
    rows = names == name
    x = table.column("coord_x_px").to_numpy()[rows]
    y = table.column("coord_y_px").to_numpy()[rows]
    return torch.tensor(np.stack([x, y], -1))


@pytest.fixture(scope="module")
def picked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, int, int]]:
    """Two simulated micrographs at the simulator's defaults (SNR 0.05), picked with LoG."""
    project = Project.create(tmp_path_factory.mktemp("pick") / "p")
    sim = project.create_run("simulate", {"kind": "micrographs", "n_micrographs": 2}, seed=21)
    _finish(project, sim)
    pick = project.create_run(
        "pick-particles", DIAMETERS, {"micrographs": [InputLink(sim, "micrographs")]}
    )
    _finish(project, pick)
    yield project, sim, pick
    project.close()


def test_log_picks_match_the_truth(picked: tuple[Project, int, int]) -> None:
    project, sim, pick = picked
    truth = project.read_output_set(sim, "truth_coordinates")
    coordinates = project.read_output_set(pick, "coordinates")
    candidates = project.read_output_set(pick, "candidates")
    assert len(candidates) > len(coordinates) > 0
    assert set(coordinates.table.column_names) >= {"micrograph_name", "coord_x_px", "score"}
    assert min(coordinates.table.column("score").to_pylist()) >= 4.0
    assert min(candidates.table.column("score").to_pylist()) >= 2.0
    assert coordinates.meta["threshold"] == 4.0
    for name in ("mic_0001", "mic_0002"):
        scores = picking_scores(_xy(coordinates, name), _xy(truth, name), MATCH_RADIUS_PX)
        assert scores.f1 >= 0.9, (name, scores)
    diameters = np.asarray(candidates.table.column("diameter_A").to_pylist())
    assert np.all((diameters > 99.99) & (diameters < 160.01))


def test_apply_edits_adds_removes_and_rethresholds(picked: tuple[Project, int, int]) -> None:
    project, _, pick = picked
    table = project.read_output_set(pick, "candidates").table
    names = np.asarray(table.column("micrograph_name").to_pylist())
    first = table.filter(names == "mic_0001")
    x0, y0 = first.column("coord_x_px")[0].as_py(), first.column("coord_y_px")[0].as_py()
    params = EditCoordinatesParams(
        micrograph_name="mic_0001", add=[(10.0, 20.0)], remove=[(x0 + 3.0, y0 - 2.0), 1]
    )
    edited, counts = apply_edits(table, params)
    assert counts["removed"] == 2 and counts["added"] == 1
    assert edited.num_rows == table.num_rows - 1
    last = edited.slice(edited.num_rows - 1)
    assert last.column("coord_x_px")[0].as_py() == 10.0
    assert math.isnan(last.column("score")[0].as_py())
    # re-thresholding keeps the manual pick and drops low scores
    strict, counts = apply_edits(edited, EditCoordinatesParams(min_score=6.0))
    scores = np.asarray(strict.column("score").to_pylist(), dtype=float)
    assert np.all(np.isnan(scores) | (scores >= 6.0)) and np.isnan(scores).sum() == 1
    assert counts["below_threshold"] == edited.num_rows - strict.num_rows > 0
    with pytest.raises(ValueError, match="no pick on 'mic_0001' within"):
        apply_edits(table, EditCoordinatesParams(micrograph_name="mic_0001", remove=[(-99, -99)]))
    with pytest.raises(ValueError, match="out of range"):
        apply_edits(table, EditCoordinatesParams(micrograph_name="mic_0001", remove=[10_000]))


def test_edit_coordinates_records_a_run(picked: tuple[Project, int, int]) -> None:
    assert "edit-coordinates" in protocol_classes()
    project, _, pick = picked
    before = project.read_output_set(pick, "candidates")
    run_id = edit_coordinates(
        project, f"{pick}.candidates", "mic_0002", add=[(500.0, 500.0)], remove=[0], min_score=5.0
    )
    after = project.read_output_set(run_id, "coordinates")
    assert project.run(run_id).inputs[0].source_run_id == pick  # provenance
    scores = np.asarray(after.table.column("score").to_pylist(), dtype=float)
    assert np.isnan(scores).sum() == 1 and np.all(np.isnan(scores) | (scores >= 5.0))
    assert len(after) < len(before)
    assert after.meta["removed"] == 1


def test_template_picking_step_with_map_references(
    picked: tuple[Project, int, int], tmp_path: Path
) -> None:
    """The template method's step, run in-process on the simulated map's projections."""
    project, sim, _ = picked
    params = {**DIAMETERS, "method": "template", "threshold": 5.0, "in_plane_step_deg": 30.0}
    inputs = {
        "micrographs": [InputLink(sim, "truth_micrographs")],  # with CTF: CTF-aware templates
        "references": [InputLink(sim, "volume")],
    }
    ctx = project.validate(PickParticles, params, inputs)
    step = PickParticles().plan(ctx)[0]
    assert isinstance(step, StepSpec) and step.item == "mic_0001"
    result = PickParticles().run_step(step_context(ctx, step, work_dir=tmp_path))
    data = np.load(tmp_path / "candidates.npz")
    picks = torch.tensor(np.stack([data["x"], data["y"]], -1))[data["score"] >= 5.0]
    truth = project.read_output_set(sim, "truth_coordinates")
    scores = picking_scores(picks, _xy(truth, "mic_0001"), MATCH_RADIUS_PX)
    assert result["n_picked"] == len(picks)
    assert scores.f1 >= 0.8, scores
    with pytest.raises(ValidationError, match="needs a 'references' input"):
        project.validate(
            PickParticles,
            {**DIAMETERS, "method": "template"},
            {"micrographs": inputs["micrographs"]},
        )


def test_extract_particles(picked: tuple[Project, int, int], tmp_path: Path) -> None:
    project, sim, pick = picked
    # extract-particles needs CTF columns: the raw micrographs have none
    with pytest.raises(ValidationError, match="lacks defocus_u_A"):
        project.create_run(
            "extract-particles",
            {"box_size_px": 64},
            {
                "micrographs": [InputLink(sim, "micrographs")],
                "coordinates": [InputLink(pick, "coordinates")],
            },
        )
    run_id = project.create_run(
        "extract-particles",
        {"box_size_px": 96, "rescaled_size_px": 48},
        {
            "micrographs": [InputLink(sim, "truth_micrographs")],
            "coordinates": [InputLink(pick, "coordinates")],
        },
    )
    _finish(project, run_id)
    particles = project.read_output_set(run_id, "particles")
    coordinates = project.read_output_set(pick, "coordinates")
    dropped = particles.meta["n_dropped_at_edge"]
    assert len(particles) + dropped == len(coordinates)
    steps = {s.key: s for s in project.run(run_id).steps}
    assert sum(int(s.result["n_dropped"]) for s in steps.values()) == dropped
    # picks keep >= 80 Å (26.7 px, half the largest diameter) from the edge: those within
    # 48 px of an edge (half the 96 px box) are dropped
    xy = torch.cat([_xy(coordinates, n) for n in ("mic_0001", "mic_0002")])
    centres = torch.round(xy)
    near_edge = ((centres < 48) | (centres > 1024 - 48)).any(-1).sum()
    assert dropped == int(near_edge)
    optics = particles.optics[0]
    assert optics.pixel_size_A == pytest.approx(6.0) and optics.image_size_px == 48
    assert optics.micrograph_pixel_size_A == pytest.approx(3.0)
    truth_mics = project.read_output_set(sim, "truth_micrographs")
    defocus = dict(
        zip(
            truth_mics.table.column("micrograph_name").to_pylist(),
            truth_mics.table.column("defocus_u_A").to_pylist(),
            strict=True,
        )
    )
    for name, u in zip(
        particles.table.column("micrograph_name").to_pylist(),
        particles.table.column("defocus_u_A").to_pylist(),
        strict=True,
    ):
        assert u == defocus[name]
    paths = particles.table.column("image_path").to_pylist()
    first = paths[0]
    stack, info = read_mrc(project.path(first))
    assert stack.shape[1:] == (48, 48) and info.pixel_size_A == pytest.approx(6.0)
    assert stack.shape[0] == paths.count(first)
    # RELION contrast: protein white, so the average particle is bright in the middle
    images = read_images(project.path(first), list(range(stack.shape[0])))
    mean = images.mean(axis=0)
    assert mean[20:28, 20:28].mean() > 0.3
    y, x = np.mgrid[:48, :48] - 24
    background = images[:, x**2 + y**2 > 18**2]
    assert abs(background.mean()) < 1e-3 and abs(background.std() - 1.0) < 0.02
    # RELION reads the set: STAR export with 1-based image names and the particle optics
    star = tmp_path / "particles.star"
    write_star(particles, star, root=project.root)
    blocks = starfile.read(star)
    assert float(blocks["optics"]["rlnImagePixelSize"][0]) == pytest.approx(6.0)
    assert int(blocks["optics"]["rlnImageSize"][0]) == 48
    names = blocks["particles"]["rlnImageName"].tolist()
    assert names[0] == f"000001@{first}" and len(names) == len(particles)
