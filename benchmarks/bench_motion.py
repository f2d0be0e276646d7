"""Movie alignment: cryostack vs ``relion_run_motioncorr --use_own`` on the same simulated movies.

Simulates ``--n-movies`` movies (``--frames`` frames of ``--size``² px at 1 Å/px, 1 e/Å² per
frame, smooth random drift of 1 px/frame, optional local motion) with
:func:`cryostack.em.simulate.simulate_movie` (signal: a noise-free micrograph of CTF-modulated
particles with an ice gradient, unit standard deviation, scaled by ``--contrast``), writes them as
float32 MRC stacks, then aligns them with cryostack (reading, alignment, dose-weighted and plain
sums, writing both) and with RELION's own implementation (``--use_own``, same ``--j`` threads,
same patch grid, B-factor, dose weighting, bin factor 1). The global drift of both is compared
with the simulator's truth (RMSE over frames after removing the best constant offset, and
relative to frame 0); time is wall-clock per movie. Prints one table with the ratios.

    python benchmarks/bench_motion.py [--n-movies 4] [--size 1024] [--frames 40] [--threads 2]
        [--patches 0] [--local-motion 0] [--workdir /tmp/bench_motion]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import starfile
import torch

from cryostack.em.motion import align_movie
from cryostack.em.simulate import simulate_micrograph, simulate_movie
from cryostack.io.mrc import read_mrc, write_mrc

PIXEL_A = 1.0
DOSE = 1.0


def blob_volume(n: int = 48, n_blobs: int = 20, sigma_px: float = 2.0) -> torch.Tensor:
    """An asymmetric particle: Gaussian blobs around the centre."""
    g = torch.Generator().manual_seed(0)
    centres = (torch.rand(n_blobs, 3, generator=g) - 0.5) * n * 0.5 + n // 2
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij")
    volume = torch.zeros(n, n, n)
    for cx, cy, cz in centres:
        volume += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma_px**2))
    return volume


def simulate(args: argparse.Namespace, movie_dir: Path) -> list[tuple[Path, np.ndarray]]:
    movie_dir.mkdir(parents=True, exist_ok=True)
    volume = blob_volume()
    out = []
    for i in range(args.n_movies):
        path = movie_dir / f"movie{i + 1:03d}.mrcs"
        truth_path = path.with_suffix(".drift.npy")
        tag = f"{args.size} {args.frames} {args.contrast} {args.local_motion}"
        tag_path = path.with_suffix(".tag")
        if truth_path.exists() and tag_path.exists() and tag_path.read_text() == tag:
            out.append((path, np.load(truth_path)))  # reuse the movies of an earlier run
            continue
        g = torch.Generator().manual_seed(100 + i)
        shape = (args.size, args.size)
        clean, truth = simulate_micrograph(
            volume, args.size**2 // 4000, shape, pixel_size_A=PIXEL_A,
            defocus_u_A=15000.0, defocus_v_A=14000.0, defocus_angle_deg=30.0,
            snr=math.inf, ice_gradient=1.0, generator=g,
        )  # fmt: skip
        signal = clean / truth.signal_std
        frames, motion = simulate_movie(
            signal, args.frames, dose_per_frame_e_A2=DOSE, pixel_size_A=PIXEL_A,
            contrast=args.contrast, drift_px_per_frame=1.0, local_motion_px=args.local_motion,
            generator=g,
        )  # fmt: skip
        write_mrc(path, frames.numpy().astype(np.float32), PIXEL_A, stack=True)
        np.save(truth_path, motion.drift_px.numpy())
        tag_path.write_text(tag)
        out.append((path, motion.drift_px.numpy()))
    return out


def drift_errors(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """RMSE (px) after removing the best constant offset, and relative to frame 0."""
    err = estimate - truth
    centred = err - err.mean(0)
    rel0 = err - err[0]
    return (
        float(np.sqrt((centred**2).sum(-1).mean())),
        float(np.sqrt((rel0**2).sum(-1).mean())),
    )


def run_cryostack(
    args: argparse.Namespace, movies: list[tuple[Path, np.ndarray]], out_dir: Path
) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    torch.set_num_threads(args.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    times, cpu, errors = [], [], []
    for path, truth in movies:
        t0, c0 = time.perf_counter(), time.process_time()
        frames, _ = read_mrc(path)
        result = align_movie(
            torch.from_numpy(frames), PIXEL_A, bfactor_A2=args.bfactor,
            patches_x=args.patches, patches_y=args.patches, dose_per_frame_e_A2=DOSE,
        )  # fmt: skip
        assert result.dose_weighted_sum is not None
        write_mrc(out_dir / f"{path.stem}.mrc", result.dose_weighted_sum.numpy(), PIXEL_A)
        write_mrc(out_dir / f"{path.stem}_noDW.mrc", result.aligned_sum.numpy(), PIXEL_A)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        errors.append(drift_errors(result.drift_px.numpy(), truth))
    return times, cpu, errors


def write_movies_star(path: Path, movies: list[tuple[Path, np.ndarray]]) -> None:
    lines = [
        "# version 30001", "", "data_optics", "", "loop_",
        "_rlnOpticsGroupName #1", "_rlnOpticsGroup #2", "_rlnMicrographOriginalPixelSize #3",
        "_rlnVoltage #4", "_rlnSphericalAberration #5", "_rlnAmplitudeContrast #6",
        f"opticsGroup1 1 {PIXEL_A} 300 2.7 0.1", "", "# version 30001", "", "data_movies", "",
        "loop_", "_rlnMicrographMovieName #1", "_rlnOpticsGroup #2",
    ]  # fmt: skip
    lines += [f"{p.relative_to(path.parent)} 1" for p, _ in movies]
    path.write_text("\n".join(lines) + "\n")


def run_relion(
    args: argparse.Namespace, movies: list[tuple[Path, np.ndarray]], work: Path
) -> tuple[float, float, list[tuple[float, float]]]:
    star = work / "movies.star"
    write_movies_star(star, movies)
    out = work / "RelionMotionCorr"
    shutil.rmtree(out, ignore_errors=True)
    patches = max(1, args.patches)
    command = [
        "relion_run_motioncorr", "--i", "movies.star", "--o", "RelionMotionCorr/", "--use_own",
        "--j", str(args.threads), "--bin_factor", "1", "--bfactor", str(args.bfactor),
        "--patch_x", str(patches), "--patch_y", str(patches), "--dose_weighting",
        "--dose_per_frame", str(DOSE), "--angpix", str(PIXEL_A), "--voltage", "300",
        "--save_noDW",
    ]  # fmt: skip
    t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, cwd=work, check=True, capture_output=True)
    per_movie = (time.perf_counter() - t0) / len(movies)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    cpu_per_movie = cpu / len(movies)
    errors = []
    for path, truth in movies:
        shifts = starfile.read(out / "movies" / f"{path.stem}.star")["global_shift"]
        relion_shift = shifts[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
        errors.append(drift_errors(-relion_shift, truth))  # RELION stores the correction
    return per_movie, cpu_per_movie, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-movies", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patches", type=int, default=0, help="patch grid (0: global only)")
    parser.add_argument("--local-motion", type=float, default=0.0)
    parser.add_argument("--contrast", type=float, default=0.1)
    parser.add_argument("--bfactor", type=float, default=150.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_motion"))
    args = parser.parse_args()
    if shutil.which("relion_run_motioncorr") is None:
        raise SystemExit("relion_run_motioncorr is not installed")
    work = args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    movies = simulate(args, work / "movies")
    print(f"simulated {len(movies)} movies in {time.perf_counter() - t0:.1f} s")
    load_before = os.getloadavg()[0]
    run_cryostack(args, movies[:1], work / "cryostack")  # warm-up (imports, FFT plans)
    cs_times, cs_cpu, cs_errors = run_cryostack(args, movies, work / "cryostack")
    rl_time, rl_cpu, rl_errors = run_relion(args, movies, work)
    cs_times2, cs_cpu2, _ = run_cryostack(args, movies, work / "cryostack")  # bracket RELION
    cs_time = float(np.median(cs_times + cs_times2))
    cs_cpu_time = float(np.median(cs_cpu + cs_cpu2))
    load_after = os.getloadavg()[0]

    cs_err = np.array(cs_errors).mean(0)
    rl_err = np.array(rl_errors).mean(0)
    print(
        f"\n{args.n_movies} movies, {args.frames} frames of {args.size}x{args.size} px, "
        f"{PIXEL_A} Å/px, {DOSE} e/Å²/frame, contrast {args.contrast}, drift 1 px/frame, "
        f"local motion {args.local_motion} px, patches {args.patches}x{args.patches}, "
        f"B {args.bfactor} Å², {args.threads} threads; load average {load_before:.1f} -> "
        f"{load_after:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"{'program':<26}{'wall s/movie':>13}{'CPU s/movie':>13}{'RMSE px':>10}{'RMSE0 px':>10}")
    for name, wall, cpu, err in [
        ("cryostack", cs_time, cs_cpu_time, cs_err),
        ("relion_run_motioncorr", rl_time, rl_cpu, rl_err),
    ]:
        print(f"{name:<26}{wall:>13.2f}{cpu:>13.2f}{err[0]:>10.3f}{err[1]:>10.3f}")
    print(
        f"{'ratio (RELION/cryostack)':<26}{rl_time / cs_time:>13.2f}{rl_cpu / cs_cpu_time:>13.2f}"
        f"{rl_err[0] / cs_err[0]:>10.2f}{rl_err[1] / cs_err[1]:>10.2f}"
    )
    print(
        "wall: elapsed per movie (cryostack: median over two passes bracketing RELION); CPU: "
        "user+system time per movie, all threads (robust to other load on the machine)\n"
        "RMSE: drift error vs truth after removing the mean offset; RMSE0: relative to frame 0"
    )


if __name__ == "__main__":
    main()
