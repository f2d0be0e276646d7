"""CTF search and refinement on whitened amplitude spectra (used by
:mod:`cryostack.em.ctf_estimation`, which documents the method and the conventions).

The whitened band pixels ``y (B, n)`` are fitted as ``b(s) + e(s) * CTF(s, theta)^2`` (cubic
background ``b``, linear envelope ``e``); a CTF scores the multiple correlation R of that fit
(:func:`_scores`). :func:`_search_1d` scans the mean defocus (and phase shift) on a rotational
average, :func:`_search_2d` brute-forces astigmatism and angle on a pixel subsample and
:func:`_refine` polishes all parameters by L-BFGS on every band pixel.

Every function is batched over the micrographs and runs on the input's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cryostack.em.ctf import ctf_at_frequencies, electron_wavelength_A
from cryostack.em.grids import fftfreq_grid_2d

if TYPE_CHECKING:
    from cryostack.em.ctf_estimation import CtfSearchSettings, Optics


_BACKGROUND_DEGREE = 4
_ENVELOPE_DEGREE = 3
_WHITEN_DEGREE = 2


# --------------------------------------------------------------------------------------------
# band pixels


@dataclass
class _Pixels:
    """Frequencies of a set of rfft pixels: flat ``index`` into ``T * (T // 2 + 1)``, ``kx``,
    ``ky``, ``s`` in 1/Å, all ``(n,)``."""

    index: torch.Tensor
    kx: torch.Tensor
    ky: torch.Tensor
    s: torch.Tensor


def _band_pixels(
    tile_size_px: int,
    pixel_size_A: float,
    s_min: float,
    s_max: float,
    device: torch.device,
    stride: int = 1,
) -> _Pixels:
    """rfft pixels with ``s_min <= s <= s_max`` (every ``stride``-th row and column)."""
    freqs = fftfreq_grid_2d(
        (tile_size_px, tile_size_px), pixel_size_A, rfft=True, device=device, dtype=torch.float64
    )
    kx, ky = freqs[..., 0].reshape(-1), freqs[..., 1].reshape(-1)
    s = torch.sqrt(kx * kx + ky * ky)
    keep = (s >= s_min) & (s <= s_max)
    if stride > 1:
        w = tile_size_px // 2 + 1
        rows = torch.arange(tile_size_px, device=device).repeat_interleave(w)
        cols = torch.arange(w, device=device).repeat(tile_size_px)
        keep &= (rows % stride == 0) & (cols % stride == 0)
    index = torch.nonzero(keep).squeeze(-1)
    return _Pixels(index, kx[index], ky[index], s[index])


def _polynomial_basis(s: torch.Tensor, s_min: float, s_max: float, degree: int) -> torch.Tensor:
    """``(n, degree + 1)`` powers of ``t = 2 (s - s_min) / (s_max - s_min) - 1``."""
    t = 2.0 * (s - s_min) / (s_max - s_min) - 1.0
    return torch.stack([t**k for k in range(degree + 1)], dim=-1)


def _lstsq(basis: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Coefficients ``(B, k)`` minimising ``|basis @ c - values|^2`` for ``values (B, n)``."""
    gram = basis.T @ basis + 1e-9 * torch.eye(
        basis.shape[1], dtype=basis.dtype, device=basis.device
    )
    return torch.linalg.solve(gram, (values @ basis).T).T


def _binned_means(
    values: torch.Tensor, bins: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of ``values (B, n)`` per bin of ``bins (n,)`` and the counts ``(n_bins,)``."""
    sums = values.new_zeros((values.shape[0], n_bins)).index_add_(1, bins, values)
    counts = torch.bincount(bins, minlength=n_bins)[:n_bins].to(values.dtype)
    return sums / counts.clamp_min(1), counts


# --------------------------------------------------------------------------------------------
# least-squares score


@dataclass
class _Design:
    """Precomputed parts of the score of ``y ~ b(s) + e(s) CTF^2`` (see :func:`_scores`)."""

    env_y: torch.Tensor  # (B, n, ke): envelope basis times the background-free data
    env_env: torch.Tensor  # (B, n, ke * ke)
    q_env: torch.Tensor  # (B, n, kb * ke)
    yy: torch.Tensor  # (B,)
    ke: int
    kb: int


def _design(
    y: torch.Tensor, s: torch.Tensor, s_min: float, s_max: float, weights: torch.Tensor | None
) -> _Design:
    """Project the background basis out of the data ``y (B, n)`` at frequencies ``s (n,)``.

    ``weights`` (``(n,)`` or ``(B, n)``, >= 0) weight the least squares (0 drops a pixel).
    """
    if weights is None:
        weights = torch.ones_like(s)
    sw = weights.sqrt().expand_as(y)[..., None]  # (B, n, 1)
    background = _polynomial_basis(s, s_min, s_max, _BACKGROUND_DEGREE)[None] * sw
    envelope = _polynomial_basis(s, s_min, s_max, _ENVELOPE_DEGREE)[None] * sw
    q, _ = torch.linalg.qr(background)  # (B, n, kb)
    yw = y * sw[..., 0]
    y_perp = yw - (q @ (q.transpose(-1, -2) @ yw[..., None]))[..., 0]
    b, n, ke = envelope.shape
    kb = q.shape[-1]
    return _Design(
        env_y=envelope * y_perp[..., None],
        env_env=(envelope[..., :, None] * envelope[..., None, :]).reshape(b, n, ke * ke),
        q_env=(q[..., :, None] * envelope[..., None, :]).reshape(b, n, kb * ke),
        yy=(y_perp * y_perp).sum(-1).clamp_min(1e-30),
        ke=ke,
        kb=kb,
    )


def _scores(ctf2: torch.Tensor, d: _Design) -> torch.Tensor:
    """Multiple correlation R of the fits ``y ~ b + e CTF^2`` for ``ctf2 (B, C, n)`` -> ``(B, C)``.

    With ``M = e CTF^2`` (``n x ke`` columns) and the background projected out,
    ``R^2 = h^T G^-1 h / |y_perp|^2`` where ``h = M^T y_perp`` and ``G = M_perp^T M_perp``.
    """
    b, c = ctf2.shape[0], ctf2.shape[1]
    dtype = ctf2.dtype
    h = ctf2 @ d.env_y.to(dtype)  # (B, C, ke)
    mm = ((ctf2 * ctf2) @ d.env_env.to(dtype)).reshape(b, c, d.ke, d.ke)
    qm = (ctf2 @ d.q_env.to(dtype)).reshape(b, c, d.kb, d.ke)
    gram = mm - qm.transpose(-1, -2) @ qm
    scale = torch.diagonal(gram, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)
    eye = torch.eye(d.ke, dtype=dtype, device=ctf2.device)
    gram = gram + 1e-6 * scale[..., None, None] * eye
    explained = (h[..., None, :] @ torch.linalg.solve(gram, h[..., None]))[..., 0, 0]
    r2 = explained / d.yy.to(dtype)[:, None]
    return r2.clamp(0.0, 1.0).sqrt()


def _ctf2(
    kx: torch.Tensor,
    ky: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    angle_deg: torch.Tensor,
    phase_deg: torch.Tensor,
    optics: Optics,
) -> torch.Tensor:
    """``CTF^2`` at ``(n,)`` frequencies for parameters ``(B, C)`` -> ``(B, C, n)``."""
    values = ctf_at_frequencies(
        kx[None],
        ky[None],
        u,
        v,
        angle_deg,
        voltage_kV=optics.voltage_kV,
        cs_mm=optics.cs_mm,
        amplitude_contrast=optics.amplitude_contrast,
        phase_shift_deg=phase_deg,
    )
    return values[..., 0, :] ** 2


def _phase_terms(px: _Pixels, optics: Optics) -> torch.Tensor:
    """``(5, n)`` float32 rows ``[s^2, s^2 cos 2theta, s^2 sin 2theta, s^4, 1]`` scaled so that the
    CTF phase is ``gamma = [mean, a_c, a_s, 1, offset] @ rows`` (see :func:`_ctf2_fast`)."""
    wavelength = float(electron_wavelength_A(optics.voltage_kV))
    s2 = px.kx * px.kx + px.ky * px.ky
    theta = torch.atan2(px.ky, px.kx)
    rows = torch.stack(
        [
            -math.pi * wavelength * s2,
            -math.pi * wavelength * s2 * torch.cos(2 * theta),
            -math.pi * wavelength * s2 * torch.sin(2 * theta),
            0.5 * math.pi * optics.cs_mm * 1e7 * wavelength**3 * s2 * s2,
            torch.ones_like(s2),
        ]
    )
    return rows.float()


def _ctf2_fast(
    rows: torch.Tensor,
    mean: torch.Tensor,
    astig: torch.Tensor,
    angle_deg: torch.Tensor,
    phase_deg: torch.Tensor,
    optics: Optics,
) -> torch.Tensor:
    """``CTF^2`` from :func:`_phase_terms` for parameters ``(B, C)`` -> ``(B, C, n)``.

    The same function as ``ctf_at_frequencies(...)**2`` with ``U = mean + astig / 2``,
    ``V = mean - astig / 2`` (checked by the tests), written as one matrix product: the searches
    evaluate thousands of candidates.
    """
    q0 = optics.amplitude_contrast
    offset = -torch.deg2rad(phase_deg) - math.atan(q0 / math.sqrt(1.0 - q0 * q0))
    rad = torch.deg2rad(2.0 * angle_deg)
    coefficients = torch.stack(
        [
            mean,
            0.5 * astig * torch.cos(rad),
            0.5 * astig * torch.sin(rad),
            torch.ones_like(mean),
            offset,
        ],
        dim=-1,
    ).float()
    return torch.sin(coefficients @ rows) ** 2


def _score_chunked(
    rows: torch.Tensor,
    d: _Design,
    mean: torch.Tensor,
    astig: torch.Tensor,
    angle: torch.Tensor,
    phase: torch.Tensor,
    optics: Optics,
    chunk: int = 512,
) -> torch.Tensor:
    """Scores ``(B, C)`` of candidate parameters ``(B, C)`` evaluated in chunks of candidates."""
    out = []
    for start in range(0, mean.shape[1], chunk):
        sl = slice(start, start + chunk)
        ctf2 = _ctf2_fast(rows, mean[:, sl], astig[:, sl], angle[:, sl], phase[:, sl], optics)
        out.append(_scores(ctf2, d))
    return torch.cat(out, dim=1)


# --------------------------------------------------------------------------------------------
# search


def _whiten(amplitude: torch.Tensor, band: _Pixels, s_min: float, s_max: float) -> torch.Tensor:
    """Band pixels ``(B, n)`` of ``amplitude (B, T, T')`` divided by a smooth radial trend."""
    values = amplitude.reshape(amplitude.shape[0], -1)[:, band.index].to(torch.float64)
    basis = _polynomial_basis(band.s, s_min, s_max, _WHITEN_DEGREE)
    coefficients = _lstsq(basis, values.clamp_min(1e-30).log())
    return values / torch.exp(coefficients @ basis.T)


def _search_1d(
    y: torch.Tensor,
    band: _Pixels,
    s_min: float,
    s_max: float,
    optics: Optics,
    tile: int,
    settings: CtfSearchSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``n_candidates`` (mean defocus, phase shift) of the rotational average: ``(B, K)``
    each, best first, distinct local maxima along defocus where possible."""
    bin_width = 0.25 / (tile * optics.pixel_size_A)
    bins = ((band.s - s_min) / bin_width).long()
    n_bins = int(bins.max()) + 1
    profile, counts = _binned_means(y, bins, n_bins)
    keep = counts > 0
    profile, counts = profile[:, keep], counts[keep]
    s_bins = s_min + (torch.arange(n_bins, device=y.device, dtype=y.dtype)[keep] + 0.5) * bin_width
    d = _design(profile, s_bins, s_min, s_max, counts)
    defoci = torch.arange(
        settings.defocus_min_A,
        settings.defocus_max_A + 0.5 * settings.defocus_step_A,
        settings.defocus_step_A,
        device=y.device,
        dtype=torch.float64,
    )
    if settings.fit_phase_shift:
        phases = torch.arange(
            0.0, 180.0, settings.phase_shift_step_deg, device=y.device, dtype=torch.float64
        )
    else:
        phases = torch.zeros(1, device=y.device, dtype=torch.float64)
    grid_df, grid_ph = torch.meshgrid(defoci, phases, indexing="ij")
    b = y.shape[0]
    flat_df = grid_df.reshape(1, -1).expand(b, -1)
    flat_ph = grid_ph.reshape(1, -1).expand(b, -1)
    px = _Pixels(torch.empty(0), s_bins, torch.zeros_like(s_bins), s_bins)
    zero = torch.zeros_like(flat_df)
    scores = _score_chunked(_phase_terms(px, optics), d, flat_df, zero, zero, flat_ph, optics)
    scores = scores.reshape(b, defoci.numel(), phases.numel())
    best_phase_score, best_phase = scores.max(dim=-1)  # (B, n_defoci)
    # local maxima along defocus (ties broken by order), best first
    padded = torch.nn.functional.pad(best_phase_score, (1, 1), value=-1.0)
    peak = (padded[:, 1:-1] >= padded[:, :-2]) & (padded[:, 1:-1] >= padded[:, 2:])
    ranked = torch.where(peak, best_phase_score, best_phase_score - 2.0)
    k = min(settings.n_candidates, defoci.numel())
    top = ranked.topk(k, dim=-1).indices
    return defoci[top], phases[best_phase.gather(1, top)]


def _astigmatism_grid(
    settings: CtfSearchSettings, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G,)`` astigmatism (U - V, Å) and angle (deg) candidates, zero astigmatism once."""
    steps = torch.arange(
        settings.astigmatism_step_A,
        settings.max_astigmatism_A + 1e-6,
        settings.astigmatism_step_A,
        device=device,
        dtype=torch.float64,
    )
    angles = torch.arange(0.0, 180.0, settings.angle_step_deg, device=device, dtype=torch.float64)
    a, t = torch.meshgrid(steps, angles, indexing="ij")
    zero = torch.zeros(1, device=device, dtype=torch.float64)
    return torch.cat([zero, a.reshape(-1)]), torch.cat([zero, t.reshape(-1)])


def _search_2d(
    y_sub: torch.Tensor,
    sub: _Pixels,
    s_min: float,
    s_max: float,
    optics: Optics,
    means: torch.Tensor,
    phases: torch.Tensor,
    settings: CtfSearchSettings,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Brute force over mean (each candidate +- one step), astigmatism and angle on the 2D band
    subsample; returns the best ``(mean, astigmatism, angle, phase)``, each ``(B,)``."""
    d = _design(y_sub, sub.s, s_min, s_max, None)
    astig, angle = _astigmatism_grid(settings, y_sub.device)
    offsets = torch.tensor([-1.0, 0.0, 1.0], device=y_sub.device, dtype=torch.float64)
    mean = (means[:, :, None] + offsets * settings.defocus_step_A).reshape(means.shape[0], -1)
    phase = phases[:, :, None].expand(-1, -1, 3).reshape(means.shape[0], -1)
    g = astig.numel()
    mean_c = mean[:, :, None].expand(-1, -1, g).reshape(mean.shape[0], -1)
    phase_c = phase[:, :, None].expand(-1, -1, g).reshape(mean.shape[0], -1)
    astig_c = astig.repeat(mean.shape[1])[None].expand_as(mean_c)
    angle_c = angle.repeat(mean.shape[1])[None].expand_as(mean_c)
    scores = _score_chunked(_phase_terms(sub, optics), d, mean_c, astig_c, angle_c, phase_c, optics)
    best = scores.argmax(dim=1, keepdim=True)
    pick = [t.gather(1, best)[:, 0] for t in (mean_c, astig_c, angle_c, phase_c)]
    return pick[0], pick[1], pick[2], pick[3]


# --------------------------------------------------------------------------------------------
# refinement

_UNIT_A = 100.0  # refinement variables in units of 100 Å
_EPS_A = 0.1  # regularises |a| at zero astigmatism (reported U - V >= 0.2 Å)


def _params_to_ctf(
    x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x (B, 4)`` = (mean, a cos 2phi, a sin 2phi) / 100 Å, phase (rad) -> U, V, angle, phase
    (deg); ``U - V = 2 a >= 0``."""
    mean = x[:, 0] * _UNIT_A
    ac, as_ = x[:, 1] * _UNIT_A, x[:, 2] * _UNIT_A
    half = torch.sqrt(ac * ac + as_ * as_ + _EPS_A**2)
    angle = 0.5 * torch.atan2(as_, ac) * (180.0 / math.pi)
    return mean + half, mean - half, angle, torch.rad2deg(x[:, 3])


def _initial_x(
    mean: torch.Tensor, astig: torch.Tensor, angle_deg: torch.Tensor, phase_deg: torch.Tensor
) -> torch.Tensor:
    """Refinement variables ``(B, 4)`` (see :func:`_params_to_ctf`) of search results ``(B,)``."""
    rad = torch.deg2rad(2.0 * angle_deg)
    scaled = torch.stack([mean, 0.5 * astig * torch.cos(rad), 0.5 * astig * torch.sin(rad)], -1)
    return torch.cat([scaled / _UNIT_A, torch.deg2rad(phase_deg)[:, None]], dim=-1)


def _refine(
    y: torch.Tensor,
    band: _Pixels,
    s_min: float,
    s_max: float,
    optics: Optics,
    x0: torch.Tensor,
    settings: CtfSearchSettings,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L-BFGS refinement of every item's variables ``x0 (B, 4)`` on the band pixels (weighted by
    ``(B, n)`` ``weights`` if given); returns the refined ``x (B, 4)`` and scores ``(B,)``."""
    d = _design(y, band.s, s_min, s_max, weights)
    x = x0.clone().requires_grad_(True)
    fixed_phase = not settings.fit_phase_shift

    def objective() -> torch.Tensor:
        u, v, ang, ph = _params_to_ctf(x)
        if fixed_phase:
            ph = ph.detach()
        ctf2 = _ctf2(band.kx, band.ky, u[:, None], v[:, None], ang[:, None], ph[:, None], optics)
        return -_scores(ctf2, d)[:, 0].pow(2).sum()

    optimiser = torch.optim.LBFGS(
        [x], lr=1.0, max_iter=settings.refine_iterations, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        u, v, ang, ph = _params_to_ctf(x)
        ctf2 = _ctf2(band.kx, band.ky, u[:, None], v[:, None], ang[:, None], ph[:, None], optics)
        return x.detach(), _scores(ctf2, d)[:, 0]


def _canonical(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """U >= V, angle in [0, 180), phase in [0, 180) from refinement variables ``(B, 4)``."""
    u, v, angle, phase = _params_to_ctf(x)
    return u, v, torch.remainder(angle, 180.0), torch.remainder(phase, 180.0)
