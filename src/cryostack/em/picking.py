"""Particle picking: blob (Laplacian-of-Gaussian) and template (normalised cross-correlation)
detectors, peak finding with non-maximum suppression, edge exclusion and scores (tensor math).

Conventions (``em-conventions.md``, :mod:`cryostack.em.grids`):

- Micrographs are ``(..., H, W)``; picks are ``(n, 2)`` (x, y) micrograph pixels with the origin
  at the top-left of the array (x = column, y = row).
- Raw micrographs show protein dark (see :mod:`cryostack.em.simulate`); the detectors look for
  dark particles unless told ``bright=True``. Templates (2D class averages, projections of a map)
  follow RELION's contrast (protein white) and are negated for dark micrographs.
- A template's centre is its pixel ``N // 2``; a peak of the correlation at (x, y) means the
  template's centre sits on that pixel.
- Scores are comparable between micrographs and detectors: every detector's response map is
  standardised by its median and robust standard deviation (1.4826 · MAD), so a score is "noise
  standard deviations above the typical background" and one threshold works for all micrographs.

All filtering is done in Fourier space with periodic boundaries; picks near the edges must be
excluded (``edge_px``) where wrapped-around content could create false peaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryostack.em.fourier import fourier_crop
from cryostack.em.grids import fftfreq_grid_2d

# --------------------------------------------------------------------------------------------
# scale and statistics


def log_sigma_px(diameter_px: float) -> float:
    """Gaussian sigma (px) at which the scale-normalised LoG responds most to a disc of
    ``diameter_px`` (sigma = radius / sqrt(2))."""
    return diameter_px / (2.0 * math.sqrt(2.0))


def diameter_range_px(min_diameter_px: float, max_diameter_px: float, n_scales: int) -> list[float]:
    """``n_scales`` diameters spaced geometrically from the smallest to the largest (px)."""
    if not 0 < min_diameter_px <= max_diameter_px:
        raise ValueError(
            f"need 0 < min diameter <= max diameter, got {min_diameter_px} and {max_diameter_px}"
        )
    if n_scales < 1:
        raise ValueError(f"n_scales must be >= 1, got {n_scales}")
    if n_scales == 1 or min_diameter_px == max_diameter_px:
        return [math.sqrt(min_diameter_px * max_diameter_px)]
    ratio = (max_diameter_px / min_diameter_px) ** (1.0 / (n_scales - 1))
    return [min_diameter_px * ratio**i for i in range(n_scales)]


def robust_standardise(maps: torch.Tensor, max_samples: int = 1 << 16) -> torch.Tensor:
    """``(map - median) / (1.4826 * MAD)`` over the last two dims of each map.

    The median and MAD are robust to the particles (a minority of the pixels), so the result is
    in units of the background's standard deviation. They are estimated on at most
    ``max_samples`` pixels taken on a regular stride.

    Args:
        maps: ``(..., H, W)`` real.

    Returns:
        ``(..., H, W)`` standardised maps.
    """
    flat = maps.flatten(start_dim=-2)
    stride = max(1, flat.shape[-1] // max_samples)
    sample = flat[..., ::stride]
    median = sample.median(dim=-1, keepdim=True).values
    mad = (sample - median).abs().median(dim=-1, keepdim=True).values
    scale = (1.4826 * mad).clamp_min(torch.finfo(maps.dtype).tiny)
    return ((flat - median) / scale).reshape(maps.shape)


# --------------------------------------------------------------------------------------------
# blob detection


def log_filters_ft(
    shape: tuple[int, int],
    sigmas_px: list[float],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Scale-normalised, negated Laplacian-of-Gaussian filters ``-sigma^2 ∇²G_sigma`` (rfft grid).

    In Fourier space the filter is ``4 pi^2 sigma^2 k^2 exp(-2 pi^2 sigma^2 k^2)`` (k in
    cycles/px): a band pass peaking at ``k = 1 / (sqrt(2) pi sigma)``. Convolving an image with it
    gives a positive peak at the centre of a *bright* blob of radius ``sqrt(2) sigma``.

    Args:
        shape: image shape ``(H, W)``.
        sigmas_px: Gaussian sigmas in pixels.

    Returns:
        ``(S, H, W // 2 + 1)`` real filters.
    """
    freqs = fftfreq_grid_2d(shape, rfft=True, device=device, dtype=dtype)
    k2 = (freqs**2).sum(dim=-1)
    sigma2 = torch.tensor(sigmas_px, device=device, dtype=dtype)[:, None, None] ** 2
    return 4.0 * math.pi**2 * sigma2 * k2 * torch.exp(-2.0 * math.pi**2 * sigma2 * k2)


