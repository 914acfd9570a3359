"""``--method hyperinverter`` / ``hyperinverter-e1``: one forward pass through the engine, results that
render, edit and interpolate, the CLI, and the network bundled for the default generator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ganinvert.cli import main as cli_main
from ganinvert.errors import GanInvertError
from ganinvert.inversion import invert, make_method
from ganinvert.inversion.result import InversionResult
from ganinvert.io import save_image
from ganinvert.models.loading import load_generator, save_generator
from ganinvert.tasks.editing import edit
from ganinvert.tasks.interpolation import interpolate
from ganinvert.training.inverters import InverterTrainConfig, train_inverter


@pytest.fixture(scope="module")
def trained(random_generator, tmp_path_factory):
    """A tiny generator saved to a file, and E1 + HyperInverter trained a few steps for it."""
    root = tmp_path_factory.mktemp("hyper")
    save_generator(random_generator(resolution=16, style_dim=16, channels={4: 16, 8: 16, 16: 8}), root / "g.pt")
    G = load_generator(root / "g.pt")
    e1 = train_inverter(G, InverterTrainConfig(kind="hyperinverter-e1", out=root / "e1", steps=8, batch=4,
                                               settings={"base_width": 4, "max_width": 16, "hidden": 32, "lr": 2e-3}))
    hyper = train_inverter(G, InverterTrainConfig(
        kind="hyperinverter", out=root / "h", steps=8, batch=4,
        settings={"base_width": 4, "max_width": 16, "feature_dim": 32, "hidden_dim": 4, "lr": 2e-3,
                  "e1_path": str(e1)}))
    return G, root, e1, hyper


def _samples(G, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return G.synthesis(G.broadcast(G.mapping(torch.randn(n, G.style_dim, generator=g)))).clamp(-1, 1)


def test_invert_is_one_forward_pass_with_weight_residuals(trained, tmp_path: Path) -> None:
    G, _, _, hyper = trained
    x = _samples(G, 2, seed=7)
    result = invert(G, x, "hyperinverter", settings={"network_path": str(hyper)}, progress=False)
    assert result.history == {"loss": [], "psnr": []} and result.seconds > 0
    latent = result.params["latent"]
    assert latent.shape == (2, G.num_ws, G.style_dim) and torch.equal(latent[:, 0], latent[:, -1])
    deltas = {k[len("delta."):]: v for k, v in result.params.items() if k.startswith("delta.")}
    assert set(deltas) == {n for n in G.conv_layer_names() if not n.startswith("to_rgb")}
    assert any(float(d.abs().max()) > 0 for d in deltas.values())
    with torch.no_grad():
        expected = G.synthesis(latent, weight_deltas=deltas)
    torch.testing.assert_close(result.render(G), expected)
    saved = InversionResult.load(result.save(tmp_path / "r.safetensors"))
    torch.testing.assert_close(saved.render(G), expected)
    e1_only = invert(G, x, "hyperinverter-e1", settings={"network_path": str(trained[2])}, progress=False)
    assert set(e1_only.params) == {"latent"}
    torch.testing.assert_close(e1_only.params["latent"], latent)  # the same E1 inside both networks


def test_edit_moves_w_and_keeps_residuals(trained) -> None:
    G, _, _, hyper = trained
    result = invert(G, _samples(G, 2, seed=8), "hyperinverter", settings={"network_path": str(hyper)},
                    progress=False)
    direction = torch.randn(G.num_ws, G.style_dim, generator=torch.Generator().manual_seed(0))
    frames = edit(G, result, direction, [0.0, 2.0])
    torch.testing.assert_close(frames[0], result.render(G))
    assert float((frames[1] - frames[0]).abs().max()) > 1e-3
    method, params = result.method_instance(), result.params
    moved = method.edit_inputs(G, params, direction, 2.0)
    assert moved.weight_deltas is not None and torch.equal(moved.weight_deltas["conv1"], params["delta.conv1"])


def test_interpolate_blends_codes_and_residuals(trained) -> None:
    G, _, _, hyper = trained
    settings = {"network_path": str(hyper)}
    a = invert(G, _samples(G, 1, seed=9), "hyperinverter", settings=settings, progress=False)
    b = invert(G, _samples(G, 1, seed=10), "hyperinverter", settings=settings, progress=False)
    frames = interpolate(G, a, b, steps=3)
    torch.testing.assert_close(frames[0], a.render(G))
    torch.testing.assert_close(frames[-1], b.render(G))
    middle = a.method_instance().render_inputs(G, {k: (a.params[k] + b.params[k]) / 2 for k in a.params}).render(G)
    torch.testing.assert_close(frames[1], middle, atol=1e-5, rtol=0)


def test_settings_and_wrong_network_are_refused(trained) -> None:
    G, _, e1, hyper = trained
    with pytest.raises(GanInvertError, match="steps must be 0"):
        make_method("hyperinverter", None, {"steps": 10})
    with pytest.raises(GanInvertError, match="not a hyperinverter network"):
        invert(G, _samples(G, 1, seed=11), "hyperinverter", settings={"network_path": str(e1)}, progress=False)
    with pytest.raises(GanInvertError, match="no bundled"):
        invert(G, _samples(G, 1, seed=11), "hyperinverter", progress=False)


def test_cli_invert_with_hyperinverter(trained, tmp_path: Path, capsys) -> None:
    G, root, _, hyper = trained
    save_image(_samples(G, 1, seed=12), tmp_path / "face.png")
    code = cli_main(["invert", str(tmp_path / "face.png"), "--generator", str(root / "g.pt"), "--method",
                     "hyperinverter", "--set", f"network_path={hyper}", "--no-lpips", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    result = InversionResult.load(tmp_path / "out" / "face" / "result.safetensors")
    assert result.method == "hyperinverter" and "delta.conv1" in result.params


def test_bundled_network_beats_e1_alone() -> None:
    """The shipped networks load for the default generator and the hypernetworks improve on E1."""
    from ganinvert.metrics import psnr
    G = load_generator("default")
    x = _samples(G, 2, seed=20_000)  # outside the training draws (run seed 0) and the benchmark seeds
    hyper = invert(G, x, "hyperinverter", progress=False)
    e1 = invert(G, x, "hyperinverter-e1", progress=False)
    assert torch.equal(hyper.params["latent"], e1.params["latent"])
    gain = psnr(hyper.render(G), x) - psnr(e1.render(G), x)
    assert bool((gain > 0).all()), f"PSNR gain of the hypernetworks over E1: {gain.tolist()}"
