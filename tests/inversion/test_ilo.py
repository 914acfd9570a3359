"""ILO (Intermediate Layer Optimization) on the shared engine, and the l1-ball projection it uses."""

from __future__ import annotations

import math

import pytest
import torch

from ganinvert.errors import GanInvertError
from ganinvert.inversion import InversionResult, invert
from ganinvert.inversion.methods import make_method
from ganinvert.inversion.methods.ilo import GaussianFit, geocross, project_l1_ball
from ganinvert.models.stylegan2 import StyleGAN2Generator
from tests.conftest import in_domain_images, method_context, scaled_style_generator, state_hash

STYLE_DIM = 32


@pytest.fixture(scope="module")
def G() -> StyleGAN2Generator:
    return scaled_style_generator(style_dim=STYLE_DIM)


# -- l1-ball projection ------------------------------------------------------------------------
def bisection_projection(v: torch.Tensor, radius: float) -> torch.Tensor:
    """Reference: soft-thresholding with theta found by bisection on sum(max(|v| - theta, 0)) = r."""
    v = v.double()
    if v.abs().sum() <= radius:
        return v
    lo, hi = 0.0, float(v.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if (v.abs() - mid).clamp_min(0).sum() > radius:
            lo = mid
        else:
            hi = mid
    return torch.sign(v) * (v.abs() - hi).clamp_min(0)


def test_l1_projection_leaves_points_inside_and_on_the_ball_unchanged() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, generator=g)
    assert torch.equal(project_l1_ball(x, float(x.abs().sum((1, 2)).max()) + 1), x)
    on_boundary = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -0.25]])
    assert torch.equal(project_l1_ball(on_boundary, torch.tensor([6.0, 1.0])), on_boundary)


@pytest.mark.parametrize("dim", [1, 2, 7, 300])
def test_l1_projection_matches_bisection_reference_and_lands_on_the_sphere(dim: int) -> None:
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(6, dim, generator=g) * torch.tensor([0.1, 1, 3, 10, 1, 1])[:, None]
    x[4] = x[4].round()  # ties in |x|
    x[5, : dim // 2] = 0  # zeros
    radii = torch.tensor([0.05, 0.5, 2.0, 1.0, 0.3, 0.0])
    out = project_l1_ball(x, radii)
    for i in range(len(x)):
        expected = bisection_projection(x[i], float(radii[i]))
        torch.testing.assert_close(out[i].double(), expected, atol=1e-6, rtol=0)
        if x[i].abs().sum() > radii[i]:
            assert float(out[i].abs().sum()) == pytest.approx(float(radii[i]), rel=1e-6, abs=1e-6)


def test_l1_projection_is_the_closest_feasible_point() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, generator=g) * 4
    u = project_l1_ball(x, 1.5)[0]
    # brute force: random points of the ball (on its surface and inside) are never closer than u
    candidates = torch.randn(20000, 3, generator=g)
    candidates = candidates / candidates.abs().sum(1, keepdim=True) * 1.5 * torch.rand(20000, 1, generator=g) ** 0.2
    assert float((x[0] - u).norm()) <= float((candidates - x[0]).norm(dim=1).min()) + 1e-6


def test_l1_projection_is_per_sample() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 3, generator=g) * torch.tensor([0.01, 1, 5, 0.1])[:, None, None]
    radii = torch.tensor([1.0, 2.0, 0.5, 1.0])
    batched = project_l1_ball(x, radii)
    for i in range(4):
        assert torch.equal(batched[i:i + 1], project_l1_ball(x[i:i + 1], float(radii[i])))


def test_l1_projection_rejects_bad_radii() -> None:
    x = torch.ones(2, 3)
    for radius in (-1.0, float("nan"), torch.ones(3)):
        with pytest.raises(GanInvertError):
            project_l1_ball(x, radius)
    with pytest.raises(GanInvertError):
        project_l1_ball(torch.tensor([[float("nan"), 1.0]]), 1.0)
    assert torch.equal(project_l1_ball(x, 0.0), torch.zeros(2, 3))


