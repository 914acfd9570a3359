"""The StyleGAN2 discriminator: rosinality's parameter names, shapes and gradients."""

from __future__ import annotations

import pytest
import torch

from ganinvert.models.discriminator import Discriminator


def tiny() -> Discriminator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Discriminator(16, channels={4: 8, 8: 8, 16: 4})


def test_state_dict_names_follow_rosinality() -> None:
    shapes = {k: tuple(v.shape) for k, v in tiny().state_dict().items()}
    # Names and shapes of rosinality's Discriminator(size=16) with these widths.
    expected = {
        "convs.0.0.weight": (4, 3, 1, 1), "convs.0.1.bias": (4,),
        "convs.1.conv1.0.weight": (4, 4, 3, 3), "convs.1.conv1.1.bias": (4,),
        "convs.1.conv2.0.kernel": (4, 4), "convs.1.conv2.1.weight": (8, 4, 3, 3), "convs.1.conv2.2.bias": (8,),
        "convs.1.skip.0.kernel": (4, 4), "convs.1.skip.1.weight": (8, 4, 1, 1),
        "convs.2.conv1.0.weight": (8, 8, 3, 3), "convs.2.conv2.1.weight": (8, 8, 3, 3),
        "final_conv.0.weight": (8, 9, 3, 3), "final_conv.1.bias": (8,),
        "final_linear.0.weight": (8, 128), "final_linear.0.bias": (8,),
        "final_linear.1.weight": (1, 8), "final_linear.1.bias": (1,),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert "convs.1.skip.1.bias" not in shapes  # the skip conv has no bias


def test_forward_shapes_and_gradients() -> None:
    D = tiny()
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    logits = D(x)  # 6 is not a multiple of the stddev group: falls back to one group
    assert logits.shape == (6, 1) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert D(x[:4]).shape == (4, 1) and D(x[:1]).shape == (1, 1)


def test_minibatch_stddev_makes_logits_batch_dependent() -> None:
    D = tiny()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    alone = D(x[:1])
    together = D(torch.cat([x[:1], x[1:] * 5]))[:1]
    assert not torch.allclose(alone, together)


def test_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match="expected"):
        tiny()(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(24)
