"""Blob picking: cryostack's LoG(+energy) picker against ``relion_autopick --LoG``.

Simulates ``--n-micrographs`` micrographs at the ``simulate`` protocol's defaults (TRPV1 at
3 Å/px, 1024 x 1024 px, 40 particles, SNR 0.05, defocus 1-2.5 µm, astigmatism <= 1000 Å, ice
ramp 1.0), writes them as MRC files plus a micrographs STAR, and picks them with both programs
over the same diameter range (100-160 Å). Picks are matched one to one to the true centres within
a quarter of the particle diameter (140 Å / 4); F1, precision and recall are pooled over the
micrographs. Both programs run side by side in this script, one after the other per repeat.

- RELION: ``relion_autopick --LoG`` at its default threshold, and at the best
  ``--LoG_adjust_threshold`` of a sweep (an oracle tuning on the truth, for reference). Time is
  the wall time of the whole call divided by the number of micrographs (includes start-up).
- cryostack: :func:`cryostack.em.picking.pick_blobs` at its default threshold (4.0) with the MRC
  read from disk, ``--threads`` torch threads; median time per micrograph over the repeats.

    python benchmarks/bench_picking.py [--n-micrographs 8] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import starfile
import torch

from cryostack.core.datamodel import ItemSet, OpticsGroup, SetKind
from cryostack.em.picking import pick_blobs
from cryostack.em.scoring import match_points, picking_scores_from_counts
from cryostack.em.simulate import simulate_micrograph
from cryostack.io.atomic_model import model_to_map, shipped_model_path
from cryostack.io.mrc import read_mrc, write_mrc
from cryostack.io.star import write_star

PIXEL_A = 3.0
MIN_D_A, MAX_D_A, TRUE_D_A = 100.0, 160.0, 140.0
THRESHOLD = 4.0


def simulate(folder: Path, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Write ``n`` micrographs into ``folder/Micrographs`` and a STAR; return true centres."""
    volume = torch.from_numpy(
        model_to_map(shipped_model_path(), pixel_size_A=PIXEL_A, box_size_px=64)
    )
    g = torch.Generator().manual_seed(seed)
    (folder / "Micrographs").mkdir(parents=True)
    truth = {}
    for i in range(n):
        mean = float(10000.0 + 15000.0 * torch.rand(1, generator=g))
        astig = float(1000.0 * torch.rand(1, generator=g))
        angle = float(180.0 * torch.rand(1, generator=g))
        micrograph, t = simulate_micrograph(
            volume,
            40,
            (1024, 1024),
            pixel_size_A=PIXEL_A,
            defocus_u_A=mean + astig / 2,
            defocus_v_A=mean - astig / 2,
            defocus_angle_deg=angle,
            snr=0.05,
            ice_gradient=1.0,
            generator=g,
        )
        name = f"Micrographs/mic_{i:04d}.mrc"
        write_mrc(folder / name, micrograph.numpy(), PIXEL_A)
        truth[name] = t.positions_px.to(torch.float64)
    table = pa.table(
        {
            "micrograph_path": pa.array(list(truth), pa.string()),
            "micrograph_name": pa.array(list(truth), pa.string()),
            "optics_group": pa.array([1] * n, pa.int32()),
        }
    )
    optics = OpticsGroup(pixel_size_A=PIXEL_A)
    write_star(ItemSet(SetKind.MICROGRAPHS, table, [optics]), folder / "micrographs.star")
    return truth


def pooled(
    picks: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]
) -> tuple[float, float, float]:
    """(F1, precision, recall) pooled over micrographs."""
    tp = n_pred = n_true = 0
    for name, true_px in truth.items():
        pred = picks.get(name, torch.zeros(0, 2, dtype=torch.float64))
        tp += int(match_points(pred, true_px, TRUE_D_A / PIXEL_A / 4)[0].shape[0])
        n_pred += int(pred.shape[0])
        n_true += int(true_px.shape[0])
    s = picking_scores_from_counts(tp, n_pred, n_true)
    return s.f1, s.precision, s.recall


