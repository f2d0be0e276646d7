"""Real-space rotation and translation of images by bilinear interpolation (``grid_sample``).

Rotations are about the image centre ``(W // 2, H // 2)``. A 2D rotation matrix ``R`` acting on
(x, y) moves the content: a feature at ``c + r`` ends up at ``c + R r + s`` (``s`` the shift in
pixels). With x = column and y = row, a positive angle turns +x towards +y (clockwise when row 0
is displayed at the top). Pixels sampled from outside the input are 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rotation_matrix_2d(angles_deg: torch.Tensor) -> torch.Tensor:
    """``(..., 2, 2)`` matrices ``[[cos, -sin], [sin, cos]]`` acting on (x, y)."""
    a = torch.deg2rad(angles_deg)
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def transform_images(
    images: torch.Tensor,
    rotations_2d: torch.Tensor | None = None,
    shifts_px: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate (about ``N // 2``) then shift images, bilinear interpolation, batched.

    Args:
        images: ``(B, H, W)`` real.
        rotations_2d: ``(B, 2, 2)`` matrices acting on (x, y), or None.
        shifts_px: ``(B, 2)`` (x, y) shifts in pixels, or None.

    Returns:
        ``(B, H, W)``: ``out(c + R r + s) = in(c + r)``.
    """
    if images.ndim != 3:
        raise ValueError(f"images must be (B, H, W), got {tuple(images.shape)}")
    b, h, w = images.shape
    device, dtype = images.device, images.dtype
    rot = (
        torch.eye(2, device=device, dtype=dtype).expand(b, 2, 2)
        if rotations_2d is None
        else rotations_2d.to(device=device, dtype=dtype).expand(b, 2, 2)
    )
    shift = (
        torch.zeros(b, 2, device=device, dtype=dtype)
        if shifts_px is None
        else shifts_px.to(device=device, dtype=dtype).expand(b, 2)
    )
    ys = torch.arange(h, device=device, dtype=dtype) - h // 2
    xs = torch.arange(w, device=device, dtype=dtype) - w // 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    out_xy = torch.stack([gx, gy], -1).reshape(1, -1, 2) - shift[:, None, :]  # (B, P, 2)
    # source position r = Rᵀ (r_out - s); as row vectors: r = (r_out - s) @ R
    src = out_xy @ rot
    src_x = (src[..., 0] + w // 2) * (2.0 / (w - 1)) - 1.0
    src_y = (src[..., 1] + h // 2) * (2.0 / (h - 1)) - 1.0
    grid = torch.stack([src_x, src_y], -1).reshape(b, h, w, 2)
    out = F.grid_sample(
        images[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out[:, 0]


def rotate_images(images: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotate ``(B, H, W)`` images by ``angles_deg (B,)`` about ``N // 2`` (see module doc)."""
    return transform_images(images, rotations_2d=rotation_matrix_2d(angles_deg.to(images.dtype)))


def translate_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Shift ``(B, H, W)`` images by ``(B, 2)`` (x, y) pixels with bilinear interpolation
    (zero fill, unlike the periodic :func:`cryostack.em.fourier.shift_images`)."""
    return transform_images(images, shifts_px=shifts_px)
