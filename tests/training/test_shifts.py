"""Random training shifts: seeded draws within their ranges, and image/feature pairs warped alike."""

from __future__ import annotations

import math

import pytest
import torch

from ganinvert.errors import GanInvertError
from ganinvert.training.inverters.basecode import BaseCodeSettings, shift_pairs
from ganinvert.training.inverters.shifts import ShiftRanges


def test_draws_are_seeded_and_within_the_ranges() -> None:
    ranges = ShiftRanges(fraction=1.0, max_angle=20.0, min_scale=0.9, max_scale=1.2, max_translation=0.1)
    draws = [ranges.draw(torch.Generator().manual_seed(3)) for _ in range(2)]
    assert draws[0] == draws[1]
    g = torch.Generator().manual_seed(4)
    for shift in (ranges.draw(g) for _ in range(200)):
        assert abs(shift["angle"]) <= 20.0 and 0.9 <= shift["scale"] <= 1.2
        assert abs(shift["tx"]) <= 0.1 and abs(shift["ty"]) <= 0.1 and shift["border"] in ("reflect", "black")
    none = ShiftRanges(fraction=0.0)
    g = torch.Generator().manual_seed(5)
    assert all(none.draw(g) is None for _ in range(50))
    half = ShiftRanges(fraction=0.5)
    shifted = sum(half.draw(g) is not None for _ in range(400))
    assert 150 < shifted < 250


@pytest.mark.parametrize("bad", [{"shifted_fraction": 1.5}, {"min_scale": 0.0}, {"min_scale": 1.3, "max_scale": 1.2},
                                 {"max_angle": -1.0}, {"max_translation": -0.1}])
def test_invalid_ranges_raise(bad: dict) -> None:
    with pytest.raises(GanInvertError):
        BaseCodeSettings(**bad)


def test_shift_pairs_moves_image_and_features_alike() -> None:
    g = torch.Generator().manual_seed(0)
    image, rendered = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    features = torch.randn(2, 5, 8, 8, generator=g)
    # A quarter-side translation to the right: 8 image pixels, 2 feature cells; black border.
    shift = {"angle": 0.0, "scale": 1.0, "tx": 0.25, "ty": 0.0, "border": "black"}
    out_image, out_rendered, out_features, mask = shift_pairs([None, shift], image, rendered, features)
    assert torch.equal(out_image[0], image[0]) and torch.equal(out_features[0], features[0])
    assert torch.equal(mask[0], torch.ones(1, 8, 8))
    assert torch.allclose(out_image[1, :, :, 8:], image[1, :, :, :-8], atol=1e-5)
    assert torch.allclose(out_rendered[1, :, :, 8:], rendered[1, :, :, :-8], atol=1e-5)
    assert torch.allclose(out_features[1, :, :, 2:], features[1, :, :, :-2], atol=1e-5)
    assert torch.allclose(out_image[1, :, :, :8], torch.full_like(out_image[1, :, :, :8], -1.0))
    # The uncovered feature columns have no target; the covered ones do.
    assert torch.equal(mask[1, 0, :, :2], torch.zeros(8, 2)) and torch.allclose(mask[1, 0, :, 2:], torch.ones(8, 6))
    # A reflected border keeps a target everywhere; the inputs are never modified in place.
    reflect = {**shift, "border": "reflect", "angle": 15.0, "scale": math.exp(0.1)}
    before = features.clone()
    *_, mask = shift_pairs([reflect, reflect], image, rendered, features)
    assert torch.equal(mask, torch.ones_like(mask)) and torch.equal(features, before)
    # Without a rendering and a base code only the picture is warped.
    warped, no_rendering, no_features, no_mask = shift_pairs([shift], image[1:])
    assert torch.equal(warped, out_image[1:]) and no_rendering is None and no_features is None and no_mask is None