def run_relion(folder: Path, adjust: float) -> tuple[dict[str, torch.Tensor], float]:
    out = folder / "AutoPick"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        "relion_autopick",
        "--i",
        "micrographs.star",
        "--odir",
        "AutoPick/",
        "--pickname",
        "autopick",
        "--LoG",
        "--LoG_diam_min",
        str(MIN_D_A),
        "--LoG_diam_max",
        str(MAX_D_A),
        "--angpix",
        str(PIXEL_A),
        "--LoG_adjust_threshold",
        str(adjust),
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=folder, check=False, capture_output=True)  # exits 1 without gs (PDF)
    elapsed = time.perf_counter() - t0
    picks = {}
    for star in out.glob("Micrographs/*_autopick.star"):
        table = starfile.read(star)
        if isinstance(table, dict):
            table = next(iter(table.values()), None)
        name = f"Micrographs/{star.name.replace('_autopick.star', '.mrc')}"
        if table is None or len(table) == 0:
            picks[name] = torch.zeros(0, 2, dtype=torch.float64)
            continue
        xy = np.stack([table["rlnCoordinateX"], table["rlnCoordinateY"]], -1)
        picks[name] = torch.tensor(xy, dtype=torch.float64)
    return picks, elapsed


def run_cryostack(
    folder: Path, truth: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[float]]:
    picks, times = {}, []
    for name in truth:
        t0 = time.perf_counter()
        image, _ = read_mrc(folder / name)
        found = pick_blobs(
            torch.from_numpy(np.array(image)), MIN_D_A / PIXEL_A, MAX_D_A / PIXEL_A, floor=THRESHOLD
        )
        times.append(time.perf_counter() - t0)
        picks[name] = found.above(THRESHOLD).positions_px
    return picks, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-micrographs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("relion_autopick") is None:
        raise SystemExit("relion_autopick is not installed")
    torch.set_num_threads(args.threads)
    n = args.n_micrographs
    with tempfile.TemporaryDirectory(prefix="bench_picking_") as tmp:
        folder = Path(tmp)
        truth = simulate(folder, n, args.seed)
        run_cryostack(folder, dict(list(truth.items())[:1]))  # warm-up
        relion_times, ours_times = [], []
        relion_picks: dict[str, torch.Tensor] = {}
        ours: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):
            relion_picks, elapsed = run_relion(folder, 0.0)
            relion_times.append(elapsed / n)
            ours, times = run_cryostack(folder, truth)
            ours_times.append(statistics.median(times))
        sweep = {}
        for adjust in (1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0):
            sweep[adjust] = pooled(run_relion(folder, adjust)[0], truth)
        best_adjust = max(sweep, key=lambda a: sweep[a][0])
        load = os.getloadavg()[0]

    rows = [
        (
            "relion_autopick --LoG (default)",
            pooled(relion_picks, truth),
            statistics.median(relion_times),
        ),
        (
            f"relion_autopick --LoG (adjust {best_adjust:g}, oracle)",
            sweep[best_adjust],
            statistics.median(relion_times),
        ),
        (
            f"cryostack pick_blobs (threshold {THRESHOLD:g})",
            pooled(ours, truth),
            statistics.median(ours_times),
        ),
    ]
    print(
        f"{n} micrographs 1024x1024 @ {PIXEL_A} Å/px, 40 TRPV1 each, SNR 0.05; cryostack "
        f"torch threads {args.threads}; RELION single process; load average {load:.1f}; "
        f"{args.repeats} repeats"
    )
    print(f"{'method':<48} {'F1':>6} {'prec':>6} {'recall':>6} {'s/mic':>8}")
    for label, (f1, precision, recall), seconds in rows:
        print(f"{label:<48} {f1:6.3f} {precision:6.3f} {recall:6.3f} {seconds:8.3f}")
    ours_f1, ours_t = rows[2][1][0], rows[2][2]
    print(
        f"F1 cryostack / RELION default: {ours_f1 / max(rows[0][1][0], 1e-9):.2f}; "
        f"/ RELION oracle-tuned: {ours_f1 / max(rows[1][1][0], 1e-9):.2f}"
    )
    print(f"time RELION / cryostack: {rows[0][2] / ours_t:.2f}x")


if __name__ == "__main__":
    main()
