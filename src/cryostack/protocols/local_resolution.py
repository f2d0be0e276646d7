"""Local resolution of a map from its two half maps (windowed FSC), as a map of Å per voxel.

See :mod:`cryostack.em.local_resolution` for the method. The output MRC holds the local
resolution (Å) of every voxel, for colouring the map's surface; its metadata carry a histogram
of the values inside the mask (mask >= 0.5) and their median. Without a mask input a soft mask
is made from the map as in the ``postprocess`` protocol.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cryostack.core.datamodel import FileKind
from cryostack.core.protocol import (
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
from cryostack.em.local_resolution import local_resolution, resolution_histogram
from cryostack.em.postprocess import automatic_mask
from cryostack.io.mrc import write_mrc
from cryostack.protocols.postprocess import missing_half_maps, read_half_maps, read_mask

STEP = "local-resolution"
FILE = "local_resolution.mrc"


class LocalResolutionParams(Params):
    window_px: int = param(20, help="edge of the cubic FSC window", unit="px", ge=8, le=256)
    window_A: float | None = param(
        None, help="window edge in Å (overrides window_px when given)", unit="Å", gt=0
    )
    step_px: int = param(3, help="spacing of the window centres", unit="px", ge=1, le=64)
    threshold: float = param(
        0.143,
        help="FSC threshold of the local resolution (0.143, or 0.5: more cautious)",
        gt=0,
        lt=1,
    )
    pad_factor: int = param(
        1,
        help="zero padding of each window (finer shell sampling, slower)",
        ge=1,
        le=4,
        group="Advanced",
    )
    n_bins: int = param(20, help="bins of the histogram", ge=2, le=200, group="Advanced")
    batch_size: int = param(512, help="windows per batched FFT", ge=1, le=65536, group="Compute")
    threads: int = param(2, help="CPU threads", ge=1, le=256, group="Compute")
    mask_threshold: float | None = param(
        None,
        help="automatic mask threshold (empty: 15 % of the low-passed map's maximum)",
        group="Mask",
    )
    mask_extend_px: float = param(
        3.0, help="automatic mask: extension", unit="px", ge=0, group="Mask"
    )
    mask_soft_edge_px: float = param(
        6.0, help="automatic mask: soft edge", unit="px", ge=0, group="Mask"
    )


class LocalResolution(Protocol):
    id = "local-resolution"
    name = "Local resolution"
    category = "3D"
    help = (
        "Estimates the resolution in every part of a map from its two half maps: the FSC of "
        "the half maps inside a small soft window moved over the map (inside the mask). The "
        "result is a map of resolution (Å) per voxel for colouring the surface, with a "
        "histogram of the values."
    )
    citations = (
        "Cardone G, Heymann JB, Steven AC (2013) One number does not fit all: mapping local "
        "variations in resolution in cryo-EM reconstructions. J Struct Biol 184:226-236.",
    )
    Params = LocalResolutionParams
    inputs = {
        "volume": InputSpec((FileKind.VOLUME,), "map with its two half maps"),
        "mask": InputSpec((FileKind.MASK,), "mask of the region to measure", True),
    }
    outputs = {
        "local_resolution": OutputSpec(FileKind.LOCAL_RESOLUTION, "local resolution, Å per voxel")
    }

    def check(self, ctx: RunContext) -> list[str]:
        return missing_half_maps(ctx.input("volume"))

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        assert isinstance(ctx.params, LocalResolutionParams)
        return [StepSpec(key=STEP, threads=ctx.params.threads)]

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        params = ctx.params
        assert isinstance(params, LocalResolutionParams)
        half1, half2, pixel = read_half_maps(ctx, ctx.device)
        n = int(half1.shape[-1])
        if ctx.has_input("mask"):
            mask = read_mask(ctx, tuple(half1.shape), ctx.device)
        else:
            mask = automatic_mask(
                0.5 * (half1 + half2),
                pixel,
                threshold=params.mask_threshold,
                extend_px=params.mask_extend_px,
                soft_edge_px=params.mask_soft_edge_px,
            )
        window = params.window_px if params.window_A is None else round(params.window_A / pixel)
        window = min(max(window, 8), n)
        result = local_resolution(
            half1,
            half2,
            pixel,
            mask=mask,
            window_px=window,
            step_px=params.step_px,
            threshold=params.threshold,
            pad_factor=params.pad_factor,
            batch_size=params.batch_size,
        )
        inside = result.resolution_A[mask >= 0.5]
        if inside.numel() == 0:
            inside = result.centre_resolution_A
        edges, counts = resolution_histogram(inside, params.n_bins)
        volume = result.resolution_A.cpu().numpy().astype(np.float32)
        write_mrc(ctx.work_dir / FILE, volume, pixel_size_A=pixel)
        median = float(inside.median())
        ctx.log(
            f"{result.centres_zyx.shape[0]} windows of {window} px every {params.step_px} px: "
            f"local resolution {float(inside.min()):.2f}-{float(inside.max()):.2f} Å, "
            f"median {median:.2f} Å"
        )
        return {
            "pixel_size_A": pixel,
            "box_size_px": n,
            "window_px": window,
            "step_px": params.step_px,
            "threshold": params.threshold,
            "n_windows": int(result.centres_zyx.shape[0]),
            "median_A": median,
            "min_A": float(inside.min()),
            "max_A": float(inside.max()),
            "histogram": {"edges_A": edges.tolist(), "counts": counts.tolist()},
        }

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        meta = dict(results[STEP])
        target = ctx.output_path(FILE)
        with atomic_path(target) as tmp:
            tmp.write_bytes((ctx.step_dir(STEP) / FILE).read_bytes())
        return {
            "local_resolution": OutputValue(
                FileKind.LOCAL_RESOLUTION, ctx.relative(target), None, meta
            )
        }
