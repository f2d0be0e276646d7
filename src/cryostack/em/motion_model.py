"""Local (patch) motion of a movie: patch spectra, the smooth space-time model, frame warping.

Part of :mod:`cryostack.em.motion` (conventions there): frames are ``(T, H, W)``; vectors are
(x, y) in pixels. Patches on a grid follow the global drift (:func:`shifted_patches`), their
tapered, filtered spectra (:func:`alignment_spectra`) are aligned like whole frames, and a smooth
model (:class:`MotionModel`: spatial terms times time terms, zero at frame 0) is fitted to the
patch trajectories by least squares (:func:`fit_motion_model`). :func:`warp_frames` undoes global
drift and local motion by bicubic interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryostack.em.motion_sums import (
    bfactor_cutoff_px,
    bfactor_filter,
    crop_rfft,
    crop_size,
    frequency_axes,
)

# --------------------------------------------------------------------------------------------
# patch spectra


def edge_taper(
    shape: tuple[int, int],
    fraction: float = 0.1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(H, W)`` window: 1 inside, raised-cosine fall to 0 over ``fraction`` of each edge."""

    def profile(n: int) -> torch.Tensor:
        width = max(1, round(fraction * n))
        x = torch.arange(n, device=device, dtype=torch.float64)
        distance = torch.minimum(x + 0.5, n - 0.5 - x)
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (distance / width).clamp(max=1.0))
        return ramp.to(dtype)

    return profile(shape[0])[:, None] * profile(shape[1])[None, :]


