"""StyleGAN2 generator in pure PyTorch, state-dict compatible with rosinality/stylegan2-pytorch.

The module and parameter names follow rosinality's ``model.py`` so that its checkpoints
(``g_ema``) load unchanged. The generator knows nothing about inversion: it takes the full
set of synthesis inputs and renders.

Layer layout and the ``ws`` index each layer reads (``num_ws = 2 * log2(resolution) - 2``)::

    block 0 (4x4):   const -> conv1 (ws[0], noise[0]) -> to_rgb1 (ws[1])
    block b >= 1:    convs[2b-2] (upsample, ws[2b-1], noise[2b-1])
    (res 4*2**b)     convs[2b-1] (ws[2b], noise[2b])
                     to_rgbs[b-1] (ws[2b+1]) + 2x upsampled skip image

The ToRGB of block b reads the same ``ws`` entry as the first conv of block b+1; the last
ToRGB reads ``ws[num_ws-1]``.

Building ``ws``:

* plain sampling: ``ws = G.mapping(z)[:, None].repeat(1, G.num_ws, 1)`` (or ``G.broadcast(w)``);
* truncation with ``psi``: ``w = G.w_avg + psi * (w - G.w_avg)`` before broadcasting
  (``G.truncate``);
* style mixing at index ``i``: ``ws = cat([w1 repeated i times, w2 repeated num_ws - i times], 1)``
  (``G.mix``).

Two implementations of the modulated convolution give the same images (max abs error about
1e-6 in float32): ``impl="reference"`` builds per-sample weights and runs a grouped convolution
with the reference ``upfirdn2d`` resampling (zero insertion); ``impl="fast"`` modulates the
activations and demodulates the output, so one convolution with the shared weight serves the
whole batch, upsamples with a transposed convolution + depthwise blur, keeps activations
channels_last on CPU, and computes ToRGB as a per-sample matrix product. When the generator's
conv weights need no gradient (inversion), each styled conv runs as one fused op
(:func:`~ganinvert.models.ops.modulated_conv_act`) whose backward skips the weight-gradient
convolution. Per-sample weight residuals always take the grouped form. ``bench/speed.py``
measures both paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GanInvertError
from .ops import (SQRT2, blur, fused_leaky_relu, make_kernel, modulated_conv_act, upfirdn2d_reference,
                  upsample2x, weight_modulation_pays)

IMPLEMENTATIONS = ("fast", "reference")

#: CPU tuning of the fast path, on by default; bench/speed.py switches them off to measure them.
#: channels_last activations (oneDNN's CPU convolutions and depthwise blurs are faster in it).
CPU_CHANNELS_LAST = True
#: Run a batch one sample at a time through the high-resolution blocks (see ``_per_sample_from``).
CPU_SPLIT_BATCH = True

#: rosinality's channel widths per resolution before the multiplier is applied.
_BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


def default_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """rosinality's channel widths per resolution (config-f uses ``channel_multiplier=2``)."""
    return {r: (c if r <= 32 else c * channel_multiplier) for r, c in _BASE_CHANNELS.items()}


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weights scaled at run time)."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)


