"""``cryostack demo``: a project running the longest pipeline cryostack has, on simulated data.

Every stage is an ordinary run (recorded with its parameters, seed and provenance), and every
result is scored against the simulator's ground truth, so the demo doubles as an end-to-end check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cryostack.cli.common import fail, wait_with_progress
from cryostack.core.project import FINISHED, InputLink, Project
from cryostack.core.registry import protocol_classes
from cryostack.execution.launch import launch


@dataclass(frozen=True)
class Stage:
    """One run of the demo: inputs name earlier stages as ``(stage, output)``."""

    name: str
    protocol: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)


MICROGRAPH_BRANCH = (
    Stage(
        "simulate movies",
        "simulate",
        {
            "kind": "movies",
            "n_micrographs": 3,
            "micrograph_size_px": 1024,
            "particles_per_micrograph": 40,
            "pixel_size_A": 3.0,
            "box_size_px": 64,
            "n_frames": 20,
            "dose_per_frame_e_A2": 1.0,
            # At the default SNR 0.05, 40 particles per 1024² frame give frames too weak to align
            # (peak z below the noise level) and Thon rings too weak for CTF fitting (issue 4).
            "snr": 1.0,
        },
    ),
    Stage(
        "align movies",
        "motion-correction",
        {"threads": 1},
        {"movies": ("simulate movies", "movies")},
    ),
    Stage(
        "estimate CTF",
        "ctf-estimation",
        {"max_resolution_A": 7.0, "threads": 1},
        {"micrographs": ("align movies", "micrographs")},
    ),
    Stage(
        "score CTF",
        "score",
        {},
        {
            "candidate": ("estimate CTF", "micrographs"),
            "truth": ("simulate movies", "truth_micrographs"),
        },
    ),
    Stage(
        "pick particles",
        "pick-particles",
        {"min_diameter_A": 100.0, "max_diameter_A": 160.0},
        {"micrographs": ("estimate CTF", "micrographs")},
    ),
    Stage(
        "score picks",
        "score",
        {},
        {
            "candidate": ("pick particles", "coordinates"),
            "truth": ("simulate movies", "truth_coordinates"),
        },
    ),
    Stage(
        "extract particles",
        "extract-particles",
        {"box_size_px": 64},
        {
            "micrographs": ("estimate CTF", "micrographs"),
            "coordinates": ("pick particles", "coordinates"),
        },
    ),
)

PARTICLE_BRANCH = (
    Stage(
        "simulate particles",
        "simulate",
        {
            "kind": "particles",
            "n_particles": 4000,
            "particles_per_chunk": 1000,
            "pixel_size_A": 4.0,
            "box_size_px": 48,
            "snr": 0.05,
        },
    ),
    Stage(
        "reconstruct",
        "reconstruct",
        {"chunk_size": 1000},
        {"particles": ("simulate particles", "particles")},
    ),
    Stage("post-process", "postprocess", {}, {"volume": ("reconstruct", "volume")}),
    Stage("local resolution", "local-resolution", {}, {"volume": ("reconstruct", "volume")}),
    Stage(
        "score map vs truth",
        "score",
        {"symmetry": "C4"},
        {"candidate": ("reconstruct", "volume"), "truth": ("simulate particles", "volume")},
    ),
)

STAGES = MICROGRAPH_BRANCH + PARTICLE_BRANCH

# The headline figures of each kind of score report.
SUMMARY_KEYS = (
    "median_abs_defocus_error_A",
    "mean_angle_error_deg",
    "precision",
    "recall",
    "f1",
    "resolution_fsc05_A",
    "resolution_fsc0143_A",
)


def run_demo(directory: Path, console: Console, workers: int | None = None) -> None:
    missing = sorted({s.protocol for s in STAGES} - set(protocol_classes()))
    if missing:
        fail(f"the demo needs protocols that are not installed: {', '.join(missing)}")
    project = Project.create(directory, name="cryostack demo")
    console.print(f"[bold]cryostack demo[/] in {project.root}")
    ids: dict[str, int] = {}
    for stage in STAGES:
        inputs = {
            name: [InputLink(ids[source], output)]
            for name, (source, output) in stage.inputs.items()
        }
        run_id = project.create_run(stage.protocol, stage.params, inputs, label=stage.name, seed=1)
        ids[stage.name] = run_id
        console.print(f"\n[bold]{stage.name}[/] ({stage.protocol}, run {run_id})")
        launch(project, run_id, workers)
        if wait_with_progress(project, run_id, console) != FINISHED:
            fail(f"demo stage {stage.name!r} failed; see `cryostack log {run_id} -p {directory}`")
    print_summary(project, ids, console)


def print_summary(project: Project, ids: dict[str, int], console: Console) -> None:
    table = Table("run", "stage", "protocol", "seconds", "result")
    for name, run_id in ids.items():
        run = project.run(run_id)
        seconds = (
            (run.finished_at - run.started_at).total_seconds()
            if run.finished_at and run.started_at
            else 0.0
        )
        table.add_row(str(run_id), name, run.protocol, f"{seconds:.1f}", _result_text(run))
    console.print(table)
    console.print(
        f"project: {project.root}  (`cryostack runs -p {project.root}`, "
        f"`cryostack show RUN -p {project.root}`)"
    )


def _result_text(run: Any) -> str:
    parts = []
    for out in run.outputs:
        if out.name == "report":
            summary = out.meta.get("summary", {})
            shown = [k for k in SUMMARY_KEYS if k in summary] or list(summary)
            parts.append(", ".join(f"{k}={_fmt(summary[k])}" for k in shown))
        elif out.name == "volume" and "resolution_A" in out.meta:
            parts.append(f"gold-standard FSC 0.143: {out.meta['resolution_A']:.1f} Å")
        elif out.name == "local_resolution":
            meta = out.meta
            parts.append(
                f"local resolution median {meta['median_A']:.1f} Å "
                f"({meta['min_A']:.1f}-{meta['max_A']:.1f})"
            )
        elif out.n_items is not None and not out.name.startswith("truth"):
            parts.append(f"{out.name}: {out.n_items}")
    return "; ".join(parts)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
