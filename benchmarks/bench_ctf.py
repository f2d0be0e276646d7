"""CTF estimation: time per 4096 x 4096 micrograph and errors against simulated truth.

Usage::

    .venv/bin/python benchmarks/bench_ctf.py [--threads 2] [--repeats 5] [--n-micrographs 10]
        [--sim-size 2048] [--device cpu]

1. Timing: ``estimate_ctf`` (tile spectrum + search + refinement + fit resolution) on a 4096 px
   micrograph (white noise through a known CTF plus noise, 1.0 Å/px), median of ``--repeats``
   warm runs, with the stated number of CPU threads (or on the GPU with ``--device cuda``).
2. Accuracy: ``--n-micrographs`` micrographs simulated with ``simulate_micrograph`` (TRPV1 map,
   1.25 Å/px, SNR 0.05 per particle box, ice gradient 1), mean defocus spread over 0.5-4 µm,
   astigmatism 0-1000 Å, random angles; errors after normalising both to U >= V. Simulated at
   ``--sim-size`` px (4k simulation is slow); the estimation itself is the same code.

CTFFIND4 is compared when a ``ctffind`` executable is on the PATH (it is not packaged in Debian;
``apt-cache policy ctffind`` finds nothing), else the table says so.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import time

import numpy as np
import torch

from cryostack.em.ctf import ctf_2d
from cryostack.em.ctf_estimation import CtfSearchSettings, Optics, estimate_ctf
from cryostack.em.scoring import defocus_errors
from cryostack.em.simulate import apply_ctf, simulate_micrograph
from cryostack.io.atomic_model import model_to_map, shipped_model_path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_4k(
    device: torch.device, repeats: int, settings: CtfSearchSettings
) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds per call of ``estimate_ctf`` on a 4096 px micrograph
    (first call not counted)."""
    g = torch.Generator().manual_seed(0)
    ctf = ctf_2d(
        20300.0, 19700.0, 40.0, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1,
        pixel_size_A=1.0, shape=(4096, 4096),
    )  # fmt: skip
    image = apply_ctf(torch.randn(4096, 4096, generator=g), ctf)
    image = (image + 3.0 * torch.randn(4096, 4096, generator=g)).to(device)
    optics = Optics(pixel_size_A=1.0)
    estimate_ctf(image, optics, settings)  # warm-up (autograd, FFT plans)
    times, cpu = [], []
    for _ in range(repeats):
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fit, _ = estimate_ctf(image, optics, settings)
        float(fit.defocus_u_A[0])
        _sync(device)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print(
        f"4k fit: U {float(fit.defocus_u_A[0]):.0f} V {float(fit.defocus_v_A[0]):.0f} angle "
        f"{float(fit.defocus_angle_deg[0]):.1f} (truth 20300, 19700, 40.0), fit to "
        f"{float(fit.fit_resolution_A[0]):.2f} Å, score {float(fit.fit_score[0]):.3f}"
    )
    return times, cpu


