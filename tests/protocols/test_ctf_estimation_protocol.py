"""ctf-estimation end to end: imported micrographs with a known CTF, an empty one, the PNGs."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cryostack.core.project import FINISHED, InputLink, Project
from cryostack.em.ctf import ctf_2d
from cryostack.em.scoring import defocus_errors
from cryostack.em.simulate import apply_ctf
from cryostack.execution.launch import launch, wait_for
from cryostack.io.mrc import write_mrc
from cryostack.protocols.ctf_estimation import (
    DIAGNOSTIC_COLUMN,
    CtfEstimation,
    CtfEstimationParams,
    write_png_gray,
)

PIXEL_A = 1.25


def ctf_on_noise(
    shape: tuple[int, int], u: float, v: float, angle: float, seed: int
) -> torch.Tensor:
    """White noise filtered by a known CTF plus white noise: Thon rings with a known answer."""
    g = torch.Generator().manual_seed(seed)
    ctf = ctf_2d(
        u, v, angle, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1,
        pixel_size_A=PIXEL_A, shape=shape,
    )  # fmt: skip
    return apply_ctf(torch.randn(shape, generator=g), ctf) + 0.5 * torch.randn(shape, generator=g)


TRUTH = {"mic_a": (15300.0, 14700.0, 35.0), "mic_b": (24600.0, 25400.0, 150.0)}


def read_png_gray(path: Path) -> np.ndarray:
    """Decode an 8-bit greyscale, filter-0 PNG as written by ``write_png_gray``."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 0)
            size = (h, w)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(size[0], size[1] + 1)
    assert not raw[:, 0].any()  # filter type 0 on every row
    return raw[:, 1:]


def test_png_writer_round_trips(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    write_png_gray(tmp_path / "x.png", image)
    np.testing.assert_array_equal(read_png_gray(tmp_path / "x.png"), image)
    with pytest.raises(ValueError, match="uint8"):
        write_png_gray(tmp_path / "y.png", image.astype(np.float32))


def _finish(project: Project, run_id: int) -> None:
    launch(project, run_id, workers=2)
    status = wait_for(project, run_id, timeout_s=300)
    log = project.path(project.run(run_id).log_path).read_text()
    assert status == FINISHED, log[-3000:]


def test_ctf_estimation_fills_the_ctf_and_fails_only_the_empty_micrograph(tmp_path: Path) -> None:
    folder = tmp_path / "mics"
    folder.mkdir()
    for seed, (name, (u, v, angle)) in enumerate(TRUTH.items()):
        image = ctf_on_noise((768, 768), u, v, angle, seed=seed)
        write_mrc(folder / f"{name}.mrc", image.numpy(), PIXEL_A)
    write_mrc(folder / "mic_empty.mrc", np.zeros((768, 768), np.float32), PIXEL_A)

    project = Project.create(tmp_path / "p")
    imported = project.create_run("import-micrographs", {"files": str(folder / "*.mrc")})
    _finish(project, imported)
    params = {"tile_size_px": 256, "tile_overlap": 0.5, "max_resolution_A": 4.0, "threads": 1}
    run_id = project.create_run(
        "ctf-estimation", params, {"micrographs": [InputLink(imported, "micrographs")]}
    )
    _finish(project, run_id)

    run = project.run(run_id)
    assert "1 item(s) failed: mic_empty" in run.history[-1].message
    failed = [s for s in run.steps if s.status == "failed"]
    assert [s.key for s in failed] == ["mic_empty"]
    assert "mic_empty.mrc" in (failed[0].error or "")
    assert "empty" in (failed[0].error or "")

    result = project.read_output_set(run_id, "micrographs")
    table = result.table.to_pydict()
    assert sorted(table["micrograph_name"]) == ["mic_a", "mic_b"]
    assert result.optics[0].pixel_size_A == pytest.approx(PIXEL_A)
    for row, name in enumerate(table["micrograph_name"]):
        u, v, angle = TRUTH[name]
        err = defocus_errors(
            *(torch.tensor([table[c][row]]) for c in ("defocus_u_A", "defocus_v_A")),
            torch.tensor([table["defocus_angle_deg"][row]]),
            torch.tensor([u]),
            torch.tensor([v]),
            torch.tensor([angle]),
        )
        assert abs(float(err.mean_defocus_error_percent)) < 0.5
        assert float(err.angle_error_deg) < 3.0
        assert table["defocus_u_A"][row] >= table["defocus_v_A"][row]
        assert table["phase_shift_deg"][row] == 0.0
        assert 2.5 <= table["ctf_fit_resolution_A"][row] < 5.0
        assert 0.3 < table["ctf_fit_score"][row] <= 1.0
        picture = read_png_gray(project.path(table[DIAGNOSTIC_COLUMN][row]))
        assert picture.shape == (256, 256)
        assert picture.std() > 20  # rings, not a flat image


def test_check_reports_bad_parameters() -> None:
    from cryostack.core.protocol import RunContext

    params = CtfEstimationParams(min_resolution_A=4.0, max_resolution_A=6.0, defocus_max_A=1000.0)
    ctx = RunContext(Path("."), 1, "runs/1", params, {}, 0)
    problems = CtfEstimation().check(ctx)
    assert any("min_resolution_A" in p for p in problems)
    assert any("defocus_max_A" in p for p in problems)
