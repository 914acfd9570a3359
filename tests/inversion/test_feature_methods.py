"""Feature-space methods F/W+ (BDInvert) and F/Z+ (Katsumata et al.) on the shared engine."""

from __future__ import annotations

import math

import pytest
import torch

from ganinvert.errors import GanInvertError
from ganinvert.inversion import InversionResult, invert
from ganinvert.inversion.methods import make_method
from ganinvert.inversion.methods.base import check_direction, live_ws_indices, retract_to_sphere
from ganinvert.inversion.methods.latent import PNormStatistics
from ganinvert.models.stylegan2 import StyleGAN2Generator
from tests.conftest import in_domain_images, method_context, scaled_style_generator, state_hash

STYLE_DIM = 32
METHODS = ("fw+", "fz+")
# 40 steps at lr 0.05 instead of the presets' 1200 at 0.01, to stay fast.
FAST = {"lambda_lpips": 0, "steps": 40, "lr": 0.05}


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(-10 * torch.log10(((x - y) / 2).square().mean()))


@pytest.fixture(scope="module")
def G() -> StyleGAN2Generator:
    return scaled_style_generator(style_dim=STYLE_DIM)


@pytest.fixture(scope="module")
def results(G: StyleGAN2Generator) -> dict[str, InversionResult]:
    return {m: invert(G, in_domain_images(G), m, settings=FAST, progress=False) for m in METHODS}


# -- helpers ---------------------------------------------------------------------------------
def test_retract_to_sphere_and_direction_checks(G: StyleGAN2Generator) -> None:
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(retract_to_sphere(x, 2.0).norm(dim=-1), torch.full((2, 3), 2.0))
    torch.testing.assert_close(retract_to_sphere(x, 1.0, dims=(1, 2)).flatten(1).norm(dim=1), torch.ones(2))
    assert live_ws_indices(G, None) == list(range(8))
    assert live_ws_indices(G, 0) == list(range(1, 8)) and live_ws_indices(G, 2) == [5, 6, 7]
    with pytest.raises(GanInvertError, match="edit direction must be"):
        check_direction(G, torch.zeros(7, STYLE_DIM))
    with pytest.raises(GanInvertError, match="NaN"):
        check_direction(G, torch.full((8, STYLE_DIM), float("nan")))


def test_feature_block_is_validated_and_sets_the_shapes(G: StyleGAN2Generator) -> None:
    with pytest.raises(GanInvertError, match="feature_block"):
        make_method("fw+", None, {"feature_block": -1})
    with pytest.raises(GanInvertError, match="out of range for a 32 px generator"):
        invert(G, in_domain_images(G), "fz+", settings={**FAST, "feature_block": 4}, progress=False)
    method = make_method("fw+", None, {"feature_block": 1})
    params = method.init_params(method_context(G, in_domain_images(G), [torch.Generator().manual_seed(0)]))
    assert {k: tuple(v.shape) for k, v in params.items()} == {"features": (1, 32, 8, 8), "latent": (1, 5, 32)}


def test_initial_features_come_from_the_w_avg_render(G: StyleGAN2Generator) -> None:
    mean_features = G.block_features(G.broadcast(G.w_avg[None]), 2).features
    for name in METHODS:
        rngs = [torch.Generator().manual_seed(s) for s in (0, 1)]
        params = make_method(name).init_params(method_context(G, in_domain_images(G, 2), rngs))
        torch.testing.assert_close(params["features"], mean_features.expand(2, -1, -1, -1))
    fw = make_method("fw+").init_params(method_context(G, in_domain_images(G), [torch.Generator()]))
    assert torch.equal(fw["latent"], G.w_avg.expand(1, 3, -1))


# -- the methods on the engine -------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_optimises_exactly_its_tensors_and_leaves_the_generator_alone(G: StyleGAN2Generator, name: str) -> None:
    before = state_hash(G)
    method = make_method(name, None, {**FAST, "steps": 6})
    original_project = method.project
    seen: list[dict] = []

    def recording_project(ctx, params):
        seen.append({n: tuple(t.shape) for n, t in params.items() if t.requires_grad})
        original_project(ctx, params)
        if name == "fz+":  # retracted after every step
            norms = params["latent"].detach().norm(dim=-1)
            torch.testing.assert_close(norms, torch.full_like(norms, math.sqrt(STYLE_DIM)), atol=1e-4, rtol=0)

    method.project = recording_project
    result = invert(G, in_domain_images(G), method, progress=False)
    # block 2 (16x16) of a 32 px generator: features (16, 16, 16); ws 5..7 read after it
    expected = {"features": (1, 16, 16, 16), "latent": (1, 3, STYLE_DIM)}
    assert seen == [expected] * 6
    assert {k: tuple(v.shape) for k, v in result.params.items()} == expected
    assert [st.names for st in method.stages(G)] == [("features", "latent")]
    assert state_hash(G) == before


@pytest.mark.parametrize("name", METHODS)
def test_reaches_a_good_reconstruction(G: StyleGAN2Generator, results: dict[str, InversionResult], name: str,
                                       tmp_path) -> None:
    result = results[name]
    rendered = result.render(G)
    assert psnr(rendered, in_domain_images(G)) > 33  # about 36.4 (fw+) and 36.3 (fz+) dB here, from 18
    assert psnr(rendered, in_domain_images(G)) > result.history["psnr"][0] + 10
    torch.testing.assert_close(InversionResult.load(result.save(tmp_path / name)).render(G), rendered)


