"""Differentiable augmentation (DiffAugment) for data-efficient GAN training.

The three policies of Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training"
(NeurIPS 2020), with the magnitudes of their reference ``DiffAugment_pytorch.py``
(github.com/mit-han-lab/data-efficient-gans):

* ``color``: brightness shift in [-0.5, 0.5], saturation factor in [0, 2], contrast factor in
  [0.5, 1.5];
* ``translation``: integer shift of up to 1/8 of the side, zero fill;
* ``cutout``: a zeroed square of half the side at a random position.

The same augmentation is applied to real and generated images before the discriminator, and it
is differentiable, so the generator still gets gradients. Every draw comes from the
``torch.Generator`` passed in (never the global RNG), so training stays reproducible.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> diff_augment(torch.zeros(2, 3, 8, 8), "color,translation,cutout", g).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import GanInvertError

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; ``""`` -> no augmentation."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise GanInvertError(f"unknown augmentation {unknown[0]!r}; choose from {', '.join(POLICIES)}")
    return names


def _uniform(n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(n, 1, 1, 1) uniform [0, 1) draws, made on the CPU generator then moved to ``like``'s device."""
    return torch.rand(n, 1, 1, 1, generator=generator).to(like)


def _color(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    x = x + (_uniform(n, g, x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(n, g, x) * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_uniform(n, g, x) + 0.5) + mean


def _translation(x: torch.Tensor, g: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n, 1, 1), generator=g).to(x.device)
    tx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=g).to(x.device)
    # Index a 1-pixel zero-padded copy; indices pushed outside the image land on the zero border.
    gy = (torch.arange(h, device=x.device)[None, :, None] + ty + 1).clamp(0, h + 1).expand(n, h, w)
    gx = (torch.arange(w, device=x.device)[None, None, :] + tx + 1).clamp(0, w + 1).expand(n, h, w)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (N, H+2, W+2, C)
    batch = torch.arange(n, device=x.device)[:, None, None].expand(n, h, w)
    return padded[batch, gy, gx].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, g: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=g).to(x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=g).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :, None] - oy + ch // 2
    xs = torch.arange(w, device=x.device)[None, None, :] - ox + cw // 2
    inside = (ys >= 0) & (ys < ch) & (xs >= 0) & (xs < cw)  # (N, H, W)
    return x * (~inside).to(x.dtype)[:, None]


_OPS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: torch.Tensor, policy: str | tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """Apply the augmentations of ``policy`` (comma-separated string or tuple) in order.

    Args:
        x: (N, 3, H, W) images in [-1, 1].
        policy: subset of ``POLICIES``; empty means identity.
        generator: CPU ``torch.Generator`` supplying every random draw.
    """
    names = parse_policy(policy) if isinstance(policy, str) else policy
    for name in names:
        x = _OPS[name](x, generator)
    return x.contiguous()
