"""Gradients of the fused styled convolution: its hand-written backward runs on every inversion step.

* ``torch.autograd.gradcheck`` in float64 against finite differences, for every differentiable
  input (x, style, demod, noise) and every branch of the op: plain 3x3 and 1x1 convolutions,
  2x upsampling (transposed conv + blur), the batch path (modulated activations) and the
  single-sample path that folds modulation into the weight, per-sample and broadcast noise,
  channels_last activations.
* The generator's ``impl="fast"`` (fused op) and ``impl="reference"`` (grouped convolution,
  autograd) give the same gradients with respect to ``ws`` and the noise maps on a reference
  rosinality checkpoint.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.autograd import gradcheck

from ganinvert.models.loading import load_generator
from ganinvert.models.ops import make_kernel, modulated_conv_act, weight_modulation_pays

#: StyleGAN2's upsampling FIR kernel as the fused op takes it: scaled by up**2 = 4.
UP_KERNEL = make_kernel([1, 3, 3, 1]) * 4


def _inputs(n: int, c_in: int, c_out: int, k: int, size: int, *, up: bool, shared_noise: bool,
            channels_last: bool, seed: int) -> tuple[tuple[torch.Tensor, ...], dict]:
    """(x, style, demod, noise) requiring grad, and the frozen weight, bias and kernel, in float64."""
    g = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    out_size = 2 * size if up else size
    x = draw(n, c_in, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    style = draw(n, c_in)
    demod = draw(n, c_out).abs() + 0.5  # positive, as rsqrt(...) makes it
    noise = draw(1 if shared_noise else n, 1, out_size, out_size)
    weight = draw(*((c_in, c_out) if up else (c_out, c_in)), k, k)  # the transposed conv's is (in, out, k, k)
    if channels_last:
        weight = weight.contiguous(memory_format=torch.channels_last)
    frozen = {"weight": weight, "bias": draw(c_out), "blur_kernel": UP_KERNEL.double() if up else None}
    return tuple(t.requires_grad_(True) for t in (x, style, demod, noise)), frozen


# (n, c_in, c_out, k, size, up): n = 1 with large maps folds the style into the weight.
CASES = {
    "conv3x3-batch": (2, 3, 4, 3, 5, False),
    "conv3x3-fold": (1, 2, 3, 3, 6, False),
    "conv1x1-batch": (3, 3, 2, 1, 4, False),
    "up-batch": (2, 3, 2, 3, 3, True),
    "up-fold": (1, 2, 3, 3, 4, True),
}


# With one sample, shared noise (1, 1, H, W) is per-sample noise: only batches test the broadcast.
NOISE_CASES = [(case, shared) for case, (n, *_) in CASES.items() for shared in ((False, True) if n > 1 else (False,))]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("case, shared_noise", NOISE_CASES,
                         ids=[f"{case}-{'noise-shared' if shared else 'noise-per-sample'}" for case, shared in NOISE_CASES])
def test_modulated_conv_act_gradcheck(case, shared_noise, channels_last):
    n, c_in, c_out, k, size, up = CASES[case]
    pixels = size * size
    assert (n == 1 and weight_modulation_pays(c_in, c_out, k, pixels, up)) == case.endswith("fold"), \
        "the case does not take the branch it is named after"
    inputs, frozen = _inputs(n, c_in, c_out, k, size, up=up, shared_noise=shared_noise,
                             channels_last=channels_last, seed=len(case) + 7 * shared_noise)

    def op(x, style, demod, noise):
        return modulated_conv_act(x, style, demod, noise, frozen["weight"], frozen["bias"], frozen["blur_kernel"])

    assert gradcheck(op, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_modulated_conv_act_gradcheck_each_input_alone():
    # needs_input_grad prunes the backward's branches: each must be right without the others.
    n, c_in, c_out, k, size, up = CASES["up-batch"]
    inputs, frozen = _inputs(n, c_in, c_out, k, size, up=up, shared_noise=False, channels_last=False, seed=11)
    for i in range(len(inputs)):
        args = [t.detach().requires_grad_(j == i) for j, t in enumerate(inputs)]

        def op(arg, i=i, args=args):
            full = [arg if j == i else t for j, t in enumerate(args)]
            return modulated_conv_act(*full, frozen["weight"], frozen["bias"], frozen["blur_kernel"])

        assert gradcheck(op, (args[i],), eps=1e-6, atol=1e-7, rtol=1e-5), i


def test_modulated_conv_act_refuses_double_backward():
    n, c_in, c_out, k, size, up = CASES["conv3x3-batch"]
    inputs, frozen = _inputs(n, c_in, c_out, k, size, up=up, shared_noise=False, channels_last=False, seed=3)
    out = modulated_conv_act(*inputs, frozen["weight"], frozen["bias"])
    (grad_x,) = torch.autograd.grad(out.square().sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match="twice|double"):
        grad_x.sum().backward()


# ------------------------------------------------------------------------- fast vs reference


@pytest.fixture(scope="module")
def reference_generator(shared):
    """The reference checkpoint with non-zero noise strengths: its own are all 0, which would make
    every noise gradient 0 in both implementations and their comparison vacuous."""
    G = load_generator(shared("reference", "rosinality_s32_sd64.pt"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in [G.conv1, *G.convs]:
            layer.noise.weight.copy_(0.1 + 0.2 * torch.rand(1, generator=g))
    return G


def _synthesis_gradients(G, ws: torch.Tensor, noise: list[torch.Tensor], probe: torch.Tensor,
                         impl: str) -> list[torch.Tensor]:
    ws = ws.clone().requires_grad_(True)
    noise = [t.clone().requires_grad_(True) for t in noise]
    image = G.synthesis(ws, noise, impl=impl)
    return list(torch.autograd.grad((image * probe).sum(), [ws, *noise]))


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-5)], ids=["float64", "float32"])
@pytest.mark.parametrize("n", [1, 2], ids=["one-image-folds", "batch"])
def test_fast_and_reference_gradients_agree_on_a_reference_checkpoint(reference_generator, n, dtype, rtol):
    G = copy.deepcopy(reference_generator).to(dtype)
    assert not any(p.requires_grad for p in G.parameters())  # frozen: the fast path runs the fused op
    g = torch.Generator().manual_seed(n)
    z = torch.randn(n, G.num_ws, G.style_dim, generator=g, dtype=dtype)
    with torch.no_grad():
        ws = G.mapping(z)
    noise = [torch.randn(n, *shape[1:], generator=g, dtype=dtype) for shape in G.noise_shapes]
    probe = torch.randn(n, 3, G.resolution, G.resolution, generator=g, dtype=dtype)
    fast = _synthesis_gradients(G, ws, noise, probe, "fast")
    reference = _synthesis_gradients(G, ws, noise, probe, "reference")
    names = ["ws"] + [f"noise[{i}]" for i in range(len(noise))]
    for name, a, b in zip(names, fast, reference):
        assert a.shape == b.shape and bool(b.abs().max() > 0), name
        # Relative to the largest entry: per-entry relative error is meaningless near zeros.
        error = float((a - b).abs().max() / b.abs().max())
        assert error < rtol, (name, error)
