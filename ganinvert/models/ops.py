"""Resampling and activation primitives of StyleGAN2 in pure PyTorch.

Two formulations are kept side by side:

* ``upfirdn2d_reference`` follows the reference code's native ``upfirdn2d`` (zero insertion,
  padding, FIR filter, decimation); the ``"reference"`` synthesis path uses it.
* ``blur`` and ``upsample2x`` compute the same results with one depthwise (transposed)
  convolution each and no zero insertion; the ``"fast"`` path uses them.

``modulated_conv_act`` is the fast path's whole styled convolution (modulation, convolution,
optional 2x upsampling, demodulation, noise, bias, leaky ReLU) for a frozen weight, with a
hand-written backward that computes no weight gradient. ``tune_cpu_allocator`` keeps freed
memory in the process, which matters on CPU where every large activation is otherwise a fresh
``mmap`` paying page faults (see ``bench/README.md``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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
    weight = kernel.to(x).expand(c, 1, *kernel.shape)
    if pad[0] == pad[1]:  # the convolution pads for free; F.pad would copy the whole tensor
        return F.conv2d(x, weight, padding=pad[0], groups=c)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, weight, groups=c)


def upsample2x(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """2x FIR upsampling as one depthwise transposed convolution (no zero insertion).

    Equals ``upfirdn2d_reference(x, kernel, up=2, pad=(2, 1))`` for a symmetric 4x4 kernel
    already scaled by ``up**2``.
    """
    c = x.shape[1]
    weight = kernel.to(x).expand(c, 1, *kernel.shape)
    return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)


def _channel(v: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, C, 1, 1), broadcastable over an (N, C, H, W) activation."""
    return v[:, :, None, None]


def weight_modulation_pays(c_in: int, c_out: int, k: int, pixels_in: int, upsample: bool) -> bool:
    """Whether one sample is cheaper to modulate through its weight than through its activations.

    Modulating the activations costs a pass over the input (forward) and one over the output
    (backward); folding style and demodulation into the weight costs two passes over the weight.
    Folding wins at high resolutions, where activations outgrow the weight. (A batch shares one
    weight, so only a single sample can fold.)
    """
    pixels_out = pixels_in * (4 if upsample else 1)
    return c_in * pixels_in + c_out * pixels_out > 2 * c_out * c_in * k * k


