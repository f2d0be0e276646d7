"""Simulation of particle images, micrographs and movies with a known answer (pure tensor math).

Conventions (``em-conventions.md``, :mod:`cryostack.em.grids`):

- Particle images follow RELION's contrast: protein is white. The projection of positive density
  is positive and the CTF (RELION sign, ``CTF(0) = +Q0``) multiplies the image's Fourier transform
  as is.
- A raw micrograph has the opposite contrast: protein is dark. :func:`simulate_micrograph` pastes
  the *negated* projections, then applies the CTF; extracting a box and inverting its contrast
  gives a RELION particle image.
- Positions are micrograph pixels (x = column, y = row, origin at the top-left of the array); a
  particle at (x, y) has its centre (box index ``N // 2``) on that pixel.
- ``shifts_A`` of particle images are RELION origins (rlnOriginXAngst/YAngst): the particle's centre
  lies at ``N // 2 - shift / pixel_size_A`` in the image, so re-centring moves the image by +shift.
- SNR is the variance of the noise-free signal over the box (the CTF-modulated particle image,
  averaged over the particles) divided by the variance of the white Gaussian noise.

Randomness only comes from the ``generator`` argument (drawn on the generator's device, then moved
to the data's device), so results are reproducible for a given seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryostack.em.ctf import Scalar, ctf_2d
from cryostack.em.dose import dose_attenuation, frame_exposures
from cryostack.em.fourier import phase_shift_2d, shift_images
from cryostack.em.projection import project_volume
from cryostack.em.rotations import matrix_to_euler, random_rotations

# --------------------------------------------------------------------------------------------
# random numbers


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _randn(
    shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """Standard normal samples drawn on the generator's device, returned on ``like``'s device."""
    x = torch.randn(shape, generator=generator, device=_gen_device(generator), dtype=torch.float64)
    return x.to(device=like.device, dtype=like.dtype)


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """Uniform [0, 1) samples drawn on the generator's device, returned on ``like``'s device."""
    x = torch.rand(shape, generator=generator, device=_gen_device(generator), dtype=torch.float64)
    return x.to(device=like.device, dtype=like.dtype)


# --------------------------------------------------------------------------------------------
# particles


def random_positions(
    n: int,
    micrograph_shape: tuple[int, int],
    min_distance_px: float,
    margin_px: float,
    generator: torch.Generator | None = None,
    *,
    max_attempts: int = 100,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random particle positions at least ``min_distance_px`` apart (dart throwing).

    Args:
        n: number of positions.
        micrograph_shape: ``(H, W)`` in pixels.
        min_distance_px: minimum centre-to-centre distance in pixels.
        margin_px: minimum distance from the micrograph's border: x in
            ``[margin, W - 1 - margin]``, y in ``[margin, H - 1 - margin]``.
        generator: source of randomness.
        max_attempts: candidates tried per requested position before giving up.

    Returns:
        ``(n, 2)`` float32 positions (x, y) in pixels.

    Raises:
        ValueError: the positions do not fit (margins too large or the area too crowded).
    """
    h, w = micrograph_shape
    span = torch.tensor([w - 1 - 2 * margin_px, h - 1 - 2 * margin_px], dtype=torch.float64)
    if n > 0 and bool((span < 0).any()):
        raise ValueError(f"margin {margin_px} px leaves no room in a {h}x{w} micrograph")
    ref = torch.empty(0, dtype=torch.float64)
    accepted = torch.empty((0, 2), dtype=torch.float64)
    tried, batch = 0, max(64, 4 * n)
    while accepted.shape[0] < n:
        if tried >= max_attempts * max(n, 1):
            raise ValueError(
                f"could only place {accepted.shape[0]} of {n} particles {min_distance_px} px apart "
                f"in a {h}x{w} micrograph with a {margin_px} px margin"
            )
        candidates = margin_px + _rand((batch, 2), generator, ref) * span
        tried += batch
        for candidate in candidates:
            distance = torch.linalg.vector_norm(accepted - candidate, dim=-1)
            if accepted.shape[0] == 0 or bool(distance.min() >= min_distance_px):
                accepted = torch.cat([accepted, candidate[None]])
                if accepted.shape[0] == n:
                    break
    return accepted.to(device=device, dtype=torch.float32)