# -- pieces ------------------------------------------------------------------------------------
def test_round_steps_split_like_the_authors_config() -> None:
    assert make_method("ilo").settings.round_steps() == [50, 50, 25, 25]
    assert make_method("ilo", None, {"steps": 24}).settings.round_steps() == [8, 8, 4, 4]
    assert make_method("ilo", None, {"steps": 4}).settings.round_steps() == [1, 2, 0, 1]
    assert make_method("ilo", None, {"round_shares": (1.0, 0.0, 3.0)}).settings.round_steps() == [38, 0, 112]
    with pytest.raises(GanInvertError, match="round_shares"):
        make_method("ilo", None, {"round_shares": (0.0, 0.0)})
    with pytest.raises(GanInvertError, match="mapping"):
        make_method("ilo", None, {"mapping": "mlp"})
    with pytest.raises(GanInvertError, match="feature_radii"):
        make_method("ilo", None, {"feature_radii": (100.0, -1.0)})


def test_radii_scale_with_the_feature_map_and_the_code_preset_has_none(G: StyleGAN2Generator) -> None:
    method = make_method("ilo")
    # round k's map is (32, 4, 4), (32, 8, 8), (16, 16, 16) here vs 512 channels in config-f
    assert [method.radius(G, k) for k in range(4)] == [None, 1000 / 16, 6000 / 16, 6000 / 32]
    assert all(make_method("ilo", "ilo-code").radius(G, k) is None for k in range(4))


def test_a_round_without_steps_only_advances_to_its_feature_map(G: StyleGAN2Generator) -> None:
    result = invert(G, in_domain_images(G), "ilo", settings={"lambda_lpips": 0, "steps": 4}, progress=False)
    assert len(result.history["psnr"]) == 4  # rounds of 1, 2, 0 and 1 steps
    assert torch.equal(result.params["features.1"], result.params["anchor.1"])
    assert "features.2" in result.params


def test_too_many_rounds_for_the_generator(G: StyleGAN2Generator) -> None:
    method = make_method("ilo", None, {"round_shares": (1.0,) * 5, "lambda_lpips": 0})
    with pytest.raises(GanInvertError, match="at least 5 blocks"):
        invert(G, in_domain_images(G), method, progress=False)


def test_gaussian_fit_inverts_the_last_mapping_activation(G: StyleGAN2Generator) -> None:
    fit = GaussianFit.of(G)
    assert GaussianFit.of(G) is fit
    w = G.mapping(torch.randn(5, STYLE_DIM, generator=torch.Generator().manual_seed(2)))
    z = (torch.nn.functional.leaky_relu(w, 5.0) - fit.mean) / fit.std
    torch.testing.assert_close(fit(z), w, atol=1e-4, rtol=1e-4)


def test_geocross_is_the_mean_squared_pairwise_angle() -> None:
    same = torch.ones(1, 3, 4)
    assert float(geocross(same)) == pytest.approx(0.0, abs=1e-6)
    orthogonal = torch.eye(2)[None] * 3  # two rows at 90 degrees: mean over 4 pairs of angle^2 = pi^2 / 8
    assert float(geocross(orthogonal)) == pytest.approx(math.pi ** 2 / 8 * 2 / 8, rel=1e-4)


def test_each_round_starts_from_the_image_the_previous_one_ended_with(G: StyleGAN2Generator) -> None:
    method = make_method("ilo", None, {"lambda_lpips": 0})
    rngs = [torch.Generator().manual_seed(0)]
    images = in_domain_images(G)
    params = method.init_params(method_context(G, images, rngs))
    with torch.no_grad():
        for k in range(1, 4):
            params["latent"].add_(0.1)  # the rounds move z between boundaries; continuity must not depend on it
            previous = method.round_inputs(G, params, k - 1).render(G)
            method.begin_stage(method_context(G, images, rngs, stage_index=k), params)
            now = method.round_inputs(G, params, k)
            assert now.feature_entry.block == k - 1
            torch.testing.assert_close(now.render(G), previous, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError):
            G.block_features(now.ws, 1, now.noise, feature_entry=now.feature_entry)


