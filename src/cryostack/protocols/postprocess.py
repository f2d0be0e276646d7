"""Post-process a map from its two half maps: mask-corrected FSC, sharpening, final filtering.

The counterpart of ``relion_postprocess`` (see :mod:`cryostack.em.postprocess` for the method):
the resolution comes from the phase-randomisation-corrected FSC of the masked half maps; the
average of the half maps is FSC-weighted, sharpened with a B-factor (fitted on a Guinier plot
from 10 Å to the final resolution, or given) and low-pass filtered at the final resolution.
Without a mask input, a mask is made from the average map (low-pass 15 Å, threshold, extend,
soft edge, like ``relion_mask_create``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryostack.core.datamodel import FileKind
from cryostack.core.protocol import (
    InputRef,
    InputSpec,
    OutputSpec,
    OutputValue,
    Params,
    Protocol,
    RunContext,
    StepContext,
    StepSpec,
    atomic_path,
    param,
)
from cryostack.em.postprocess import PostprocessResult, automatic_mask, postprocess_half_maps
from cryostack.io.mrc import read_mrc, write_mrc

STEP = "postprocess"
FILES = ("postprocess.mrc", "postprocess_masked.mrc", "mask.mrc", "fsc.json")


class PostprocessParams(Params):
    mask_threshold: float | None = param(
        None,
        help="automatic mask: density threshold of the low-passed average map "
        "(empty: 15 % of its maximum); not used when a mask is given",
        group="Mask",
    )
    mask_low_pass_A: float = param(
        15.0, help="automatic mask: low-pass before thresholding", unit="Å", gt=0, group="Mask"
    )
    mask_extend_px: float = param(
        3.0, help="automatic mask: extend the thresholded mask", unit="px", ge=0, group="Mask"
    )
    mask_soft_edge_px: float = param(
        6.0, help="automatic mask: width of the raised-cosine edge", unit="px", ge=0, group="Mask"
    )
    bfactor_A2: float | None = param(
        None,
        help="B-factor to apply, negative sharpens (empty: fit it on the Guinier plot)",
        unit="Å²",
        group="Sharpening",
    )
    bfactor_fit_low_A: float = param(
        10.0, help="lowest resolution of the B-factor fit", unit="Å", gt=0, group="Sharpening"
    )
    bfactor_fit_high_A: float | None = param(
        None,
        help="highest resolution of the B-factor fit (empty: the final resolution)",
        unit="Å",
        gt=0,
        group="Sharpening",
    )
    fsc_weighting: bool = param(
        True, help="weight shells by sqrt(2 FSC / (1 + FSC))", group="Sharpening"
    )
    low_pass_A: float | None = param(
        None,
        help="low-pass filter of the final map (empty: the final resolution; 0: none)",
        unit="Å",
        ge=0,
        group="Sharpening",
    )
    randomise_below_fsc: float = param(
        0.8,
        help="randomise phases beyond the shell where the unmasked FSC drops below this",
        gt=0,
        lt=1,
        group="Advanced",
    )
    threads: int = param(2, help="CPU threads", ge=1, le=256, group="Compute")


def half_map_paths(ref: InputRef) -> list[str]:
    """The two half maps of a Volume output (meta ``half_maps``); [] when it has none."""
    paths = ref.meta.get("half_maps") or []
    return [str(p) for p in paths] if len(paths) == 2 else []


def missing_half_maps(ref: InputRef) -> list[str]:
    if half_map_paths(ref):
        return []
    return [
        f"run {ref.source_run_id}'s {ref.source_output!r} has no half maps: import the map "
        "with its two half maps, or use a reconstruction's volume"
    ]


def read_half_maps(ctx: RunContext, device: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The input volume's half maps as tensors on ``device`` and their pixel size (Å)."""
    ref = ctx.input("volume")
    paths = [ctx.path(p) for p in half_map_paths(ref)]
    if not paths:
        raise ValueError(missing_half_maps(ref)[0])
    maps = []
    pixel: float | None = None
    for path in paths:
        data, info = read_mrc(path, pixel_size_A=ref.meta.get("pixel_size_A"))
        if data.ndim != 3 or len(set(data.shape)) != 1:
            raise ValueError(f"{path}: half map of shape {data.shape} is not a cubic 3D map")
        maps.append(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(device))
        pixel = pixel if pixel is not None else info.pixel_size_A
    if maps[0].shape != maps[1].shape:
        raise ValueError(
            f"half maps differ in shape: {paths[0]} {tuple(maps[0].shape)} vs "
            f"{paths[1]} {tuple(maps[1].shape)}"
        )
    if not pixel:
        raise ValueError(f"{paths[0]}: no pixel size in the header or the volume's metadata")
    return maps[0], maps[1], float(pixel)


