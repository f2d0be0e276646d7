"""The simulate protocol end to end: tiny runs of each kind, their files, truth and determinism."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cryostack.core.project import FINISHED, Project
from cryostack.em.fourier import shift_images
from cryostack.em.rotations import euler_to_matrix
from cryostack.em.simulate import simulate_particle_images
from cryostack.execution.launch import launch, wait_for
from cryostack.io.mrc import read_images, read_mrc
from cryostack.io.tiff import read_tiff_movie

MICROGRAPHS = {
    "kind": "micrographs",
    "n_micrographs": 2,
    "micrograph_size_px": 256,
    "particles_per_micrograph": 8,
    "snr": 1.0,
}
MOVIES = {**MICROGRAPHS, "kind": "movies", "n_frames": 8, "snr": 0.05}
PARTICLES = {
    "kind": "particles",
    "n_particles": 200,
    "particles_per_chunk": 120,
    "box_size_px": 32,
    "pixel_size_A": 6.0,
    "snr": 0.1,
}
RUNS: dict[str, tuple[dict[str, Any], int]] = {
    "mic": (MICROGRAPHS, 11),
    "mic_again": (MICROGRAPHS, 11),  # same params and seed, another project
    "mic_other_seed": (MICROGRAPHS, 12),
    "movies": (MOVIES, 5),
    "movies_gain": ({**MOVIES, "gain": True}, 5),
    "particles": (PARTICLES, 7),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Project, int]]]:
    """All runs of this module, launched together (one worker each) and waited for."""
    started = {}
    for name, (params, seed) in RUNS.items():
        project = Project.create(tmp_path_factory.mktemp(name) / "p")
        run_id = project.create_run("simulate", params, seed=seed)
        launch(project, run_id, workers=1)
        started[name] = (project, run_id)
    for name, (project, run_id) in started.items():
        status = wait_for(project, run_id, timeout_s=300)
        log = project.path(project.run(run_id).log_path).read_text()
        assert status == FINISHED, f"{name}: {log[-3000:]}"
    yield started
    for project, _ in started.values():
        project.close()


def _outputs(project: Project, run_id: int) -> dict[str, Any]:
    return {o.name: o for o in project.run(run_id).outputs}


def _column(item_set: Any, name: str) -> np.ndarray:
    return np.asarray(item_set.table.column(name).to_pylist())


def _images(project: Project, item_set: Any) -> np.ndarray:
    paths, index = _column(item_set, "image_path"), _column(item_set, "image_index")
    return np.concatenate(
        [read_images(project.path(p), [i]) for p, i in zip(paths, index, strict=True)]
    )


def _correlations(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    a = images - images.mean(axis=(1, 2), keepdims=True)
    b = references - references.mean(axis=(1, 2), keepdims=True)
    return (a * b).sum(axis=(1, 2)) / np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))


def _noise_free_references(project: Project, run_id: int, particles: Any) -> np.ndarray:
    """Projections with CTF and shifts at the true poses of a particle set (our own simulator)."""
    volume, info = read_mrc(project.path(project.output(run_id, "volume").path))
    euler = np.stack([_column(particles, c) for c in ("rot_deg", "tilt_deg", "psi_deg")], 1)
    origins = np.stack([_column(particles, "origin_x_A"), _column(particles, "origin_y_A")], 1)
    optics = particles.optics[0]

    def col(name: str) -> torch.Tensor:
        return torch.tensor(_column(particles, name), dtype=torch.float32)

    return simulate_particle_images(
        torch.from_numpy(np.array(volume)),
        euler_to_matrix(torch.tensor(euler)).float(),
        torch.tensor(origins).float(),
        pixel_size_A=float(info.pixel_size_A or 0),
        defocus_u_A=col("defocus_u_A"),
        defocus_v_A=col("defocus_v_A"),
        defocus_angle_deg=col("defocus_angle_deg"),
        snr=float("inf"),
        voltage_kV=optics.voltage_kV,
        cs_mm=optics.cs_mm,
        amplitude_contrast=optics.amplitude_contrast,
    ).numpy()


def test_micrographs_and_their_truth(runs: dict[str, tuple[Project, int]]) -> None:
    project, run_id = runs["mic"]
    outputs = _outputs(project, run_id)
    assert set(outputs) == {
        "volume",
        "micrographs",
        "truth_micrographs",
        "truth_coordinates",
        "truth_particles",
    }
    assert outputs["volume"].meta["pixel_size_A"] == 3.0
    assert 80 < outputs["volume"].meta["particle_diameter_A"] < 192
    mics = project.read_output_set(run_id, "micrographs")
    names = ["mic_0001", "mic_0002"]
    assert _column(mics, "micrograph_name").tolist() == names
    assert not any(c.startswith("defocus") for c in mics.table.column_names)
    assert mics.optics[0].pixel_size_A == 3.0 and mics.optics[0].voltage_kV == 300.0
    for path in _column(mics, "micrograph_path"):
        data, info = read_mrc(project.path(path))
        assert data.shape == (256, 256) and info.pixel_size_A == pytest.approx(3.0)

    truth = project.read_output_set(run_id, "truth_micrographs")
    assert _column(truth, "micrograph_name").tolist() == names
    u, v = _column(truth, "defocus_u_A"), _column(truth, "defocus_v_A")
    assert np.all(u >= v) and np.all(u - v <= 1000.0)
    assert np.all((u + v) / 2 >= 10000.0) and np.all((u + v) / 2 <= 25000.0)
    assert np.all(
        (_column(truth, "defocus_angle_deg") >= 0) & (_column(truth, "defocus_angle_deg") < 180)
    )

    coords = project.read_output_set(run_id, "truth_coordinates")
    assert len(coords) == 16 and set(_column(coords, "micrograph_name")) == set(names)
    xy = np.stack([_column(coords, "coord_x_px"), _column(coords, "coord_y_px")], 1)
    assert xy.min() >= 33 and xy.max() <= 255 - 33  # a whole 64 px box around every particle

    particles = project.read_output_set(run_id, "truth_particles")
    assert len(particles) == 16
    assert particles.optics[0].image_size_px == 64
    assert particles.optics[0].micrograph_pixel_size_A == 3.0
    # RELION: centre = coordinate - origin / pixel size gives back the true centre
    centres = np.stack(
        [
            _column(particles, "coord_x_px") - _column(particles, "origin_x_A") / 3.0,
            _column(particles, "coord_y_px") - _column(particles, "origin_y_A") / 3.0,
        ],
        1,
    )
    np.testing.assert_allclose(centres, xy, atol=1e-9)
    assert (
        _column(particles, "micrograph_name").tolist()
        == _column(coords, "micrograph_name").tolist()
    )
    by_name = {n: u[i] for i, n in enumerate(names)}
    np.testing.assert_array_equal(
        _column(particles, "defocus_u_A"),
        [by_name[n] for n in _column(particles, "micrograph_name")],
    )
    # the boxes cut from the micrographs show the map at the true pose, CTF and centre
    images = _images(project, particles)
    assert images.shape == (16, 64, 64)
    references = _noise_free_references(project, run_id, particles)
    matched = _correlations(images, references)
    shuffled = _correlations(images, np.roll(references, 1, axis=0))
    assert matched.mean() > 0.4 and matched.mean() > shuffled.mean() + 0.3


def test_same_seed_gives_identical_files_and_another_seed_differs(
    runs: dict[str, tuple[Project, int]],
) -> None:
    first, again, other = (_outputs(*runs[k]) for k in ("mic", "mic_again", "mic_other_seed"))
    assert {k: o.content_hash for k, o in first.items()} == {
        k: o.content_hash for k, o in again.items()
    }
    assert first["volume"].content_hash == other["volume"].content_hash  # no randomness
    for name in ("micrographs", "truth_micrographs", "truth_coordinates", "truth_particles"):
        assert first[name].content_hash != other[name].content_hash
    # the content hash covers the micrograph files themselves
    assert len(first["micrographs"].meta["companions"]) == 2


def test_movies_counts_drift_truth_and_alignment(runs: dict[str, tuple[Project, int]]) -> None:
    project, run_id = runs["movies"]
    outputs = _outputs(project, run_id)
    assert set(outputs) == {
        "volume",
        "movies",
        "truth_micrographs",
        "truth_coordinates",
        "truth_particles",
        "truth_motion",
    }
    movies = project.read_output_set(run_id, "movies")
    assert _column(movies, "micrograph_name").tolist() == ["mic_0001", "mic_0002"]
    assert _column(movies, "n_frames").tolist() == [8, 8]
    optics = movies.optics[0]
    assert optics.dose_per_frame_e_A2 == 1.0 and optics.gain_reference_path is None
    truth_mics = project.read_output_set(run_id, "truth_micrographs")
    motion = pq.read_table(project.path(outputs["truth_motion"].path)).to_pandas()
    assert list(motion.columns) == ["micrograph_name", "frame", "shift_x_px", "shift_y_px"]
    assert len(motion) == 16
    for row, movie_path in enumerate(_column(movies, "movie_path")):
        assert movie_path.endswith(".tif")
        frames = read_tiff_movie(project.path(movie_path))
        assert frames.shape == (8, 256, 256) and frames.dtype.kind == "u"
        assert frames.mean() == pytest.approx(9.0, rel=0.05)  # 1 e/Å² on 3 Å pixels
        drift = motion[motion.micrograph_name == f"mic_000{row + 1}"].sort_values("frame")
        shifts = drift[["shift_x_px", "shift_y_px"]].to_numpy()
        assert np.all(shifts[0] == 0) and np.hypot(*shifts[1]) == pytest.approx(1.0)
        # undoing the true drift sharpens the sum: it matches the noise-free truth better
        clean, _ = read_mrc(project.path(_column(truth_mics, "micrograph_path")[row]))
        stack = torch.from_numpy(frames.astype(np.float64))
        aligned = shift_images(stack, -torch.from_numpy(shifts)).sum(0).numpy()
        naive = frames.sum(0).astype(np.float64)
        # protein is dark in both: the counts follow 1 + contrast * signal
        cc_aligned = _correlations(aligned[None], clean[None])[0]
        cc_naive = _correlations(naive[None], clean[None])[0]
        assert cc_aligned > 0.1 and cc_aligned > cc_naive + 0.05  # measured: 0.14-0.16 vs 0.06


def test_movies_with_gain_are_float_mrc_with_a_gain_reference(
    runs: dict[str, tuple[Project, int]],
) -> None:
    project, run_id = runs["movies_gain"]
    movies = project.read_output_set(run_id, "movies")
    gain_path = movies.optics[0].gain_reference_path
    assert gain_path is not None
    gain, _ = read_mrc(project.path(gain_path))
    assert gain.shape == (256, 256) and 0.5 < gain.mean() < 1.5 and gain.std() > 0.05
    path = _column(movies, "movie_path")[0]
    assert path.endswith(".mrcs")
    frames, info = read_mrc(project.path(path))
    assert frames.dtype == np.float32 and frames.shape == (8, 256, 256)
    assert info.pixel_size_A == pytest.approx(3.0)
    counts = frames * gain
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    # same seed as the ungained run: the same counts, only divided by the gain
    plain_project, plain_id = runs["movies"]
    plain_movies = plain_project.read_output_set(plain_id, "movies")
    plain_frames = read_tiff_movie(plain_project.path(_column(plain_movies, "movie_path")[0]))
    np.testing.assert_array_equal(np.round(counts), plain_frames)


def test_particles_stacks_poses_ctf_and_subsets(runs: dict[str, tuple[Project, int]]) -> None:
    project, run_id = runs["particles"]
    outputs = _outputs(project, run_id)
    assert set(outputs) == {"volume", "particles", "truth_particles"}
    particles = project.read_output_set(run_id, "particles")
    assert len(particles) == 200
    optics = particles.optics[0]
    assert (optics.pixel_size_A, optics.image_size_px) == (6.0, 32)
    assert (optics.voltage_kV, optics.cs_mm, optics.amplitude_contrast) == (300.0, 2.7, 0.1)
    paths = _column(particles, "image_path")
    assert len(set(paths)) == 2
    assert _column(particles, "image_index").tolist() == list(range(120)) + list(range(80))
    assert _column(particles, "random_subset").tolist() == [1, 2] * 100
    origins = np.stack([_column(particles, "origin_x_A"), _column(particles, "origin_y_A")])
    assert 2.0 < origins.std() < 4.0  # shift_std_A = 3
    tilt = _column(particles, "tilt_deg")
    assert tilt.min() >= 0 and tilt.max() <= 180 and abs(np.cos(np.radians(tilt)).mean()) < 0.15
    u, v = _column(particles, "defocus_u_A"), _column(particles, "defocus_v_A")
    assert np.all(u >= v) and ((u + v) / 2).min() >= 10000 and ((u + v) / 2).max() <= 25000
    assert np.unique(u).size == 200  # a defocus per particle
    images = _images(project, particles)
    assert images.shape == (200, 32, 32)
    references = _noise_free_references(project, run_id, particles)
    matched = _correlations(images, references)
    shuffled = _correlations(images, np.roll(references, 1, axis=0))
    # SNR 0.1: expected correlation sqrt(0.1 / 1.1) = 0.30
    assert matched.mean() == pytest.approx(0.30, abs=0.05)
    assert abs(shuffled.mean()) < 0.1


def test_bad_parameters_are_refused(tmp_path: Path) -> None:
    from cryostack.core.project import ValidationError

    project = Project.create(tmp_path / "p")
    with pytest.raises(ValidationError, match="defocus_max_A"):
        project.create_run("simulate", {"defocus_min_A": 20000.0, "defocus_max_A": 10000.0})
    with pytest.raises(ValidationError, match="neither a shipped model"):
        project.create_run("simulate", {"model": str(tmp_path / "missing.pdb")})
    with pytest.raises(ValidationError, match="micrograph_size_px"):
        project.create_run("simulate", {"micrograph_size_px": 64})
    project.close()
