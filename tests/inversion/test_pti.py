"""PTI: stages and their variables, zero-initialised residuals, a frozen generator, tuning beats the
pivot, batch = single runs, locality regulariser, editing, memory of the residuals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ganinvert.errors import GanInvertError
from ganinvert.inversion import InversionResult, invert
from ganinvert.inversion.methods import make_method
from ganinvert.inversion.methods.base import noise_names
from ganinvert.inversion.methods.pti import (PTI, PTIInputs, noise_autocorrelation, residual_parameter_count,
                                             weight_delta_shapes, weight_deltas)
from ganinvert.models.stylegan2 import StyleGAN2Generator
from tests.conftest import assert_resume_matches_uninterrupted, method_context, seeded_generator, state_hash

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
LPIPS_WEIGHTS = SHARED / "weights" / "lpips_alex.pth"
FAST = {"lambda_lpips": 0.0}


def random_generator(seed: int = 0) -> StyleGAN2Generator:
    return seeded_generator(seed=seed)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(-10 * torch.log10(((x - y) / 2).square().mean()))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions run several times faster on one thread when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def G() -> StyleGAN2Generator:
    return random_generator()


@pytest.fixture(scope="module")
def targets(G) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        return G.synthesis(G.broadcast(G.mapping(torch.randn(2, G.style_dim, generator=g))))


class RecordingPTI(PTI):
    """PTI that logs, at every step, each tensor's shape, whether it is optimised and its max |value|."""

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self.log: list[dict[str, tuple[tuple[int, ...], bool, float]]] = []

    def inputs(self, ctx, params):
        self.log.append({k: (tuple(v.shape), v.requires_grad, float(v.detach().abs().max()))
                         for k, v in params.items()})
        return super().inputs(ctx, params)


def test_each_stage_optimises_exactly_its_variables_and_the_generator_is_unchanged(G, targets):
    before = state_hash(G)
    m = RecordingPTI(PTI.Settings(pivot_steps=3, steps=3, **FAST))
    result = invert(G, targets, m, progress=False)
    assert state_hash(G) == before
    n, d = targets.shape[0], G.style_dim

    pivot_stage = {k: shape for k, (shape, grad, _) in m.log[0].items() if grad}
    noise = {name: (n, *shape[1:]) for name, shape in zip(noise_names(G), G.noise_shapes)}
    assert pivot_stage == {"pivot": (n, d), **noise}
    assert set(m.log[0]) == set(pivot_stage)  # the step counter is the context's, not a tensor

    tune_stage = {k: shape for k, (shape, grad, _) in m.log[3].items() if grad}
    expected = {f"delta.{layer}": (n, *shape) for layer, shape in weight_delta_shapes(G).items()}
    expected["delta.const"] = (n, *G.input.input.shape[1:])
    assert tune_stage == expected
    assert set(m.log[3]) == set(expected) | {"pivot"}  # pivot frozen, projector noise discarded
    # Residuals start at exactly zero; the pivot does not move in stage 2.
    assert all(m.log[3][k][2] == 0.0 for k in expected)
    assert set(result.params) == set(expected) | {"pivot"}
    assert all(result.params[k].abs().max() > 0 for k in expected)
    assert len(result.history["psnr"]) == 6


def test_zero_residuals_render_the_pivot(G, targets):
    m = PTI(PTI.Settings(**FAST))
    rngs = [torch.Generator().manual_seed(i) for i in range(2)]
    params = m.init_params(method_context(G, targets, rngs))
    params["pivot"] += 0.3 * torch.randn(params["pivot"].shape, generator=torch.Generator().manual_seed(1))
    m.begin_stage(method_context(G, targets, rngs, stage_index=1), params)
    assert all(v.abs().max() == 0 for k, v in params.items() if k.startswith("delta."))
    with torch.no_grad():
        tuned = m.render_inputs(G, params).render(G)
        plain = G.synthesis(G.broadcast(params["pivot"]))
    torch.testing.assert_close(tuned, plain, atol=1e-5, rtol=0)


def test_tuning_beats_the_pivot_alone(G, targets):
    result = invert(G, targets[:1], "pti", settings={"pivot_steps": 15, "steps": 25, "lr": 1e-3, **FAST},
                    progress=False)
    with torch.no_grad():
        tuned = result.render(G)
        pivot_only = G.synthesis(G.broadcast(result.params["pivot"]))
    assert psnr(tuned, targets[:1]) > psnr(pivot_only, targets[:1]) + 1.0


def test_batch_equals_single_runs(G, targets):
    """Renders and pivots agree within 1e-4. Residual entries whose gradient is ~1e-8 may not: a
    batch runs the grouped convolution and a single image the shared-weight one, their gradients
    differ by float rounding (~1e-8), and Adam turns such near-zero gradients into steps of size lr."""
    settings = {"pivot_steps": 4, "steps": 4, "lr": 1e-3, "locality": True, "locality_lambda_lpips": 0.0, **FAST}
    batch = invert(G, targets, "pti", settings=settings, seed=[3, 4], progress=False)
    renders = batch.render(G)
    for i, seed in enumerate([3, 4]):
        single = invert(G, targets[i:i + 1], "pti", settings=settings, seed=seed, progress=False)
        torch.testing.assert_close(renders[i:i + 1], single.render(G), atol=1e-4, rtol=0)
        torch.testing.assert_close(batch.params["pivot"][i:i + 1], single.params["pivot"], atol=1e-4, rtol=0)
        for name, value in single.params.items():
            assert (batch.params[name][i:i + 1] - value).abs().max() <= 4 * 1e-3, name  # steps * lr


