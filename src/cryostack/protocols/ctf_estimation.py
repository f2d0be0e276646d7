"""``ctf-estimation``: fit the CTF of every micrograph (astigmatic defocus, optional phase shift).

One step per micrograph (:func:`cryostack.em.ctf_estimation.estimate_ctf`; on a GPU when the
executor has one, else with ``threads`` CPU threads): the amplitude
spectrum of tiles is fitted over a resolution band; the result fills the CTF columns of the
micrograph set (``defocus_u_A`` >= ``defocus_v_A``, ``defocus_angle_deg`` from the x axis in
[0, 180), ``phase_shift_deg``, ``ctf_fit_resolution_A``, ``ctf_fit_score``) and a diagnostic PNG
per micrograph (spectrum in the left half, fitted CTF² in the right half, frequency 0 at the
centre) is referenced by the ``ctf_diagnostic_path`` column. A micrograph that cannot be fitted
(empty, constant, smaller than a tile, unreadable) fails alone, with a message naming its file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from cryostack.core.datamodel import ItemSet, SetKind
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
from cryostack.core.sets import write_set
from cryostack.em.ctf_estimation import (
    CtfFit,
    CtfSearchSettings,
    EmptyMicrographError,
    Optics,
    diagnostic_image,
    estimate_ctf,
)
from cryostack.io.mrc import read_mrc

SET_FILE = "micrographs.cset"
DIAGNOSTIC_COLUMN = "ctf_diagnostic_path"
_RESULT_COLUMNS = (
    "defocus_u_A",
    "defocus_v_A",
    "defocus_angle_deg",
    "phase_shift_deg",
    "ctf_fit_resolution_A",
    "ctf_fit_score",
)


class CtfEstimationParams(Params):
    tile_size_px: int = param(
        512, help="edge of the tiles whose spectra are averaged", unit="px", ge=64, le=4096
    )
    tile_overlap: float = param(
        0.0, help="fraction by which neighbouring tiles overlap", group="Advanced", ge=0, lt=1
    )
    min_resolution_A: float = param(
        30.0, help="lowest resolution fitted (inner edge of the band)", unit="Å", gt=0
    )
    max_resolution_A: float = param(
        5.0, help="highest resolution fitted (outer edge of the band)", unit="Å", gt=0
    )
    defocus_min_A: float = param(3000.0, help="smallest defocus searched", unit="Å", gt=0)
    defocus_max_A: float = param(50000.0, help="largest defocus searched", unit="Å", gt=0)
    defocus_step_A: float = param(100.0, help="step of the defocus search", unit="Å", gt=0)
    max_astigmatism_A: float = param(
        2000.0, help="largest astigmatism U - V searched", unit="Å", ge=0
    )
    fit_phase_shift: bool = param(False, help="fit a phase-plate phase shift")
    threads: int = param(2, help="CPU threads per micrograph", ge=1, le=64, group="Compute")


class CtfEstimation(Protocol):
    id = "ctf-estimation"
    name = "CTF estimation"
    category = "Preprocessing"
    help = (
        "Estimates the astigmatic defocus (and optionally a phase shift) of each micrograph from "
        "the averaged power spectrum of its tiles, with the resolution to which the fit holds, "
        "a fit score and a diagnostic image."
    )
    citations = (
        "Rohou A, Grigorieff N (2015) CTFFIND4: fast and accurate defocus estimation from "
        "electron micrographs. J Struct Biol 192:216-221",
    )
    Params = CtfEstimationParams
    inputs = {
        "micrographs": InputSpec(
            (SetKind.MICROGRAPHS,), "micrographs to fit", required_columns=("micrograph_path",)
        )
    }
    outputs = {
        "micrographs": OutputSpec(SetKind.MICROGRAPHS, "the micrographs with their CTF filled in")
    }

    def check(self, ctx: RunContext) -> list[str]:
        p = _params(ctx)
        problems = []
        if p.min_resolution_A <= p.max_resolution_A:
            problems.append(
                f"min_resolution_A ({p.min_resolution_A:g} Å) must be larger than "
                f"max_resolution_A ({p.max_resolution_A:g} Å)"
            )
        if p.defocus_max_A <= p.defocus_min_A:
            problems.append(
                f"defocus_max_A ({p.defocus_max_A:g}) must be larger than defocus_min_A "
                f"({p.defocus_min_A:g})"
            )
        if p.tile_size_px % 2:
            problems.append(f"tile_size_px must be even, got {p.tile_size_px}")
        return problems

    def plan(self, ctx: RunContext) -> list[StepSpec]:
        p = _params(ctx)
        micrographs = ctx.read_input_set("micrographs")
        optics = micrographs.optics_by_id()
        table = micrographs.table.to_pydict()
        steps = []
        for row, path in enumerate(table["micrograph_path"]):
            name = _name(table, row)
            group = optics[int(table["optics_group"][row])]
            payload = {
                "row": row,
                "path": path,
                "pixel_size_A": group.pixel_size_A,
                "voltage_kV": group.voltage_kV,
                "cs_mm": group.cs_mm,
                "amplitude_contrast": group.amplitude_contrast,
            }
            steps.append(
                StepSpec(key=name, item=name, payload=payload, threads=p.threads, gpu=True)
            )
        return steps

    def run_step(self, ctx: StepContext) -> dict[str, Any]:
        p = _params(ctx)
        payload = ctx.step.payload
        torch.set_num_threads(ctx.threads)
        path = ctx.path(payload["path"])
        image, _ = read_mrc(path)
        if image.ndim != 2:
            raise ValueError(f"{path}: expected one 2D micrograph, got an array of {image.shape}")
        h, w = image.shape
        if min(h, w) < p.tile_size_px:
            raise ValueError(
                f"{path}: the micrograph ({w}x{h} px) is smaller than a tile "
                f"({p.tile_size_px} px); lower tile_size_px"
            )
        optics = Optics(
            pixel_size_A=float(payload["pixel_size_A"]),
            voltage_kV=float(payload["voltage_kV"]),
            cs_mm=float(payload["cs_mm"]),
            amplitude_contrast=float(payload["amplitude_contrast"]),
        )
        settings = settings_from_params(p)
        micrograph = torch.tensor(image, device=ctx.device)  # a copy: the array may be read-only
        try:
            fit, amplitude = estimate_ctf(micrograph, optics, settings)
        except EmptyMicrographError as exc:
            raise ValueError(
                f"{path}: {str(exc).replace('micrograph 0 ', 'the micrograph ')}"
            ) from exc
        picture = diagnostic_image(amplitude, fit, optics, settings)[0]
        write_png_gray(ctx.work_dir / "ctf_diagnostic.png", _to_uint8(picture))
        result = fit_values(fit)
        ctx.log(
            f"U {result['defocus_u_A']:.0f} Å, V {result['defocus_v_A']:.0f} Å, angle "
            f"{result['defocus_angle_deg']:.1f}°, fit to {result['ctf_fit_resolution_A']:.1f} Å, "
            f"score {result['ctf_fit_score']:.3f}"
        )
        return result

    def finish(self, ctx: RunContext, results: dict[str, dict[str, Any]]) -> dict[str, OutputValue]:
        micrographs = ctx.read_input_set("micrographs")
        table = micrographs.table
        names = table.to_pydict()
        rows = [r for r in range(table.num_rows) if _name(names, r) in results]
        keys = [_name(names, r) for r in rows]
        table = table.take(pa.array(rows, pa.int64()))
        for column in _RESULT_COLUMNS:
            values = pa.array([float(results[k][column]) for k in keys], pa.float64())
            table = _set_column(table, column, values)
        pictures = [ctx.relative(ctx.step_dir(k) / "ctf_diagnostic.png") for k in keys]
        table = _set_column(table, DIAGNOSTIC_COLUMN, pa.array(pictures, pa.string()))
        meta = {**micrographs.meta, "ctf_estimation": _params(ctx).model_dump(mode="json")}
        target = ctx.output_path(SET_FILE)
        write_set(ItemSet(SetKind.MICROGRAPHS, table, micrographs.optics, meta), target)
        return {"micrographs": OutputValue(SetKind.MICROGRAPHS, ctx.relative(target), len(keys))}


# --------------------------------------------------------------------------------------------
# helpers


def _params(ctx: RunContext) -> CtfEstimationParams:
    assert isinstance(ctx.params, CtfEstimationParams)
    return ctx.params


def _name(table: dict[str, list[Any]], row: int) -> str:
    """The item name of a row: ``micrograph_name``, else the file name without extension."""
    names = table.get("micrograph_name")
    if names is not None and names[row]:
        return str(names[row])
    return Path(str(table["micrograph_path"][row])).stem


def settings_from_params(p: CtfEstimationParams) -> CtfSearchSettings:
    """Search settings of the protocol's parameters."""
    return CtfSearchSettings(
        tile_size_px=p.tile_size_px,
        tile_overlap=p.tile_overlap,
        min_resolution_A=p.min_resolution_A,
        max_resolution_A=p.max_resolution_A,
        defocus_min_A=p.defocus_min_A,
        defocus_max_A=p.defocus_max_A,
        defocus_step_A=p.defocus_step_A,
        max_astigmatism_A=p.max_astigmatism_A,
        fit_phase_shift=p.fit_phase_shift,
    )


def fit_values(fit: CtfFit, index: int = 0) -> dict[str, float]:
    """The fitted values of item ``index`` under the set's column names."""
    return {
        "defocus_u_A": float(fit.defocus_u_A[index]),
        "defocus_v_A": float(fit.defocus_v_A[index]),
        "defocus_angle_deg": float(fit.defocus_angle_deg[index]),
        "phase_shift_deg": float(fit.phase_shift_deg[index]),
        "ctf_fit_resolution_A": float(fit.fit_resolution_A[index]),
        "ctf_fit_score": float(fit.fit_score[index]),
    }


def _set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def _to_uint8(picture: torch.Tensor) -> np.ndarray:
    """``(H, W)`` values in [0, 1] as 8-bit grey levels."""
    return np.asarray((picture.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())


def write_png_gray(path: Path, image: np.ndarray) -> None:
    """Write an ``(H, W)`` uint8 array as an 8-bit greyscale PNG (zlib only), atomically."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"{path}: need a 2D uint8 image, got {image.dtype} {image.shape}")
    h, w = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit greyscale
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
