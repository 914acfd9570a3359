"""DiffAugment: seeded, differentiable, and each policy does what it says."""

from __future__ import annotations

import pytest
import torch

from ganinvert.errors import GanInvertError
from ganinvert.training.augment import diff_augment, parse_policy


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_empty_policy_is_identity() -> None:
    x = torch.randn(2, 3, 8, 8, generator=gen())
    assert torch.equal(diff_augment(x, "", gen()), x)


def test_seeded_and_differentiable() -> None:
    x = torch.randn(4, 3, 16, 16, generator=gen(1), requires_grad=True)
    a = diff_augment(x, "color,translation,cutout", gen(5))
    b = diff_augment(x, "color,translation,cutout", gen(5))
    assert torch.equal(a, b) and not torch.equal(a, x)
    a.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_moves_content_within_an_eighth() -> None:
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = diff_augment(x, "translation", gen(2))
    pos = out.flatten(1).argmax(1)
    dy, dx = pos // 16 - 8, pos % 16 - 8
    assert out.flatten(1).sum(1).eq(1).all()  # the dot never leaves a 16 px image at shift <= 2
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and (dy != 0).any() and (dx != 0).any()


def test_cutout_zeroes_at_most_a_half_side_square() -> None:
    out = diff_augment(torch.ones(32, 3, 16, 16), "cutout", gen(3))
    zeros = (out[:, 0] == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 64).all() and (zeros == 64).any()
    assert torch.equal(out[:, 0], out[:, 2])  # same hole in every channel


def test_color_changes_per_sample_statistics() -> None:
    x = torch.randn(8, 3, 8, 8, generator=gen(4)) * 0.3
    out = diff_augment(x, "color", gen(6))
    assert not torch.allclose(out.mean((1, 2, 3)) - x.mean((1, 2, 3)), torch.zeros(8), atol=1e-3)


def test_unknown_policy() -> None:
    assert parse_policy(" color , cutout ") == ("color", "cutout")
    with pytest.raises(GanInvertError, match="unknown augmentation 'flip'"):
        parse_policy("color,flip")