class Blur(nn.Module):
    """FIR low-pass filter; ``upsample_factor`` rescales the kernel to keep the gain."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor ** 2
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: torch.Tensor, impl: str = "fast") -> torch.Tensor:
        if impl == "reference":
            return upfirdn2d_reference(x, self.kernel, pad=self.pad)
        return blur(x, self.kernel, self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling of the skip image."""

    def __init__(self, kernel: Sequence[float], factor: int = 2) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)
        p = len(kernel) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor, impl: str = "fast") -> torch.Tensor:
        if impl == "reference":
            return upfirdn2d_reference(x, self.kernel, up=2, pad=self.pad)
        return upsample2x(x, self.kernel)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution, optionally demodulated and/or 2x upsampling (transposed conv + blur)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)
        self._frozen_cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    @torch.compiler.disable  # Python-side cache: under torch.compile its key would only force recompiles
    def frozen_weight(self, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight as the fused fast path convolves with it, and its squared norms per (out, in).

        Returns detached ``(weight, weight_sq)``: ``weight[0]`` (out, in, k, k), transposed to
        (in, out, k, k) for the upsampling conv, in channels_last when asked; ``weight_sq``
        (out, in). Cached while the parameter is unchanged (same storage and version counter;
        edits through ``.data`` bypass the counter, so call :meth:`clear_frozen_cache` after
        them). Without the cache oneDNN would re-lay out every weight on each call, forward and
        backward.
        """
        weight = self.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, channels_last)
        if self._frozen_cache is None or self._frozen_cache[0] != key:
            with torch.no_grad():
                w = weight[0].detach()
                weight_sq = torch.linalg.vector_norm(w, dim=(2, 3)).square()
                w = w.transpose(0, 1) if self.upsample else w
                w = w.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            self._frozen_cache = (key, (w, weight_sq))
        return self._frozen_cache[1]

    def clear_frozen_cache(self) -> None:
        """Forget the cached layout of the weight (see :meth:`frozen_weight`)."""
        self._frozen_cache = None

    def forward(self, x: torch.Tensor, w: torch.Tensor, weight_delta: torch.Tensor | None = None,
                impl: str = "fast") -> torch.Tensor:
        """Args:
            x: (N, in_channel, H, W) activations.
            w: (N, style_dim) latent feeding this layer.
            weight_delta: residual added to ``weight`` (parameter units, before the equalised-lr
                scale): (out, in, k, k) shared by the batch or (N, out, in, k, k) per sample.
            impl: ``"fast"`` or ``"reference"`` (see the module docstring).
        """
        assert x.shape[1] == self.in_channel, f"expected {self.in_channel} channels, got {x.shape[1]}"
        style = self.modulation(w)  # (N, in)
        weight = self.weight
        if weight_delta is not None:
            weight = weight + (weight_delta if weight_delta.ndim == 5 else weight_delta[None])
        per_sample = weight.shape[0] > 1
        if impl == "fast" and self.kernel_size == 1 and not self.upsample:
            return self._pointwise(x, style, self.scale * weight)
        if impl == "reference" or per_sample:
            return self._grouped(x, style, self.scale * weight, impl)
        weight = self.scale * weight[0]  # (out, in, k, k)
        x = x * style[:, :, None, None]
        if self.upsample:
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            x = self.blur(x, impl)
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            demod = torch.rsqrt(style.square() @ weight.square().sum((2, 3)).t() + 1e-8)  # (N, out)
            x = x * demod[:, :, None, None]
        return x

    def _pointwise(self, x: torch.Tensor, style: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """1x1 modulated conv (ToRGB) as one matrix product per sample with per-sample weights.

        The weights are tiny (out x in per sample), so modulating them costs nothing, while
        modulating the activations would be a full pass over the largest tensors of the network.
        Per-sample ``mm`` rather than ``bmm``: CPU ``bmm`` is several times slower for these
        long, thin products.
        """
        n, _, h, w = x.shape
        weight = (weight[:, :, :, 0, 0] * style[:, None, :]).expand(n, -1, -1)  # (N, out, in)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(2, keepdim=True) + 1e-8)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # (HW, in) @ (in, out) per sample reads the channels_last memory as it lies.
            rows = x.permute(0, 2, 3, 1).reshape(n, h * w, self.in_channel)
            out = torch.stack([r @ m.t() for r, m in zip(rows.unbind(0), weight.unbind(0))])
            return out.view(n, h, w, self.out_channel).permute(0, 3, 1, 2)
        cols = x.reshape(n, self.in_channel, h * w)
        out = torch.stack([m @ c for c, m in zip(cols.unbind(0), weight.unbind(0))])
        return out.view(n, self.out_channel, h, w)

    def _grouped(self, x: torch.Tensor, style: torch.Tensor, weight: torch.Tensor, impl: str) -> torch.Tensor:
        """Per-sample modulated weights and one grouped convolution (the reference formulation)."""
        n, _, h, w = x.shape
        weight = weight * style.view(n, 1, self.in_channel, 1, 1)  # (N, out, in, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum((2, 3, 4)) + 1e-8).view(n, self.out_channel, 1, 1, 1)
        k = self.kernel_size
        x = x.reshape(1, n * self.in_channel, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * self.in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=n)
            out = out.view(n, self.out_channel, out.shape[2], out.shape[3])
            return self.blur(out, impl)
        out = F.conv2d(x, weight.reshape(n * self.out_channel, self.in_channel, k, k), padding=self.padding, groups=n)
        return out.view(n, self.out_channel, out.shape[2], out.shape[3])


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor,
                weight_delta: torch.Tensor | None = None, impl: str = "fast") -> torch.Tensor:
        if impl == "fast" and weight_delta is None and not self._weights_need_grad():
            return self._fused(x, w, noise)
        return self.activate(self.noise(self.conv(x, w, weight_delta, impl), noise))

    def _weights_need_grad(self) -> bool:
        return torch.is_grad_enabled() and any(
            p.requires_grad for p in (self.conv.weight, self.noise.weight, self.activate.bias))

    def _fused(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The same layer as one :func:`modulated_conv_act` (frozen weights: inversion, rendering).

        The activation's gain sqrt(2) moves inside the leaky ReLU (it is positively homogeneous):
        into the demodulation, the noise strength and the bias.
        """
        conv = self.conv
        # This path runs only when no weight gradient is wanted (frozen weights or no_grad), and
        # under no_grad a view of a trainable Parameter still reports requires_grad: the cached
        # weight and the bias are detached.
        weight, weight_sq = conv.frozen_weight(x.is_contiguous(memory_format=torch.channels_last))
        style = conv.modulation(w) * conv.scale  # (N, in)
        demod = torch.rsqrt(style.square() @ weight_sq.t() + 1e-8) * SQRT2
        kernel = conv.blur.kernel if conv.upsample else None
        return modulated_conv_act(x, style, demod, noise * (self.noise.weight * SQRT2), weight,
                                  self.activate.bias.detach() * SQRT2, kernel)


class ToRGB(nn.Module):
    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None,
                weight_delta: torch.Tensor | None = None, impl: str = "fast") -> torch.Tensor:
        out = self.conv(x, w, weight_delta, impl) + self.bias
        if skip is not None:
            out = out + self.upsample(skip, impl)
        return out