# -- the method on the engine --------------------------------------------------------------------
NOISE_SIDES = [4, 8, 8, 16, 16, 32, 32]
EXPECTED_ROUNDS = {  # 32 px: 4 blocks, 8 ws, 7 noise maps; round k optimises the noise of blocks k..k+2
    0: {"latent": (1, 8, 32), **{f"noise_{i}": NOISE_SIDES[i] for i in range(5)}},
    1: {"latent": (1, 8, 32), "features.0": (1, 32, 4, 4), **{f"noise_{i}": NOISE_SIDES[i] for i in range(1, 7)}},
    2: {"latent": (1, 8, 32), "features.1": (1, 32, 8, 8), **{f"noise_{i}": NOISE_SIDES[i] for i in range(3, 7)}},
    3: {"latent": (1, 8, 32), "features.2": (1, 16, 16, 16), "noise_5": 32, "noise_6": 32},
}


def _shape(value: int | tuple) -> tuple:
    return (1, 1, value, value) if isinstance(value, int) else value


def test_rounds_optimise_exactly_their_tensors_within_their_constraints(G: StyleGAN2Generator) -> None:
    before = state_hash(G)
    # radii that bind on this generator: scaled by numel / numel(config-f) to 6.25, 25 and 46.9
    method = make_method("ilo", None, {"lambda_lpips": 0, "steps": 32, "feature_radii": (0.0, 100.0, 400.0, 1500.0)})
    original_project = method.project
    seen: dict[int, dict] = {}
    frozen: dict[int, dict[str, torch.Tensor]] = {}
    hits = {1: 0, 2: 0, 3: 0}

    def checked_project(ctx, params):
        k = ctx.stage_index
        if k not in seen:
            seen[k] = {n: tuple(t.shape) for n, t in params.items() if t.requires_grad}
            dead_rows = [i for i in range(G.num_ws) if i not in method.live_rows(G, k)]
            frozen[k] = {n: t.detach().clone() for n, t in params.items() if not t.requires_grad}
            frozen[k]["dead rows"] = params["latent"][:, dead_rows].detach().clone()
        original_project(ctx, params)
        latent = params["latent"]
        live = method.live_rows(G, k)
        torch.testing.assert_close(latent[:, live].norm(dim=-1), torch.full((1, len(live)), math.sqrt(STYLE_DIM)))
        for name in seen[k]:
            if name.startswith("noise_"):
                assert float(params[name].detach().norm()) == pytest.approx(params[name].shape[-1], rel=1e-5)
        if k:
            b = k - 1
            deviation = float((params[f"features.{b}"] - params[f"anchor.{b}"]).detach().abs().sum())
            radius = method.radius(G, k)
            assert deviation <= radius * (1 + 1e-5) + 1e-6
            hits[k] += deviation >= radius * (1 - 1e-4)
        dead = [i for i in range(G.num_ws) if i not in live]
        for name, value in frozen[k].items():  # nothing outside the round's tensors moves
            current = params["latent"][:, dead] if name == "dead rows" else params[name]
            assert torch.equal(current, value), name

    method.project = checked_project
    result = invert(G, in_domain_images(G), method, progress=False)
    assert {k: {n: _shape(s) for n, s in v.items()} for k, v in EXPECTED_ROUNDS.items()} == seen
    assert [st.names for st in method.stages(G)] == [tuple(EXPECTED_ROUNDS[k]) for k in range(4)]
    assert all(hits.values()), f"the l1 constraint never bound: {hits}"
    assert state_hash(G) == before
    assert set(result.params) == set(EXPECTED_ROUNDS[0]) | {"noise_5", "noise_6"} | {
        f"{kind}.{b}" for kind in ("features", "anchor") for b in range(3)} | {"rgb.1", "rgb.2"}


@pytest.fixture(scope="module")
def result(G: StyleGAN2Generator) -> InversionResult:
    return invert(G, in_domain_images(G), "ilo", settings={"lambda_lpips": 0, "steps": 40}, progress=False)