def alignment_spectra(
    frames: torch.Tensor,
    pixel_size_A: float,
    bfactor_A2: float,
    cutoff_px: float = 0.5,
    taper: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B-factor-filtered, cropped spectra of frames ready for :func:`align_to_sum`.

    Args:
        frames: ``(..., T, H, W)`` real (e.g. patches).
        pixel_size_A, bfactor_A2: for the filter ``exp(-B k^2 / 4)``.
        cutoff_px: highest frequency kept (cycles/px).
        taper: soften the edges (:func:`edge_taper`) so that the fixed patch border does not
            pull the correlation peak towards zero shift.

    Returns:
        spectra ``(..., T, h, w//2+1)`` complex and their frequency axes ``ky``, ``kx`` (cycles/px).
    """
    shape = (frames.shape[-2], frames.shape[-1])
    cutoff = min(cutoff_px, bfactor_cutoff_px(bfactor_A2, pixel_size_A))
    out_shape = (crop_size(shape[0], cutoff), crop_size(shape[1], cutoff))
    frames = frames - frames.mean(dim=(-2, -1), keepdim=True)
    if taper:
        frames = frames * edge_taper(shape, device=frames.device, dtype=frames.dtype)
    spectra = crop_rfft(torch.fft.rfft2(frames), shape, out_shape)
    ky, kx = frequency_axes(shape, out_shape, frames.device, frames.dtype)
    return spectra * bfactor_filter(ky, kx, pixel_size_A, bfactor_A2), ky, kx


# --------------------------------------------------------------------------------------------
# local motion model


def patch_grid(
    shape: tuple[int, int], patches_x: int, patches_y: int
) -> tuple[tuple[int, int], torch.Tensor, torch.Tensor]:
    """Non-overlapping tiles covering the frame centre.

    Returns:
        ``(ph, pw)`` tile size, ``starts (P, 2)`` top-left (y, x) pixel of each tile (row-major
        over the grid) and ``centres_px (P, 2)`` tile centres (x, y) in pixels.
    """
    h, w = shape
    ph, pw = h // patches_y, w // patches_x
    oy, ox = (h - ph * patches_y) // 2, (w - pw * patches_x) // 2
    iy, ix = torch.meshgrid(torch.arange(patches_y), torch.arange(patches_x), indexing="ij")
    starts = torch.stack([oy + iy.flatten() * ph, ox + ix.flatten() * pw], dim=-1)
    centres = torch.stack(
        [starts[:, 1] + (pw - 1) / 2, starts[:, 0] + (ph - 1) / 2], dim=-1
    ).double()
    return (ph, pw), starts, centres


@dataclass
class MotionModel:
    """Smooth local motion: ``d(x, y, t) = sum_jm c[:, j, m] phi_j(x, y) tau^(m + 1)``.

    Attributes:
        coefficients: ``(2, J, M)`` (x and y displacement in pixels).
        spatial_terms: names of the J spatial terms (of "1", "x", "y", "xx", "xy", "yy"), in
            normalised coordinates (-1 at pixel 0, +1 at the last pixel).
        shape: frame shape ``(H, W)``.
        n_frames: number of frames T (``tau = t / (T - 1)``).
    """

    coefficients: torch.Tensor
    spatial_terms: tuple[str, ...]
    shape: tuple[int, int]
    n_frames: int


def _spatial_basis(
    terms: tuple[str, ...], x_norm: torch.Tensor, y_norm: torch.Tensor
) -> torch.Tensor:
    values = {
        "1": torch.ones_like(x_norm),
        "x": x_norm,
        "y": y_norm,
        "xx": x_norm * x_norm,
        "xy": x_norm * y_norm,
        "yy": y_norm * y_norm,
    }
    return torch.stack([values[t] for t in terms], dim=-1)


def _time_basis(n_frames: int, order: int, dtype: torch.dtype) -> torch.Tensor:
    tau = torch.arange(n_frames, dtype=dtype) / max(n_frames - 1, 1)
    return torch.stack([tau ** (m + 1) for m in range(order)], dim=-1)  # (T, M)


def _normalised(
    x_px: torch.Tensor, y_px: torch.Tensor, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = shape
    return 2 * x_px / max(w - 1, 1) - 1, 2 * y_px / max(h - 1, 1) - 1


def spatial_terms_for_grid(patches_x: int, patches_y: int) -> tuple[str, ...]:
    """Spatial terms a patch grid can determine (quadratic where there are >= 3 patches)."""
    terms = ["1"]
    if patches_x >= 2:
        terms.append("x")
    if patches_y >= 2:
        terms.append("y")
    if patches_x >= 3:
        terms.append("xx")
    if patches_x >= 2 and patches_y >= 2:
        terms.append("xy")
    if patches_y >= 3:
        terms.append("yy")
    return tuple(terms)


def fit_motion_model(
    centres_px: torch.Tensor,
    shifts_px: torch.Tensor,
    shape: tuple[int, int],
    spatial_terms: tuple[str, ...],
    time_order: int = 3,
) -> MotionModel:
    """Least-squares fit of a smooth motion model to patch trajectories.

    Args:
        centres_px: ``(P, 2)`` patch centres (x, y) in pixels.
        shifts_px: ``(P, T, 2)`` measured displacements of each patch (each known up to a
            constant: one free offset per patch and axis is fitted and discarded).
        shape: frame shape ``(H, W)``.
        spatial_terms: see :class:`MotionModel`.
        time_order: number of time terms (tau, tau^2, ...).

    Returns:
        The fitted :class:`MotionModel` (zero at frame 0).
    """
    n_patches, n_frames, _ = shifts_px.shape
    x_norm, y_norm = _normalised(centres_px[:, 0].double(), centres_px[:, 1].double(), shape)
    phi = _spatial_basis(spatial_terms, x_norm, y_norm)  # (P, J)
    order = min(time_order, max(n_frames - 1, 1))
    psi = _time_basis(n_frames, order, torch.float64)  # (T, M)
    design_model = (phi[:, None, :, None] * psi[None, :, None, :]).reshape(n_patches * n_frames, -1)
    offsets = torch.eye(n_patches, dtype=torch.float64).repeat_interleave(n_frames, dim=0)
    design = torch.cat([design_model, offsets], dim=1)
    target = shifts_px.double().reshape(n_patches * n_frames, 2)
    solution = torch.linalg.lstsq(design, target).solution  # (J*M + P, 2)
    n_model = design_model.shape[1]
    coefficients = solution[:n_model].T.reshape(2, len(spatial_terms), order)
    return MotionModel(coefficients, tuple(spatial_terms), shape, n_frames)


def evaluate_motion_model(
    model: MotionModel, x_px: torch.Tensor, y_px: torch.Tensor
) -> torch.Tensor:
    """Local displacement of every frame at pixel positions: ``(T, ..., 2)`` (x, y) pixels."""
    x_norm, y_norm = _normalised(x_px.double(), y_px.double(), model.shape)
    phi = _spatial_basis(model.spatial_terms, x_norm, y_norm)  # (..., J)
    psi = _time_basis(model.n_frames, model.coefficients.shape[-1], torch.float64)  # (T, M)
    return torch.einsum("cjm,...j,tm->t...c", model.coefficients.double(), phi, psi)


# --------------------------------------------------------------------------------------------
# warping


def warp_frames(
    frames: torch.Tensor, drift_px: torch.Tensor, model: MotionModel, chunk: int = 8
) -> torch.Tensor:
    """Undo global and local motion: ``out_t(r) = frames_t(r + drift_t + d(r, t))`` (bicubic).

    The sampling grid of every frame is one matrix product: the model's spatial terms at every
    pixel times its per-frame coefficients (global drift and the identity grid folded into the
    constant and linear terms).

    Args:
        frames: ``(T, H, W)`` frames as recorded.
        drift_px: ``(T, 2)`` global displacement (x, y) of each frame.
        model: the local motion model.
        chunk: frames warped at a time (bounds memory).

    Returns:
        ``(T, H, W)`` aligned frames (values beyond the border repeat the edge).
    """
    n_frames, h, w = frames.shape
    dtype, device = frames.dtype, frames.device
    terms = ("1", "x", "y", "xx", "xy", "yy")
    coefficients = torch.zeros(n_frames, len(terms), 2, dtype=torch.float64)
    psi = _time_basis(model.n_frames, model.coefficients.shape[-1], torch.float64)  # (T, M)
    for j, term in enumerate(model.spatial_terms):
        coefficients[:, terms.index(term), :] = psi @ model.coefficients[:, j, :].double().T
    coefficients[:, 0, :] += drift_px.double().cpu()
    # grid_sample units (align_corners=True): -1 and +1 at the end pixels
    coefficients *= torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], dtype=torch.float64)
    coefficients[:, 1, 0] += 1.0  # identity: normalised x is the "x" term, y the "y" term
    coefficients[:, 2, 1] += 1.0
    yy, xx = torch.meshgrid(
        torch.linspace(-1, 1, h, device=device, dtype=dtype),
        torch.linspace(-1, 1, w, device=device, dtype=dtype),
        indexing="ij",
    )
    phi = _spatial_basis(terms, xx.reshape(-1), yy.reshape(-1))  # (H * W, 6)
    coefficients = coefficients.to(device=device, dtype=dtype)
    out = torch.empty_like(frames)
    for t0 in range(0, n_frames, chunk):
        block = coefficients[t0 : t0 + chunk]  # (c, 6, 2)
        grid = (phi @ block.permute(1, 0, 2).reshape(len(terms), -1)).view(h, w, -1, 2)
        grid = grid.permute(2, 0, 1, 3)  # (c, H, W, 2)
        warped = F.grid_sample(
            frames[t0 : t0 + chunk, None],
            grid,
            mode="bicubic",
            padding_mode="border",
            align_corners=True,
        )
        out[t0 : t0 + chunk] = warped[:, 0]
    return out


def shifted_patches(
    frames: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], drift_px: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches that follow the global drift to the nearest pixel.

    In frame ``t`` the whole patch grid (see :func:`patch_grid`) is moved by ``round(drift_t)``,
    periodically (as a Fourier shift of the whole frame would move it: content leaving one edge
    comes back at the other, identically in every frame). The content of the patches is still
    displaced by the returned residual (at most half a pixel).

    Args:
        frames: ``(T, H, W)``.
        grid: ``(patches_y, patches_x)``.
        size: ``(ph, pw)`` patch size.
        drift_px: ``(T, 2)`` global displacement (x, y) of each frame.

    Returns:
        ``(P, T, ph, pw)`` patches (row-major over the grid) and ``(T, 2)`` residual
        displacements (x, y) in pixels.
    """
    n_frames, h, w = frames.shape
    (gy, gx), (ph, pw) = grid, size
    oy, ox = (h - ph * gy) // 2, (w - pw * gx) // 2
    drift = drift_px.double().cpu()
    offsets = torch.round(drift).long()
    patches = frames.new_empty((gy, gx, n_frames, ph, pw))
    for t in range(n_frames):
        rows = (oy + int(offsets[t, 1]) + torch.arange(gy * ph, device=frames.device)) % h
        cols = (ox + int(offsets[t, 0]) + torch.arange(gx * pw, device=frames.device)) % w
        region = frames[t].index_select(0, rows).index_select(1, cols)
        patches[:, :, t] = region.reshape(gy, ph, gx, pw).permute(0, 2, 1, 3)
    return patches.reshape(gy * gx, n_frames, ph, pw), drift - offsets.double()
