"""Latent-code methods (W, W+, Z, Z+ with noise B and content S): their variables, in-domain
reconstruction, the P-norm+ regulariser and latent edits."""

from __future__ import annotations

import pytest
import torch

from ganinvert.inversion import invert, list_methods, make_method
from ganinvert.inversion.methods.latent import LatentMethod, PNormStatistics
from tests.conftest import method_context

NO_LPIPS = {"lambda_lpips": 0.0}
#: method -> (latent space, optimises noise B, optimises content S)
LATENT_METHODS = {"w": ("w", False, False), "w+": ("w+", False, False), "z": ("z", False, False),
                  "z+": ("z+", False, False), "w+b": ("w+", True, False), "w+s": ("w+", False, True),
                  "w+sb": ("w+", True, True), "z+sb": ("z+", True, True)}


@pytest.fixture(scope="module")
def G(random_generator):
    return random_generator(32, seed=31)


@pytest.fixture(scope="module")
def target(G):
    z = torch.randn(2, G.num_ws, G.style_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return G.synthesis(G.truncate(G.mapping(z), 0.7))


def expected_shapes(G, method: str, n: int) -> dict[str, tuple[int, ...]]:
    space, noise, content = LATENT_METHODS[method]
    latent = (n, G.style_dim) if space in ("w", "z") else (n, G.num_ws, G.style_dim)
    shapes = {"latent": latent}
    if content:
        shapes["content"] = (n, *G.input.input.shape[1:])
    if noise:
        shapes.update({f"noise_{i}": (n, *s[1:]) for i, s in enumerate(G.noise_shapes)})
    return shapes


def test_every_latent_method_is_registered():
    registered = list_methods()
    for name, (space, noise, content) in LATENT_METHODS.items():
        cls = registered[name]
        assert issubclass(cls, LatentMethod)
        assert (cls.space, cls.with_noise, cls.with_content) == (space, noise, content)


@pytest.mark.parametrize("method", list(LATENT_METHODS))
def test_method_optimises_exactly_its_variables(G, target, hash_state, method):
    m = make_method(method, None, {"steps": 3, **NO_LPIPS})
    shapes = expected_shapes(G, method, 2)
    stages = m.stages(G)
    assert len(stages) == 1 and stages[0].steps == 3
    assert set(stages[0].names) == set(shapes) and len(stages[0].names) == len(shapes)

    seeds = [7, 8]
    initial = m.init_params(method_context(G, target, [torch.Generator().manual_seed(s) for s in seeds]))
    assert {k: tuple(v.shape) for k, v in initial.items()} == shapes

    before = hash_state(G)
    result = invert(G, target, m, seed=seeds, progress=False)
    assert hash_state(G) == before  # the generator is frozen and untouched
    assert {k: tuple(v.shape) for k, v in result.params.items()} == shapes
    for name in shapes:  # every optimised tensor moved, for every image
        moved = (result.params[name] - initial[name]).flatten(1).abs().amax(1)
        assert (moved > 0).all(), name


@pytest.mark.parametrize("method", list(LATENT_METHODS))
def test_render_inputs(G, target, method):
    m = make_method(method, None, NO_LPIPS)
    params = m.init_params(method_context(G, target, [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]))
    inputs = m.render_inputs(G, params)
    space, noise, content = LATENT_METHODS[method]
    if space == "w":
        assert torch.equal(inputs.ws, G.broadcast(G.w_avg[None].expand(2, -1)))
    elif space == "w+":
        assert torch.equal(inputs.ws, G.w_avg.expand(2, G.num_ws, -1))
    else:  # z spaces go through the frozen mapping; z starts at a standard normal draw per image
        assert torch.equal(params["latent"][0], torch.randn(params["latent"].shape[1:],
                                                             generator=torch.Generator().manual_seed(0)))
        z = params["latent"] if space == "z+" else params["latent"][:, None].expand(-1, G.num_ws, -1)
        assert torch.allclose(inputs.ws, G.mapping(z), atol=1e-6)
    assert (inputs.noise is not None) == noise
    assert (inputs.const is not None) == content
    if content:  # content starts at the generator's constant, noise at its stored maps
        assert torch.equal(inputs.const[1:], G.input.input)
    if noise:
        assert torch.equal(inputs.noise[3][1:], G.noises.noise_3)


def test_w_plus_inverts_an_in_domain_image(reference_generator_32, psnr):
    """Image2StyleGAN's W+ recovers an image the generator made from a known w+ (> 35 dB)."""
    G = reference_generator_32
    z = torch.randn(1, G.style_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        target = G.synthesis(G.broadcast(G.truncate(G.mapping(z), 0.5)))
    result = invert(G, target, "w+", settings={"steps": 300, "lr": 0.03, **NO_LPIPS}, progress=False)
    reached = float(psnr(result.render(G), target))
    assert reached >= 35.0, reached
    assert result.history["psnr"][-1] == pytest.approx(reached, abs=0.5)


def test_pnorm_regulariser(G, target):
    m = make_method("w+", None, {"steps": 1, "pnorm_weight": 0.5, **NO_LPIPS})
    params = m.init_params(method_context(G, target, [torch.Generator().manual_seed(0)] * 2))
    params["latent"] = params["latent"] + torch.randn(params["latent"].shape,
                                                      generator=torch.Generator().manual_seed(1))
    reg = m.regulariser(method_context(G, target, [torch.Generator()] * 2), params, m.render_inputs(G, params))
    stats = PNormStatistics.of(G)
    assert stats is PNormStatistics.of(G)  # computed once per generator
    assert reg.shape == (2,) and (reg > 0).all()
    assert torch.allclose(reg, 0.5 * stats.norm(params["latent"]))
    # Mapping samples are typical in the whitened space: mean squared norm about 1 per dimension.
    w = G.mapping(torch.randn(512, G.style_dim, generator=torch.Generator().manual_seed(3)))
    assert float(stats.norm(w[:, None]).mean()) == pytest.approx(1.0, rel=0.2)
    # The engine adds it to the loss.
    result = invert(G, target, m, progress=False)
    start = G.w_avg.expand(2, G.num_ws, -1)  # where w+ starts
    with torch.no_grad():
        mse = (G.synthesis(start) - target).square().flatten(1).mean(1)
    assert result.history["loss"][0] == pytest.approx(float((mse + 0.5 * stats.norm(start)).mean()), rel=1e-4)
    assert make_method("z+", None, {"pnorm_weight": 0.5}).regulariser(method_context(G, target, [torch.Generator()] * 2), params, None) is None  # w spaces only


def test_edit_inputs_moves_only_the_chosen_layers(G, target):
    m = make_method("w+", None, NO_LPIPS)
    params = m.init_params(method_context(G, target, [torch.Generator().manual_seed(0)] * 2))
    direction = torch.randn(G.num_ws, G.style_dim, generator=torch.Generator().manual_seed(2))
    base = m.render_inputs(G, params).ws
    edited = m.edit_inputs(G, params, direction, 2.0, layers=[0, 3]).ws
    assert torch.allclose(edited[:, [0, 3]], base[:, [0, 3]] + 2.0 * direction[[0, 3]])
    untouched = [i for i in range(G.num_ws) if i not in (0, 3)]
    assert torch.equal(edited[:, untouched], base[:, untouched])
    assert torch.allclose(m.edit_inputs(G, params, direction, -1.0).ws, base - direction)


def test_image2stylegan_preset_cites_its_source():
    for name in LATENT_METHODS:
        m = make_method(name, "i2s")
        assert m.settings.steps == 5000 and m.settings.lr == 0.01  # Image2StyleGAN §4
        assert "Image2StyleGAN" in type(m).presets["i2s"].source