def test_reaches_a_good_reconstruction(G: StyleGAN2Generator, result: InversionResult, tmp_path) -> None:
    rendered = result.render(G)
    psnr = float(-10 * torch.log10(((rendered - in_domain_images(G)) / 2).square().mean()))
    round0_end = result.history["psnr"][12]  # z+ and noise only (the first of 13, 14, 6, 7 steps)
    assert psnr > 33 and psnr > round0_end + 6, (psnr, round0_end)  # about 37.6 vs 25.5 dB here
    path = result.save(tmp_path / "ilo")
    torch.testing.assert_close(InversionResult.load(path).render(G), rendered)


def test_a_batch_equals_single_runs() -> None:
    # float64: Adam's eps (1e-8) turns float32 rounding differences of batched convolutions into
    # visible parameter differences at lr 0.1; in float64 the runs agree to about 1e-12.
    G64 = scaled_style_generator(style_dim=STYLE_DIM).double()
    targets = in_domain_images(G64, 2, seed=5)
    settings = {"lambda_lpips": 0, "steps": 24}
    batch = invert(G64, targets, "ilo", settings=settings, seed=[3, 4], progress=False)
    for i, seed in enumerate([3, 4]):
        single = invert(G64, targets[i:i + 1], "ilo", settings=settings, seed=seed, progress=False)
        assert set(single.params) == set(batch.params)
        for name, value in single.params.items():
            torch.testing.assert_close(batch.params[name][i:i + 1], value, atol=1e-4, rtol=0)


def test_network_mapping_renders_through_the_mapping_network(G: StyleGAN2Generator) -> None:
    method = make_method("ilo", None, {"mapping": "network", "lambda_lpips": 0, "steps": 8})
    result = invert(G, in_domain_images(G), method, progress=False)
    inputs = method.render_inputs(G, result.params)
    torch.testing.assert_close(inputs.ws, G.mapping(result.params["latent"]))


def test_edit_moves_only_the_layers_after_the_last_feature_block(G: StyleGAN2Generator,
                                                                  result: InversionResult) -> None:
    method = result.method_instance()
    direction = torch.randn(G.num_ws, STYLE_DIM, generator=torch.Generator().manual_seed(0))
    base = method.render_inputs(G, result.params).ws
    edited = method.edit_inputs(G, result.params, direction, 2.0).ws
    live = list(range(5, 8))  # the last round enters at block 2, whose ToRGB reads ws[5]
    assert torch.equal(edited[:, :5], base[:, :5])
    torch.testing.assert_close(edited[:, live], base[:, live] + 2.0 * direction[live])
    only_six = method.edit_inputs(G, result.params, direction, 2.0, layers=[1, 6]).ws
    assert torch.equal(only_six[:, [0, 1, 2, 3, 4, 5, 7]], base[:, [0, 1, 2, 3, 4, 5, 7]])
    with pytest.raises(GanInvertError):
        method.edit_inputs(G, result.params, direction[:-1], 1.0)


def test_a_run_resumed_mid_round_equals_an_uninterrupted_one(G: StyleGAN2Generator, tmp_path) -> None:
    # anchors and skip images live in the tensors and the sphere radii are constants: no hidden state
    settings = {"lambda_lpips": 0, "steps": 24}  # rounds of 8, 8, 4 and 4 steps
    full = invert(G, in_domain_images(G), "ilo", settings=settings, progress=False)

    class Interrupted(Exception):
        pass

    def stop_in_round_1(progress) -> None:
        if progress.step == 11:
            raise Interrupted

    checkpoint = tmp_path / "ilo.ckpt"
    with pytest.raises(Interrupted):
        invert(G, in_domain_images(G), "ilo", settings=settings, progress=False, checkpoint_path=checkpoint,
               checkpoint_every=5, callback=stop_in_round_1)
    resumed = invert(G, in_domain_images(G), "ilo", settings=settings, progress=False, checkpoint_path=checkpoint,
                     checkpoint_every=5, resume=True)
    assert set(resumed.params) == set(full.params)
    for name, value in full.params.items():
        assert torch.equal(resumed.params[name], value), name
