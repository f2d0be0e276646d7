"""The score protocol end to end: simulate, then score the truth and perturbed candidates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryostack.core.datamodel import FileKind, ItemSet, SetKind
from cryostack.core.project import FINISHED, InputLink, Project
from cryostack.core.protocol import OutputValue
from cryostack.core.sets import write_set
from cryostack.execution.launch import launch, wait_for
from cryostack.protocols.score import score_report


@dataclass
class Simulated:
    project: Project
    run_id: int
    candidates: int  # a draft run holding the candidates made by the tests


def _set(project: Project, ref: str) -> ItemSet:
    run_id, name = ref.split(".")
    return project.read_output_set(int(run_id), name)


def _replace(item_set: ItemSet, **columns: np.ndarray) -> ItemSet:
    table = item_set.table
    for name, values in columns.items():
        i = table.column_names.index(name)
        table = table.set_column(i, name, pa.array(values))
    return ItemSet(item_set.kind, table, item_set.optics, item_set.meta)


def _values(item_set: ItemSet, name: str) -> np.ndarray:
    return np.asarray(item_set.table.column(name).to_pylist())


def _drift_table(shifts: np.ndarray) -> pa.Table:
    names = ["mic_0001"] * len(shifts)
    return pa.table(
        {
            "micrograph_name": names,
            "frame": np.arange(len(shifts), dtype=np.int32),
            "shift_x_px": shifts[:, 0],
            "shift_y_px": shifts[:, 1],
        }
    )


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulated]:
    """A tiny micrographs simulation, plus candidate outputs registered on a draft run."""
    project = Project.create(tmp_path_factory.mktemp("score") / "p")
    params = {
        "n_micrographs": 3,
        "micrograph_size_px": 256,
        "particles_per_micrograph": 8,
        "astigmatism_max_A": 2000.0,
    }
    run_id = project.create_run("simulate", params, seed=3)
    launch(project, run_id, workers=1)
    assert wait_for(project, run_id, timeout_s=300) == FINISHED
    folder = project.root / "candidates"
    folder.mkdir()
    outputs = {}
    # CTF: +300 Å on U and V, angle +5 degrees
    truth = _set(project, f"{run_id}.truth_micrographs")
    ctf = _replace(
        truth,
        defocus_u_A=_values(truth, "defocus_u_A") + 300.0,
        defocus_v_A=_values(truth, "defocus_v_A") + 300.0,
        defocus_angle_deg=_values(truth, "defocus_angle_deg") + 5.0,
    )
    write_set(ctf, folder / "ctf.arrow")
    outputs["ctf"] = OutputValue(SetKind.MICROGRAPHS, "candidates/ctf.arrow", 3)
    # picks: the first two true picks are lost, the rest move 2 px, three false picks are added
    coords = _set(project, f"{run_id}.truth_coordinates")
    kept = ItemSet(SetKind.COORDINATES, coords.table.slice(2), coords.optics, {})
    moved = _replace(kept, coord_x_px=_values(kept, "coord_x_px") + 2.0)
    false = pa.table(
        {
            "micrograph_name": ["mic_0001", "mic_0002", "mic_0003"],
            "coord_x_px": [1.0, 1.0, 1.0],
            "coord_y_px": [1.0, 1.0, 1.0],
            "score": [0.5, 0.5, 0.5],
        }
    )
    picks = pa.concat_tables([moved.table.select(false.column_names), false])
    write_set(ItemSet(SetKind.COORDINATES, picks, coords.optics, {}), folder / "picks.arrow")
    outputs["picks"] = OutputValue(SetKind.COORDINATES, "candidates/picks.arrow", len(picks))
    # poses: every other particle turned 10 degrees in plane, the others moved by a C4 operator
    parts = _set(project, f"{run_id}.truth_particles")
    odd = np.arange(len(parts)) % 2 == 1
    posed = _replace(
        parts,
        psi_deg=_values(parts, "psi_deg") + np.where(odd, 10.0, 0.0),
        rot_deg=_values(parts, "rot_deg") + np.where(odd, 0.0, 90.0),
        origin_x_A=_values(parts, "origin_x_A") + 3.0,
    )
    write_set(posed, folder / "poses.arrow")
    outputs["poses"] = OutputValue(SetKind.PARTICLES, "candidates/poses.arrow", len(parts))
    # drift: truth and a candidate relative to another frame, with 0.5 px of wobble in y
    true_drift = np.cumsum(np.random.default_rng(0).normal(size=(10, 2)), axis=0)
    wobble = np.stack([np.zeros(10), 0.5 * np.array([1.0, -1.0] * 5)], 1)
    pq.write_table(_drift_table(true_drift), folder / "true_drift.parquet")
    pq.write_table(_drift_table(true_drift - true_drift[4] + wobble), folder / "drift.parquet")
    outputs["true_drift"] = OutputValue(FileKind.TABLE, "candidates/true_drift.parquet", 1)
    outputs["drift"] = OutputValue(FileKind.TABLE, "candidates/drift.parquet", 1)
    draft = project.create_run("simulate", {"n_micrographs": 1}, label="candidates")
    project.register_outputs(draft, outputs)
    yield Simulated(project, run_id, draft)
    project.close()


def test_truth_against_itself_scores_perfectly(simulated: Simulated) -> None:
    project, run = simulated.project, simulated.run_id
    ctf = score_report(project, f"{run}.truth_micrographs", f"{run}.truth_micrographs")
    assert ctf["metric"] == "ctf" and ctf["summary"]["n_matched"] == 3
    assert ctf["summary"]["max_abs_defocus_error_A"] == 0.0
    assert ctf["summary"]["mean_angle_error_deg"] == 0.0
    picks = score_report(project, f"{run}.truth_coordinates", f"{run}.truth_coordinates")
    assert picks["summary"]["f1"] == 1.0 and picks["summary"]["n_true"] == 24
    poses = score_report(project, (run, "truth_particles"), InputLink(run, "truth_particles"))
    assert poses["summary"]["join"] == "coordinates"
    assert poses["summary"]["mean_pose_error_deg"] == pytest.approx(0.0, abs=1e-4)
    assert poses["summary"]["mean_shift_error_A"] == 0.0
    maps = score_report(project, f"{run}.volume", f"{run}.volume")
    assert maps["summary"]["resolution_fsc0143_A"] == pytest.approx(6.0)  # Nyquist at 3 Å/px
    assert maps["curve"]["fsc"][1:] == pytest.approx([1.0] * 32, abs=1e-5)


def test_score_run_reports_known_defocus_errors(simulated: Simulated) -> None:
    project, run = simulated.project, simulated.run_id
    links = {
        "truth": [InputLink(run, "truth_micrographs")],
        "candidate": [InputLink(simulated.candidates, "ctf")],
    }
    score_id = project.create_run("score", {}, links)
    launch(project, score_id, workers=1)
    assert wait_for(project, score_id, timeout_s=300) == FINISHED
    out = project.output(score_id, "report")
    assert out.type == FileKind.TABLE
    report = json.loads(project.path(out.path).read_text())
    summary = report["summary"]
    assert summary["mean_abs_defocus_error_A"] == pytest.approx(300.0)
    assert summary["max_abs_defocus_error_A"] == pytest.approx(300.0)
    assert summary["mean_abs_astigmatism_error_A"] == pytest.approx(0.0, abs=1e-6)
    truth = _set(project, f"{run}.truth_micrographs")
    mean = (_values(truth, "defocus_u_A") + _values(truth, "defocus_v_A")) / 2
    assert summary["mean_abs_defocus_error_percent"] == pytest.approx(np.mean(30000.0 / mean))
    scored = [r for r in report["per_item"] if r["angle_error_deg"] is not None]
    assert len(scored) == summary["n_angle_scored"] >= 1
    assert all(r["angle_error_deg"] == pytest.approx(5.0) for r in scored)
    assert [r["micrograph_name"] for r in report["per_item"]] == [
        "mic_0001",
        "mic_0002",
        "mic_0003",
    ]
    assert out.meta["summary"]["n_matched"] == 3


def test_picks_with_known_misses_and_false_positives(simulated: Simulated) -> None:
    project, run = simulated.project, simulated.run_id
    report = score_report(project, (simulated.candidates, "picks"), (run, "truth_coordinates"))
    s = report["summary"]
    assert (s["n_true_positive"], s["n_predicted"], s["n_true"]) == (22, 25, 24)
    assert s["precision"] == pytest.approx(22 / 25) and s["recall"] == pytest.approx(22 / 24)
    # the default radius is a quarter of the particle diameter recorded by simulate
    diameter = project.output(run, "truth_coordinates").meta["particle_diameter_A"]
    assert s["match_radius_A"] == pytest.approx(diameter / 4)
    tight = score_report(
        project, (simulated.candidates, "picks"), (run, "truth_coordinates"), match_radius_A=3.0
    )
    assert tight["summary"]["n_true_positive"] == 0  # 2 px = 6 Å away
    per_mic = {r["micrograph_name"]: r for r in report["per_item"]}
    assert per_mic["mic_0001"]["n_predicted"] == 7  # lost 2, one false pick


def test_pose_errors_with_symmetry_and_shift(simulated: Simulated) -> None:
    project, run = simulated.project, simulated.run_id
    c4 = score_report(
        project, (simulated.candidates, "poses"), (run, "truth_particles"), symmetry="C4"
    )
    rows = c4["per_item"]
    assert len(rows) == 24 and all(r["candidate_row"] == r["truth_row"] for r in rows)
    errors = np.array([r["pose_error_deg"] for r in rows])
    np.testing.assert_allclose(errors[1::2], 10.0, atol=1e-4)
    np.testing.assert_allclose(errors[0::2], 0.0, atol=1e-4)  # rot + 90: a C4 operator
    assert c4["summary"]["mean_shift_error_A"] == pytest.approx(3.0)
    c1 = score_report(project, (simulated.candidates, "poses"), (run, "truth_particles"))
    assert np.allclose([r["pose_error_deg"] for r in c1["per_item"]][0::2], 90.0, atol=1e-4)
    by_order = score_report(
        project,
        (simulated.candidates, "poses"),
        (run, "truth_particles"),
        symmetry="C4",
        pose_join="order",
    )
    assert by_order["summary"]["mean_pose_error_deg"] == pytest.approx(5.0, abs=1e-4)


def test_drift_rmse_and_clear_errors(simulated: Simulated) -> None:
    project, run = simulated.project, simulated.run_id
    drift = score_report(
        project, (simulated.candidates, "drift"), (simulated.candidates, "true_drift")
    )
    assert drift["summary"]["mean_drift_rmse_px"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no CTF columns"):
        score_report(project, (run, "micrographs"), (run, "truth_micrographs"))
    with pytest.raises(ValueError, match="needs a map"):
        score_report(project, (run, "volume"), (run, "truth_micrographs"))
    with pytest.raises(ValueError, match="needs a drift table"):
        score_report(project, (simulated.candidates, "drift"), (run, "volume"))
