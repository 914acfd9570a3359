"""Geometric warps of images and feature maps: rotation, scale and translation about the centre.

The out-of-distribution shifts of SPHInX Fig. 5, used by the ``ood-geometric`` suite and by the
learned inverters' training pictures.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import GanInvertError

BORDERS = ("reflect", "edge", "black")
_GRID_SAMPLE_PADDING = {"reflect": "reflection", "edge": "border", "black": "zeros"}


def affine_grid(shape: Sequence[int], *, angle: float = 0.0, scale: float = 1.0, tx: float = 0.0,
                ty: float = 0.0, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The ``grid_sample`` grid (N, H, W, 2) of :func:`affine_shift` for a tensor of ``shape``.

    The shift is defined in normalised coordinates, so one grid per side warps an image and a
    feature map of the same picture alike (``affine_shift`` documents the arguments).
    """
    if scale <= 0:
        raise GanInvertError(f"scale must be > 0, got {scale}")
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # Forward map in y-down normalised coordinates: p' = scale * R p + t with R the on-screen
    # counter-clockwise rotation [[cos, sin], [-sin, cos]]. affine_grid wants the inverse map
    # (output -> input): p = R^T (p' - t) / scale. Normalised coordinates span 2 per side.
    t = (2 * tx, 2 * ty)
    inv = [[cos / scale, -sin / scale], [sin / scale, cos / scale]]
    offset = [-(inv[0][0] * t[0] + inv[0][1] * t[1]), -(inv[1][0] * t[0] + inv[1][1] * t[1])]
    matrix = torch.tensor([[inv[0][0], inv[0][1], offset[0]], [inv[1][0], inv[1][1], offset[1]]],
                          dtype=dtype, device=device)
    return F.affine_grid(matrix.expand(shape[0], 2, 3), list(shape), align_corners=False)


def affine_shift(image: torch.Tensor, *, angle: float = 0.0, scale: float = 1.0, tx: float = 0.0,
                 ty: float = 0.0, border: str = "reflect") -> torch.Tensor:
    """Rotate (degrees, counter-clockwise as seen), scale about the centre, then translate.

    Args:
        image: (N, 3, H, W) square images in [-1, 1].
        angle: rotation in degrees; positive turns the content counter-clockwise on screen.
        scale: zoom factor (> 1 enlarges the content).
        tx, ty: translation as a fraction of the image side (right and down positive).
        border: fill of the uncovered region, one of :data:`BORDERS`.

    Example:
        >>> x = torch.zeros(1, 3, 8, 8)
        >>> affine_shift(x, angle=10).shape
        torch.Size([1, 3, 8, 8])
    """
    if border not in BORDERS:
        raise GanInvertError(f"unknown border fill {border!r}; choose one of {', '.join(BORDERS)}")
    grid = affine_grid(image.shape, angle=angle, scale=scale, tx=tx, ty=ty, dtype=image.dtype, device=image.device)
    # Zero padding of (image + 1) is black (-1) after shifting back.
    source = image + 1 if border == "black" else image
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode=_GRID_SAMPLE_PADDING[border],
                           align_corners=False)
    return warped - 1 if border == "black" else warped