def apply_ctf(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply the Fourier transforms of images by a CTF (RELION sign, applied as is).

    Args:
        images: ``(..., H, W)`` real.
        ctf: ``(..., H, W // 2 + 1)`` on the unshifted rfft grid (e.g. from ``ctf_2d``), broadcast.

    Returns:
        ``(..., H, W)`` real images.
    """
    shape = (images.shape[-2], images.shape[-1])
    return torch.fft.irfft2(torch.fft.rfft2(images) * ctf, s=shape)


def noise_std_for_snr(signal: torch.Tensor, snr: float) -> float:
    """Noise standard deviation giving ``snr`` = mean over images of var(signal) / noise variance.

    Args:
        signal: ``(..., H, W)`` noise-free images.
        snr: signal-to-noise ratio (> 0; ``math.inf`` gives 0).
    """
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if math.isinf(snr):
        return 0.0
    variance = signal.flatten(start_dim=-2).var(dim=-1).mean()
    return float(torch.sqrt(variance / snr))


def add_gaussian_noise(
    images: torch.Tensor, noise_std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``images`` plus white Gaussian noise of standard deviation ``noise_std``."""
    if noise_std == 0:
        return images.clone()
    return images + noise_std * _randn(tuple(images.shape), generator, images)


def simulate_particle_images(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    shifts_A: torch.Tensor,
    *,
    pixel_size_A: float,
    defocus_u_A: Scalar,
    defocus_v_A: Scalar,
    defocus_angle_deg: Scalar,
    snr: float,
    generator: torch.Generator | None = None,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_deg: Scalar = 0.0,
    ctf_bfactor_A2: Scalar = 0.0,
) -> torch.Tensor:
    """Particle images: projections of ``volume``, CTF, RELION origin shifts and Gaussian noise.

    Args:
        volume: ``(N, N, N)`` map, centre at ``N // 2``, voxel size ``pixel_size_A``.
        rotations: ``(B, 3, 3)`` RELION matrices ``A`` (map frame -> image frame).
        shifts_A: ``(B, 2)`` RELION origins (rlnOriginXAngst, rlnOriginYAngst) in Å; the particle
            centre lands at pixel ``N // 2 - shift / pixel_size_A``.
        pixel_size_A: pixel size in Å/px.
        defocus_u_A, defocus_v_A, defocus_angle_deg: CTF defocus (Å, positive = underfocus) and
            astigmatism angle (degrees from x); floats or ``(B,)`` tensors.
        snr: signal variance / noise variance over the box (see module docstring); ``math.inf``
            for noise-free images.
        generator: source of the noise.
        voltage_kV, cs_mm, amplitude_contrast, phase_shift_deg, ctf_bfactor_A2: CTF parameters.

    Returns:
        ``(B, N, N)`` images, protein white (RELION contrast), in projection units (the line
        integral of the map in voxel units, modulated by the CTF) plus noise.
    """
    n = int(volume.shape[-1])
    projections = project_volume(volume, rotations.to(volume.device))
    ctf = ctf_2d(
        defocus_u_A,
        defocus_v_A,
        defocus_angle_deg,
        voltage_kV=voltage_kV,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        phase_shift_deg=phase_shift_deg,
        bfactor_A2=ctf_bfactor_A2,
        pixel_size_A=pixel_size_A,
        shape=(n, n),
        device=volume.device,
        dtype=volume.dtype,
    )
    image_ft = torch.fft.rfft2(projections) * ctf
    shifts_px = -shifts_A.to(device=volume.device, dtype=volume.dtype) / pixel_size_A
    clean = torch.fft.irfft2(phase_shift_2d(image_ft, shifts_px, (n, n)), s=(n, n))
    return add_gaussian_noise(clean, noise_std_for_snr(clean, snr), generator)


# --------------------------------------------------------------------------------------------
# micrographs


def paste_images(
    images: torch.Tensor, positions_px: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """Sum boxed images into a canvas with their centres (index ``N // 2``) at sub-pixel positions.

    Sub-pixel parts are applied as Fourier phase shifts of the boxes; parts of boxes outside the
    canvas are dropped.

    Args:
        images: ``(B, N, N)`` real boxes.
        positions_px: ``(B, 2)`` centre positions (x, y) in canvas pixels.
        shape: canvas shape ``(H, W)``.

    Returns:
        ``(H, W)`` canvas.
    """
    b, n = images.shape[0], images.shape[-1]
    positions = positions_px.to(device=images.device, dtype=images.dtype)
    whole = torch.round(positions)
    boxes = shift_images(images, positions - whole)
    offsets = torch.arange(n, device=images.device) - n // 2
    cols = whole[:, 0].long()[:, None, None] + offsets[None, None, :]
    rows = whole[:, 1].long()[:, None, None] + offsets[None, :, None]
    cols, rows = cols.expand(b, n, n), rows.expand(b, n, n)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    canvas = images.new_zeros(shape[0] * shape[1])
    canvas.index_add_(0, (rows * shape[1] + cols)[inside], boxes[inside])
    return canvas.reshape(shape)


def extract_boxes(image: torch.Tensor, positions_px: torch.Tensor, box_px: int) -> torch.Tensor:
    """Boxes of ``box_px`` pixels centred (index ``box // 2``) on the rounded positions.

    Args:
        image: ``(H, W)``.
        positions_px: ``(B, 2)`` (x, y) pixels; boxes must lie inside the image.

    Returns:
        ``(B, box, box)`` copies.
    """
    whole = torch.round(positions_px).long().to(image.device)
    offsets = torch.arange(box_px, device=image.device) - box_px // 2
    rows = (whole[:, 1, None] + offsets)[:, :, None]
    cols = (whole[:, 0, None] + offsets)[:, None, :]
    if bool((rows < 0).any() or (cols < 0).any()):
        raise ValueError("extract_boxes: a box extends beyond the image")
    if bool((rows >= image.shape[0]).any() or (cols >= image.shape[1]).any()):
        raise ValueError("extract_boxes: a box extends beyond the image")
    return image[rows, cols]


@dataclass
class MicrographTruth:
    """Ground truth of a simulated micrograph.

    Attributes:
        positions_px: ``(n, 2)`` particle centres (x, y) in micrograph pixels.
        euler_deg: ``(n, 3)`` RELION [rot, tilt, psi] in degrees.
        defocus_u_A, defocus_v_A, defocus_angle_deg: the micrograph's CTF.
        noise_std: standard deviation of the added Gaussian noise (micrograph units).
        signal_std: RMS over particle boxes of the noise-free CTF-modulated signal.
        ice_gradient_angle_deg: direction (from x) in which the ice gets thicker (darker).
    """

    positions_px: torch.Tensor
    euler_deg: torch.Tensor
    defocus_u_A: float
    defocus_v_A: float
    defocus_angle_deg: float
    noise_std: float
    signal_std: float
    ice_gradient_angle_deg: float


def ice_ramp(
    shape: tuple[int, int], angle_deg: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """Linear ramp from -0.5 to +0.5 across ``(H, W)`` along the direction ``angle_deg`` from x."""
    h, w = shape
    y = torch.linspace(-0.5, 0.5, h, device=device)[:, None]
    x = torch.linspace(-0.5, 0.5, w, device=device)[None, :]
    a = math.radians(angle_deg)
    ramp = math.cos(a) * x + math.sin(a) * y
    return ramp / (abs(math.cos(a)) + abs(math.sin(a)))


def simulate_micrograph(
    volume: torch.Tensor,
    n_particles: int,
    shape: tuple[int, int],
    *,
    pixel_size_A: float,
    defocus_u_A: float,
    defocus_v_A: float,
    defocus_angle_deg: float,
    snr: float,
    ice_gradient: float = 0.0,
    generator: torch.Generator | None = None,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    min_distance_px: float | None = None,
    margin_px: float | None = None,
) -> tuple[torch.Tensor, MicrographTruth]:
    """A micrograph of randomly placed, randomly oriented copies of ``volume``.

    The negated projections (protein dark) are pasted at random non-overlapping positions, the
    whole micrograph is multiplied by the CTF in Fourier space (periodic boundary), white Gaussian
    noise is added at ``snr`` (measured over the particle boxes, so extracted particles have that
    SNR) and a linear ice-thickness ramp is added on top.

    Args:
        volume: ``(N, N, N)`` map with voxel size ``pixel_size_A``, centre at ``N // 2``.
        n_particles: number of particles.
        shape: micrograph shape ``(H, W)``.
        pixel_size_A: pixel size in Å/px.
        defocus_u_A, defocus_v_A, defocus_angle_deg: the micrograph's CTF (Å, degrees).
        snr: particle-box signal variance / noise variance (``math.inf``: no noise).
        ice_gradient: peak-to-peak background change across the micrograph, in units of the
            particle signal's standard deviation; thicker ice (darker) towards the returned angle.
        generator: source of randomness (positions, poses, ice direction, noise, in that order).
        voltage_kV, cs_mm, amplitude_contrast: optics.
        min_distance_px: minimum distance between particle centres (default ``N / 2``).
        margin_px: minimum distance of centres from the border (default ``N // 2 + 1``, so that a
            box of ``N`` around every particle is inside the micrograph).

    Returns:
        ``(H, W)`` micrograph (protein dark) and its :class:`MicrographTruth`.
    """
    n = int(volume.shape[-1])
    min_distance = n / 2 if min_distance_px is None else min_distance_px
    margin = n // 2 + 1 if margin_px is None else margin_px
    positions = random_positions(n_particles, shape, min_distance, margin, generator)
    rotations = random_rotations(n_particles, generator, device=_gen_device(generator))
    rotations = rotations.to(device=volume.device, dtype=volume.dtype)
    ice_angle_deg = float(_rand((1,), generator, torch.empty(0, dtype=torch.float64))) * 360.0

    projections = project_volume(volume, rotations)
    canvas = paste_images(-projections, positions.to(volume.device), shape)
    ctf = ctf_2d(
        defocus_u_A,
        defocus_v_A,
        defocus_angle_deg,
        voltage_kV=voltage_kV,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        pixel_size_A=pixel_size_A,
        shape=shape,
        device=volume.device,
        dtype=volume.dtype,
    )
    clean = apply_ctf(canvas, ctf)
    if n_particles > 0:
        boxes = extract_boxes(clean, positions, n)
        signal_std = float(boxes.flatten(start_dim=-2).var(dim=-1).mean().sqrt())
    else:
        signal_std = float(clean.std())
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    noise_std = 0.0 if math.isinf(snr) else signal_std / math.sqrt(snr)
    micrograph = add_gaussian_noise(clean, noise_std, generator)
    if ice_gradient != 0.0:
        ramp = ice_ramp(shape, ice_angle_deg, volume.device).to(volume.dtype)
        micrograph = micrograph - ice_gradient * signal_std * ramp
    truth = MicrographTruth(
        positions_px=positions,
        euler_deg=matrix_to_euler(rotations).cpu(),
        defocus_u_A=float(defocus_u_A),
        defocus_v_A=float(defocus_v_A),
        defocus_angle_deg=float(defocus_angle_deg),
        noise_std=noise_std,
        signal_std=signal_std,
        ice_gradient_angle_deg=ice_angle_deg,
    )
    return micrograph, truth


# --------------------------------------------------------------------------------------------
# movies


def smooth_drift_trajectory(
    n_frames: int,
    drift_px_per_frame: float,
    generator: torch.Generator | None = None,
    *,
    smoothness: float = 0.8,
) -> torch.Tensor:
    """Smooth random-walk drift of a whole micrograph, starting at (0, 0).

    The velocity starts in a random direction with speed ``drift_px_per_frame`` and changes by a
    random-walk step of ``(1 - smoothness) * drift_px_per_frame`` per frame (so the path curves
    gently); positions are the cumulative sum of velocities.

    Returns:
        ``(n_frames, 2)`` float64 displacements (x, y) in pixels of each frame relative to frame 0:
        a feature at (x, y) in frame 0 is at (x + dx_t, y + dy_t) in frame t.
    """
    ref = torch.empty(0, dtype=torch.float64)
    angle = 2 * math.pi * _rand((1,), generator, ref)
    velocity0 = drift_px_per_frame * torch.cat([torch.cos(angle), torch.sin(angle)])
    kicks = (
        (1.0 - smoothness) * drift_px_per_frame * _randn((max(n_frames - 2, 0), 2), generator, ref)
    )
    velocities = torch.cat([velocity0[None], velocity0 + torch.cumsum(kicks, dim=0)])
    steps = torch.cat([torch.zeros(1, 2, dtype=torch.float64), velocities])[:n_frames]
    return torch.cumsum(steps, dim=0)


#: Number of spatial basis functions of the local motion model (see :func:`local_motion_basis`).
N_LOCAL_BASIS = 5


def local_motion_basis(x_norm: torch.Tensor, y_norm: torch.Tensor) -> torch.Tensor:
    """Quadratic basis with zero mean over the square [-1, 1]²: x, y, x² - 1/3, xy, y² - 1/3.

    Args:
        x_norm, y_norm: ``(...)`` normalised coordinates (-1 at pixel 0, +1 at the last pixel).

    Returns:
        ``(..., 5)`` basis values.
    """
    return torch.stack(
        [x_norm, y_norm, x_norm**2 - 1 / 3, x_norm * y_norm, y_norm**2 - 1 / 3], dim=-1
    )


def random_local_motion(
    n_frames: int, amplitude_px: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Coefficients of a smooth local deformation that grows with time.

    The displacement of frame ``t`` at normalised position (x, y) is
    ``coefficients[t] @ local_motion_basis(x, y)``, with coefficients ``c1 tau + c2 tau^2``
    (``tau = t / (n_frames - 1)``), so frame 0 is undeformed; ``amplitude_px`` is the standard
    deviation of ``c1`` and ``c2``.

    Returns:
        ``(n_frames, 2, 5)`` float64 coefficients (x and y displacement, in pixels).
    """
    ref = torch.empty(0, dtype=torch.float64)
    c = amplitude_px * _randn((2, 2, N_LOCAL_BASIS), generator, ref)
    tau = torch.arange(n_frames, dtype=torch.float64) / max(n_frames - 1, 1)
    return tau[:, None, None] * c[0] + (tau**2)[:, None, None] * c[1]


def evaluate_local_motion(
    coefficients: torch.Tensor, shape: tuple[int, int], x_px: torch.Tensor, y_px: torch.Tensor
) -> torch.Tensor:
    """Local displacement (x, y) in pixels at micrograph pixel positions.

    Args:
        coefficients: ``(T, 2, 5)`` from :func:`random_local_motion`.
        shape: micrograph shape ``(H, W)`` (defines the normalisation).
        x_px, y_px: ``(...)`` positions in pixels.

    Returns:
        ``(T, ..., 2)`` displacements.
    """
    h, w = shape
    x_norm = 2 * x_px / max(w - 1, 1) - 1
    y_norm = 2 * y_px / max(h - 1, 1) - 1
    basis = local_motion_basis(x_norm, y_norm).to(coefficients)
    return torch.einsum("tck,...k->t...c", coefficients, basis)


def warp_image(image: torch.Tensor, displacement_px: torch.Tensor) -> torch.Tensor:
    """Move image content by a smooth displacement field: ``out(r) = image(r - d(r))`` (bicubic).

    Args:
        image: ``(H, W)`` real.
        displacement_px: ``(H, W, 2)`` displacement (x, y) in pixels, evaluated on the output grid.

    Returns:
        ``(H, W)`` warped image (border values replicated).
    """
    h, w = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=image.device, dtype=image.dtype),
        torch.arange(w, device=image.device, dtype=image.dtype),
        indexing="ij",
    )
    src_x = xs - displacement_px[..., 0].to(image.dtype)
    src_y = ys - displacement_px[..., 1].to(image.dtype)
    grid = torch.stack([2 * src_x / (w - 1) - 1, 2 * src_y / (h - 1) - 1], dim=-1)
    out = F.grid_sample(
        image[None, None], grid[None], mode="bicubic", padding_mode="border", align_corners=True
    )
    return out[0, 0]


@dataclass
class MovieTruth:
    """Ground truth of a simulated movie.

    Attributes:
        drift_px: ``(T, 2)`` global displacement (x, y) of each frame relative to frame 0, pixels.
        local_coefficients: ``(T, 2, 5)`` local deformation (see :func:`evaluate_local_motion`).
        local_grid_px: ``(T, gy, gx, 2)`` local displacement on a coarse grid of nodes.
        grid_x_px, grid_y_px: ``(gx,)`` and ``(gy,)`` node positions in pixels.
        gain: ``(H, W)`` gain reference (multiply the frames by it to get counts), or None.
        dose_per_frame_e_A2: dose per frame in e⁻/Å².
        expected_counts_per_pixel: ``dose_per_frame_e_A2 * pixel_size_A**2``.
    """

    drift_px: torch.Tensor
    local_coefficients: torch.Tensor
    local_grid_px: torch.Tensor
    grid_x_px: torch.Tensor
    grid_y_px: torch.Tensor
    gain: torch.Tensor | None
    dose_per_frame_e_A2: float
    expected_counts_per_pixel: float


def movie_contrast_for_snr(
    signal: torch.Tensor,
    snr: float,
    n_frames: int,
    *,
    dose_per_frame_e_A2: float,
    pixel_size_A: float,
    voltage_kV: float = 300.0,
    positions_px: torch.Tensor | None = None,
    box_px: int | None = None,
) -> float:
    """The ``contrast`` of :func:`simulate_movie` whose frame sum has signal-to-noise ``snr``.

    The sum of the ``T`` frames holds ``c T contrast s_d`` (``c = dose * pixel_size²`` counts per
    pixel and frame, ``s_d`` the signal low-pass filtered by the radiation damage averaged over
    the frames) on Poisson noise of variance ``c T``. Its SNR, ``c T contrast² var(s_d)``, is set
    to ``snr`` with ``var`` taken over the particle boxes (as :func:`simulate_micrograph` defines
    it), or over the whole image without positions. Leaving out the damage would make the sum's
    SNR too low (by about 20% at 20 e/Å², and its Thon rings at 7-10 Å by half).

    Args:
        signal: ``(H, W)`` the noise-free signal given to :func:`simulate_movie`.
        snr: requested SNR of the frame sum (> 0).
        n_frames, dose_per_frame_e_A2, pixel_size_A, voltage_kV: as for :func:`simulate_movie`.
        positions_px: ``(n, 2)`` particle centres (x, y) in pixels, or None.
        box_px: box edge for ``positions_px``.

    Returns:
        The contrast.
    """
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    h, w = signal.shape
    exposures = frame_exposures(n_frames, dose_per_frame_e_A2, dose_at="mid", dtype=torch.float64)
    damage = torch.zeros((h, w // 2 + 1), device=signal.device, dtype=signal.dtype)
    for exposure in exposures.tolist():
        damage += dose_attenuation(
            (h, w), pixel_size_A, exposure, voltage_kV, device=signal.device, dtype=signal.dtype
        )
    damaged = apply_ctf(signal, damage / n_frames)
    if positions_px is not None and box_px is not None and positions_px.shape[0] > 0:
        damaged = extract_boxes(damaged, positions_px, box_px)
    variance = float(damaged.flatten(start_dim=-2).var(dim=-1).mean())
    counts = dose_per_frame_e_A2 * pixel_size_A**2 * n_frames
    return math.sqrt(snr / (counts * max(variance, 1e-30)))


def simulate_movie(
    signal: torch.Tensor,
    n_frames: int,
    *,
    dose_per_frame_e_A2: float,
    pixel_size_A: float,
    contrast: float = 0.1,
    drift_px_per_frame: float = 1.0,
    local_motion_px: float = 0.0,
    voltage_kV: float = 300.0,
    gain_sigma: float | None = None,
    grid_shape: tuple[int, int] = (5, 5),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, MovieTruth]:
    """A dose-fractionated movie of a noise-free image with drift, local motion and shot noise.

    Frame ``t`` shows ``signal`` low-pass filtered by the radiation-damage attenuation
    ``exp(-D_t / (2 N_e(k)))`` (``D_t`` the dose accumulated by the middle of the frame), deformed
    by the local motion and moved by the global drift. Its counts are Poisson with mean
    ``dose_per_frame_e_A2 * pixel_size_A**2 * max(0, 1 + contrast * signal_t)``, so with a
    zero-mean ``signal`` the mean count per pixel and frame is ``dose * pixel_size²``.

    Args:
        signal: ``(H, W)`` relative contrast (e.g. a noise-free micrograph, protein dark, scaled
            to unit standard deviation).
        n_frames: number of frames ``T``.
        dose_per_frame_e_A2: dose per frame in e⁻/Å².
        pixel_size_A: pixel size in Å/px.
        contrast: scale of ``signal`` in the expected counts.
        drift_px_per_frame: speed of the global drift (see :func:`smooth_drift_trajectory`).
        local_motion_px: scale of the local deformation (see :func:`random_local_motion`).
        voltage_kV: for the critical exposure (scaled by 0.8 at 200 kV).
        gain_sigma: when given, a per-pixel gain ``1 + gain_sigma * N(0, 1)`` (clamped to >= 0.1)
            is drawn and the frames are ``counts / gain`` (float32); gain-correcting them
            (multiplying by the returned gain) gives back the counts. Without it, frames are raw
            counts as uint8 (when they fit) or uint16.
        grid_shape: ``(gy, gx)`` nodes of the coarse grid on which the local motion is reported.
        generator: source of randomness (drift, local motion, counts, gain, in that order).

    Returns:
        ``(T, H, W)`` frames and their :class:`MovieTruth`.
    """
    h, w = signal.shape
    device, dtype = signal.device, signal.dtype
    drift = smooth_drift_trajectory(n_frames, drift_px_per_frame, generator)
    coefficients = random_local_motion(n_frames, local_motion_px, generator)

    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    exposures = frame_exposures(n_frames, dose_per_frame_e_A2, dose_at="mid", dtype=torch.float64)
    signal_ft = torch.fft.rfft2(signal)
    expected = dose_per_frame_e_A2 * pixel_size_A**2
    frames = []
    for t in range(n_frames):  # one frame at a time: bounded memory for large micrographs
        attenuation = dose_attenuation(
            (h, w), pixel_size_A, float(exposures[t]), voltage_kV, device=device, dtype=dtype
        )
        frame = torch.fft.irfft2(signal_ft * attenuation, s=(h, w))
        if local_motion_px != 0.0:
            field = evaluate_local_motion(coefficients[t : t + 1].to(device), (h, w), xs, ys)[0]
            frame = warp_image(frame, field)
        frame = shift_images(frame, drift[t].to(device=device, dtype=dtype))
        rate = (expected * (1.0 + contrast * frame)).clamp(min=0.0)
        counts = torch.poisson(rate.to(_gen_device(generator)), generator=generator).to(device)
        frames.append(counts)
    movie = torch.stack(frames)
    gain = None
    if gain_sigma is not None:
        gain = (1.0 + gain_sigma * _randn((h, w), generator, signal)).clamp(min=0.1)
        movie = (movie / gain).to(torch.float32)
    elif movie.max() < 256:
        movie = movie.to(torch.uint8)
    else:
        movie = movie.to(torch.int32).clamp(max=65535).to(torch.uint16)

    gy, gx = grid_shape
    grid_y = torch.linspace(0, h - 1, gy, dtype=torch.float64)
    grid_x = torch.linspace(0, w - 1, gx, dtype=torch.float64)
    node_y, node_x = torch.meshgrid(grid_y, grid_x, indexing="ij")
    truth = MovieTruth(
        drift_px=drift,
        local_coefficients=coefficients,
        local_grid_px=evaluate_local_motion(coefficients, (h, w), node_x, node_y),
        grid_x_px=grid_x,
        grid_y_px=grid_y,
        gain=gain,
        dose_per_frame_e_A2=dose_per_frame_e_A2,
        expected_counts_per_pixel=expected,
    )
    return movie, truth