def accuracy(
    n: int, size: int, device: torch.device, settings: CtfSearchSettings
) -> list[dict[str, float]]:
    """Errors of ``estimate_ctf`` on ``n`` simulated micrographs."""
    pixel_size_A = 1.25
    volume = torch.from_numpy(
        np.asarray(
            model_to_map(shipped_model_path("trpv1"), pixel_size_A=pixel_size_A, box_size_px=160),
            dtype=np.float32,
        )
    )
    g = torch.Generator().manual_seed(11)
    rng = np.random.default_rng(11)
    n_particles = int(300 * (size / 2048) ** 2)
    rows = []
    for i, mean in enumerate(np.linspace(5000.0, 40000.0, n)):
        astig = rng.uniform(300.0, 1000.0) if i % 2 == 0 else rng.uniform(0.0, 1000.0)
        angle = rng.uniform(0.0, 180.0)
        u, v = mean + astig / 2, mean - astig / 2
        micrograph, _ = simulate_micrograph(
            volume, n_particles, (size, size), pixel_size_A=pixel_size_A, defocus_u_A=u,
            defocus_v_A=v, defocus_angle_deg=angle, snr=0.05, ice_gradient=1.0, generator=g,
            min_distance_px=70.0, margin_px=81.0,
        )  # fmt: skip
        start = time.perf_counter()
        fit, _ = estimate_ctf(micrograph.to(device), Optics(pixel_size_A=pixel_size_A), settings)
        seconds = time.perf_counter() - start
        err = defocus_errors(
            fit.defocus_u_A.cpu(), fit.defocus_v_A.cpu(), fit.defocus_angle_deg.cpu(),
            torch.tensor([u]), torch.tensor([v]), torch.tensor([angle]),
        )  # fmt: skip
        rows.append(
            {
                "mean_A": float(mean),
                "astig_A": float(astig),
                "angle_deg": float(angle),
                "err_pct": float(err.mean_defocus_error_percent[0]),
                "astig_err_A": float(err.astigmatism_error_A[0]),
                "angle_err_deg": float(err.angle_error_deg[0]),
                "fit_res_A": float(fit.fit_resolution_A[0]),
                "score": float(fit.fit_score[0]),
                "seconds": seconds,
            }
        )
        r = rows[-1]
        print(
            f"{r['mean_A']:9.0f} {r['astig_A']:7.0f} {r['angle_deg']:7.1f} | {r['err_pct']:+7.2f} "
            f"{r['astig_err_A']:+8.0f} {r['angle_err_deg']:7.1f} | {r['fit_res_A']:6.2f} "
            f"{r['score']:6.3f} {r['seconds']:6.2f}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-micrographs", type=int, default=10)
    parser.add_argument("--sim-size", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile-overlap", type=float, default=0.0)
    parser.add_argument(
        "--accuracy-overlap",
        type=float,
        default=0.5,
        help="tile overlap for the smaller simulated micrographs (0.5 on 2048 px gives 49 tiles, "
        "close to the 64 of a 4k micrograph without overlap)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"threads {args.threads}, device {device}, load average {os.getloadavg()}")
    settings = CtfSearchSettings(tile_overlap=args.tile_overlap)
    print(f"settings: {settings}")

    times, cpu = time_4k(device, args.repeats, settings)
    print(
        f"\n4096 x 4096 micrograph: median {statistics.median(times):.2f} s wall, "
        f"min {min(times):.2f} s, max {max(times):.2f} s over {len(times)} runs "
        f"(target <= 2 s on 2 CPU cores, <= 0.3 s on an H100); process CPU time "
        f"median {statistics.median(cpu):.2f} s (all threads)"
    )
    print(f"CTFFIND4: {shutil.which('ctffind') or 'not installed (no Debian package)'}")

    if args.n_micrographs < 1:
        return
    print(
        f"\naccuracy on {args.n_micrographs} simulated {args.sim_size} px micrographs "
        f"(tile overlap {args.accuracy_overlap}):"
    )
    print("  mean(Å)  ast(Å)  ang(°) |  err %  ast err  ang err | fit res  score  time(s)")
    accuracy_settings = CtfSearchSettings(tile_overlap=args.accuracy_overlap)
    rows = accuracy(args.n_micrographs, args.sim_size, device, accuracy_settings)
    errors = [abs(r["err_pct"]) for r in rows]
    angle_errors = [r["angle_err_deg"] for r in rows if r["astig_A"] >= 300.0]
    print(
        f"\nmedian |mean defocus error| {statistics.median(errors):.3f} % "
        f"(max {max(errors):.3f} %; target <= 1 %)"
    )
    if angle_errors:
        print(
            f"median angle error where astigmatism >= 300 Å: "
            f"{statistics.median(angle_errors):.2f}° over {len(angle_errors)} micrographs "
            f"(max {max(angle_errors):.2f}°; target <= 5°)"
        )
    print(
        f"median |astigmatism error| {statistics.median(abs(r['astig_err_A']) for r in rows):.0f} Å"
    )
    print(f"load average at the end {os.getloadavg()}")
    if any(math.isnan(e) for e in errors):
        raise SystemExit("NaN errors")


if __name__ == "__main__":
    main()
