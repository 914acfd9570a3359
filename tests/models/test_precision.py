"""Reduced-precision synthesis: the choice from the hardware's flags, the cast copy of G, and a
bf16 inversion that keeps its optimised tensors, loss and Adam state in float32."""

from __future__ import annotations

import pytest
import torch

from ganinvert.errors import GanInvertError
from ganinvert.inversion import invert
from ganinvert.models.precision import cpu_flags, resolve_precision, synthesis_generator
from tests.conftest import in_domain_images, make_random_generator


@pytest.fixture(scope="module")
def G():
    return make_random_generator(32, seed=3)


def test_auto_picks_bf16_only_where_the_cpu_has_it():
    assert resolve_precision("auto", "cpu", flags={"avx2", "avx512f"}).name == "fp32"
    for flag in ("avx512_bf16", "amx_bf16"):
        chosen = resolve_precision("auto", "cpu", flags={"avx2", flag})
        assert chosen.name == "bf16" and flag in chosen.reason and chosen.dtype == torch.bfloat16
    with pytest.warns(UserWarning, match="emulated"):
        assert resolve_precision("bf16", "cpu", flags={"avx2"}).name == "bf16"
    with pytest.raises(GanInvertError, match="unknown precision"):
        resolve_precision("fp8", "cpu")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_the_reduced_copy_is_cast_once_and_leaves_G_alone(G):
    assert synthesis_generator(G, torch.float32) is G
    reduced = synthesis_generator(G, torch.bfloat16)
    assert reduced is synthesis_generator(G, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in reduced.parameters())
    assert all(p.dtype == torch.float32 for p in G.parameters()) and G.w_avg.dtype == torch.float32
    ws = G.w_avg.expand(1, G.num_ws, -1)
    from ganinvert.inversion.methods.base import SynthesisInputs
    full, half = SynthesisInputs(ws).render(G), SynthesisInputs(ws).render(reduced)
    assert half.dtype == torch.float32 and (full - half).abs().max() < 0.1


@pytest.mark.parametrize("method", ["w+", "w+sb", "sphinx"])
def test_a_bf16_run_lowers_the_loss_with_float32_state(G, method):
    target = in_domain_images(G)
    seen = {}

    def watch(p):
        seen.setdefault("first", p.loss)
        seen["last"] = p.loss

    settings = {"steps": 30, "lambda_lpips": 0.0, "lr": 0.02}
    result = invert(G, target, method, settings=settings, precision="bf16", callback=watch, progress=False)
    assert result.extra["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in result.params.values())
    assert seen["last"] < seen["first"]
    fp32 = invert(G, target, method, settings=settings, progress=False)
    assert fp32.extra["precision"] == "fp32"
    assert abs(fp32.history["loss"][-1] - result.history["loss"][-1]) < 0.5 * fp32.history["loss"][0]


def test_the_optimiser_state_of_a_bf16_run_is_float32(G, tmp_path):
    class Killed(Exception):
        pass

    def kill(p):
        if p.step == 2:
            raise Killed

    ckpt = tmp_path / "run.pt"
    with pytest.raises(Killed):
        invert(G, in_domain_images(G), "w+", settings={"steps": 5, "lambda_lpips": 0.0}, precision="bf16",
               checkpoint_path=ckpt, checkpoint_every=1, callback=kill, progress=False)
    state = torch.load(ckpt, weights_only=True)["optimizer"]["state"]
    assert state and all(v.dtype == torch.float32 for s in state.values() for k, v in s.items() if k != "step")
