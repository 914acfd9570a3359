"""HyperInverter's networks: shapes, zero-initialised start, files, and refusing other generators."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ganinvert.errors import CheckpointError, GanInvertError
from ganinvert.inversion.methods.pti import weight_delta_shapes
from ganinvert.models.hyperinverter import (HyperInverter, WEncoder, hypernetwork_layers, load_hyperinverter,
                                            load_wencoder, pyramid_widths, save_hyperinverter, save_wencoder)

TINY_E1 = {"base_width": 4, "max_width": 16, "hidden": 32}
TINY_E2 = {"base_width": 4, "max_width": 16, "feature_dim": 32, "hidden_dim": 4}


def _images(G, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return G.synthesis(G.broadcast(G.mapping(torch.randn(n, G.style_dim, generator=g)))).clamp(-1, 1)


def _networks(G, seed: int = 0, include_torgb: bool = False) -> HyperInverter:
    torch.manual_seed(seed)  # test-only initialisation of the modules
    e1 = WEncoder.for_generator(G, **TINY_E1)
    return HyperInverter.for_generator(G, e1, include_torgb=include_torgb, **TINY_E2)


def test_pyramid_widths() -> None:
    assert pyramid_widths(64, 16, 128) == {64: 16, 32: 32, 16: 64, 8: 128, 4: 128}
    with pytest.raises(GanInvertError):
        pyramid_widths(48, 16, 128)


def test_shapes_match_pti_residuals(random_generator) -> None:
    G = random_generator()
    net = _networks(G)
    x = _images(G, 3, seed=1)
    w, deltas = net(x, G)
    assert w.shape == (3, G.style_dim)
    shapes = weight_delta_shapes(G)
    assert list(deltas) == hypernetwork_layers(G) == [n for n in G.conv_layer_names() if not n.startswith("to_rgb")]
    for name, delta in deltas.items():
        assert delta.shape == (3, *shapes[name])
    with_rgb = _networks(G, include_torgb=True)
    assert set(with_rgb(x, G)[1]) == set(G.conv_layer_names())


def test_untrained_e1_predicts_w_avg_and_rejects_bad_images(random_generator) -> None:
    G = random_generator()
    e1 = WEncoder.for_generator(G, **TINY_E1)
    x = _images(G, 2, seed=2)
    assert torch.equal(e1(x), G.w_avg.expand(2, -1))
    with pytest.raises(GanInvertError, match="images must be"):
        e1(x[:, :, :16, :16])
    with pytest.raises(GanInvertError, match="NaN"):
        e1(torch.full_like(x, float("nan")))


def test_zero_initialised_hypernetworks_reproduce_e1(random_generator) -> None:
    G = random_generator()
    net = _networks(G)
    with torch.no_grad():  # give E1 a non-trivial output
        net.e1.head[-1].weight.normal_(0, 0.01)
    x = _images(G, 2, seed=3)
    w, deltas = net(x, G)
    assert all(float(d.detach().abs().max()) == 0 for d in deltas.values())
    with torch.no_grad():
        e1_image = G.synthesis(G.broadcast(net.e1(x)))
        hyper_image = G.synthesis(G.broadcast(w), weight_deltas=deltas)
    torch.testing.assert_close(hyper_image, e1_image, atol=1e-5, rtol=0)
    # A trained second factor changes the weights, per image.
    with torch.no_grad():
        for hyper in net.hypernets.values():
            hyper.w2.normal_(0, 0.01)
        _, deltas = net(x, G)
        changed = G.synthesis(G.broadcast(w), weight_deltas=deltas)
    assert not torch.equal(deltas["conv1"][0], deltas["conv1"][1])
    assert float((changed - e1_image).abs().max()) > 1e-3


def test_only_e2_and_hypernetworks_train(random_generator) -> None:
    G = random_generator()
    net = _networks(G).train()
    assert not net.e1.training and not any(p.requires_grad for p in net.e1.parameters())
    w, deltas = net(_images(G, 2, seed=4), G)
    sum(d.sum() for d in deltas.values()).backward()
    assert net.hypernets["conv1"].w2.grad is not None and all(p.grad is None for p in net.e1.parameters())


def test_save_load_round_trip(random_generator, tmp_path: Path) -> None:
    G = random_generator()
    net = _networks(G)
    with torch.no_grad():
        for hyper in net.hypernets.values():
            hyper.w2.normal_(0, 0.01)
        net.e1.head[-1].weight.normal_(0, 0.01)
    x = _images(G, 2, seed=5)
    save_hyperinverter(net, tmp_path / "h.safetensors", G, meta={"steps": 3})
    save_wencoder(net.e1, tmp_path / "e1.safetensors", G)
    loaded = load_hyperinverter(tmp_path / "h.safetensors", G)
    w, deltas = net.eval()(x, G)
    w2, deltas2 = loaded(x, G)
    assert torch.equal(w, w2) and deltas.keys() == deltas2.keys()
    assert all(torch.equal(deltas[k], deltas2[k]) for k in deltas)
    assert torch.equal(load_wencoder(tmp_path / "e1.safetensors", G)(x), net.e1(x))


def test_refuses_other_generator_or_kind(random_generator, tmp_path: Path) -> None:
    G = random_generator()
    net = _networks(G)
    save_hyperinverter(net, tmp_path / "h.safetensors", G)
    save_wencoder(net.e1, tmp_path / "e1.safetensors", G)
    other = random_generator(channels={4: 32, 8: 32, 16: 32, 32: 16})
    for load, name in ((load_hyperinverter, "h"), (load_wencoder, "e1")):
        with pytest.raises(CheckpointError, match="another generator") as info:
            load(tmp_path / f"{name}.safetensors", other)
        assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not a hyperinverter network"):
        load_hyperinverter(tmp_path / "e1.safetensors", G)
    with pytest.raises(CheckpointError, match="not found"):
        load_wencoder(tmp_path / "missing.safetensors", G)
    with pytest.raises(CheckpointError, match="no bundled"):
        load_hyperinverter("default", G)