def blob_scores(
    micrographs: torch.Tensor,
    diameters_px: list[float],
    *,
    bright: bool = False,
    prefilter_ft: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-scale LoG blob score maps: the best standardised response over the diameters.

    Each scale's response is standardised (:func:`robust_standardise`) before the maximum over
    scales is taken, so scales with more background variance do not dominate the score; the
    reported diameter is the scale with the largest scale-normalised (raw) response, the
    classic LoG scale selection.

    Args:
        micrographs: ``(..., H, W)`` real micrographs.
        diameters_px: particle diameters to look for, in pixels.
        bright: particles are brighter than the background (default: dark, raw micrographs).
        prefilter_ft: optional ``(..., H, W // 2 + 1)`` real filter applied first (e.g. the
            signs of the CTF for phase flipping, a low-pass), broadcast against the micrographs.

    Returns:
        ``(scores, diameter_px)``: two ``(..., H, W)`` maps, the score and the selected
        diameter (px).
    """
    shape = (int(micrographs.shape[-2]), int(micrographs.shape[-1]))
    dtype = micrographs.dtype if micrographs.is_floating_point() else torch.float32
    image_ft = torch.fft.rfft2(micrographs.to(dtype))
    if prefilter_ft is not None:
        image_ft = image_ft * prefilter_ft.to(device=image_ft.device, dtype=dtype)
    sigmas = [log_sigma_px(d) for d in diameters_px]
    filters = log_filters_ft(shape, sigmas, device=micrographs.device, dtype=dtype)
    sign = 1.0 if bright else -1.0
    best = torch.full(micrographs.shape, -math.inf, device=micrographs.device, dtype=dtype)
    best_raw = torch.full_like(best, -math.inf)
    best_diameter = torch.zeros_like(best)
    for filt, diameter in zip(filters, diameters_px, strict=True):
        response = sign * torch.fft.irfft2(image_ft * filt, s=shape)
        better = response > best_raw  # scale selection: the scale-normalised response
        best_raw = torch.where(better, response, best_raw)
        best_diameter = torch.where(better, torch.full_like(best, diameter), best_diameter)
        best = torch.maximum(best, robust_standardise(response))
    return best, best_diameter


# --------------------------------------------------------------------------------------------
# template matching


def rotate_images(images: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """In-plane rotations of square images about their centre pixel ``N // 2`` (bilinear).

    The content turns by ``+angle`` from the x axis towards the y axis (counter-clockwise when y
    points up); pixels that come from outside the box are 0.

    Args:
        images: ``(T, N, N)`` real.
        angles_deg: ``(R,)`` angles in degrees.

    Returns:
        ``(T, R, N, N)`` rotated images.
    """
    t, n = int(images.shape[0]), int(images.shape[-1])
    r = int(angles_deg.shape[0])
    angles = torch.deg2rad(angles_deg.to(device=images.device, dtype=images.dtype))
    coords = torch.arange(n, device=images.device, dtype=images.dtype) - n // 2
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    cos, sin = torch.cos(angles)[:, None, None], torch.sin(angles)[:, None, None]
    # output pixel p takes the input at R(-angle) p
    src_x = cos * gx + sin * gy
    src_y = -sin * gx + cos * gy
    # grid_sample with align_corners=True maps -1 / +1 to pixel 0 / n - 1
    half = (n - 1) / 2.0
    grid = torch.stack([(src_x + n // 2) / half - 1.0, (src_y + n // 2) / half - 1.0], dim=-1)
    grid = grid[None].expand(t, r, n, n, 2).reshape(t * r, n, n, 2)
    source = images[:, None].expand(t, r, n, n).reshape(t * r, 1, n, n)
    rotated = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return rotated.reshape(t, r, n, n)


def disc_mask(
    box_px: int, radius_px: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(N, N)`` boolean disc of ``radius_px`` around pixel ``N // 2``."""
    coords = torch.arange(box_px, device=device, dtype=torch.float32) - box_px // 2
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    return gx**2 + gy**2 <= radius_px**2


def prepare_templates(templates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Templates restricted to a mask, with zero mean and unit norm inside it.

    Args:
        templates: ``(T, N, N)`` real.
        mask: ``(N, N)`` boolean.

    Returns:
        ``(T, N, N)`` templates, 0 outside the mask.
    """
    m = mask.to(templates.dtype)
    n_inside = m.sum()
    mean = (templates * m).sum(dim=(-2, -1), keepdim=True) / n_inside
    centred = (templates - mean) * m
    norm = centred.flatten(start_dim=-2).norm(dim=-1)[:, None, None]
    return centred / norm.clamp_min(torch.finfo(templates.dtype).tiny)


def _embed_centred(boxes: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(..., N, N)`` boxes placed in ``(..., H, W)`` canvases with their pixel ``N // 2`` at
    index (0, 0), wrapping around (for correlation by FFT)."""
    n = int(boxes.shape[-1])
    canvas = boxes.new_zeros((*boxes.shape[:-2], *shape))
    canvas[..., :n, :n] = boxes
    return torch.roll(canvas, shifts=(-(n // 2), -(n // 2)), dims=(-2, -1))


def local_std(
    image_ft: torch.Tensor, image_sq_ft: torch.Tensor, mask: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """Standard deviation of the image inside a mask centred on every pixel (via FFT).

    Args:
        image_ft, image_sq_ft: rffts of the image and of its square, ``(H, W // 2 + 1)``.
        mask: ``(N, N)`` boolean mask, centre ``N // 2``.
        shape: ``(H, W)``.

    Returns:
        ``(H, W)`` local standard deviations (clamped to a tiny positive value).
    """
    m = mask.to(image_ft.real.dtype)
    n_inside = float(m.sum())
    mask_ft = torch.fft.rfft2(_embed_centred(m, shape)).conj()
    mean = torch.fft.irfft2(image_ft * mask_ft, s=shape) / n_inside
    mean_sq = torch.fft.irfft2(image_sq_ft * mask_ft, s=shape) / n_inside
    var = (mean_sq - mean**2).clamp_min(0.0)
    return torch.sqrt(var).clamp_min(torch.finfo(var.dtype).tiny)


def template_scores(
    micrograph: torch.Tensor,
    templates: torch.Tensor,
    mask_radius_px: float,
    *,
    bright: bool = False,
    chunk: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised cross-correlation with several templates; the best one at every pixel.

    For each template ``t`` (masked, zero mean, unit norm) the score at pixel p is
    ``sum_r t(r) I(p + r) / (sqrt(n) * std_mask(I around p))``, the Pearson correlation between
    the template and the micrograph patch under the mask, in [-1, 1].

    Args:
        micrograph: ``(H, W)`` real.
        templates: ``(T, N, N)`` real templates in RELION contrast (protein white), centre at
            ``N // 2``, already at the micrograph's pixel size (and CTF-modulated if wanted), and
            e.g. in-plane rotated (:func:`rotate_images`).
        mask_radius_px: radius of the circular mask around each template's centre.
        bright: the micrograph shows protein white (default: dark, templates are negated).
        chunk: templates correlated at once (memory ``chunk * H * W``).

    Returns:
        ``(ncc, index)``: ``(H, W)`` best correlation and ``(H, W)`` int64 index of the template.
    """
    shape = (int(micrograph.shape[-2]), int(micrograph.shape[-1]))
    image = micrograph.to(templates.dtype)
    image = image - image.mean()
    image_ft = torch.fft.rfft2(image)
    mask = disc_mask(int(templates.shape[-1]), mask_radius_px, device=templates.device)
    n_inside = float(mask.sum())
    std = local_std(image_ft, torch.fft.rfft2(image * image), mask, shape)
    prepared = prepare_templates(templates if bright else -templates, mask)
    best = torch.full(shape, -math.inf, device=image.device, dtype=image.dtype)
    best_index = torch.zeros(shape, device=image.device, dtype=torch.long)
    for start in range(0, prepared.shape[0], chunk):
        part = prepared[start : start + chunk]
        part_ft = torch.fft.rfft2(_embed_centred(part, shape)).conj()
        corr = torch.fft.irfft2(image_ft * part_ft, s=shape)
        value, index = corr.max(dim=0)
        better = value > best
        best = torch.where(better, value, best)
        best_index = torch.where(better, index + start, best_index)
    return best / (math.sqrt(n_inside) * std), best_index


# --------------------------------------------------------------------------------------------
# peaks


@dataclass
class Picks:
    """Picks on one micrograph, strongest first.

    Attributes:
        positions_px: ``(n, 2)`` float64 (x, y) micrograph pixels.
        scores: ``(n,)`` float64 scores.
        diameters_px: ``(n,)`` float64 detected diameter (LoG) or template index (templates).
    """

    positions_px: torch.Tensor
    scores: torch.Tensor
    diameters_px: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def above(self, threshold: float, max_picks: int | None = None) -> Picks:
        """The picks scoring at least ``threshold`` (at most ``max_picks``, the best ones)."""
        keep = self.scores >= threshold
        idx = torch.nonzero(keep).flatten()
        if max_picks is not None:
            idx = idx[:max_picks]
        return Picks(self.positions_px[idx], self.scores[idx], self.diameters_px[idx])


def _sliding_max(score: torch.Tensor, half_width: int) -> torch.Tensor:
    """Maximum over a ``(2h+1) x (2h+1)`` square around each pixel (separable), ``(H, W)``."""
    k = 2 * half_width + 1
    x = score[None, None]
    rows = F.max_pool2d(x, kernel_size=(1, k), stride=1, padding=(0, half_width))
    both = F.max_pool2d(rows, kernel_size=(k, 1), stride=1, padding=(half_width, 0))
    return both[0, 0]


def local_maxima(
    score: torch.Tensor, half_width_px: int, floor: float, edge_px: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels that are the maximum of their ``(2h+1)^2`` neighbourhood and score >= ``floor``.

    Pixels closer than ``edge_px`` to the border are ignored (they neither become peaks nor
    suppress others).

    Args:
        score: ``(H, W)`` score map.
        half_width_px: half width ``h`` of the square neighbourhood (>= 1).
        floor: lowest score kept.
        edge_px: width of the excluded border.

    Returns:
        ``(positions (n, 2) (x, y) int64, scores (n,))``, strongest first.
    """
    h, w = int(score.shape[-2]), int(score.shape[-1])
    edge = math.ceil(edge_px)
    if 2 * edge >= min(h, w):
        raise ValueError(f"edge exclusion of {edge_px} px leaves nothing of a {h}x{w} micrograph")
    inside = torch.full_like(score, -math.inf)
    inside[edge : h - edge, edge : w - edge] = score[edge : h - edge, edge : w - edge]
    peak = (inside == _sliding_max(inside, max(1, int(half_width_px)))) & (inside >= floor)
    rows, cols = torch.nonzero(peak, as_tuple=True)
    values = inside[rows, cols]
    order = torch.argsort(values, descending=True, stable=True)
    return torch.stack([cols[order], rows[order]], dim=-1), values[order]


def suppress_neighbours(positions_px: torch.Tensor, min_distance_px: float) -> torch.Tensor:
    """Greedy non-maximum suppression: walk the points strongest first and keep those at least
    ``min_distance_px`` from every point kept so far.

    Args:
        positions_px: ``(n, 2)`` (x, y) points sorted by decreasing score.
        min_distance_px: minimum distance between kept points.

    Returns:
        ``(k,)`` int64 indices of the kept points, in the input order.
    """
    pts = positions_px.detach().to("cpu", torch.float64).tolist()
    cell = max(float(min_distance_px), 1e-9)
    grid: dict[tuple[int, int], list[tuple[float, float]]] = {}
    kept: list[int] = []
    limit = min_distance_px**2
    for i, (x, y) in enumerate(pts):
        cx, cy = int(x // cell), int(y // cell)
        clear = True
        for gx in (cx - 1, cx, cx + 1):
            for gy in (cy - 1, cy, cy + 1):
                for ox, oy in grid.get((gx, gy), ()):
                    if (ox - x) ** 2 + (oy - y) ** 2 < limit:
                        clear = False
                        break
                if not clear:
                    break
            if not clear:
                break
        if clear:
            kept.append(i)
            grid.setdefault((cx, cy), []).append((x, y))
    return torch.tensor(kept, dtype=torch.long, device=positions_px.device)


def find_picks(
    score: torch.Tensor,
    min_distance_px: float,
    *,
    floor: float,
    edge_px: float = 0.0,
    labels: torch.Tensor | None = None,
    max_picks: int | None = None,
) -> Picks:
    """Peaks of a score map at least ``min_distance_px`` apart, away from the edges.

    Local maxima over a square of half width ``min_distance / 2`` are found first, then greedy
    non-maximum suppression enforces the (Euclidean) minimum distance.

    Args:
        score: ``(H, W)`` score map (e.g. from :func:`blob_scores` or :func:`template_scores`,
            standardised).
        min_distance_px: minimum distance between picks (typically the particle radius to
            diameter).
        floor: lowest score kept.
        edge_px: picks closer than this to the border are dropped.
        labels: optional ``(H, W)`` map whose value at each pick is reported (the diameter of
            the best LoG scale, the best template...).
        max_picks: keep at most this many (the best).

    Returns:
        :class:`Picks`, strongest first.
    """
    half = max(1, int(min_distance_px / 2))
    positions, values = local_maxima(score, half, floor, edge_px)
    kept = suppress_neighbours(positions, min_distance_px)
    if max_picks is not None:
        kept = kept[:max_picks]
    positions, values = positions[kept], values[kept]
    label_values = (
        labels[positions[:, 1], positions[:, 0]] if labels is not None else torch.zeros_like(values)
    )
    return Picks(
        positions.to(torch.float64), values.to(torch.float64), label_values.to(torch.float64)
    )


# --------------------------------------------------------------------------------------------
# whole pickers


def band_pass_ft(
    shape: tuple[int, int],
    min_period_px: float,
    max_period_px: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian band pass on the rfft grid keeping periods between ``min_period_px`` and
    ``max_period_px``: ``exp(-k^2 m^2 / 2) * (1 - exp(-k^2 M^2 / 2))``, ``(H, W // 2 + 1)``."""
    freqs = fftfreq_grid_2d(shape, rfft=True, device=device, dtype=dtype)
    k2 = (freqs**2).sum(dim=-1)
    return torch.exp(-k2 * min_period_px**2 / 2.0) * (1.0 - torch.exp(-k2 * max_period_px**2 / 2.0))


def local_energy(
    micrographs: torch.Tensor, min_period_px: float, max_period_px: float
) -> torch.Tensor:
    """Squared band-passed micrographs: where particles add signal power (any contrast sign,
    any CTF phase) the local energy rises. ``(..., H, W)`` -> ``(..., H, W)``."""
    shape = (int(micrographs.shape[-2]), int(micrographs.shape[-1]))
    filt = band_pass_ft(
        shape, min_period_px, max_period_px, device=micrographs.device, dtype=micrographs.dtype
    )
    band = torch.fft.irfft2(torch.fft.rfft2(micrographs) * filt, s=shape)
    return band * band


def working_size(shape: tuple[int, int], binning: float) -> tuple[int, int]:
    """Even image size after binning ``shape`` by ``binning`` (>= 1) by Fourier cropping."""
    return (
        max(2, 2 * round(shape[0] / binning / 2)),
        max(2, 2 * round(shape[1] / binning / 2)),
    )


def pick_blobs(
    micrograph: torch.Tensor,
    min_diameter_px: float,
    max_diameter_px: float,
    *,
    n_scales: int = 4,
    floor: float = 1.0,
    min_distance_px: float | None = None,
    edge_px: float | None = None,
    bright: bool = False,
    use_energy: bool = True,
    max_picks: int | None = None,
) -> Picks:
    """Blob picker on one micrograph: multi-scale LoG of the image plus LoG of its local energy.

    Two standardised blob scores are added and standardised again: the LoG of the micrograph
    (dark blobs of the particles' size: their low-resolution amplitude contrast) and the LoG of
    the local energy of the micrograph band-passed between a tenth of the largest diameter and
    the largest diameter (the power the particles' detail adds, whatever the CTF did to its
    sign). The micrograph is first binned by Fourier cropping so that a tenth of the largest
    diameter is 2.5 pixels (faster; positions are mapped back to the original pixels).

    Args:
        micrograph: ``(H, W)`` real (protein dark unless ``bright``).
        min_diameter_px, max_diameter_px: range of particle diameters in pixels.
        n_scales: LoG scales spanning the range.
        floor: lowest standardised score kept.
        min_distance_px: minimum distance between picks (default: the smallest diameter).
        edge_px: excluded border (default: half the largest diameter).
        bright: the particles are white.
        use_energy: add the local-energy score (False: plain LoG).
        max_picks: keep at most this many.

    Returns:
        :class:`Picks` with the detected diameters (px), strongest first.
    """
    shape = (int(micrograph.shape[-2]), int(micrograph.shape[-1]))
    binning = max(1.0, max_diameter_px / 10.0 / 2.5)
    small = working_size(shape, binning)
    image = micrograph.to(torch.float32) if not micrograph.is_floating_point() else micrograph
    if small != shape:
        image = fourier_crop(image, small)
    scale_x, scale_y = shape[1] / small[1], shape[0] / small[0]
    factor = math.sqrt(scale_x * scale_y)
    diameters = [d / factor for d in diameter_range_px(min_diameter_px, max_diameter_px, n_scales)]
    score, diameter_map = blob_scores(image, diameters, bright=bright)
    if use_energy:
        largest = max_diameter_px / factor
        energy = local_energy(image, largest / 10.0, largest)
        energy_score, _ = blob_scores(energy, diameters, bright=True)
        score = robust_standardise(score + energy_score)
    picks = find_picks(
        score,
        (min_diameter_px if min_distance_px is None else min_distance_px) / factor,
        floor=floor,
        edge_px=(max_diameter_px / 2 if edge_px is None else edge_px) / factor,
        labels=diameter_map * factor,
        max_picks=max_picks,
    )
    scale = torch.tensor([scale_x, scale_y], dtype=torch.float64, device=picks.positions_px.device)
    return Picks(picks.positions_px * scale, picks.scores, picks.diameters_px)


def pick_templates(
    micrograph: torch.Tensor,
    templates: torch.Tensor,
    diameter_px: float,
    *,
    in_plane_step_deg: float = 15.0,
    floor: float = 1.0,
    min_distance_px: float | None = None,
    edge_px: float | None = None,
    ctf: torch.Tensor | None = None,
    bright: bool = False,
    max_picks: int | None = None,
    working_diameter_px: float = 32.0,
) -> Picks:
    """Template picker on one micrograph: NCC with in-plane rotated (optionally CTF-modulated)
    templates, standardised, then peaks.

    Micrograph and templates are first binned by Fourier cropping so that the diameter spans
    at most ``working_diameter_px`` pixels (faster; positions are mapped back to the original
    pixels).

    Args:
        micrograph: ``(H, W)`` real (protein dark unless ``bright``).
        templates: ``(T, N, N)`` templates in RELION contrast (protein white) at the
            micrograph's pixel size, centre ``N // 2``.
        diameter_px: particle diameter in pixels (mask radius is half of it, clipped to the box).
        in_plane_step_deg: step of the in-plane rotations (0: no rotation).
        floor: lowest standardised score kept.
        min_distance_px: minimum distance between picks (default: 0.7 x the diameter).
        edge_px: excluded border (default: half the diameter).
        ctf: optional ``(N, N // 2 + 1)`` CTF on the templates' rfft grid: the templates are
            multiplied by it, to look like particles in the micrograph.
        bright: the particles are white in the micrograph.
        max_picks: keep at most this many.
        working_diameter_px: diameter in pixels after binning (no binning when larger).

    Returns:
        :class:`Picks` whose ``diameters_px`` holds the index of the best (rotated) template.
    """
    n = int(templates.shape[-1])
    templates = templates.to(micrograph.device, torch.float32)
    if ctf is not None:
        templates = torch.fft.irfft2(torch.fft.rfft2(templates) * ctf.to(templates), s=(n, n))
    if in_plane_step_deg > 0:
        angles = torch.arange(0.0, 360.0, in_plane_step_deg, device=templates.device)
        templates = rotate_images(templates, angles).reshape(-1, n, n)
    shape = (int(micrograph.shape[-2]), int(micrograph.shape[-1]))
    image = micrograph.to(torch.float32)
    binning = max(1.0, diameter_px / working_diameter_px)
    small = working_size(shape, binning)
    small_n = max(8, 2 * round(n / binning / 2))
    if small != shape:
        image = fourier_crop(image, small)
    if small_n != n:
        templates = fourier_crop(templates, small_n)
    scale_x, scale_y = shape[1] / small[1], shape[0] / small[0]
    factor = math.sqrt(scale_x * scale_y)
    radius = min(diameter_px / 2.0 / factor, small_n / 2.0 - 1.0)
    ncc, index = template_scores(image, templates, radius, bright=bright)
    score = robust_standardise(ncc)
    picks = find_picks(
        score,
        (0.7 * diameter_px if min_distance_px is None else min_distance_px) / factor,
        floor=floor,
        edge_px=(diameter_px / 2 if edge_px is None else edge_px) / factor,
        labels=index.to(score.dtype),
        max_picks=max_picks,
    )
    scale = torch.tensor([scale_x, scale_y], dtype=torch.float64, device=picks.positions_px.device)
    return Picks(picks.positions_px * scale, picks.scores, picks.diameters_px)
