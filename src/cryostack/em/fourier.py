"""Fourier-space helpers: centred FFTs, sub-pixel shifts, Fourier cropping and padding.

Conventions (see :mod:`cryostack.em.grids`): images are ``(..., H, W)``, volumes ``(..., D, H, W)``;
the real-space origin is at index ``N // 2`` along each axis. A *centred* FFT is the FFT of the
array with that origin moved to index 0 (``ifftshift`` before the transform), so that a real,
centro-symmetric object about ``N // 2`` has a real Fourier transform. Fourier arrays stay in
torch's unshifted order with ``W // 2 + 1`` columns (rfft layout).
"""

from __future__ import annotations

import math

import torch

from cryostack.em.grids import fftfreq_grid_2d


def rfft2_centred(images: torch.Tensor) -> torch.Tensor:
    """rfft of images whose real-space origin is at ``(H // 2, W // 2)``.

    Args:
        images: ``(..., H, W)`` real.

    Returns:
        ``(..., H, W // 2 + 1)`` complex, unshifted frequency order, unnormalised.
    """
    shifted = torch.fft.ifftshift(images, dim=(-2, -1))
    return torch.fft.rfft2(shifted)


def irfft2_centred(images_ft: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`rfft2_centred`.

    Args:
        images_ft: ``(..., H, W // 2 + 1)`` complex.
        shape: real-space image shape ``(H, W)``.

    Returns:
        ``(..., H, W)`` real images with the origin at ``(H // 2, W // 2)``.
    """
    images = torch.fft.irfft2(images_ft, s=shape)
    return torch.fft.fftshift(images, dim=(-2, -1))


def rfft3_centred(volumes: torch.Tensor) -> torch.Tensor:
    """rfft of volumes whose real-space origin is at ``(D // 2, H // 2, W // 2)``.

    Args:
        volumes: ``(..., D, H, W)`` real.

    Returns:
        ``(..., D, H, W // 2 + 1)`` complex, unshifted frequency order.
    """
    shifted = torch.fft.ifftshift(volumes, dim=(-3, -2, -1))
    return torch.fft.rfftn(shifted, dim=(-3, -2, -1))


def irfft3_centred(volumes_ft: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`rfft3_centred`; returns ``(..., D, H, W)`` real volumes."""
    volumes = torch.fft.irfftn(volumes_ft, s=shape, dim=(-3, -2, -1))
    return torch.fft.fftshift(volumes, dim=(-3, -2, -1))


def phase_shift_2d(
    image_ft: torch.Tensor, shifts_px: torch.Tensor, image_shape: tuple[int, int]
) -> torch.Tensor:
    """Shift images by a sub-pixel amount by multiplying their rfft with a phase ramp.

    The content moves by ``+shifts``: the output image is ``f(r - s)``, i.e. a feature at
    pixel (x, y) ends up at (x + sx, y + sy). The shift is periodic (content wraps around).

    Args:
        image_ft: ``(..., H, W // 2 + 1)`` complex rfft (centred or not; the ramp is the same).
        shifts_px: ``(..., 2)`` shifts (x, y) in pixels, broadcastable against the batch dims.
        image_shape: real-space shape ``(H, W)``.

    Returns:
        ``(..., H, W // 2 + 1)`` complex shifted transform.
    """
    freqs = fftfreq_grid_2d(
        image_shape, rfft=True, device=image_ft.device, dtype=shifts_px.dtype
    )  # (H, W', 2) cycles/px
    shifts = shifts_px.to(image_ft.device)[..., None, None, :]  # (..., 1, 1, 2)
    phase = -2.0 * math.pi * (freqs * shifts).sum(dim=-1)
    return image_ft * torch.polar(torch.ones_like(phase), phase)


def shift_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Shift real images by ``+shifts`` (x, y) pixels (periodic, exact band-limited shift).

    Args:
        images: ``(..., H, W)`` real.
        shifts_px: ``(..., 2)`` shifts (x, y) in pixels.

    Returns:
        ``(..., H, W)`` real shifted images.
    """
    shape = (images.shape[-2], images.shape[-1])
    image_ft = torch.fft.rfft2(images)
    return torch.fft.irfft2(phase_shift_2d(image_ft, shifts_px, shape), s=shape)


def _crop_or_pad_ft(x: torch.Tensor, new_shape: tuple[int, ...]) -> torch.Tensor:
    """Crop or zero-pad the (full, unshifted) FFT of ``x`` over its last ``len(new_shape)`` dims."""
    ndim = len(new_shape)
    dims = tuple(range(-ndim, 0))
    old_shape = tuple(x.shape[-ndim:])
    x_ft = torch.fft.fftshift(torch.fft.fftn(x, dim=dims), dim=dims)
    out = x_ft
    for axis, (n_old, n_new) in zip(dims, zip(old_shape, new_shape, strict=True), strict=True):
        if n_new < n_old:
            start = n_old // 2 - n_new // 2
            out = out.narrow(axis, start, n_new)
        elif n_new > n_old:
            pad_shape = list(out.shape)
            pad_shape[axis] = n_new
            padded = out.new_zeros(pad_shape)
            start = n_new // 2 - n_old // 2
            padded.narrow(axis, start, n_old).copy_(out)
            out = padded
    out = torch.fft.ifftn(torch.fft.ifftshift(out, dim=dims), dim=dims)
    scale = math.prod(new_shape) / math.prod(old_shape)
    return out.real * scale


def _as_shape(size: int | tuple[int, ...], ndim: int) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size,) * ndim
    if len(size) != ndim:
        raise ValueError(f"expected {ndim} sizes, got {size!r}")
    return tuple(size)


def fourier_crop(
    images: torch.Tensor, new_size: int | tuple[int, ...], ndim: int = 2
) -> torch.Tensor:
    """Bin images (or volumes) by keeping only the low frequencies of their Fourier transform.

    The pixel size grows by ``old_size / new_size``. Values are scaled so that the mean
    (and any low-resolution feature) is preserved, as for averaging-based binning.

    Args:
        images: ``(..., H, W)`` real images (or ``(..., D, H, W)`` volumes with ``ndim=3``).
        new_size: output size per axis (an int for all axes), each <= the input size.
        ndim: number of trailing spatial dimensions (2 or 3).

    Returns:
        ``(..., *new_shape)`` real array.
    """
    new_shape = _as_shape(new_size, ndim)
    if any(n > o for n, o in zip(new_shape, images.shape[-ndim:], strict=True)):
        raise ValueError(f"fourier_crop: new size {new_shape} exceeds {tuple(images.shape)}")
    return _crop_or_pad_ft(images, new_shape)


def fourier_pad(
    images: torch.Tensor, new_size: int | tuple[int, ...], ndim: int = 2
) -> torch.Tensor:
    """Upsample (interpolate) images or volumes by zero-padding their Fourier transform.

    The pixel size shrinks by ``old_size / new_size``; the mean value is preserved.

    Args:
        images: ``(..., H, W)`` real images (or ``(..., D, H, W)`` volumes with ``ndim=3``).
        new_size: output size per axis, each >= the input size.
        ndim: number of trailing spatial dimensions (2 or 3).

    Returns:
        ``(..., *new_shape)`` real array.
    """
    new_shape = _as_shape(new_size, ndim)
    if any(n < o for n, o in zip(new_shape, images.shape[-ndim:], strict=True)):
        raise ValueError(f"fourier_pad: new size {new_shape} is smaller than {tuple(images.shape)}")
    return _crop_or_pad_ft(images, new_shape)
