"""Interpolation: exact endpoints for every kind of input, linear blends, incompatible results."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from task_fixtures import FAST, random_generator, sample, saved_generator

from ganinvert.errors import GanInvertError
from ganinvert.inversion import InversionResult, invert
from ganinvert.inversion.methods.base import SynthesisInputs
from ganinvert.models.stylegan2 import FeatureEntry
from ganinvert.tasks.interpolation import check_compatible, interpolate, interpolate_inputs


@pytest.fixture(scope="module")
def G():
    return random_generator()


@pytest.fixture(scope="module")
def pair(G):
    """Two results (of the generator's samples 1 and 2) per method, made once per module."""
    made: dict[str, list[InversionResult]] = {}

    def run(method: str) -> list[InversionResult]:
        if method not in made:
            made[method] = [invert(G, sample(G, seed), method, settings={**FAST, "steps": 3}, seed=seed,
                                   progress=False) for seed in (1, 2)]
        return made[method]
    return run


@pytest.mark.parametrize("method", ["w+", "w+sb", "sphinx", "z+"])
def test_endpoints_are_the_two_reconstructions(G, pair, method: str) -> None:
    a, b = pair(method)
    frames = interpolate(G, a, b, 5)
    assert frames.shape == (5, 1, 3, G.resolution, G.resolution)
    assert (frames[0] - a.render(G)).abs().max() <= 1e-4
    assert (frames[-1] - b.render(G)).abs().max() <= 1e-4
    assert (frames[2] - frames[0]).abs().max() > 1e-3  # the middle is neither end


def test_w_plus_midpoint_renders_the_mean_code(G, pair) -> None:
    a, b = pair("w+")
    middle = interpolate(G, a, b, 3)[1]
    mean = (a.params["latent"] + b.params["latent"]) / 2
    assert torch.allclose(middle, G.synthesis(mean), atol=1e-5)


def test_sphinx_blends_rendered_inputs_not_head_weights(G, pair) -> None:
    a, b = pair("sphinx")
    ia, ib = a.inputs(G), b.inputs(G)
    blended = interpolate_inputs(G, ia, ib, 0.25)
    assert torch.allclose(blended.ws, 0.75 * ia.ws + 0.25 * ib.ws)
    assert torch.allclose(blended.const, 0.75 * ia.const + 0.25 * ib.const)
    assert all(torch.allclose(n, 0.75 * x + 0.25 * y) for n, x, y in zip(blended.noise, ia.noise, ib.noise))


def test_default_inputs_blend_with_the_generators_own(G) -> None:
    ws = G.w_avg.expand(1, G.num_ws, -1)
    own_noise = [getattr(G.noises, f"noise_{i}") for i in range(G.num_layers)]
    zeros = [torch.zeros_like(n) for n in own_noise]
    block = 1
    features = torch.ones(1, *G.feature_shape(block))
    a = SynthesisInputs(ws=ws, feature_entry=FeatureEntry(block, features),
                        weight_deltas={"conv1": torch.ones_like(G.conv1.conv.weight[0])})
    b = SynthesisInputs(ws=ws, noise=zeros, const=torch.zeros_like(G.input.input),
                        feature_entry=FeatureEntry(block, 3 * features, torch.ones(1, 3, 8, 8)),
                        feature_residuals={block: torch.ones_like(features)})
    mid = interpolate_inputs(G, a, b, 0.5)
    assert all(torch.allclose(m, n / 2) for m, n in zip(mid.noise, own_noise))
    assert torch.allclose(mid.const, G.input.input / 2)
    assert torch.allclose(mid.feature_entry.features, 2 * features)
    assert torch.allclose(mid.feature_entry.rgb, torch.full((1, 3, 8, 8), 0.5))
    assert torch.allclose(mid.feature_residuals[block], features / 2)
    assert torch.allclose(mid.weight_deltas["conv1"], torch.full_like(G.conv1.conv.weight[0], 0.5))
    with pytest.raises(GanInvertError, match="different feature blocks"):
        interpolate_inputs(G, a, SynthesisInputs(ws=ws), 0.5)


def test_incompatible_results_are_refused(tmp_path: Path, pair, G) -> None:
    a, b = pair("w+")
    other_G = saved_generator(tmp_path / "other.pt", seed=5)
    foreign = invert(other_G, sample(other_G, 1), "w+", settings={**FAST, "steps": 1}, progress=False)
    mine = invert(saved_generator(tmp_path / "mine.pt", seed=0), sample(G, 1), "w+", settings={**FAST, "steps": 1},
                  progress=False)
    with pytest.raises(GanInvertError, match="different generators") as excinfo:
        check_compatible(mine, foreign)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(GanInvertError, match="different methods"):
        check_compatible(a, pair("w")[0])
    with pytest.raises(GanInvertError, match="hold 1 and 2 images"):
        check_compatible(a, invert(G, sample(G, 1, n=2), "w+", settings={**FAST, "steps": 1}, progress=False))
    with pytest.raises(GanInvertError, match="--steps"):
        interpolate(G, a, b, 1)


def test_saved_results_interpolate_like_fresh_ones(tmp_path: Path, G, pair) -> None:
    a, b = pair("w+")
    fresh = interpolate(G, a, b, 3)
    loaded = interpolate(G, InversionResult.load(a.save(tmp_path / "a")), InversionResult.load(b.save(tmp_path / "b")), 3)
    assert torch.equal(fresh, loaded)


def test_interpolation_of_a_non_finite_result_raises(G, pair) -> None:
    a, b = pair("w+")
    broken = dataclasses.replace(b, params={"latent": b.params["latent"] * float("nan")})
    with pytest.raises(GanInvertError, match="interpolation of these w\\+ results contains NaN"):
        interpolate(G, a, broken, 3)