class _ModulatedConvAct(torch.autograd.Function):
    """See :func:`modulated_conv_act`. Of the large tensors it saves only the input and the output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, style: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor, blur_kernel: torch.Tensor | None,
                negative_slope: float) -> torch.Tensor:
        up = blur_kernel is not None
        # weight is (out, in, k, k), or (in, out, k, k) for the transposed upsampling conv.
        c_out, c_in = (weight.shape[1], weight.shape[0]) if up else (weight.shape[0], weight.shape[1])
        fold = x.shape[0] == 1 and weight_modulation_pays(c_in, c_out, weight.shape[-1], x.shape[2] * x.shape[3], up)
        if fold:
            factor = (style[0][:, None] * demod[0][None, :]) if up else (demod[0][:, None] * style[0][None, :])
            w, h = weight * factor[:, :, None, None], x  # the product keeps the weight's memory format
        else:
            w, h = weight, x * _channel(style)
        if up:
            y = F.conv_transpose2d(h, w, stride=2)
            c = y.shape[1]
            y = F.conv2d(y, blur_kernel.to(y).expand(c, 1, *blur_kernel.shape), padding=1, groups=c)
        else:
            y = F.conv2d(h, w, bias if fold else None, padding=weight.shape[-1] // 2)
        del h, w
        if fold:
            y.add_(noise)
        else:
            torch.addcmul(noise, y, _channel(demod), out=y)
        if not (fold and not up):
            y.add_(bias[None, :, None, None])
        y = F.leaky_relu(y, negative_slope, inplace=True)
        ctx.save_for_backward(x, style, demod, noise, y, weight, bias)
        ctx.blur_kernel, ctx.negative_slope, ctx.fold = blur_kernel, negative_slope, fold
        return y

    @staticmethod
    @once_differentiable  # in-place, hand-written: refuse double backward rather than get it wrong
    def backward(ctx, grad: torch.Tensor):
        x, style, demod, noise, out, weight, bias = ctx.saved_tensors
        # Under autocast the output (and so the gradient's working type) can be narrower than the
        # saved float32 weight: compute in the output's type; autograd casts each input's gradient back.
        grad, weight, bias = grad.to(out.dtype), weight.to(out.dtype), bias.to(out.dtype)
        need_x, need_style, need_demod, need_noise = ctx.needs_input_grad[:4]
        blur_kernel, up = ctx.blur_kernel, ctx.blur_kernel is not None
        n = x.shape[0]
        grad_x = grad_style = grad_demod = grad_noise = None
        # Gradient at the pre-activation z = demod * u + noise + bias (u: the modulated convolution).
        grad_z = torch.ops.aten.leaky_relu_backward(grad, out, ctx.negative_slope, True)
        if need_noise:
            grad_noise = grad_z.sum(1, keepdim=True)
            if noise.shape[0] == 1 and n > 1:
                grad_noise = grad_noise.sum(0, keepdim=True)
        if need_demod:
            # dL/d demod = sum_hw grad_z * u = (sum_hw grad_z * z - sum_hw grad_z * (noise + bias)) / demod;
            # leaky ReLU is linear on both sides of 0, so grad_z * z = grad * out and u need not be kept.
            gz_z = (grad * out).sum((2, 3))
            gz_noise = (grad_z * noise).sum((2, 3))  # (einsum is ~20x slower on channels_last here)
            gz_sum = grad_z.sum((2, 3))
            grad_demod = (gz_z - gz_noise - bias[None] * gz_sum) / demod
        if need_x or need_style:
            g = grad_z
            if up:  # adjoint of the padded depthwise blur
                c = g.shape[1]
                g = F.conv_transpose2d(g, blur_kernel.to(g).expand(c, 1, *blur_kernel.shape), padding=1, groups=c)
            if ctx.fold:
                w = weight * (demod[0][None, :, None, None] if up else demod[0][:, None, None, None])
            else:  # grad_z is no longer needed, so scale it in place
                w = weight
                g = g.mul_(_channel(demod))
            if up:
                grad_h = F.conv2d(g, w, stride=2)
            else:
                grad_h = F.conv_transpose2d(g, w, padding=weight.shape[-1] // 2)
            if need_style:
                grad_style = (grad_h * x).sum((2, 3))
            if need_x:
                grad_x = grad_h.mul_(_channel(style))
        return grad_x, grad_style, grad_demod, grad_noise, None, None, None, None


def modulated_conv_act(x: torch.Tensor, style: torch.Tensor, demod: torch.Tensor, noise: torch.Tensor,
                       weight: torch.Tensor, bias: torch.Tensor, blur_kernel: torch.Tensor | None = None,
                       negative_slope: float = 0.2) -> torch.Tensor:
    """``leaky_relu(demod * B(conv(x * style, weight)) + noise + bias)`` for a weight without gradient.

    ``B`` is the identity, or for ``blur_kernel`` a stride-2 transposed convolution followed by the
    FIR filter padded by 1 (StyleGAN2's upsampling conv; the caller passes the kernel already scaled
    by 4). Gradients flow to ``x``, ``style``, ``demod`` and ``noise`` only, so the backward pass is
    one convolution (data gradient) plus a few reductions, where autograd through the modulated
    weight would add a second, weight-gradient convolution.

    Args:
        x: (N, Cin, H, W) activations (any memory format; channels_last is fastest on CPU).
        style: (N, Cin) modulation, including the equalised-lr weight scale.
        demod: (N, Cout) positive demodulation coefficients (output gain included).
        noise: (N or 1, 1, H', W') noise already multiplied by its strength, H' the output size.
        weight: (Cout, Cin, k, k) with odd k, or with ``blur_kernel`` the transposed conv's
            (Cin, Cout, k, k); must not require grad. Pass it in the activations' memory format
            (oneDNN would otherwise convert it on every call).
        bias: (Cout,) added before the activation; must not require grad.
        blur_kernel: (4, 4) symmetric FIR kernel for 2x upsampling, or None.

    Example:
        >>> x, w = torch.randn(2, 8, 4, 4), torch.randn(16, 8, 3, 3)
        >>> modulated_conv_act(x, torch.ones(2, 8), torch.ones(2, 16), torch.zeros(1, 1, 4, 4), w,
        ...                    torch.zeros(16)).shape
        torch.Size([2, 16, 4, 4])
    """
    if weight.requires_grad or bias.requires_grad:
        raise ValueError("modulated_conv_act computes no weight gradient; the weight and bias must be frozen")
    return _ModulatedConvAct.apply(x, style, demod, noise, weight, bias, blur_kernel, negative_slope)


def tune_cpu_allocator(threshold_bytes: int = 2 ** 31 - 1) -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS.

    By default glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on
    free, so each large activation of a generator pass pays page faults on first touch; on the
    2-core CPUs this project runs on, that roughly halves the speed of a 256 px forward+backward.
    Raising the mmap and trim thresholds lets the heap keep and reuse those blocks (peak resident
    memory stays allocated until the process exits). Process-wide; call once, early. Returns
    False (and changes nothing) where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
    return bool(mallopt(m_mmap_threshold, threshold_bytes)) and bool(mallopt(m_trim_threshold, threshold_bytes))