def read_mask(ctx: RunContext, shape: tuple[int, ...], device: str) -> torch.Tensor:
    """The bound mask input as a tensor; checks its shape and that its values lie in [0, 1]."""
    path = ctx.path(ctx.input("mask").path)
    data, _ = read_mrc(path)
    if tuple(data.shape) != shape:
        raise ValueError(f"{path}: mask of shape {data.shape} differs from the half maps' {shape}")
    low, high = float(data.min()), float(data.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"{path}: mask values span [{low:g}, {high:g}]; a mask must be in [0, 1]")
    return torch.from_numpy(np.clip(data, 0.0, 1.0).astype(np.float32)).to(device)


def _floats(x: torch.Tensor) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in x.cpu().double().tolist()]


def fsc_report(result: PostprocessResult) -> dict[str, Any]:
    """JSON-ready curves (per shell), resolution and Guinier plot of a post-processing result."""
    freqs = result.frequencies_invA.cpu().double()
    curves = result.fsc
    report: dict[str, Any] = {
        "threshold": 0.143,
        "resolution_A": result.resolution_A,
        "resolution_shell": result.resolution_shell,
        "used_mask": curves.used_mask,
        "randomise_from_shell": curves.randomise_from_shell,
        "randomise_from_A": (
            float(1.0 / freqs[curves.randomise_from_shell])
            if curves.randomise_from_shell > 0
            else None
        ),
        "shell": list(range(len(freqs))),
        "frequency_invA": freqs.tolist(),
        "resolution_A_per_shell": [None, *(1.0 / freqs[1:]).tolist()],
        "fsc": _floats(curves.corrected),
        "fsc_corrected": _floats(curves.corrected),
        "fsc_unmasked": _floats(curves.unmasked),
        "fsc_masked": _floats(curves.masked) if curves.masked is not None else None,
        "fsc_randomised": _floats(curves.randomised) if curves.randomised is not None else None,
    }
    ln = result.guinier_ln_amplitude
    report["guinier"] = {
        "s2_invA2": _floats(result.guinier_s2_invA2),
        "ln_amplitude_original": _floats(ln[0]),
        "ln_amplitude_weighted": _floats(ln[1]),
        "ln_amplitude_sharpened": _floats(ln[2]),
        "fit_range_A": list(result.guinier_fit_range_A),
        "fitted": result.bfactor_fitted,
        "intercept": result.guinier_intercept if result.bfactor_fitted else None,
        "bfactor_A2": result.bfactor_A2,
    }
    return report


def _write_map(path: Path, volume: torch.Tensor, pixel_size_A: float) -> None:
    write_mrc(path, volume.cpu().numpy().astype(np.float32), pixel_size_A=pixel_size_A)


