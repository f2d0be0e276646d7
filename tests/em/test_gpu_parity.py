"""CPU vs CUDA parity of the Fourier-space operations (skipped without a CUDA device)."""

from __future__ import annotations

import pytest
import torch

from cryostack.em.ctf import ctf_2d
from cryostack.em.fourier import fourier_crop, shift_images
from cryostack.em.fsc import fsc
from cryostack.em.projection import project_volume
from cryostack.em.reconstruction import Backprojector
from cryostack.em.rotations import random_rotations

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

N = 32


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    c = torch.arange(N, dtype=torch.float32) - N // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.exp(-((x - 3) ** 2 + (y + 2) ** 2 + (z - 4) ** 2) / 8.0)
    vol = vol + 0.3 * torch.randn(N, N, N, generator=g)
    return vol, random_rotations(64, generator=g)


def close(cpu: torch.Tensor, gpu: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = cpu.abs().max().item()
    assert (gpu.cpu() - cpu).abs().max().item() <= rtol * scale + 1e-6


def test_projection_parity(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    vol, rot = data
    cpu = project_volume(vol, rot)
    gpu = project_volume(vol.cuda(), rot.cuda())
    assert gpu.device.type == "cuda"
    close(cpu, gpu)


def test_backprojection_parity(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    vol, rot = data
    images = project_volume(vol, rot)
    ctf = ctf_2d(
        torch.linspace(8000, 20000, 64),
        torch.linspace(7500, 19500, 64),
        torch.full((64,), 20.0),
        voltage_kV=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
        pixel_size_A=1.5,
        shape=(N, N),
    )
    shifts = torch.linspace(-2, 2, 128).reshape(64, 2)
    maps = []
    for device in ("cpu", "cuda"):
        bp = Backprojector(N, device=device)
        bp.add(images.to(device), rot.to(device), ctf=ctf.to(device), shifts_px=shifts.to(device))
        maps.append(bp.reconstruct())
    close(maps[0], maps[1], rtol=1e-3)  # scatter-add order differs on the GPU


def test_fsc_shift_crop_ctf_parity(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    vol, _ = data
    noisy = vol + 0.1 * torch.randn(vol.shape, generator=torch.Generator().manual_seed(1))
    close(fsc(vol, noisy), fsc(vol.cuda(), noisy.cuda()))
    images = vol[:4]
    shifts = torch.tensor([[0.5, -1.25]] * 4)
    close(shift_images(images, shifts), shift_images(images.cuda(), shifts.cuda()))
    close(fourier_crop(images, 16), fourier_crop(images.cuda(), 16))
    defocus = torch.tensor([10000.0, 15000.0])
    kwargs = dict(
        voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1, pixel_size_A=1.0, shape=(N, N)
    )
    cpu_ctf = ctf_2d(defocus, defocus, torch.zeros(2), **kwargs)  # type: ignore[arg-type]
    gpu_ctf = ctf_2d(defocus.cuda(), defocus.cuda(), torch.zeros(2).cuda(), **kwargs)  # type: ignore[arg-type]
    assert gpu_ctf.device.type == "cuda"
    close(cpu_ctf, gpu_ctf)