@dataclass(frozen=True)
class FeatureEntry:
    """Start synthesis from a feature map instead of the constant input.

    Attributes:
        block: the block whose output ``features`` replaces (0 = the 4x4 block).
        features: (N, C, r, r) with ``C, r = G.feature_shape(block)``.
        rgb: optional (N, 3, r, r) skip image entering the block's ToRGB sum. ``None`` starts the
            skip image from this block's ToRGB of ``features`` alone, dropping the (low-frequency)
            contributions of the earlier blocks.
    """

    block: int
    features: torch.Tensor
    rgb: torch.Tensor | None = None


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 generator (config-e/f, skip ToRGB) with rosinality's parameter names.

    Args:
        resolution: output side in pixels, a power of two >= 4.
        style_dim: dimension of z and w.
        n_mlp: number of mapping layers.
        channels: feature width per resolution (``{4: 512, 8: 512, ...}``); defaults to
            ``default_channels(channel_multiplier)``.
        channel_multiplier: used only when ``channels`` is None.
        blur_kernel: FIR taps of the resampling filter.
        lr_mlp: learning-rate multiplier of the mapping layers.

    Example:
        >>> G = StyleGAN2Generator(16, style_dim=8, n_mlp=2, channels={4: 8, 8: 8, 16: 8})
        >>> ws = G.broadcast(G.mapping(torch.randn(2, 8)))
        >>> G.synthesis(ws).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, resolution: int, style_dim: int = 512, n_mlp: int = 8,
                 channels: Mapping[int, int] | None = None, channel_multiplier: int = 2,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), lr_mlp: float = 0.01) -> None:
        super().__init__()
        log_size = int(math.log2(resolution))
        if resolution < 4 or 2 ** log_size != resolution:
            raise GanInvertError(f"resolution must be a power of two >= 4, got {resolution}")
        self.resolution, self.style_dim, self.n_mlp = resolution, style_dim, n_mlp
        self.log_size = log_size
        full = default_channels(channel_multiplier)
        if channels is not None:
            full.update({int(k): int(v) for k, v in channels.items()})
        self.channels = {r: full[r] for r in (2 ** i for i in range(2, log_size + 1))}
        self.blur_kernel = tuple(blur_kernel)

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)])
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        self.num_layers = (log_size - 2) * 2 + 1
        for layer in range(self.num_layers):
            r = 2 ** ((layer + 5) // 2)
            self.noises.register_buffer(f"noise_{layer}", torch.randn(1, 1, r, r))
        in_ch = self.channels[4]
        for i in range(3, log_size + 1):
            out_ch = self.channels[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch
        self.num_ws = log_size * 2 - 2
        self.num_blocks = log_size - 1
        # Set from the checkpoint's latent_avg by the loaders; not part of rosinality's g_ema keys.
        self.register_buffer("w_avg", torch.zeros(style_dim), persistent=False)

    # ------------------------------------------------------------------ description
    @property
    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """Shape of each noise map, (1, 1, r, r); ``synthesis`` also takes (N, 1, r, r)."""
        return [tuple(getattr(self.noises, f"noise_{i}").shape) for i in range(self.num_layers)]

    @property
    def block_resolutions(self) -> list[int]:
        return [4 * 2 ** b for b in range(self.num_blocks)]

    def feature_shape(self, block: int) -> tuple[int, int, int]:
        """(channels, height, width) of the feature map a block outputs."""
        self._check_block(block)
        r = 4 * 2 ** block
        return (self.channels[r], r, r)

    def block_ws_indices(self, block: int) -> list[int]:
        """Indices of ``ws`` read by the convs and the ToRGB of ``block``."""
        self._check_block(block)
        return [0, 1] if block == 0 else [2 * block - 1, 2 * block, 2 * block + 1]

    def block_noise_indices(self, block: int) -> list[int]:
        self._check_block(block)
        return [0] if block == 0 else [2 * block - 1, 2 * block]

    def conv_layer_names(self) -> list[str]:
        """Names of every modulated conv, the keys of ``weight_deltas``."""
        return (["conv1", "to_rgb1"] + [f"convs.{i}" for i in range(len(self.convs))]
                + [f"to_rgbs.{i}" for i in range(len(self.to_rgbs))])

    def conv_layer(self, name: str) -> ModulatedConv2d:
        """The modulated conv called ``name`` (one of ``conv_layer_names()``)."""
        return self.get_submodule(name).conv

    def config(self) -> dict:
        return {"resolution": self.resolution, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channels": {int(k): int(v) for k, v in self.channels.items()},
                "blur_kernel": list(self.blur_kernel)}

    def _check_block(self, block: int) -> None:
        if not 0 <= block < self.num_blocks:
            raise GanInvertError(f"block must be in [0, {self.num_blocks - 1}], got {block}")

    # ------------------------------------------------------------------ latents
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, style_dim) -> w (N, style_dim); z (N, K, style_dim) maps each of the K codes."""
        assert z.shape[-1] == self.style_dim, f"z must end in {self.style_dim}, got {tuple(z.shape)}"
        return self.style(z.reshape(-1, self.style_dim)).view(z.shape)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """(N, style_dim) -> (N, num_ws, style_dim)."""
        return w[:, None, :].expand(-1, self.num_ws, -1)

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """Truncation trick towards ``w_avg``."""
        return self.w_avg + psi * (w - self.w_avg)

    def mix(self, w1: torch.Tensor, w2: torch.Tensor, inject_index: int) -> torch.Tensor:
        """Style mixing: ``w1`` feeds ws[:inject_index], ``w2`` the rest."""
        if not 0 <= inject_index <= self.num_ws:
            raise GanInvertError(f"inject_index must be in [0, {self.num_ws}]")
        return torch.cat([w1[:, None].expand(-1, inject_index, -1),
                          w2[:, None].expand(-1, self.num_ws - inject_index, -1)], 1)

    @torch.no_grad()
    def estimate_w_avg(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Mean w over ``n`` seeded mapping samples (used when a checkpoint stores none)."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.style_dim, generator=g).to(self.w_avg.device)
        return self.mapping(z).mean(0)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        """Sample: z (N, style_dim) -> image with the stored noise."""
        w = self.mapping(z)
        if truncation_psi != 1.0:
            w = self.truncate(w, truncation_psi)
        return self.synthesis(self.broadcast(w))

    # ------------------------------------------------------------------ synthesis
    def synthesis(self, ws: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None, *,
                  const: torch.Tensor | None = None,
                  feature_entry: FeatureEntry | None = None,
                  feature_residuals: Mapping[int, torch.Tensor] | None = None,
                  output_block: int | None = None,
                  weight_deltas: Mapping[str, torch.Tensor] | None = None,
                  impl: str = "fast") -> torch.Tensor:
        """Render images from per-layer latents.

        Args:
            ws: (N, num_ws, style_dim) latents; see the module docstring for which index feeds
                which layer.
            noise: one tensor per noise layer, of shape ``noise_shapes[i]`` or (N, 1, r, r);
                ``None`` (or a ``None`` entry) uses the generator's stored fixed noise.
            const: (N or 1, C4, 4, 4) replacement of the constant input (content space S).
            feature_entry: start from a feature map at a block (F spaces); earlier layers are
                skipped and their ``ws`` ignored.
            feature_residuals: ``{block: (N, C, r, r)}`` added to the output of each listed block
                before its ToRGB (masked residuals of SAM; mask them before passing).
            output_block: stop after this block's ToRGB and return its image (resolution
                ``4 * 2**output_block``); ``None`` renders at full resolution.
            weight_deltas: ``{layer name: residual}`` added to modulated conv weights, for PTI and
                HyperInverter (``conv_layer_names()`` lists the names; shapes as in
                :meth:`ModulatedConv2d.forward`).
            impl: ``"fast"`` (default) or ``"reference"``.

        Returns:
            (N, 3, r, r) images, nominally in [-1, 1] and not clamped.
        """
        noise = self._check_inputs(ws, noise, impl)
        n = ws.shape[0]
        last = self.num_blocks - 1 if output_block is None else output_block
        self._check_block(last)
        deltas = dict(weight_deltas or {})
        unknown = set(deltas) - set(self.conv_layer_names())
        if unknown:
            raise GanInvertError(f"unknown weight_deltas layers: {sorted(unknown)}")
        residuals = dict(feature_residuals or {})

        start = 0 if feature_entry is None else feature_entry.block
        if feature_entry is not None:
            self._check_block(start)
            if start > last:
                raise GanInvertError("feature_entry block comes after output_block")
            expected = (n, *self.feature_shape(start))
            if tuple(feature_entry.features.shape) != expected:
                raise GanInvertError(f"feature_entry features must be {expected}, got {tuple(feature_entry.features.shape)}")

        x = skip = None
        for block in range(start, last + 1):
            if x is not None and self._per_sample_from(block, x, deltas, impl):
                parts = []
                for i in range(n):
                    xi, si = x[i:i + 1], None if skip is None else skip[i:i + 1]
                    inputs = self._sample_inputs(i, n, ws, noise, deltas, residuals)
                    for b in range(block, last + 1):
                        xi, si = self._block_step(b, xi, si, *inputs, impl, None, None)
                    parts.append(si)
                return torch.cat(parts).contiguous()
            entry = feature_entry if block == start else None
            x, skip = self._block_step(block, x, skip, ws, noise, deltas, residuals, impl, entry, const)
        return skip.contiguous()

    def _check_inputs(self, ws: torch.Tensor, noise: Sequence[torch.Tensor | None] | None,
                      impl: str) -> list[torch.Tensor]:
        """Validate ``ws`` and ``impl``; return the noise list with ``None`` entries resolved."""
        if impl not in IMPLEMENTATIONS:
            raise GanInvertError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.style_dim):
            raise GanInvertError(f"ws must be (N, {self.num_ws}, {self.style_dim}), got {tuple(ws.shape)}")
        noise = list(noise) if noise is not None else [None] * self.num_layers
        if len(noise) != self.num_layers:
            raise GanInvertError(f"noise must hold {self.num_layers} tensors, got {len(noise)}")
        return [getattr(self.noises, f"noise_{i}") if t is None else t for i, t in enumerate(noise)]

    def _block_step(self, block: int, x: torch.Tensor | None, skip: torch.Tensor | None, ws: torch.Tensor,
                    noise: list[torch.Tensor], deltas: dict[str, torch.Tensor], residuals: dict[int, torch.Tensor],
                    impl: str, entry: FeatureEntry | None, const: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one block: its convs (unless ``entry`` replaces their output), residual and ToRGB."""
        n = ws.shape[0]
        idx = self.block_ws_indices(block)
        nidx = self.block_noise_indices(block)
        if block == 0:
            if entry is None:
                x = self.input(n) if const is None else const.expand(n, -1, -1, -1)
                x = self.conv1(self._layout(x, impl), ws[:, idx[0]], noise[nidx[0]], deltas.get("conv1"), impl)
            rgb_layer, rgb_name, rgb_w = self.to_rgb1, "to_rgb1", ws[:, idx[1]]
        else:
            if entry is None:
                up, conv = self.convs[2 * block - 2], self.convs[2 * block - 1]
                x = up(x, ws[:, idx[0]], noise[nidx[0]], deltas.get(f"convs.{2 * block - 2}"), impl)
                x = conv(x, ws[:, idx[1]], noise[nidx[1]], deltas.get(f"convs.{2 * block - 1}"), impl)
            rgb_layer, rgb_name, rgb_w = self.to_rgbs[block - 1], f"to_rgbs.{block - 1}", ws[:, idx[2]]
        if entry is not None:
            x = self._layout(entry.features, impl)
        if block in residuals:
            x = x + residuals[block]
        if entry is not None:
            rgb = rgb_layer.conv(x, rgb_w, deltas.get(rgb_name), impl) + rgb_layer.bias
            skip = rgb if entry.rgb is None else rgb + entry.rgb
        else:
            skip = rgb_layer(x, rgb_w, skip, deltas.get(rgb_name), impl)
        return x, skip

    def _per_sample_from(self, block: int, x: torch.Tensor, deltas: dict[str, torch.Tensor], impl: str) -> bool:
        """Whether to run the batch one sample at a time from ``block`` on (CPU fast path only).

        From the block where one sample's activations outgrow the conv weight, a single sample
        folds modulation into the weight (:func:`~ganinvert.models.ops.modulated_conv_act`) and
        its tensors stay cache-sized, so N single passes beat one batched pass there (measured
        in bench/README.md); lower blocks keep the batch, which amortises their large weights.
        Small layers (under 2**20 output values per sample) stay batched: there the fixed cost
        of each op call outweighs the passes saved.
        """
        up = self.convs[2 * block - 2]
        if (impl != "fast" or x.device.type != "cpu" or not CPU_SPLIT_BATCH or x.shape[0] == 1 or deltas
                or up._weights_need_grad()):
            return False
        c_in, c_out, pixels_in = up.conv.in_channel, up.conv.out_channel, x.shape[2] * x.shape[3]
        return c_out * pixels_in * 4 >= 2 ** 20 and weight_modulation_pays(
            c_in, c_out, up.conv.kernel_size, pixels_in, upsample=True)

    def _sample_inputs(self, i: int, n: int, ws: torch.Tensor, noise: list[torch.Tensor],
                       deltas: dict[str, torch.Tensor], residuals: dict[int, torch.Tensor]) -> tuple:
        """Sample ``i``'s slice of every per-sample synthesis input (shared tensors stay whole)."""
        def take(t: torch.Tensor) -> torch.Tensor:
            return t[i:i + 1] if t.shape[0] == n else t
        return (ws[i:i + 1], [take(t) for t in noise],
                {k: (v[i:i + 1] if v.ndim == 5 else v) for k, v in deltas.items()},
                {b: take(v) for b, v in residuals.items()})

    @staticmethod
    def _layout(x: torch.Tensor, impl: str) -> torch.Tensor:
        """channels_last activations for the fast path on CPU, where oneDNN's convolutions and
        depthwise blurs run markedly faster in that layout (bench/README.md)."""
        if impl == "fast" and x.device.type == "cpu" and CPU_CHANNELS_LAST:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def block_features(self, ws: torch.Tensor, block: int, noise: Sequence[torch.Tensor | None] | None = None,
                       const: torch.Tensor | None = None, *, feature_entry: FeatureEntry | None = None,
                       feature_residuals: Mapping[int, torch.Tensor] | None = None,
                       impl: str = "fast") -> FeatureEntry:
        """The feature map after ``block`` (its residual added) and the skip image entering its ToRGB sum.

        ``G.synthesis(ws, noise, feature_entry=G.block_features(ws, b, noise))`` renders the same
        image as ``G.synthesis(ws, noise)``. ``feature_entry`` starts from an earlier block's entry
        (ILO's rounds advance their entry this way) and ``feature_residuals`` are added as
        :meth:`synthesis` adds them (SAM's edits read the features entering each ToRGB).
        """
        self._check_block(block)
        noise = self._check_inputs(ws, noise, impl)
        start = 0 if feature_entry is None else feature_entry.block
        if block < start or (feature_entry is not None and block == start):
            raise GanInvertError(f"cannot read block {block}'s features from an entry at block {start}")
        residuals = dict(feature_residuals or {})
        x = skip = entering_skip = None
        for b in range(start, block + 1):
            entering_skip = skip
            x, skip = self._block_step(b, x, skip, ws, noise, {}, residuals, impl,
                                       feature_entry if b == start else None, const)
        rgb_layer = self.to_rgb1 if block == 0 else self.to_rgbs[block - 1]
        rgb = None if entering_skip is None else rgb_layer.upsample(entering_skip, impl)
        return FeatureEntry(block, x, rgb)