def test_pivot_stage_draws_decaying_w_noise_and_normalises_noise(G, targets):
    m = PTI(PTI.Settings(pivot_steps=10, **FAST))
    rngs = [torch.Generator().manual_seed(0)]
    params = m.init_params(method_context(G, targets[:1], rngs))
    first = m.inputs(method_context(G, targets[:1], rngs), params).ws[:, 0] - params["pivot"]
    assert first.abs().max() > 0
    ended = method_context(G, targets[:1], rngs, step=8)  # t = 0.8 >= 0.75: the projector's noise ramp has ended
    torch.testing.assert_close(m.inputs(ended, params).ws[:, 0], params["pivot"])
    noise = params[noise_names(G)[-1]]
    noise.mul_(3).add_(1)
    m.project(method_context(G, targets[:1], rngs), params)
    assert abs(float(noise.mean())) < 1e-5 and abs(float(noise.square().mean()) - 1) < 1e-4
    assert float(noise_autocorrelation([noise])) >= 0


def test_locality_regulariser_latents_and_value(G, targets):
    m = PTI(PTI.Settings(locality=True, locality_samples=2, locality_lambda_lpips=0.0, **FAST))
    rngs = [torch.Generator().manual_seed(i) for i in range(2)]
    params = m.init_params(method_context(G, targets, rngs))
    tune = method_context(G, targets, rngs, stage_index=1)
    m.begin_stage(tune, params)

    def draw_rngs(base: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(base + i) for i in range(2)]

    inputs = m.inputs(method_context(G, targets, draw_rngs(10), stage_index=1), params)
    assert isinstance(inputs, PTIInputs) and len(inputs.locality_ws) == 2
    for ws in inputs.locality_ws:
        assert ws.shape == (2, G.num_ws, G.style_dim)
        distance = (ws - G.broadcast(params["pivot"])).flatten(1).norm(dim=1)
        torch.testing.assert_close(distance, torch.full((2,), 30.0))
    assert float(m.regulariser(tune, params, inputs).abs().max()) < 1e-8  # no residual, no change
    params["delta.convs.1"].normal_(generator=torch.Generator().manual_seed(0))
    reg = m.regulariser(tune, params, inputs)
    assert reg.shape == (2,) and (reg > 0).all()
    # Draws come from the per-image generators only.
    torch.testing.assert_close(m.inputs(method_context(G, targets, draw_rngs(10), stage_index=1), params)
                               .locality_ws[0], inputs.locality_ws[0])
    assert not torch.allclose(m.inputs(method_context(G, targets, draw_rngs(20), stage_index=1), params)
                              .locality_ws[0], inputs.locality_ws[0])


@pytest.mark.skipif(not LPIPS_WEIGHTS.is_file(), reason="needs ../shared/weights/lpips_alex.pth")
def test_locality_regulariser_with_lpips(G, targets):
    m = PTI(PTI.Settings(locality=True, lpips_weights=str(LPIPS_WEIGHTS), **FAST))
    rngs = [torch.Generator().manual_seed(0)]
    params = m.init_params(method_context(G, targets[:1], rngs))
    tune = method_context(G, targets[:1], rngs, stage_index=1)
    m.begin_stage(tune, params)
    params["delta.convs.3"].normal_(generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    reg = m.regulariser(tune, params, m.inputs(tune, params))
    assert reg.shape == (1,) and float(reg.detach()) > 0 and reg.requires_grad


def test_edit_moves_the_pivot_and_keeps_the_residuals(G, targets, tmp_path):
    result = invert(G, targets[:1], "pti", settings={"pivot_steps": 2, "steps": 2, **FAST}, progress=False)
    m = result.method_instance()
    direction = torch.randn(G.num_ws, G.style_dim, generator=torch.Generator().manual_seed(2))
    edited = m.edit_inputs(G, result.params, direction, 1.5, layers=[0, 1])
    expected = G.broadcast(result.params["pivot"]).clone()
    expected[:, :2] += 1.5 * direction[:2]
    torch.testing.assert_close(edited.ws, expected)
    assert edited.weight_deltas.keys() == weight_deltas(result.params).keys()
    assert all(edited.weight_deltas[k] is v for k, v in weight_deltas(result.params).items())
    # The residuals travel with the result file.
    loaded = InversionResult.load(result.save(tmp_path / "pti"))
    torch.testing.assert_close(loaded.render(G), result.render(G))


def test_residual_memory_of_config_f_1024():
    with torch.device("meta"):
        G = StyleGAN2Generator(1024)
    count = residual_parameter_count(G, tune_const=False)
    assert 23e6 < count < 24e6  # 94 MB per image in float32 (see the module docstring)
    assert residual_parameter_count(G) == count + 512 * 16
    shapes_file = SHARED / "reference" / "rosinality_state_dict_shapes.json"
    if shapes_file.is_file():
        state = json.loads(shapes_file.read_text())["size1024_cm2"]["state_dict"]
        assert count == sum(math.prod(s) for k, s in state.items() if k.endswith("conv.weight"))


@pytest.mark.parametrize("bad", [{"pivot_steps": 0}, {"lr": -1.0}, {"locality_alpha": float("nan")},
                                 {"w_noise_ramp": 0.0}, {"locality_samples": 0}])
def test_invalid_settings_raise(bad):
    with pytest.raises(GanInvertError):
        make_method("pti", None, bad)


@pytest.mark.parametrize("stop_at", [3, 5])  # at the stage boundary and inside stage 2
def test_resume_matches_an_uninterrupted_run(G, targets, tmp_path, stop_at):
    settings = {"pivot_steps": 3, "steps": 3, "locality": True, "locality_lambda_lpips": 0.0, **FAST}
    assert_resume_matches_uninterrupted(G, targets[:1], "pti", settings, stop_at, tmp_path / "pti.ckpt")