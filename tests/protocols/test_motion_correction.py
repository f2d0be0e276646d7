"""The motion-correction protocol end to end: import movies, align them, check files and errors."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from cryostack.core.project import FINISHED, InputLink, Project
from cryostack.em.simulate import simulate_movie
from cryostack.execution.launch import launch, wait_for
from cryostack.io.mrc import write_mrc
from cryostack.io.tiff import write_tiff_movie
from cryostack.protocols.motion_correction import (
    MovieProblem,
    drift_plot,
    png_bytes,
    read_gain,
    read_movie_frames,
)

SIZE, FRAMES = 256, 12


def smooth_image(size: int, sigma_px: float, seed: int) -> torch.Tensor:
    noise = torch.randn(size, size, generator=torch.Generator().manual_seed(seed))
    ky = torch.fft.fftfreq(size)[:, None]
    kx = torch.fft.rfftfreq(size)[None, :]
    image = torch.fft.irfft2(
        torch.fft.rfft2(noise) * torch.exp(-2 * math.pi**2 * sigma_px**2 * (kx**2 + ky**2)),
        s=(size, size),
    )
    return (image - image.mean()) / image.std()


def make_movie(seed: int) -> tuple[np.ndarray, np.ndarray]:
    frames, truth = simulate_movie(
        smooth_image(SIZE, 2.0, seed), FRAMES, dose_per_frame_e_A2=2.0, pixel_size_A=1.0,
        contrast=0.3, drift_px_per_frame=1.0, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return frames.numpy(), truth.drift_px.numpy()


def decode_png_size(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    idat_at = data.index(b"IDAT")
    (idat_len,) = struct.unpack(">I", data[idat_at - 4 : idat_at])
    raw = zlib.decompress(data[idat_at + 4 : idat_at + 4 + idat_len])
    return width, height, raw


def test_motion_correction_run_aligns_movies_and_reports_bad_ones(tmp_path: Path) -> None:
    movie_dir = tmp_path / "movies"
    movie_dir.mkdir()
    truths = {}
    for i, suffix in enumerate([".tif", ".mrcs", ".mrcs", ".mrcs"]):
        frames, drift = make_movie(seed=i)
        path = movie_dir / f"m{i}{suffix}"
        if suffix == ".tif":
            write_tiff_movie(path, frames)
        else:
            write_mrc(path, frames.astype(np.uint16), 1.0, stack=True)
        truths[path.stem] = drift
    project = Project.create(tmp_path / "p")
    imported = project.create_run(
        "import-movies",
        {"files": str(movie_dir / "m*"), "pixel_size_A": 1.0, "dose_per_frame_e_A2": 2.0},
    )
    launch(project, imported)
    assert wait_for(project, imported, timeout_s=120) == FINISHED

    # after the import, one movie is truncated and another replaced by frames of another size
    truncated = movie_dir / "m2.mrcs"
    truncated.write_bytes(truncated.read_bytes()[: 1024 + 5 * SIZE * SIZE * 2])
    write_mrc(movie_dir / "m3.mrcs", np.zeros((FRAMES, 200, SIZE), np.uint16), 1.0, stack=True)

    params = {"binning": 2.0, "threads": 1, "bfactor_A2": 100.0}
    run_id = project.create_run(
        "motion-correction", params, inputs={"movies": [InputLink(imported, "movies")]}
    )
    launch(project, run_id, workers=2)
    assert wait_for(project, run_id, timeout_s=240) == FINISHED
    run = project.run(run_id)
    assert "2 item(s) failed" in run.history[-1].message
    errors = {s.key: s.error or "" for s in run.steps if s.status == "failed"}
    assert set(errors) == {"movie-m2", "movie-m3"}
    assert "m2.mrcs" in errors["movie-m2"] and "truncated" in errors["movie-m2"]
    assert "m3.mrcs" in errors["movie-m3"] and "frame size 256x200 px" in errors["movie-m3"]

    micrographs = project.read_output_set(run_id, "micrographs")
    assert len(micrographs) == 2
    assert [g.pixel_size_A for g in micrographs.optics] == [pytest.approx(2.0)]
    assert micrographs.optics[0].dose_per_frame_e_A2 == 2.0  # acquisition values carried
    rows = micrographs.table.to_pylist()
    assert sorted(r["micrograph_name"] for r in rows) == ["m0", "m1"]
    for row in rows:
        with mrcfile.open(project.path(row["micrograph_path"])) as mrc:
            assert mrc.data.shape == (SIZE // 2, SIZE // 2)
            assert float(mrc.voxel_size.x) == pytest.approx(2.0)
        nodw = mrcfile.read(project.path(row["micrograph_nodw_path"]))
        # the plain sum keeps the counts (12 frames x 2 e/Å² x 1 Å²), dose weighting does not
        assert float(nodw.mean()) == pytest.approx(24.0, rel=0.02)
        shifts = starfile.read(project.path(row["shifts_path"]))["global_shift"]
        assert shifts["rlnMicrographFrameNumber"].tolist() == list(range(1, FRAMES + 1))
        relion_shift = shifts[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
        np.testing.assert_allclose(-relion_shift, truths[row["micrograph_name"]], atol=0.3)
        width, height, _ = decode_png_size(project.path(row["drift_plot_path"]).read_bytes())
        assert (width, height) == (320, 320)
        assert row["total_drift_px"] > 5.0


def test_frame_range_and_bad_files_give_messages_naming_the_file(tmp_path: Path) -> None:
    frames = np.arange(5 * 8 * 6, dtype=np.float32).reshape(5, 8, 6)
    path = tmp_path / "movie.mrcs"
    write_mrc(path, frames, 1.0, stack=True)
    chosen, first, last = read_movie_frames(path, 2, 4)
    assert (first, last) == (1, 4)
    np.testing.assert_array_equal(chosen, frames[1:4])
    with pytest.raises(MovieProblem, match=r"movie\.mrcs: frame range 2-9 is outside"):
        read_movie_frames(path, 2, 9)
    with pytest.raises(MovieProblem, match=r"missing\.tif: movie file not found"):
        read_movie_frames(tmp_path / "missing.tif")
    gain = tmp_path / "gain.mrc"
    write_mrc(gain, np.ones((6, 8), np.float32), 1.0)
    with pytest.raises(MovieProblem, match=r"gain reference .*gain\.mrc has shape 8x6 .* 6x8"):
        read_gain(gain, (8, 6), path)
    assert read_gain(gain, (6, 8), path).shape == (6, 8)


def test_drift_plot_png_is_valid_and_shows_the_path() -> None:
    drift = np.cumsum(np.ones((10, 2)), axis=0)
    image = drift_plot(drift, size=64, margin=8)
    width, height, raw = decode_png_size(png_bytes(image))
    assert (width, height) == (64, 64)
    rows = np.frombuffer(raw, np.uint8).reshape(64, 1 + 64 * 3)
    assert (rows[:, 0] == 0).all()  # filter type "none" on every row
    np.testing.assert_array_equal(rows[:, 1:].reshape(64, 64, 3), image)
    blue = (image[..., 2] > 150) & (image[..., 0] < 100)
    assert blue.sum() > 20  # the trajectory is drawn
    assert (image[8, 8] == [20, 160, 40]).all()  # first frame (top-left) in green
