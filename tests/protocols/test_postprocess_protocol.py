"""The postprocess protocol end to end: half maps registered in a project, mask given or made."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from cryostack.core.datamodel import FileKind
from cryostack.core.project import FINISHED, InputLink, Project, ValidationError
from cryostack.core.protocol import OutputValue
from cryostack.em.filters import bfactor_filter, low_pass
from cryostack.em.postprocess import automatic_mask
from cryostack.execution.launch import launch, wait_for
from cryostack.io.mrc import read_mrc, write_mrc

N = 64
PIXEL_A = 1.5


def half_maps(seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truth: 4000 point atoms in a ball of radius 20 px, B = 100 Å², band-limited to 5 Å;
    half maps: truth plus independent white noise (as in tests/em/test_postprocess.py)."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(16000, 3, generator=g) * 2 - 1
    zyx = (points[points.norm(dim=1) < 1][:4000] * 20 + N // 2).round().long().flip(-1)
    atoms = torch.zeros(N, N, N)
    atoms.index_put_(tuple(zyx.T), torch.ones(len(zyx)), accumulate=True)
    blurred = bfactor_filter(atoms, 100.0, PIXEL_A, ndim=3)
    truth = low_pass(blurred, 5.0, PIXEL_A, ndim=3, edge_width_shells=3)
    half1 = truth + noise * torch.randn(N, N, N, generator=g)
    half2 = truth + noise * torch.randn(N, N, N, generator=g)
    return truth, half1, half2


@dataclass
class Runs:
    project: Project
    source: int
    runs: dict[str, int]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """A draft run holding a Volume with half maps and a Mask (as the imports make them), and
    two postprocess runs of it: with that mask, and with an automatic mask and given B."""
    project = Project.create(tmp_path_factory.mktemp("postprocess") / "p")
    truth, half1, half2 = half_maps(seed=5, noise=0.1)
    folder = project.root / "given"
    folder.mkdir()
    maps = {"half1": half1, "half2": half2, "map": 0.5 * (half1 + half2)}
    maps["mask"] = automatic_mask(truth, PIXEL_A)
    for name, volume in maps.items():
        write_mrc(folder / f"{name}.mrc", volume.numpy(), PIXEL_A)
    halves = ["given/half1.mrc", "given/half2.mrc"]
    meta = {"pixel_size_A": PIXEL_A, "half_maps": halves, "companions": halves}
    draft = project.create_run("import-volume", {"file": str(folder / "map.mrc")}, label="given")
    project.register_outputs(
        draft,
        {
            "volume": OutputValue(FileKind.VOLUME, "given/map.mrc", None, meta),
            "mask": OutputValue(FileKind.MASK, "given/mask.mrc", None, {"pixel_size_A": PIXEL_A}),
            "plain": OutputValue(FileKind.VOLUME, "given/map.mrc", None, {"pixel_size_A": 1.5}),
        },
    )
    inputs = {"volume": [InputLink(draft, "volume")]}
    runs = {
        "given_mask": project.create_run(
            "postprocess", {}, {**inputs, "mask": [InputLink(draft, "mask")]}, seed=7
        ),
        "auto_mask": project.create_run(
            "postprocess", {"bfactor_A2": -60.0, "low_pass_A": 6.0}, inputs, seed=7
        ),
    }
    for run_id in runs.values():  # both at once: the runs' start-up overlaps
        launch(project, run_id, workers=1)
    for run_id in runs.values():
        assert wait_for(project, run_id, timeout_s=300) == FINISHED, [
            h.message for h in project.run(run_id).history
        ]
    yield Runs(project, draft, runs)
    project.close()


def test_postprocess_with_a_given_mask(runs: Runs) -> None:
    proj, run = runs.project, runs.runs["given_mask"]
    volume = proj.output(run, "volume")
    assert volume.type == FileKind.VOLUME
    # the truth is band-limited to 5 Å (shell 19.2 of 64 at 1.5 Å/px)
    resolution = volume.meta["resolution_A"]
    assert abs(N * PIXEL_A / resolution - N * PIXEL_A / 5.0) <= 1.0
    assert -140 < volume.meta["bfactor_A2"] < -70
    sharpened, info = read_mrc(proj.path(volume.path))
    assert sharpened.shape == (N, N, N) and info.pixel_size_A == pytest.approx(PIXEL_A)
    mask, _ = read_mrc(proj.path(proj.output(run, "mask").path))
    given_mask, _ = read_mrc(proj.path("given/mask.mrc"))
    np.testing.assert_allclose(mask, given_mask, atol=1e-6)
    masked, _ = read_mrc(proj.path(volume.meta["masked_map"]))
    np.testing.assert_allclose(masked, sharpened * mask, atol=1e-5)
    assert volume.meta["half_maps"] == ["given/half1.mrc", "given/half2.mrc"]
    report = json.loads(proj.path(proj.output(run, "fsc").path).read_text())
    assert report["resolution_A"] == pytest.approx(resolution)
    for name in ("fsc_unmasked", "fsc_masked", "fsc_randomised", "fsc_corrected"):
        assert len(report[name]) == N // 2 + 1
    assert report["used_mask"] and report["randomise_from_shell"] > 0
    assert report["guinier"]["fitted"] and report["guinier"]["bfactor_A2"] == pytest.approx(
        volume.meta["bfactor_A2"]
    )
    # the corrected FSC crosses 0.143 at the reported resolution
    shell = report["resolution_shell"]
    assert report["fsc_corrected"][shell] >= 0.143 > report["fsc_corrected"][shell + 1]


def test_postprocess_with_automatic_mask_and_given_bfactor(runs: Runs) -> None:
    proj, run = runs.project, runs.runs["auto_mask"]
    volume = proj.output(run, "volume")
    assert volume.meta["bfactor_A2"] == -60.0 and volume.meta["low_pass_A"] == 6.0
    assert abs(N * PIXEL_A / volume.meta["resolution_A"] - N * PIXEL_A / 5.0) <= 1.0
    mask, _ = read_mrc(proj.path(proj.output(run, "mask").path))
    # the automatic mask covers the 20 px particle (radius 20 px, 13 % of the box) with margin
    assert mask[N // 2, N // 2, N // 2] == pytest.approx(1.0)
    assert 0.05 < mask.mean() < 0.5 and mask[0, 0, 0] == 0.0
    sharpened, _ = read_mrc(proj.path(volume.path))
    spectrum = np.abs(np.fft.rfftn(sharpened))
    k = np.sqrt(
        sum(g**2 for g in np.meshgrid(*(np.fft.fftfreq(N),) * 2, np.fft.rfftfreq(N), indexing="ij"))
    )
    beyond = k > PIXEL_A / 6.0 + 1.5 / N  # past the 6 Å low-pass and its edge
    assert spectrum[beyond].max() < 1e-3 * spectrum.max()
    log = (proj.path(proj.run(run).run_dir) / "run.log").read_text()
    assert "automatic mask" in log and "B-factor -60.0 Å² (given)" in log


def test_postprocess_needs_half_maps(runs: Runs) -> None:
    with pytest.raises(ValidationError, match="has no half maps"):
        runs.project.create_run("postprocess", {}, {"volume": [InputLink(runs.source, "plain")]})
