"""Pre-processing in one table: cryostack vs RELION 3.1 on one simulated dataset.

Runs the three single-step benchmarks of this folder on one stated dataset and prints one table
(rows: movie alignment, CTF estimation, LoG picking) with cryostack's and RELION's wall time per
item, their error against the simulated truth and the ratio of the times (RELION / cryostack).
The steps reuse the functions of ``bench_motion.py``, ``bench_ctf.py`` and ``bench_picking.py``
(loaded from their files; those scripts are not edited here), so each step simulates and scores
exactly as its own script does:

- movie alignment (global): ``--n-movies`` movies of ``--frames`` frames of ``--movie-size``² px
  (1 Å/px, 1 e/Å²/frame, 1 px/frame drift); cryostack ``align_movie`` (read, align, write the
  dose-weighted and plain sums) vs ``relion_run_motioncorr --use_own`` on the same MRC files with
  the same ``--threads``. Error: drift RMSE (px) vs truth after removing the mean offset.
- CTF estimation: ``--n-micrographs`` micrographs of ``--ctf-size``² px (TRPV1, 1.25 Å/px, SNR
  0.05, mean defocus 0.5-4 µm); cryostack ``estimate_ctf``. Error: median |mean defocus error|
  (%). No RELION peer: RELION 3.1 calls CTFFIND4 / Gctf, and neither is packaged in Debian; the
  row says so unless a ``ctffind`` executable is on the PATH (then it is reported, not run).
- LoG picking: ``--n-micrographs`` micrographs of 1024² px (TRPV1, 3 Å/px, 40 particles, SNR
  0.05, the size is fixed by ``bench_picking``); cryostack ``pick_blobs`` vs
  ``relion_autopick --LoG`` (default threshold) on the same MRC files over 100-160 Å. Error:
  pooled F1 of the picks matched to the true centres (higher is better). ``relion_autopick``
  (non-MPI) has no threads option, so it runs single-threaded; cryostack uses ``--threads``.
- extraction: 64 px boxes at the true (sub-pixel) centres of ``--n-micrographs`` more
  picking-style micrographs, inverted and background-normalised; cryostack ``extract_boxes`` +
  ``prepare_particles`` (read, extract, write a stack) vs ``relion_preprocess --extract`` on the
  same files and coordinate STARs. Error: RMS distance (px) between each true centre and the
  micrograph pixel at its box's centre (RELION's from the integer shift between the two images
  of the same particle, which are otherwise identical).

Time per item is wall-clock; for RELION it is the whole call divided by the number of items (so
it includes the program's start-up); for cryostack it is the median over items after a warm-up
item (CTF: the estimation alone, the micrograph is already in memory). The load average before
and after is printed: the timings are only comparable on an otherwise idle machine.

    .venv/bin/python benchmarks/bench_preprocessing.py [--n-movies 4] [--movie-size 1024]
        [--frames 40] [--n-micrographs 6] [--ctf-size 2048] [--threads 2]
        [--workdir /tmp/bench_preprocessing] [--skip motion,ctf,picking,extraction]

The defaults take about 2-3 minutes on 2 busy CPU cores (most of it simulation).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import starfile
import torch

from cryostack.em.extraction import extract_boxes, prepare_particles
from cryostack.io.mrc import read_mrc, write_mrc

HERE = Path(__file__).resolve().parent
NO_PEER = "n/a: no peer installed"
STEPS = ("motion", "ctf", "picking", "extraction")


def load_script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the folder is not a package) as module ``name``."""
    path = HERE / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load benchmark script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Row:
    """One table row: a pre-processing step measured with both programs."""

    step: str
    n_items: int
    cryostack_s: float
    relion_s: float | None
    cryostack_error: float
    relion_error: float | None
    metric: str
    relion_note: str = ""


