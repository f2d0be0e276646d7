"""Particle extraction: boxes around picks, edge dropping, binning, contrast inversion,
background normalisation and phase flipping (pure tensor math).

Conventions (``em-conventions.md``, :mod:`cryostack.em.grids`):

- Positions are ``(n, 2)`` (x, y) micrograph pixels, origin at the top-left of the array. A box
  is centred on the *rounded* position: its pixel ``N // 2`` is micrograph pixel
  ``(round(x), round(y))`` (no sub-pixel interpolation; the residual is below half a pixel and
  is what a RELION origin of ``-(x - round(x)) * pixel_size`` would describe).
- Boxes that would reach beyond the micrograph are dropped (and counted), never padded.
- Raw micrographs show protein dark; RELION particle images show protein white, so extraction
  inverts the contrast by default (:mod:`cryostack.em.simulate` follows the same convention).
- Normalisation follows RELION: the area outside a circle of ``background_radius_px`` (in output
  pixels) gets mean 0 and standard deviation 1.
- Binning is Fourier cropping (:func:`cryostack.em.fourier.fourier_crop`): a box of ``N`` px at
  pixel size ``p`` becomes ``n`` px at ``p * N / n``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryostack.em.ctf import phase_flip
from cryostack.em.filters import normalise_background
from cryostack.em.fourier import fourier_crop


def box_centres(positions_px: torch.Tensor) -> torch.Tensor:
    """Integer box centres ``(n, 2)`` int64 (x, y): the positions rounded to the nearest pixel."""
    return torch.round(positions_px.to(torch.float64)).long()


def boxes_inside(centres_px: torch.Tensor, box_px: int, shape: tuple[int, int]) -> torch.Tensor:
    """Which boxes of ``box_px`` centred (pixel ``box // 2``) on ``centres_px`` fit in the image.

    Args:
        centres_px: ``(n, 2)`` integer (x, y) centres.
        box_px: box size in pixels.
        shape: image shape ``(H, W)``.

    Returns:
        ``(n,)`` boolean: the box's first pixel is >= 0 and its last < the size, on both axes.
    """
    low = centres_px - box_px // 2
    high = low + box_px - 1
    size = torch.tensor([shape[1], shape[0]], device=centres_px.device)
    return ((low >= 0) & (high < size)).all(dim=-1)


def cut_boxes(image: torch.Tensor, centres_px: torch.Tensor, box_px: int) -> torch.Tensor:
    """Copies of ``box_px`` boxes of ``image`` ``(H, W)`` centred on ``centres_px`` ``(n, 2)``
    (all inside: see :func:`boxes_inside`) -> ``(n, box, box)``."""
    offsets = torch.arange(box_px, device=image.device) - box_px // 2
    centres = centres_px.to(image.device)
    rows = (centres[:, 1, None] + offsets)[:, :, None]
    cols = (centres[:, 0, None] + offsets)[:, None, :]
    return image[rows, cols]


@dataclass
class ExtractedBoxes:
    """Boxes cut from one micrograph.

    Attributes:
        boxes: ``(k, N, N)`` raw boxes (micrograph contrast and units).
        centres_px: ``(k, 2)`` int64 (x, y) micrograph pixels of the boxes' centres.
        kept: ``(n,)`` boolean over the input positions: True where the box fitted.
    """

    boxes: torch.Tensor
    centres_px: torch.Tensor
    kept: torch.Tensor

    @property
    def n_dropped(self) -> int:
        """Positions whose box reached beyond the micrograph."""
        return int((~self.kept).sum())


def extract_boxes(
    micrograph: torch.Tensor, positions_px: torch.Tensor, box_px: int
) -> ExtractedBoxes:
    """Boxes around the (rounded) positions; boxes that do not fit are dropped.

    Args:
        micrograph: ``(H, W)`` real.
        positions_px: ``(n, 2)`` (x, y) pixels.
        box_px: box size (>= 2).

    Returns:
        :class:`ExtractedBoxes`.
    """
    if box_px < 2:
        raise ValueError(f"box size must be >= 2 px, got {box_px}")
    shape = (int(micrograph.shape[-2]), int(micrograph.shape[-1]))
    centres = box_centres(positions_px).to(micrograph.device)
    kept = boxes_inside(centres, box_px, shape)
    inside = centres[kept]
    return ExtractedBoxes(cut_boxes(micrograph, inside, box_px), inside, kept)


def default_background_radius_px(box_px: int) -> float:
    """RELION's default background radius: 75 % of half the box (in output pixels)."""
    return 0.375 * box_px


def prepare_particles(
    boxes: torch.Tensor,
    *,
    rescaled_size_px: int | None = None,
    invert_contrast: bool = True,
    normalise: bool = True,
    background_radius_px: float | None = None,
    ctf: torch.Tensor | None = None,
) -> torch.Tensor:
    """Turn raw boxes into particle images: phase flip, binning, inversion, normalisation.

    Args:
        boxes: ``(..., N, N)`` raw boxes from a micrograph.
        rescaled_size_px: output size ``n <= N`` (Fourier cropping; None keeps ``N``).
        invert_contrast: negate (raw micrographs: protein dark -> RELION: protein white).
        normalise: background (outside ``background_radius_px``) to mean 0, std 1.
        background_radius_px: radius in output pixels (default 0.375 x output size).
        ctf: ``(..., N, N // 2 + 1)`` CTF of the boxes (rfft grid, RELION sign, at the
            micrograph's pixel size); when given the boxes are phase-flipped (Fourier
            coefficients times ``sign(CTF)``) before binning.

    Returns:
        ``(..., n, n)`` float32 particle images.
    """
    images = boxes.to(torch.float32)
    n = int(images.shape[-1])
    if ctf is not None:
        flipped = phase_flip(torch.fft.rfft2(images), ctf.to(images.device, torch.float32))
        images = torch.fft.irfft2(flipped, s=(n, n))
    if rescaled_size_px is not None and rescaled_size_px != n:
        if rescaled_size_px > n:
            raise ValueError(f"rescaled size {rescaled_size_px} px exceeds the box of {n} px")
        images = fourier_crop(images, rescaled_size_px)
    if invert_contrast:
        images = -images
    if normalise:
        size = int(images.shape[-1])
        radius = (
            default_background_radius_px(size)
            if background_radius_px is None
            else background_radius_px
        )
        images = normalise_background(images, radius)
    return images


def binned_pixel_size_A(pixel_size_A: float, box_px: int, rescaled_size_px: int | None) -> float:
    """Pixel size of particles cut as ``box_px`` boxes and Fourier-cropped to ``rescaled``."""
    if rescaled_size_px is None:
        return pixel_size_A
    return pixel_size_A * box_px / rescaled_size_px
