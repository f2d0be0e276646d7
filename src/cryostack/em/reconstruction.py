"""Direct Fourier reconstruction by CTF-weighted back-projection (insertion of central slices).

For every image ``X`` with CTF ``C`` and pose ``A`` we accumulate, in a padded Fourier volume of
``M = round(oversampling * N)`` voxels (layout of :mod:`cryostack.em.projection`),

    data(q)   += Σ w · C · F(X)      weights(q) += Σ w · C²

with ``w`` the trilinear interpolation weights, then estimate the map as
``data / max(weights + 1/SNR, floor)``, transform back, divide by the gridding correction and crop
to ``N``. Particles stream through a :class:`Backprojector` in batches; two accumulators (e.g.
half sets) can be merged with :meth:`Backprojector.merge`.
"""

from __future__ import annotations

import torch

from cryostack.em.fourier import irfft3_centred, phase_shift_2d, rfft2_centred
from cryostack.em.projection import (
    Interpolation,
    complete_hermitian_plane,
    gridding_correction,
    insert_central_slices,
    padded_size,
)


class Backprojector:
    """Streaming accumulator of CTF-weighted central slices.

    Args:
        box_size: image / map size ``N`` in pixels.
        oversampling: padding factor of the Fourier volume.
        interpolation: "trilinear" or "nearest".
        device: where the accumulators live (images are moved there).
        r_max_px: highest frequency (image Fourier pixels) inserted, default ``N / 2``.

    Example::

        bp = Backprojector(128, device="cuda")
        for images, rotations, ctf in batches:
            bp.add(images, rotations, ctf=ctf)
        volume = bp.reconstruct()
    """

    def __init__(
        self,
        box_size: int,
        *,
        oversampling: float = 2.0,
        interpolation: Interpolation = "trilinear",
        device: torch.device | str | None = None,
        r_max_px: float | None = None,
    ) -> None:
        self.box_size = box_size
        self.interpolation: Interpolation = interpolation
        self.r_max_px = r_max_px
        m = padded_size(box_size, oversampling)
        shape = (m, m, m // 2 + 1)
        self.data = torch.zeros(shape, dtype=torch.complex64, device=device)
        self.weights = torch.zeros(shape, dtype=torch.float32, device=device)
        self.n_images = 0

    @property
    def padded_size(self) -> int:
        """Size ``M`` of the padded Fourier volume."""
        return int(self.data.shape[0])

    def add_fourier(
        self,
        images_ft: torch.Tensor,
        rotations: torch.Tensor,
        ctf: torch.Tensor | None = None,
    ) -> None:
        """Insert centred rffts ``(B, N, N // 2 + 1)`` of images with poses ``(B, 3, 3)``.

        ``ctf`` is ``(B, N, N // 2 + 1)`` real (rfft layout, e.g. from
        :func:`cryostack.em.ctf.ctf_2d`), or None for perfect images. The data term is
        multiplied by the CTF and the weight term receives CTF².
        """
        n = self.box_size
        if tuple(images_ft.shape[-2:]) != (n, n // 2 + 1):
            raise ValueError(
                f"image transforms must be (..., {n}, {n // 2 + 1}), got {tuple(images_ft.shape)}"
            )
        images_ft = images_ft.to(self.data.device)
        if ctf is not None:
            ctf = ctf.to(device=self.data.device, dtype=torch.float32)
            images_ft = images_ft * ctf
            weights_ft: torch.Tensor | None = (ctf * ctf).expand(images_ft.shape)
        else:
            weights_ft = None
        insert_central_slices(
            images_ft,
            rotations,
            self.data,
            weights_ft=weights_ft,
            weight_volume=self.weights,
            interpolation=self.interpolation,
            r_max_px=self.r_max_px,
        )
        self.n_images += int(images_ft.reshape(-1, n, n // 2 + 1).shape[0])

    def add(
        self,
        images: torch.Tensor,
        rotations: torch.Tensor,
        *,
        ctf: torch.Tensor | None = None,
        shifts_px: torch.Tensor | None = None,
    ) -> None:
        """Insert real images ``(B, N, N)`` (centre at ``N // 2``) with poses ``(B, 3, 3)``.

        Args:
            images: ``(B, N, N)`` real particle images.
            rotations: ``(B, 3, 3)`` matrices ``A`` (map frame -> image frame).
            ctf: ``(B, N, N // 2 + 1)`` real CTF in rfft layout, or None.
            shifts_px: ``(B, 2)`` (x, y) shift by which each image's particle is displaced from
                the box centre (image = projection shifted by ``+shift``); undone before
                insertion. For RELION ``rlnOriginXAngst/YAngst`` see
                :func:`relion_origin_to_shift_px`.
        """
        images = images.to(device=self.data.device, dtype=torch.float32)
        images_ft = rfft2_centred(images)
        if shifts_px is not None:
            shifts = -shifts_px.to(device=self.data.device, dtype=torch.float32)
            images_ft = phase_shift_2d(images_ft, shifts, (self.box_size, self.box_size))
        self.add_fourier(images_ft, rotations, ctf)

    def merge(self, other: Backprojector) -> None:
        """Add another accumulator's sums (same box and oversampling) into this one."""
        if other.data.shape != self.data.shape:
            raise ValueError("cannot merge back-projectors of different sizes")
        self.data += other.data.to(self.data.device)
        self.weights += other.weights.to(self.weights.device)
        self.n_images += other.n_images

    def reconstruct(
        self, *, wiener_constant: float = 0.0, weight_floor: float = 1e-3
    ) -> torch.Tensor:
        """Estimate the map from the accumulated sums (the accumulators are left unchanged).

        Args:
            wiener_constant: ``1/SNR`` term added to the weights (0 for noise-free data).
            weight_floor: weights are raised to at least this fraction of the mean non-zero
                weight, to keep sparsely sampled voxels from blowing up.

        Returns:
            ``(N, N, N)`` real map, centre at ``N // 2``.
        """
        return reconstruct(
            self.data,
            self.weights,
            self.box_size,
            interpolation=self.interpolation,
            wiener_constant=wiener_constant,
            weight_floor=weight_floor,
        )


def reconstruct(
    data: torch.Tensor,
    weights: torch.Tensor,
    box_size: int,
    *,
    interpolation: Interpolation = "trilinear",
    wiener_constant: float = 0.0,
    weight_floor: float = 1e-3,
) -> torch.Tensor:
    """Map from accumulated ``data`` (Σ C·F) and ``weights`` (Σ C²) half volumes.

    Args:
        data: ``(M, M, M // 2 + 1)`` complex accumulator (qx = 0 plane not yet completed).
        weights: ``(M, M, M // 2 + 1)`` real accumulator.
        box_size: output box ``N``.
        interpolation: the interpolation used for insertion (sets the gridding correction).
        wiener_constant: ``1/SNR`` added to the weights.
        weight_floor: fraction of the mean non-zero weight below which weights are raised.

    Returns:
        ``(N, N, N)`` real map, centre at ``N // 2``.
    """
    m = int(data.shape[0])
    data_full = complete_hermitian_plane(data)
    weights_full = complete_hermitian_plane(weights)
    sampled = weights_full > 0
    floor = weight_floor * weights_full[sampled].mean() if bool(sampled.any()) else 1.0
    denominator = torch.clamp(weights_full + wiener_constant, min=float(floor))
    volume_ft = torch.where(sampled, data_full / denominator, torch.zeros_like(data_full))
    volume_ft = torch.fft.ifftshift(volume_ft, dim=(0, 1))
    padded = irfft3_centred(volume_ft, (m, m, m))
    start = m // 2 - box_size // 2
    volume = padded[start : start + box_size, start : start + box_size, start : start + box_size]
    correction = gridding_correction(box_size, m, interpolation, volume.device, volume.dtype)
    return volume / correction


def relion_origin_to_shift_px(origin_xy_A: torch.Tensor, pixel_size_A: float) -> torch.Tensor:
    """Convert RELION ``(rlnOriginXAngst, rlnOriginYAngst)`` to the image shift used here.

    RELION 3.1's ``relion_project`` displaces a particle whose origin offset is ``o`` (Å) by
    ``-o / pixel_size`` pixels in the image (the particle's centre in the micrograph is
    ``coordinate - origin``; verified against ``relion_project`` in
    ``tests/em/test_relion_conventions.py``), so the shift is ``-origin / pixel_size``.
    """
    return -origin_xy_A / pixel_size_A
