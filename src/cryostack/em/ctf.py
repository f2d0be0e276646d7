"""Contrast transfer function (RELION convention) and CTF correction filters.

Convention (see shared em-conventions): with ``s`` the spatial frequency in 1/Å and ``theta`` its
angle from the x axis (``atan2(ky, kx)``, ky along image rows),

- defocus ``df(theta) = (df_u + df_v)/2 + (df_u - df_v)/2 * cos(2 (theta - theta_ast))``,
  positive = underfocus, ``theta_ast`` = rlnDefocusAngle measured from the x axis;
- ``gamma = -pi lambda df s^2 + (pi/2) Cs lambda^3 s^4 - phase_shift - atan(Q0 / sqrt(1 - Q0^2))``;
- ``CTF = -scale * sin(gamma) * exp(-B s^2 / 4)``, hence ``CTF(0) = +Q0`` (RELION sign; CTFFIND,
  cisTEM and cryoDRGN use the opposite overall sign).

Grids are torch's unshifted FFT order; ``rfft=True`` gives ``W // 2 + 1`` columns.
"""

from __future__ import annotations

import math

import torch

from cryostack.em.grids import fftfreq_grid_2d

Scalar = float | torch.Tensor


def electron_wavelength_A(voltage_kV: Scalar) -> Scalar:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV.

    ``lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))`` with V in volts (300 kV: 0.019687 Å).
    """
    volts = voltage_kV * 1e3
    if isinstance(volts, torch.Tensor):
        return 12.2643247 / torch.sqrt(volts * (1.0 + 0.978466e-6 * volts))
    return 12.2643247 / math.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def _first_tensor(*values: object) -> torch.Tensor | None:
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    return None


def _as_tensor(value: Scalar, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor on ``like``'s device and dtype with two trailing unit dims."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t[..., None, None]


def ctf_at_frequencies(
    kx_invA: torch.Tensor,
    ky_invA: torch.Tensor,
    defocus_u_A: Scalar,
    defocus_v_A: Scalar,
    defocus_angle_deg: Scalar,
    *,
    voltage_kV: Scalar,
    cs_mm: Scalar,
    amplitude_contrast: Scalar,
    phase_shift_deg: Scalar = 0.0,
    bfactor_A2: Scalar = 0.0,
    scale: Scalar = 1.0,
) -> torch.Tensor:
    """CTF at arbitrary 2D spatial frequencies.

    Args:
        kx_invA, ky_invA: ``(H, W)`` (or any 2D) frequency components in 1/Å.
        defocus_u_A, defocus_v_A: defocus in Å (positive = underfocus), float or tensor ``(...)``.
        defocus_angle_deg: astigmatism angle theta_ast in degrees from the x axis, float or
            ``(...)``.
        voltage_kV, cs_mm, amplitude_contrast: optics, floats or tensors ``(...)``.
        phase_shift_deg: phase-plate shift in degrees, float or ``(...)``.
        bfactor_A2: envelope B-factor in Å^2 (envelope ``exp(-B s^2 / 4)``), float or ``(...)``.
        scale: overall scale factor, float or ``(...)``.

    Returns:
        ``(..., H, W)`` CTF values; the leading dims are the broadcast of the parameter shapes.
        Device and dtype follow ``kx_invA``.
    """
    like = kx_invA
    df_u = _as_tensor(defocus_u_A, like)
    df_v = _as_tensor(defocus_v_A, like)
    angle = _as_tensor(defocus_angle_deg, like) * (math.pi / 180.0)
    wavelength = electron_wavelength_A(_as_tensor(voltage_kV, like))
    cs_A = _as_tensor(cs_mm, like) * 1e7
    q0 = _as_tensor(amplitude_contrast, like)
    phase = _as_tensor(phase_shift_deg, like) * (math.pi / 180.0)
    bfactor = _as_tensor(bfactor_A2, like)
    scale_t = _as_tensor(scale, like)

    s2 = kx_invA**2 + ky_invA**2
    theta = torch.atan2(ky_invA, kx_invA)
    defocus = 0.5 * (df_u + df_v) + 0.5 * (df_u - df_v) * torch.cos(2.0 * (theta - angle))
    amplitude_phase = torch.atan(q0 / torch.sqrt(1.0 - q0 * q0))
    gamma = (
        -math.pi * wavelength * defocus * s2
        + 0.5 * math.pi * cs_A * wavelength**3 * s2 * s2
        - phase
        - amplitude_phase
    )
    return -scale_t * torch.sin(gamma) * torch.exp(-bfactor * s2 / 4.0)


def ctf_2d(
    defocus_u_A: Scalar,
    defocus_v_A: Scalar,
    defocus_angle_deg: Scalar,
    *,
    voltage_kV: Scalar,
    cs_mm: Scalar,
    amplitude_contrast: Scalar,
    pixel_size_A: float,
    shape: tuple[int, int],
    phase_shift_deg: Scalar = 0.0,
    bfactor_A2: Scalar = 0.0,
    scale: Scalar = 1.0,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """CTF on the (unshifted) 2D FFT grid of an image, RELION convention (``CTF(0) = +Q0``).

    Args:
        defocus_u_A, defocus_v_A: defocus in Å, positive = underfocus; float or tensor ``(...)``.
        defocus_angle_deg: astigmatism angle in degrees from the x axis (rlnDefocusAngle).
        voltage_kV: acceleration voltage in kV.
        cs_mm: spherical aberration in mm.
        amplitude_contrast: amplitude contrast Q0 (fraction, e.g. 0.1).
        pixel_size_A: pixel size in Å/px.
        shape: image shape ``(H, W)`` in pixels.
        phase_shift_deg: phase-plate shift in degrees.
        bfactor_A2: envelope B-factor in Å^2 (``exp(-B s^2 / 4)``).
        scale: scale factor.
        rfft: ``W // 2 + 1`` columns (for ``torch.fft.rfft2``) instead of ``W``.
        device, dtype: default to the first tensor parameter's device / float32.

    Returns:
        ``(..., H, W // 2 + 1)`` if ``rfft`` else ``(..., H, W)``; ``...`` is the broadcast shape of
        the tensor parameters.
    """
    ref = _first_tensor(
        defocus_u_A,
        defocus_v_A,
        defocus_angle_deg,
        phase_shift_deg,
        bfactor_A2,
        scale,
        voltage_kV,
        cs_mm,
        amplitude_contrast,
    )
    if device is None and ref is not None:
        device = ref.device
    if dtype is None:
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    freqs = fftfreq_grid_2d(shape, pixel_size_A=pixel_size_A, rfft=rfft, device=device, dtype=dtype)
    return ctf_at_frequencies(
        freqs[..., 0],
        freqs[..., 1],
        defocus_u_A,
        defocus_v_A,
        defocus_angle_deg,
        voltage_kV=voltage_kV,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        phase_shift_deg=phase_shift_deg,
        bfactor_A2=bfactor_A2,
        scale=scale,
    )


def ctf_1d(
    s_invA: torch.Tensor,
    defocus_A: Scalar,
    *,
    voltage_kV: Scalar,
    cs_mm: Scalar,
    amplitude_contrast: Scalar,
    phase_shift_deg: Scalar = 0.0,
    bfactor_A2: Scalar = 0.0,
    scale: Scalar = 1.0,
) -> torch.Tensor:
    """Radial CTF profile without astigmatism.

    Args:
        s_invA: ``(N,)`` spatial frequencies in 1/Å.
        defocus_A: defocus in Å (positive = underfocus), float or tensor ``(...)``.

    Returns:
        ``(..., N)`` CTF values (same convention as :func:`ctf_2d`).
    """
    values = ctf_at_frequencies(
        s_invA[None, :],
        torch.zeros_like(s_invA)[None, :],
        defocus_A,
        defocus_A,
        0.0,
        voltage_kV=voltage_kV,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude_contrast,
        phase_shift_deg=phase_shift_deg,
        bfactor_A2=bfactor_A2,
        scale=scale,
    )
    return values.squeeze(-2)


def ctf_zeros_invA(
    defocus_A: float, *, voltage_kV: float, cs_mm: float, amplitude_contrast: float, n_zeros: int
) -> torch.Tensor:
    """Spatial frequencies (1/Å) of the first ``n_zeros`` CTF zeros for a non-astigmatic defocus.

    Solves ``gamma(s) = -k pi`` (k = 1, 2, ...) for ``s^2`` (quadratic in ``s^2``), without phase
    shift. Useful for checks and for Thon-ring fitting.

    Returns:
        ``(n_zeros,)`` float64 tensor of increasing frequencies.
    """
    wavelength = float(electron_wavelength_A(voltage_kV))
    cs_A = cs_mm * 1e7
    w = math.atan(amplitude_contrast / math.sqrt(1.0 - amplitude_contrast**2))
    k = torch.arange(1, n_zeros + 1, dtype=torch.float64)
    # (pi/2) Cs l^3 u^2 - pi l df u - w + k pi = 0, u = s^2; smaller positive root.
    a = 0.5 * math.pi * cs_A * wavelength**3
    b = -math.pi * wavelength * defocus_A
    c = k * math.pi - w
    u = -c / b if cs_A == 0 else (-b - torch.sqrt(b * b - 4 * a * c)) / (2 * a)
    return torch.sqrt(u)


def phase_flip(image_ft: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Phase flipping: multiply Fourier coefficients by ``sign(CTF)``.

    Args:
        image_ft: ``(..., H, W')`` complex Fourier transform of the image(s).
        ctf: ``(..., H, W')`` CTF on the same grid (broadcast).

    Returns:
        ``(..., H, W')`` corrected transform; where the CTF is exactly 0 the coefficient is kept.
    """
    sign = torch.where(ctf < 0, -1.0, 1.0).to(ctf.dtype)
    return image_ft * sign


def wiener_filter(
    image_ft: torch.Tensor, ctf: torch.Tensor, snr_or_regulariser: Scalar
) -> torch.Tensor:
    """Wiener CTF correction ``F * CTF / (CTF^2 + 1/SNR)``.

    Args:
        image_ft: ``(..., H, W')`` complex Fourier transform of the image(s).
        ctf: ``(..., H, W')`` CTF (broadcast).
        snr_or_regulariser: the regulariser ``epsilon = 1/SNR`` added to ``CTF^2``; float or a
            tensor broadcastable to the grid (e.g. a per-frequency ``1/SNR(s)``). Must be > 0.

    Returns:
        ``(..., H, W')`` corrected transform.
    """
    if isinstance(snr_or_regulariser, torch.Tensor):
        if bool((snr_or_regulariser <= 0).any()):
            raise ValueError("wiener_filter: the regulariser (1/SNR) must be > 0")
    elif snr_or_regulariser <= 0:
        raise ValueError(
            f"wiener_filter: the regulariser (1/SNR) must be > 0, got {snr_or_regulariser}"
        )
    return image_ft * (ctf / (ctf * ctf + snr_or_regulariser))