def motion_row(args: argparse.Namespace, work: Path) -> Row:
    """Global movie alignment: cryostack vs ``relion_run_motioncorr --use_own``."""
    bench = load_script("bench_motion")
    margs = argparse.Namespace(
        n_movies=args.n_movies, size=args.movie_size, frames=args.frames, threads=args.threads,
        patches=0, local_motion=0.0, contrast=0.1, bfactor=150.0,
    )  # fmt: skip
    t0 = time.perf_counter()
    movies = bench.simulate(margs, work / "movies")
    print(f"motion: simulated {len(movies)} movies in {time.perf_counter() - t0:.1f} s", flush=True)
    bench.run_cryostack(margs, movies[:1], work / "cryostack")  # warm-up (FFT plans)
    cs_times, _, cs_errors = bench.run_cryostack(margs, movies, work / "cryostack")
    rl_time: float | None = None
    rl_error: float | None = None
    note = ""
    if shutil.which("relion_run_motioncorr") is None:
        note = "RELION " + NO_PEER
    else:
        rl_time, _, rl_errors = bench.run_relion(margs, movies, work)
        rl_error = float(np.mean([e[0] for e in rl_errors]))
    return Row(
        step="movie alignment (global)", n_items=len(movies),
        cryostack_s=float(np.median(cs_times)), relion_s=rl_time,
        cryostack_error=float(np.mean([e[0] for e in cs_errors])), relion_error=rl_error,
        metric="drift RMSE px", relion_note=note,
    )  # fmt: skip


def ctf_row(args: argparse.Namespace) -> Row:
    """CTF estimation with cryostack; RELION's wrappers need CTFFIND4 / Gctf (not packaged)."""
    bench = load_script("bench_ctf")
    settings = bench.CtfSearchSettings(tile_overlap=0.5)
    print("ctf:   mean(Å)  ast(Å)  ang(°) |  err %  ast err  ang err | fit res  score  time(s)")
    warm_up = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    bench.estimate_ctf(warm_up, bench.Optics(pixel_size_A=1.25), settings)  # autograd, FFT plans
    rows = bench.accuracy(args.n_micrographs, args.ctf_size, torch.device("cpu"), settings)
    ctffind = shutil.which("ctffind")
    note = "RELION " + NO_PEER + " (CTFFIND4/Gctf not in Debian)"
    if ctffind is not None:
        note = f"n/a: {ctffind} found but not run by this benchmark"
    return Row(
        step="CTF estimation", n_items=len(rows),
        cryostack_s=statistics.median(r["seconds"] for r in rows), relion_s=None,
        cryostack_error=statistics.median(abs(r["err_pct"]) for r in rows), relion_error=None,
        metric="|defocus err| %", relion_note=note,
    )  # fmt: skip


def picking_row(args: argparse.Namespace, work: Path) -> Row:
    """LoG picking: cryostack ``pick_blobs`` vs ``relion_autopick --LoG`` (default threshold)."""
    bench = load_script("bench_picking")
    folder = work / "picking"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    truth = bench.simulate(folder, args.n_micrographs, 0)
    bench.run_cryostack(folder, dict(list(truth.items())[:1]))  # warm-up
    picks, times = bench.run_cryostack(folder, truth)
    rl_time: float | None = None
    rl_error: float | None = None
    note = ""
    if shutil.which("relion_autopick") is None:
        note = "RELION " + NO_PEER
    else:
        rl_picks, elapsed = bench.run_relion(folder, 0.0)
        rl_time = elapsed / len(truth)
        rl_error = bench.pooled(rl_picks, truth)[0]
    return Row(
        step="LoG picking", n_items=len(truth),
        cryostack_s=statistics.median(times), relion_s=rl_time,
        cryostack_error=bench.pooled(picks, truth)[0], relion_error=rl_error,
        metric="F1 (higher better)", relion_note=note,
    )  # fmt: skip


def write_coordinates(folder: Path, truth: dict[str, torch.Tensor], suffix: str) -> None:
    """One RELION coordinate STAR per micrograph (``<name><suffix>``) with the true centres."""
    for name, xy in truth.items():
        rows = "\n".join(f"{x:.2f} {y:.2f}" for x, y in xy.tolist())
        text = f"\ndata_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n{rows}\n"
        (folder / name).with_name(Path(name).stem + suffix).write_text(text)


