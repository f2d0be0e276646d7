"""Benchmark of item-set storage (cryostack.core.sets) against the core platform's targets.

Targets: a set of 1,000,000 particles with 30 columns writes in < 2 s, and one page of 100 rows
sorted by a column reads in < 100 ms. Run::

    .venv/bin/python benchmarks/bench_sets.py [--rows 1000000] [--repeats 5] [--dir /tmp]

Prints one line per measurement (median over repeats) with the target and PASS/FAIL.
"cold (new process)" is the first read_page call of a fresh Python process, file in the OS page
cache (the usual case: a set just written or recently viewed); "cold (disk)" also evicts the
file from the page cache first (posix_fadvise DONTNEED, Linux), so it includes disk reads; it is
reported for information. "warm" repeats the call in the same process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from cryostack.core.datamodel import ItemSet, OpticsGroup, SetKind
from cryostack.core.sets import read_page, read_set, set_content_hash, write_set

WRITE_TARGET_S = 2.0
PAGE_TARGET_S = 0.100
PAGE_ROWS = 100


def _strings(template: str, codes: np.ndarray, n_distinct: int) -> pa.Array:
    """A string column with repeats: ``template.format(code)`` for each code."""
    dictionary = pa.array([template.format(i) for i in range(n_distinct)], pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), dictionary).cast(pa.string())


def particle_table(n_rows: int, seed: int = 0) -> pa.Table:
    """A realistic 30-column particle table: 200 particles per micrograph, per-micrograph CTF."""
    rng = np.random.default_rng(seed)
    n_mics = max(1, n_rows // 200)
    mic = np.sort(rng.integers(0, n_mics, n_rows)).astype(np.int32)
    mic_defocus = rng.uniform(8000.0, 30000.0, n_mics).round(2)  # ties: shared per micrograph
    mic_astig = rng.uniform(50.0, 800.0, n_mics)
    f64 = pa.float64()
    columns: dict[str, pa.Array] = {
        "image_path": _strings(
            "Extract/job012/Movies/FoilHole_{:08d}_Data_fractions.mrcs", mic, n_mics
        ),
        "image_index": pa.array(np.arange(n_rows) % 200, pa.int64()),
        "micrograph_name": _strings(
            "MotionCorr/job003/Movies/FoilHole_{:08d}_Data_fractions.mrc", mic, n_mics
        ),
        "micrograph_path": _strings("/data/session_42/MotionCorr/FoilHole_{:08d}.mrc", mic, n_mics),
        "coord_x_px": pa.array(rng.uniform(0, 4096, n_rows), f64),
        "coord_y_px": pa.array(rng.uniform(0, 4096, n_rows), f64),
        "optics_group": pa.array(1 + mic % 4, pa.int32()),
        "defocus_u_A": pa.array(mic_defocus[mic], f64),
        "defocus_v_A": pa.array(mic_defocus[mic] - mic_astig[mic], f64),
        "defocus_angle_deg": pa.array(rng.uniform(-180, 180, n_mics)[mic], f64),
        "phase_shift_deg": pa.array(np.zeros(n_rows), f64),
        "ctf_bfactor_A2": pa.array(np.zeros(n_rows), f64),
        "ctf_scale": pa.array(np.ones(n_rows), f64),
        "ctf_fit_resolution_A": pa.array(rng.uniform(2.5, 8.0, n_mics)[mic], f64),
        "ctf_fit_score": pa.array(rng.uniform(0.01, 0.3, n_mics)[mic], f64),
        "rot_deg": pa.array(rng.uniform(-180, 180, n_rows), f64),
        "tilt_deg": pa.array(np.degrees(np.arccos(rng.uniform(-1, 1, n_rows))), f64),
        "psi_deg": pa.array(rng.uniform(-180, 180, n_rows), f64),
        "origin_x_A": pa.array(rng.normal(0, 2, n_rows), f64),
        "origin_y_A": pa.array(rng.normal(0, 2, n_rows), f64),
        "random_subset": pa.array(1 + np.arange(n_rows) % 2, pa.int32()),
        "class_id": pa.array(rng.integers(1, 51, n_rows), pa.int32()),
        "norm_correction": pa.array(rng.normal(1, 0.05, n_rows), f64),
        "log_likelihood": pa.array(rng.normal(2.5e5, 1e3, n_rows), f64),
        "max_probability": pa.array(rng.uniform(0, 1, n_rows), f64),
        "group_number": pa.array(1 + mic % 100, pa.int32()),
        "n_significant_samples": pa.array(rng.integers(1, 5000, n_rows), pa.int32()),
        "autopick_fom": pa.array(rng.uniform(0, 10, n_rows), f64),
        "particle_id": pa.array(np.arange(n_rows), pa.int64()),
        "image_weight": pa.array(rng.uniform(0.5, 1, n_rows), f64),
    }
    return pa.table(columns)


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median wall time (s) of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def evict(path: Path) -> None:
    """Drop a file's pages from the OS page cache (Linux; a no-op elsewhere)."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_CHILD = """