class Postprocess(Protocol):
    id = "postprocess"
    name = "Post-process (mask, resolution, sharpening)"
    category = "3D"
    help = (
        "Estimates the resolution of a map from its two half maps with a mask, correcting the "
        "FSC for the mask by phase randomisation, and sharpens the map: FSC weighting, a "
        "B-factor from the Guinier plot (or given) and a low-pass filter at the final "
        "resolution. Without a mask input a soft mask is made from the map."
    )
    citations = (
        "Chen S et al. (2013) High-resolution noise substitution to measure overfitting and "
        "validate resolution in 3D structure determination by single particle electron "
        "cryomicroscopy. Ultramicroscopy 135:24-35.",
        "Rosenthal PB, Henderson R (2003) Optimal determination of particle orientation, "
        "absolute hand, and contrast loss in single-particle electron cryomicroscopy. "
        "J Mol Biol 333:721-745.",
    )
    Params = PostprocessParams
    inputs = {
        "volume": InputSpec((FileKind.VOLUME,), "map with its two half maps"),
        "mask": InputSpec((FileKind.MASK,), "solvent mask (default: made from the map)", True),
    }
    outputs = {
        "volume": OutputSpec(FileKind.VOLUME, "sharpened map (masked map as companion)"),
        "fsc": OutputSpec(FileKind.FSC_CURVE, "unmasked, masked, randomised, corrected FSC"),
        "mask": OutputSpec(FileKind.MASK, "the mask used"),
    }

    def check(self, ctx: RunContext) -> list[str]:
        return missing_half_maps(ctx.input("volume"))

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        assert isinstance(ctx.params, PostprocessParams)
        return [StepSpec(key=STEP, threads=ctx.params.threads)]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        params = ctx.params
        assert isinstance(params, PostprocessParams)
        half1, half2, pixel = read_half_maps(ctx, ctx.device)
        if ctx.has_input("mask"):
            mask = read_mask(ctx, tuple(half1.shape), ctx.device)
            ctx.log(f"mask from run {ctx.input('mask').source_run_id}")
        else:
            mask = automatic_mask(
                0.5 * (half1 + half2),
                pixel,
                threshold=params.mask_threshold,
                extend_px=params.mask_extend_px,
                soft_edge_px=params.mask_soft_edge_px,
                low_pass_A=params.mask_low_pass_A,
            )
            ctx.log(f"automatic mask: {float(mask.mean()) * 100:.1f} % of the box")
        generator = torch.Generator(device=half1.device).manual_seed(ctx.step_seed)
        result = postprocess_half_maps(
            half1,
            half2,
            pixel,
            mask,
            bfactor_A2=params.bfactor_A2,
            fit_low_resolution_A=params.bfactor_fit_low_A,
            fit_high_resolution_A=params.bfactor_fit_high_A,
            low_pass_A=params.low_pass_A,
            fsc_weighting=params.fsc_weighting,
            randomise_below_fsc=params.randomise_below_fsc,
            generator=generator,
        )
        if not result.fsc.used_mask:
            ctx.log(
                "warning: the unmasked FSC reaches further than the mask-corrected one (does "
                "the mask cut density?): the unmasked FSC is used"
            )
        work = ctx.work_dir
        _write_map(work / "postprocess.mrc", result.sharpened, pixel)
        _write_map(work / "postprocess_masked.mrc", result.sharpened * mask, pixel)
        _write_map(work / "mask.mrc", mask, pixel)
        (work / "fsc.json").write_text(json.dumps(fsc_report(result), indent=1) + "\n")
        ctx.log(
            f"final resolution {result.resolution_A:.2f} Å (shell {result.resolution_shell}); "
            f"B-factor {result.bfactor_A2:.1f} Å²"
            + (" (Guinier fit)" if result.bfactor_fitted else " (given)")
            + f"; low-pass {result.low_pass_A:.2f} Å"
        )
        return {
            "pixel_size_A": pixel,
            "box_size_px": int(half1.shape[-1]),
            "resolution_A": result.resolution_A,
            "bfactor_A2": result.bfactor_A2,
            "low_pass_A": result.low_pass_A,
            "n_shells": int(result.frequencies_invA.shape[0]),
        }

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        result = results[STEP]
        paths = {}
        for name in FILES:
            paths[name] = ctx.output_path(name)
            with atomic_path(paths[name]) as tmp:
                tmp.write_bytes((ctx.step_dir(STEP) / name).read_bytes())
        rel = {name: ctx.relative(p) for name, p in paths.items()}
        common = {"pixel_size_A": result["pixel_size_A"], "box_size_px": result["box_size_px"]}
        volume_meta = {
            **common,
            "resolution_A": result["resolution_A"],
            "bfactor_A2": result["bfactor_A2"],
            "low_pass_A": result["low_pass_A"],
            "masked_map": rel["postprocess_masked.mrc"],
            "companions": [rel["postprocess_masked.mrc"]],
            "half_maps": half_map_paths(ctx.input("volume")),
        }
        return {
            "volume": OutputValue(FileKind.VOLUME, rel["postprocess.mrc"], None, volume_meta),
            "fsc": OutputValue(
                FileKind.FSC_CURVE,
                rel["fsc.json"],
                result["n_shells"],
                {"resolution_A": result["resolution_A"]},
            ),
            "mask": OutputValue(FileKind.MASK, rel["mask.mrc"], None, common),
        }
