"""``init="encoder"``: w / w+ codes and SPHInX's head start from the bundled HyperInverter phase-I
encoder's w of the image instead of w_avg (fewer steps to the same quality)."""

from __future__ import annotations

import pytest
import torch

from ganinvert.errors import GanInvertError
from ganinvert.inversion import invert, make_method
from ganinvert.models import load_generator
from ganinvert.models.hyperinverter import load_wencoder
from tests.conftest import generated_images, method_context


@pytest.fixture(scope="module")
def G():
    return load_generator("default")


@pytest.fixture(scope="module")
def images(G):
    return generated_images(G, 2, seed=123)


@pytest.mark.parametrize("name", ["w", "w+", "w+b", "w+s", "w+sb"])
def test_latent_codes_start_at_the_encoders_w(G, images, name):
    w = load_wencoder("default", G)(images)
    params = make_method(name, None, {"init": "encoder"}).init_params(method_context(G, images, [torch.Generator()] * 2))
    latent = params["latent"]
    torch.testing.assert_close(latent if name == "w" else latent[:, 0], w)
    if name != "w":
        assert torch.equal(latent, G.broadcast(w))


def test_sphinx_heads_start_at_the_encoders_w(G, images):
    m = make_method("sphinx", None, {"init": "encoder"})
    params = m.init_params(method_context(G, images, [torch.Generator().manual_seed(s) for s in (0, 1)]))
    w = load_wencoder("default", G)(images)
    torch.testing.assert_close(m.render_inputs(G, params).ws, G.broadcast(w), atol=1e-5, rtol=0)


def test_the_encoder_start_is_closer_and_stays_ahead(G, images):
    settings = {"steps": 20, "lambda_lpips": 0.0}
    mean = invert(G, images, "w+", settings=settings, progress=False).history["psnr"]
    encoded = invert(G, images, "w+", settings={**settings, "init": "encoder"}, progress=False).history["psnr"]
    assert encoded[0] > mean[0] + 3 and encoded[-1] > mean[-1]


def test_encoder_start_needs_w_codes_and_the_image(G, images):
    with pytest.raises(GanInvertError, match="init must be"):
        make_method("w+", None, {"init": "mean"})
    with pytest.raises(GanInvertError, match="z codes"):
        make_method("z+", None, {"init": "encoder"}).init_params(method_context(G, images, [torch.Generator()] * 2))
    with pytest.raises(GanInvertError, match="forward operator"):
        make_method("w+", None, {"init": "encoder"}).init_params(method_context(G, None, [torch.Generator()] * 2))
