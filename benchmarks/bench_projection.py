"""Throughput of Fourier-slice projection and CTF-weighted back-projection.

Projects ``--n-images`` (default 10,000) images of a ``--box``^3 map (default 128) in batches and
back-projects them (with CTF weights), on the CPU and, when present, on CUDA. Prints images/second.

    python benchmarks/bench_projection.py [--n-images 10000] [--box 128] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from cryostack.em.ctf import ctf_2d
from cryostack.em.fourier import irfft2_centred, rfft2_centred
from cryostack.em.projection import extract_central_slices, prepare_volume_for_projection
from cryostack.em.reconstruction import Backprojector
from cryostack.em.rotations import random_rotations


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(device: torch.device, n_images: int, box: int, batch_size: int) -> None:
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(box, box, box, generator=g).to(device)
    rotations = random_rotations(n_images, generator=g).to(device)
    ctf = ctf_2d(
        torch.tensor(15000.0, device=device),
        torch.tensor(14000.0, device=device),
        torch.tensor(30.0, device=device),
        voltage_kV=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
        pixel_size_A=1.0,
        shape=(box, box),
    )

    synchronise(device)
    t0 = time.perf_counter()
    volume_ft = prepare_volume_for_projection(volume)
    synchronise(device)
    t_prepare = time.perf_counter() - t0

    keep = None
    t0 = time.perf_counter()
    for batch in rotations.split(batch_size):
        images = irfft2_centred(extract_central_slices(volume_ft, batch, box), (box, box))
        keep = images if keep is None else keep  # reused as back-projection input
    synchronise(device)
    t_project = time.perf_counter() - t0
    assert keep is not None

    bp = Backprojector(box, device=device)
    t0 = time.perf_counter()
    for batch in rotations.split(batch_size):
        images_ft = rfft2_centred(keep[: len(batch)])
        bp.add_fourier(images_ft, batch, ctf=ctf)
    synchronise(device)
    t_insert = time.perf_counter() - t0
    t0 = time.perf_counter()
    bp.reconstruct()
    synchronise(device)
    t_reconstruct = time.perf_counter() - t0

    print(
        f"device={device} threads={torch.get_num_threads()} box={box} images={n_images} "
        f"batch={batch_size}"
    )
    print(f"  prepare volume (pad 2, FFT {2 * box}^3): {t_prepare:.2f} s")
    print(f"  project:      {n_images / t_project:10.0f} images/s ({t_project:.2f} s)")
    print(f"  back-project: {n_images / t_insert:10.0f} images/s ({t_insert:.2f} s, with CTF)")
    print(f"  reconstruct (divide, iFFT, gridding): {t_reconstruct:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-images", type=int, default=10_000)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}")
    for device in devices:
        bench(device, args.n_images, args.box, args.batch_size)


if __name__ == "__main__":
    main()
