"""The StyleGAN2 projector recipe (rosinality/stylegan2-pytorch projector.py) as ``wb`` / ``w+b``
with the ``rosinality-projector`` preset: start, decaying w noise, noise regulariser, renormalised
noise maps and one schedule for w and the noise maps."""

from __future__ import annotations

import pytest
import torch

from ganinvert.inversion import invert, make_method
from ganinvert.inversion.methods.base import noise_autocorrelation, noise_names
from ganinvert.models.mapping_statistics import mapped_latents
from tests.conftest import in_domain_images, make_random_generator, method_context

FAST = {"lambda_lpips": 0.0, "lambda_mse": 1.0}


@pytest.fixture(scope="module")
def G():
    return make_random_generator(32, seed=21)


def projector_noise_regularize(noises):
    """projector.py's noise_regularize, written out independently (pyramid by 2x2 means)."""
    loss = 0
    for noise in noises:
        size = noise.shape[2]
        while True:
            loss = loss + (noise * torch.roll(noise, 1, 3)).mean() ** 2 + (noise * torch.roll(noise, 1, 2)).mean() ** 2
            if size <= 8:
                break
            noise = noise.reshape(-1, 1, size // 2, 2, size // 2, 2).mean((3, 5))
            size //= 2
    return loss


def test_noise_regulariser_equals_the_projectors(G):
    noises = [torch.randn(1, 1, s, s, generator=torch.Generator().manual_seed(s)) for s in (4, 8, 16, 32)]
    torch.testing.assert_close(noise_autocorrelation(noises)[0], projector_noise_regularize(noises))


@pytest.mark.parametrize("name, shape", [("wb", (2, 32)), ("w+b", (2, 8, 32))])
def test_the_start_is_the_sample_mean_with_normal_noise(G, name, shape):
    m = make_method(name, "rosinality-projector", FAST)
    rngs = [torch.Generator().manual_seed(s) for s in (0, 1)]
    params = m.init_params(method_context(G, in_domain_images(G, 2), rngs))
    mean = mapped_latents(G, 10_000).mean(0)
    assert params["latent"].shape == shape
    torch.testing.assert_close(params["latent"].reshape(2, -1, 32), mean.expand(2, params["latent"].numel() // 64, -1))
    noise = params[noise_names(G)[-1]]
    assert not torch.equal(noise, getattr(G.noises, noise_names(G)[-1]).expand_as(noise))
    assert abs(float(noise.std()) - 1) < 0.2


def test_w_noise_decays_to_zero_by_the_ramps_end(G):
    m = make_method("w+b", "rosinality-projector", {**FAST, "steps": 100})
    rngs = [torch.Generator().manual_seed(0)]
    params = m.init_params(method_context(G, in_domain_images(G), rngs))
    early = m.inputs(method_context(G, in_domain_images(G), rngs, step=0), params).ws
    late = m.inputs(method_context(G, in_domain_images(G), rngs, step=75), params).ws
    assert (early - params["latent"]).abs().max() > 0
    assert torch.equal(late, params["latent"])


def test_a_run_keeps_noise_normalised_and_lowers_the_loss(G):
    target = in_domain_images(G)
    result = invert(G, target, "wb", preset="rosinality-projector", settings={**FAST, "steps": 40}, progress=False)
    for name in noise_names(G):
        noise = result.params[name]
        assert abs(float(noise.mean())) < 1e-5 and abs(float(noise.std()) - 1) < 1e-4
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.settings["noise_regularize_weight"] == 1e5