import os, sys, time
start = time.perf_counter()
import pandas  # pyarrow imports it lazily on first conversion; every cryostack process has it
import_s = time.perf_counter() - start
from cryostack.core.sets import read_page
path, column, descending, offset, drop = sys.argv[1:]
if drop == "1" and hasattr(os, "posix_fadvise"):
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
start = time.perf_counter()
page = read_page(path, sort_by=column, descending=descending == "1", offset=int(offset), limit=100)
print(time.perf_counter() - start, page.num_rows, import_s)
"""


def cold_page_s(
    path: Path, column: str, descending: bool, offset: int, drop: bool, repeats: int
) -> tuple[float, float]:
    """Median time of the first read_page call in a new process, and of its pandas import."""
    times, imports = [], []
    for _ in range(repeats):
        args = [path, column, "1" if descending else "0", offset, "1" if drop else "0"]
        command = [sys.executable, "-c", _CHILD, *map(str, args)]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        seconds, rows, import_s = out.stdout.split()
        assert int(rows) == PAGE_ROWS
        times.append(float(seconds))
        imports.append(float(import_s))
    return statistics.median(times), statistics.median(imports)


def report(name: str, seconds: float, target: float | None) -> None:
    verdict = "info" if target is None else ("PASS" if seconds < target else "FAIL")
    target_text = "" if target is None else f"< {target * 1e3:.0f} ms"
    print(f"{name:<58} {seconds * 1e3:>9.1f} ms  {target_text:>10}  {verdict}")


def bench_pages(path: Path, n_rows: int, repeats: int) -> None:
    """Pages sorted by a float column with ties (defocus) and one without (log-likelihood)."""
    offsets = {"first": 0, "middle": n_rows // 2, "last": n_rows - PAGE_ROWS}
    import_times = []
    for column in ("defocus_u_A", "log_likelihood"):
        for descending in (False, True):
            for where, offset in offsets.items():
                label = f"page {column} {'desc' if descending else 'asc'} {where}"
                if column == "defocus_u_A":
                    cold, import_s = cold_page_s(path, column, descending, offset, False, 3)
                    report(f"{label}, cold (new process)", cold, PAGE_TARGET_S)
                    disk, _ = cold_page_s(path, column, descending, offset, True, 3)
                    report(f"{label}, cold (disk)", disk, None)
                    import_times.append(import_s)
                kwargs = {"sort_by": column, "descending": descending, "offset": offset}
                warm = timed(lambda kw=kwargs: read_page(path, **kw), repeats)  # type: ignore[misc]
                report(f"{label}, warm", warm, PAGE_TARGET_S)
    once = statistics.median(import_times)
    report("(once per new process: pyarrow's lazy import of pandas)", once, None)


def bench_other(path: Path, n_rows: int, repeats: int) -> None:
    """Filtered, string-sorted and unsorted pages; whole-set read and hash (information)."""
    terms = [("defocus_u_A", ">", 15000.0), ("class_id", "in", [3, 7, 11])]
    filtered = timed(
        lambda: read_page(path, sort_by="log_likelihood", filter=terms, offset=1000), repeats
    )
    report("page log_likelihood, filter defocus>15000 & 3 classes", filtered, PAGE_TARGET_S)
    by_name = timed(lambda: read_page(path, sort_by="micrograph_name", offset=n_rows // 2), repeats)
    report("page micrograph_name (string sort) middle, warm", by_name, None)
    report(
        "page unsorted middle, warm",
        timed(lambda: read_page(path, offset=n_rows // 2), repeats),
        None,
    )
    whole = timed(lambda: read_set(path).table["defocus_u_A"].to_numpy().sum(), repeats)
    report("read_set (memory-mapped) + sum of one column", whole, None)
    report(
        "set_content_hash (sha256 of the file)",
        timed(lambda: set_content_hash(path), repeats),
        None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="folder for the set file")
    args = parser.parse_args()
    print(f"cpus {os.cpu_count()}, load average at start {os.getloadavg()}")
    table = particle_table(args.rows)
    optics = [OpticsGroup(optics_group=g, name=f"og{g}", pixel_size_A=1.06) for g in range(1, 5)]
    item_set = ItemSet(SetKind.PARTICLES, table, optics, {"source": "bench_sets.py"})
    print(
        f"{args.rows:,} rows x {table.num_columns} columns, {table.nbytes / 1e6:.0f} MB in memory"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "particles.cset"
        write_s = timed(lambda: write_set(item_set, path), args.repeats)
        report("write_set (incl. fsync and sha256)", write_s, WRITE_TARGET_S)
        print(f"file size {path.stat().st_size / 1e6:.0f} MB")
        bench_pages(path, args.rows, args.repeats)
        bench_other(path, args.rows, args.repeats)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
