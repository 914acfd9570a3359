"""StyleGAN2 residual discriminator in pure PyTorch, with rosinality's module names.

The layout follows rosinality/stylegan2-pytorch ``model.py`` (``Discriminator``): a 1x1
``ConvLayer`` from RGB, one ``ResBlock`` per halving of the resolution down to 4x4 (two 3x3
convs, the second blurred and strided, plus a blurred 1x1 skip, summed and divided by
``sqrt(2)``), the minibatch standard-deviation feature (group 4, 1 feature), a final 3x3 conv and
a two-layer ``EqualLinear`` head. Its state dict therefore matches a rosinality ``"d"`` of the
same widths. Blur, ``EqualLinear`` and the fused activation are shared with the generator.

Example:
    >>> D = Discriminator(16, channels={4: 8, 8: 8, 16: 8})
    >>> D(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 1])
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ops import SQRT2
from .stylegan2 import Blur, EqualLinear, FusedLeakyReLU, default_channels


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate (He-scaled at run time, as in the generator's layers)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ScaledLeakyReLU(nn.Module):
    """``leaky_relu(x) * sqrt(2)`` for convs without a bias (rosinality's name)."""

    def __init__(self, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope) * SQRT2


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d (stride 2 when downsampling) -> [activation].

    Indices inside the ``Sequential`` follow rosinality so state dicts line up: with downsampling
    the blur is module 0 and the conv module 1.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), bias: bool = True, activate: bool = True) -> None:
        layers: list[nn.Module] = []
        if downsample:
            factor = 2
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        # The bias lives in the fused activation when there is one (as in rosinality).
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel) if bias else ScaledLeakyReLU(0.2))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs (the second halves the resolution) plus a 1x1 downsampling skip."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, blur_kernel=blur_kernel,
                              activate=False, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class Discriminator(nn.Module):
    """StyleGAN2 discriminator (config-e/f, residual) producing one logit per image.

    Args:
        resolution: input side in pixels, a power of two >= 4.
        channels: width per resolution; defaults to ``default_channels(channel_multiplier)``.
        channel_multiplier: used only when ``channels`` is None.
        blur_kernel: FIR taps of the downsampling filter.
        stddev_group: minibatch-stddev group size (4 in rosinality and the paper's code).
    """

    def __init__(self, resolution: int, channels: Mapping[int, int] | None = None, channel_multiplier: int = 2,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), stddev_group: int = 4) -> None:
        super().__init__()
        log_size = int(math.log2(resolution))
        if resolution < 4 or 2 ** log_size != resolution:
            raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
        full = default_channels(channel_multiplier)
        if channels is not None:
            full.update({int(k): int(v) for k, v in channels.items()})
        self.resolution = resolution
        self.channels = {r: full[r] for r in (2 ** i for i in range(2, log_size + 1))}
        convs: list[nn.Module] = [ConvLayer(3, self.channels[resolution], 1)]
        in_ch = self.channels[resolution]
        for i in range(log_size, 2, -1):
            out_ch = self.channels[2 ** (i - 1)]
            convs.append(ResBlock(in_ch, out_ch, blur_kernel))
            in_ch = out_ch
        self.convs = nn.Sequential(*convs)
        self.stddev_group, self.stddev_feat = stddev_group, 1
        self.final_conv = ConvLayer(in_ch + 1, self.channels[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(self.channels[4] * 4 * 4, self.channels[4], activation=True),
            EqualLinear(self.channels[4], 1))

    def config(self) -> dict:
        return {"resolution": self.resolution, "channels": {int(k): int(v) for k, v in self.channels.items()}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, R, R) images in [-1, 1] -> (N, 1) realness logits."""
        if x.ndim != 4 or x.shape[1:] != (3, self.resolution, self.resolution):
            raise ValueError(f"expected (N, 3, {self.resolution}, {self.resolution}) images, got {tuple(x.shape)}")
        out = self.convs(x)
        n, c, h, w = out.shape
        group = min(n, self.stddev_group)
        if n % group:  # rosinality requires divisibility; fall back to one group per batch instead
            group = n
        # Standard deviation of each feature over the group, averaged to one map per group.
        stddev = out.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2)
        stddev = stddev.repeat(group, 1, h, w)
        out = self.final_conv(torch.cat([out, stddev], 1))
        return self.final_linear(out.view(n, -1))
