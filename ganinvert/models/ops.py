"""Resampling and activation primitives of StyleGAN2 in pure PyTorch.

Two formulations are kept side by side:

* ``upfirdn2d_reference`` follows the reference code's native ``upfirdn2d`` (zero insertion,
  padding, FIR filter, decimation); the ``"reference"`` synthesis path uses it.
* ``blur`` and ``upsample2x`` compute the same results with one depthwise (transposed)
  convolution each and no zero insertion; the ``"fast"`` path uses them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """2-D FIR kernel, the outer product of ``taps`` with itself, normalised to sum 1.

    >>> make_kernel([1, 3, 3, 1]).sum().item()
    1.0
    """
    k = torch.tensor(list(taps), dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float = 0.2,
                     scale: float = SQRT2) -> torch.Tensor:
    """``leaky_relu(x + bias) * sqrt(2)``: StyleGAN2's gain-preserving activation.

    ``bias`` has one entry per channel (dim 1 of ``x``).
    """
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.view(shape)
    return F.leaky_relu(x, negative_slope) * scale


def upfirdn2d_reference(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
                        pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR-filter and downsample (the reference native op).

    Args:
        x: (N, C, H, W) input.
        kernel: (kh, kw) FIR filter; it is flipped, as in the reference implementation.
        up, down: integer factors, the same for both axes.
        pad: (before, after) padding, the same for both axes; negative values crop.
    """
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    out = x.reshape(n * c, h, 1, w, 1, 1)
    out = F.pad(out, [0, 0, 0, up - 1, 0, 0, 0, up - 1])
    out = out.view(n * c, h * up, w * up, 1)
    p0, p1 = pad
    out = F.pad(out, [0, 0, max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    out = out[:, max(-p0, 0): out.shape[1] - max(-p1, 0), max(-p0, 0): out.shape[2] - max(-p1, 0), :]
    out = out.permute(0, 3, 1, 2)
    hp, wp = out.shape[2], out.shape[3]
    weight = torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).to(out)
    out = F.conv2d(out, weight)
    out = out.reshape(n * c, 1, hp - kh + 1, wp - kw + 1)[:, :, ::down, ::down]
    return out.reshape(n, c, out.shape[2], out.shape[3])


def blur(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Depthwise FIR filter with padding ``pad``; equals ``upfirdn2d_reference(x, kernel, pad=pad)``.

    The kernel must be symmetric (StyleGAN2's are), so no flip is needed.
    """
    c = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = kernel.to(x).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=c)


def upsample2x(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2x FIR upsampling as one depthwise transposed convolution (no zero insertion).

    Equals ``upfirdn2d_reference(x, kernel, up=2, pad=(2, 1))`` for a symmetric 4x4 kernel
    already scaled by ``up**2``.
    """
    c = x.shape[1]
    weight = kernel.to(x).expand(c, 1, *kernel.shape)
    return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)