def test_fz_codes_lie_on_the_sphere(results: dict[str, InversionResult]) -> None:
    norms = results["fz+"].params["latent"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, math.sqrt(STYLE_DIM)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, dtype", [("fw+", torch.float32), ("fz+", torch.float64)])
def test_a_batch_equals_single_runs(name: str, dtype: torch.dtype) -> None:
    # F/Z+ in float64: Adam's eps (1e-8) turns float32 rounding differences of batched matrix
    # products in the mapping into ~1e-3 code differences; in float64 the runs agree to ~1e-12.
    G = scaled_style_generator(style_dim=STYLE_DIM).to(dtype)
    targets = in_domain_images(G, 2, seed=5)
    settings = {**FAST, "steps": 20}
    batch = invert(G, targets, name, settings=settings, seed=[3, 4], progress=False)
    for i, seed in enumerate([3, 4]):
        single = invert(G, targets[i:i + 1], name, settings=settings, seed=seed, progress=False)
        for key, value in single.params.items():
            torch.testing.assert_close(batch.params[key][i:i + 1], value, atol=1e-4, rtol=0)


# -- regularisers and parameterisation -----------------------------------------------------------
def test_pn_regulariser_is_bdinverts_mean_over_all_rows(G: StyleGAN2Generator) -> None:
    method = make_method("fw+")
    params = method.init_params(method_context(G, in_domain_images(G), [torch.Generator()]))
    params["latent"] = params["latent"] + torch.randn(1, 3, STYLE_DIM, generator=torch.Generator().manual_seed(0))
    inputs = method.render_inputs(G, params)
    assert torch.equal(inputs.ws[:, :5], G.w_avg.expand(1, 5, -1))  # skipped rows held at w_avg
    expected = 0.01 * PNormStatistics.of(G).norm(inputs.ws)
    torch.testing.assert_close(method.regulariser(method_context(G, None, [torch.Generator()]), params, inputs), expected)
    assert make_method("fw+", None, {"pn_weight": 0}).regulariser(method_context(G, None, [torch.Generator()]), params, inputs) is None
    # a strong P_N weight keeps the detail codes closer to the typical region
    strong = invert(G, in_domain_images(G), "fw+", settings={**FAST, "steps": 15, "pn_weight": 10.0}, progress=False)
    none = invert(G, in_domain_images(G), "fw+", settings={**FAST, "steps": 15, "pn_weight": 0.0}, progress=False)
    stats = PNormStatistics.of(G)
    full = make_method("fw+").full_ws
    assert float(stats.norm(full(G, strong.params["latent"]))) < float(stats.norm(full(G, none.params["latent"])))


def test_fz_truncates_the_first_layers_towards_w_avg(G: StyleGAN2Generator) -> None:
    z = torch.randn(1, 3, STYLE_DIM, generator=torch.Generator().manual_seed(0))
    plain = make_method("fz+", None, {"truncation_psi": 1.0}).live_ws(G, z)
    torch.testing.assert_close(plain, G.mapping(z))
    truncated = make_method("fz+", None, {"truncation_psi": 0.5, "truncation_layers": 6}).live_ws(G, z)
    torch.testing.assert_close(truncated[:, 0], G.w_avg + 0.5 * (plain[:, 0] - G.w_avg))  # ws index 5 < 6
    torch.testing.assert_close(truncated[:, 1:], plain[:, 1:])  # ws 6 and 7 untouched


# -- editing -----------------------------------------------------------------------------------
def test_fw_edit_moves_only_layers_after_the_feature_block(G: StyleGAN2Generator, results: dict) -> None:
    method, params = results["fw+"].method_instance(), results["fw+"].params
    direction = torch.randn(G.num_ws, STYLE_DIM, generator=torch.Generator().manual_seed(1))
    base = method.render_inputs(G, params)
    edited = method.edit_inputs(G, params, direction, 1.5)
    assert torch.equal(edited.ws[:, :5], base.ws[:, :5])
    torch.testing.assert_close(edited.ws[:, 5:], base.ws[:, 5:] + 1.5 * direction[5:])
    assert torch.equal(edited.feature_entry.features, params["features"])
    restricted = method.edit_inputs(G, params, direction, 1.5, layers=[2, 6]).ws
    assert torch.equal(restricted[:, [0, 1, 2, 3, 4, 5, 7]], base.ws[:, [0, 1, 2, 3, 4, 5, 7]])
    with pytest.raises(GanInvertError, match="out of range"):
        method.edit_inputs(G, params, direction, 1.0, layers=[8])


def test_fz_edit_moves_z_on_the_sphere_then_maps(G: StyleGAN2Generator, results: dict) -> None:
    method, params = results["fz+"].method_instance(), results["fz+"].params
    direction = torch.randn(G.num_ws, STYLE_DIM, generator=torch.Generator().manual_seed(2))
    base = method.render_inputs(G, params)
    edited = method.edit_inputs(G, params, direction, 3.0, layers=[0, 1, 6, 7])
    assert torch.equal(edited.ws[:, :6], base.ws[:, :6])  # before the block, and ws 5 (not in layers)
    moved_z = retract_to_sphere(params["latent"][:, 1:] + 3.0 * direction[6:], math.sqrt(STYLE_DIM))
    expected = method.live_ws(G, torch.cat([params["latent"][:, :1], moved_z], 1))[:, 1:]
    torch.testing.assert_close(edited.ws[:, 6:], expected)
    assert not torch.allclose(edited.ws[:, 6:], base.ws[:, 6:])