def extract_cryostack(
    folder: Path, truth: dict[str, torch.Tensor], box_px: int
) -> tuple[dict[tuple[str, int, int], np.ndarray], list[float]]:
    """Read, cut, invert, normalise and write each micrograph's particles; images by centre."""
    out = folder / "cryostack_particles"
    out.mkdir(exist_ok=True)
    images, times = {}, []
    for name, xy in truth.items():
        t0 = time.perf_counter()
        micrograph, _ = read_mrc(folder / name)
        boxes = extract_boxes(torch.from_numpy(np.array(micrograph)), xy, box_px)
        particles = prepare_particles(boxes.boxes)
        write_mrc(out / f"{Path(name).stem}.mrcs", particles.numpy(), 3.0, stack=True)
        times.append(time.perf_counter() - t0)
        for (x, y), image in zip(boxes.centres_px.tolist(), particles.numpy(), strict=True):
            images[(name, round(x), round(y))] = image
    return images, times


def extract_relion(
    folder: Path, box_px: int, suffix: str
) -> tuple[dict[tuple[str, int, int], np.ndarray], float]:
    """``relion_preprocess --extract`` (inverted, normalised, no ramp) on the same files."""
    shutil.rmtree(folder / "Particles", ignore_errors=True)
    command = [
        "relion_preprocess", "--i", "micrographs.star", "--coord_dir", "./",
        "--coord_suffix", suffix, "--part_dir", "Particles/", "--part_star", "particles.star",
        "--extract", "--extract_size", str(box_px), "--invert_contrast", "--norm", "--no_ramp",
        "--bg_radius", str(0.375 * box_px),
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(command, cwd=folder, check=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    table = starfile.read(folder / "particles.star")["particles"]
    stacks: dict[str, np.ndarray] = {}
    images = {}
    for row in table.itertuples():
        index, stack = str(row.rlnImageName).split("@")
        if stack not in stacks:
            with warnings.catch_warnings():  # RELION 3.1 writes a zero z voxel size
                warnings.simplefilter("ignore")
                stacks[stack] = np.asarray(read_mrc(folder / stack)[0])
        key = (str(row.rlnMicrographName), round(row.rlnCoordinateX), round(row.rlnCoordinateY))
        images[key] = stacks[stack].reshape(-1, box_px, box_px)[int(index) - 1]
    return images, elapsed


def integer_shift(ours: np.ndarray, theirs: np.ndarray, reach: int = 2) -> tuple[int, int, float]:
    """The (dx, dy) px with ``theirs[y, x] ~ ours[y - dy, x - dx]`` (best correlation over
    ``|dx|, |dy| <= reach``, away from the wrapped border) and that correlation."""
    inner = (slice(reach, -reach), slice(reach, -reach))
    best = (0, 0, -math.inf)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            rolled = np.roll(ours, (dy, dx), (0, 1))[inner].ravel()
            corr = float(np.corrcoef(rolled, theirs[inner].ravel())[0, 1])
            if corr > best[2]:
                best = (dx, dy, corr)
    return best


def extraction_row(args: argparse.Namespace, work: Path, box_px: int = 64) -> Row:
    """Extraction at the true (sub-pixel) centres of picking-style micrographs.

    Error: RMS distance (px) between the true centre and the micrograph pixel at each box's
    centre (pixel ``N // 2``). cryostack's centres are known; RELION's follow from the integer
    shift that maps cryostack's image of the same particle onto RELION's (the images are then
    identical, correlation ~1), so both are measured on the same particles.
    """
    bench = load_script("bench_picking")
    folder = work / "extraction"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    truth = bench.simulate(folder, args.n_micrographs, 1)
    suffix = "_truth.star"
    write_coordinates(folder, truth, suffix)
    extract_cryostack(folder, dict(list(truth.items())[:1]), box_px)  # warm-up
    ours, times = extract_cryostack(folder, truth, box_px)
    step, metric = f"extraction ({box_px} px)", "centring RMSE px"
    true_xy = {
        (name, round(x), round(y)): (x, y) for name, xy in truth.items() for x, y in xy.tolist()
    }
    if shutil.which("relion_preprocess") is None:
        errors = [np.hypot(k[1] - true_xy[k][0], k[2] - true_xy[k][1]) for k in ours]
        return Row(
            step=step, n_items=len(truth), cryostack_s=statistics.median(times), relion_s=None,
            cryostack_error=float(np.sqrt(np.mean(np.square(errors)))), relion_error=None,
            metric=metric, relion_note="RELION " + NO_PEER,
        )  # fmt: skip
    theirs, elapsed = extract_relion(folder, box_px, suffix)
    common = sorted(set(ours) & set(theirs) & set(true_xy))
    cs_sq, rl_sq, corrs = [], [], []
    for key in common:
        dx, dy, corr = integer_shift(ours[key], theirs[key])
        x, y = true_xy[key]
        cs_sq.append((key[1] - x) ** 2 + (key[2] - y) ** 2)
        rl_sq.append((key[1] - dx - x) ** 2 + (key[2] - dy - y) ** 2)
        corrs.append(corr)
    note = (
        f"RELION: {len(common)} particles in both (cryostack {len(ours)}, RELION "
        f"{len(theirs)}); after the integer re-centring the images correlate "
        f"{min(corrs, default=math.nan):.4f} at worst"
    )
    return Row(
        step=step, n_items=len(truth), cryostack_s=statistics.median(times),
        relion_s=elapsed / len(truth), cryostack_error=float(np.sqrt(np.mean(cs_sq))),
        relion_error=float(np.sqrt(np.mean(rl_sq))), metric=metric, relion_note=note,
    )  # fmt: skip


def format_table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table."""
    head = (
        f"{'step':<26}{'items':>6}{'cryostack s/item':>18}{'RELION s/item':>15}"
        f"{'RELION/cs time':>16}  {'metric':<19}{'cryostack':>10}{'RELION':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        relion_s = f"{r.relion_s:15.3f}" if r.relion_s is not None else f"{'n/a':>15}"
        ratio = f"{r.relion_s / r.cryostack_s:16.2f}" if r.relion_s is not None else f"{'n/a':>16}"
        relion_err = f"{r.relion_error:10.3f}" if r.relion_error is not None else f"{'n/a':>10}"
        lines.append(
            f"{r.step:<26}{r.n_items:>6}{r.cryostack_s:18.3f}{relion_s}{ratio}  "
            f"{r.metric:<19}{r.cryostack_error:10.3f}{relion_err}"
        )
    notes = [f"  {r.step}: {r.relion_note}" for r in rows if r.relion_note]
    return "\n".join(lines + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-movies", type=int, default=4)
    parser.add_argument("--movie-size", type=int, default=1024, help="movie frame size (px)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--n-micrographs", type=int, default=6, help="for CTF and picking")
    parser.add_argument("--ctf-size", type=int, default=2048, help="CTF micrograph size (px)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_preprocessing"))
    parser.add_argument(
        "--skip", default="", help="comma-separated steps to skip: motion,ctf,picking,extraction"
    )
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if unknown := skip - set(STEPS):
        raise SystemExit(f"--skip: unknown steps {sorted(unknown)} (use {', '.join(STEPS)})")
    torch.set_num_threads(args.threads)
    work = args.workdir.absolute()
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    rows = []
    if "motion" not in skip:
        rows.append(motion_row(args, work))
    if "ctf" not in skip:
        rows.append(ctf_row(args))
    if "picking" not in skip:
        rows.append(picking_row(args, work))
    if "extraction" not in skip:
        rows.append(extraction_row(args, work))
    load_after = os.getloadavg()
    print(
        f"\ndataset: {args.n_movies} movies {args.frames} x {args.movie_size}² px; "
        f"{args.n_micrographs} CTF micrographs {args.ctf_size}² px; {args.n_micrographs} picking "
        f"micrographs 1024² px; threads {args.threads} (relion_autopick: 1); "
        f"{os.cpu_count()} CPUs; load average {load_before[0]:.2f} -> {load_after[0]:.2f}; "
        f"total {time.perf_counter() - start:.0f} s"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
