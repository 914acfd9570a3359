"""The StyleGAN2 generator: parity with rosinality/stylegan2-pytorch and every synthesis option."""

from __future__ import annotations

import copy

import pytest
import torch

from ganinvert.models.loading import load_generator
from ganinvert.models.stylegan2 import FeatureEntry, StyleGAN2Generator

REFERENCES = ("rosinality_s32_sd64", "rosinality_s64_sd128")
IMPLS = ("fast", "reference")
TOL = 1e-4


@pytest.fixture(scope="module", params=REFERENCES)
def reference(request, shared):
    """(generator, expected outputs) of one reference checkpoint."""
    G = load_generator(shared("reference", f"{request.param}.pt"))
    expected = torch.load(shared("reference", f"{request.param}_expected.pt"), weights_only=False)
    return G, expected


@pytest.fixture(scope="module")
def G(random_generator):
    return random_generator(32, seed=3)


def ws_of(G: StyleGAN2Generator, n: int, seed: int) -> torch.Tensor:
    """Per-layer distinct latents (each ws entry from its own z), so a wrong index shows."""
    z = torch.randn(n, G.num_ws, G.style_dim, generator=torch.Generator().manual_seed(seed))
    return G.mapping(z)


def noise_of(G: StyleGAN2Generator, n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *shape[1:], generator=g) for shape in G.noise_shapes]


# ----------------------------------------------------------------------------- reference parity
def test_reference_mapping_matches(reference):
    G, e = reference
    with torch.no_grad():
        assert (G.mapping(e["z"]) - e["w"]).abs().max() <= TOL


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("image", ["img_z", "img_mix", "img_wplus", "img_trunc"])
def test_reference_images_match(reference, impl, image):
    G, e = reference
    assert G.config()["resolution"] == e["config"]["size"] and G.style_dim == e["config"]["style_dim"]
    with torch.no_grad():
        w = G.mapping(e["z"])
        if image == "img_z":
            ws = G.broadcast(w)
        elif image == "img_mix":
            ws = G.mix(w, G.mapping(e["z2"]), e["inject_index"])
        elif image == "img_wplus":
            ws = e["wplus"]
        else:
            # The checkpoint's latent_avg is the truncation latent the reference used.
            assert torch.equal(G.w_avg, e["truncation_latent"].reshape(-1))
            ws = G.broadcast(G.truncate(w, e["truncation"]))
        out = G.synthesis(ws, e["noise"], impl=impl)
    assert out.shape == e[image].shape
    assert (out - e[image]).abs().max() <= TOL


def test_reference_configuration_inferred(reference):
    G, e = reference
    cfg = e["config"]
    assert G.n_mlp == cfg["n_mlp"]
    assert G.channels == {r: cfg["channels"][r] for r in G.channels}
    assert G.num_ws == e["wplus"].shape[1]


# ----------------------------------------------------------------------------- implementations
def test_fast_and_reference_implementations_agree_with_every_option(G):
    n = 2
    ws, noise = ws_of(G, n, 0), noise_of(G, n, 1)
    g = torch.Generator().manual_seed(2)
    deltas = {"convs.2": 0.1 * torch.randn(G.conv_layer("convs.2").weight.shape[1:], generator=g),
              "to_rgbs.0": 0.1 * torch.randn(n, *G.conv_layer("to_rgbs.0").weight.shape[1:], generator=g)}
    const = torch.randn(n, *G.input.input.shape[1:], generator=g)
    with torch.no_grad():
        fast = G.synthesis(ws, noise, const=const, weight_deltas=deltas, impl="fast")
        ref = G.synthesis(ws, noise, const=const, weight_deltas=deltas, impl="reference")
    assert (fast - ref).abs().max() <= TOL


def test_unknown_impl_is_rejected(G):
    with pytest.raises(ValueError, match="impl"):
        G.synthesis(ws_of(G, 1, 0), impl="cuda")


# ----------------------------------------------------------------------------- layout helpers
def test_layout_helpers_cover_every_layer_once(G):
    ws_indices = [i for b in range(G.num_blocks) for i in G.block_ws_indices(b)]
    # Every ws index is read; the ToRGB of block b shares its index with the first conv of b+1.
    assert sorted(set(ws_indices)) == list(range(G.num_ws))
    noise_indices = [i for b in range(G.num_blocks) for i in G.block_noise_indices(b)]
    assert noise_indices == list(range(G.num_layers))
    assert [G.feature_shape(b)[1] for b in range(G.num_blocks)] == G.block_resolutions
    assert len(G.conv_layer_names()) == len(set(G.conv_layer_names())) == G.num_layers + G.num_blocks
    with pytest.raises(ValueError, match="block"):
        G.feature_shape(G.num_blocks)


@pytest.mark.parametrize("index", [0, 3, 7])
def test_each_ws_index_changes_the_image(G, index):
    ws = ws_of(G, 1, 0)
    moved = ws.clone()
    moved[:, index] += 0.5
    with torch.no_grad():
        assert (G.synthesis(ws) - G.synthesis(moved)).abs().max() > 1e-3


def test_mix_and_truncate(G):
    w1, w2 = ws_of(G, 2, 0)[:, 0], ws_of(G, 2, 1)[:, 0]
    mixed = G.mix(w1, w2, 3)
    assert torch.equal(mixed[:, :3], w1[:, None].expand(-1, 3, -1))
    assert torch.equal(mixed[:, 3:], w2[:, None].expand(-1, G.num_ws - 3, -1))
    assert torch.allclose(G.truncate(w1, 0.0), G.w_avg.expand_as(w1))
    assert torch.allclose(G.truncate(w1, 1.0), w1, atol=1e-6)
    with pytest.raises(ValueError, match="inject_index"):
        G.mix(w1, w2, G.num_ws + 1)


def test_mapping_accepts_per_layer_codes(G):
    z = torch.randn(2, G.num_ws, G.style_dim, generator=torch.Generator().manual_seed(0))
    w = G.mapping(z)
    assert w.shape == z.shape
    assert torch.allclose(w[:, 3], G.mapping(z[:, 3]), atol=1e-6)


def test_ws_shape_is_validated(G):
    with pytest.raises(ValueError, match="ws must be"):
        G.synthesis(torch.zeros(1, G.num_ws - 1, G.style_dim))


# ----------------------------------------------------------------------------- feature entry / exit
@pytest.mark.parametrize("impl", IMPLS)
def test_block_features_round_trip_every_block(G, impl):
    ws, noise = ws_of(G, 2, 0), noise_of(G, 2, 1)
    with torch.no_grad():
        full = G.synthesis(ws, noise, impl=impl)
        for block in range(G.num_blocks):
            entry = G.block_features(ws, block, noise, impl=impl)
            assert entry.features.shape == (2, *G.feature_shape(block))
            assert (entry.rgb is None) == (block == 0)
            again = G.synthesis(ws, noise, feature_entry=entry, impl=impl)
            assert (again - full).abs().max() <= 1e-5, block


def test_feature_entry_ignores_earlier_ws_and_drops_skip_without_rgb(G):
    ws, noise = ws_of(G, 1, 0), noise_of(G, 1, 1)
    block = 2
    with torch.no_grad():
        entry = G.block_features(ws, block, noise)
        earlier = ws.clone()
        earlier[:, :G.block_ws_indices(block)[0]] += 1.0  # layers before the entry block
        assert torch.equal(G.synthesis(earlier, noise, feature_entry=entry),
                           G.synthesis(ws, noise, feature_entry=entry))
        no_skip = G.synthesis(ws, noise, feature_entry=FeatureEntry(block, entry.features))
        assert (no_skip - G.synthesis(ws, noise)).abs().max() > 1e-3


def test_feature_entry_shape_and_order_are_validated(G):
    ws = ws_of(G, 1, 0)
    with pytest.raises(ValueError, match="feature_entry features"):
        G.synthesis(ws, feature_entry=FeatureEntry(1, torch.zeros(1, 3, 8, 8)))
    entry = G.block_features(ws, 2)
    with pytest.raises(ValueError, match="after output_block"):
        G.synthesis(ws, feature_entry=entry, output_block=1)


@pytest.mark.parametrize("block", [0, 1, 2, 3])
def test_output_block_shapes_and_values(G, block):
    ws, noise = ws_of(G, 2, 0), noise_of(G, 2, 1)
    r = 4 * 2 ** block
    with torch.no_grad():
        out = G.synthesis(ws, noise, output_block=block)
        assert out.shape == (2, 3, r, r)
        if block + 1 < G.num_blocks:
            # The skip image entering block+1 is this block's output, upsampled.
            nxt = G.block_features(ws, block + 1, noise)
            assert torch.allclose(G.to_rgbs[block].upsample(out), nxt.rgb, atol=1e-6)
    assert torch.allclose(out, G.synthesis(ws, noise, output_block=block, impl="reference"), atol=TOL)


def test_feature_residuals_add_to_a_block(G):
    ws = ws_of(G, 1, 0)
    zero = {2: torch.zeros(1, *G.feature_shape(2))}
    bump = {2: torch.full((1, *G.feature_shape(2)), 0.5)}
    with torch.no_grad():
        plain = G.synthesis(ws)
        assert torch.equal(G.synthesis(ws, feature_residuals=zero), plain)
        assert (G.synthesis(ws, feature_residuals=bump) - plain).abs().max() > 1e-3


# ----------------------------------------------------------------------------- weight deltas / const / noise
def test_zero_weight_deltas_equal_no_deltas(G):
    ws = ws_of(G, 2, 0)
    zeros = {name: torch.zeros(G.conv_layer(name).weight.shape[1:]) for name in G.conv_layer_names()}
    with torch.no_grad():
        assert torch.allclose(G.synthesis(ws, weight_deltas=zeros), G.synthesis(ws), atol=1e-5)


def test_per_sample_weight_deltas_equal_shared_ones(G):
    n, name = 3, "convs.1"
    ws = ws_of(G, n, 0)
    delta = 0.2 * torch.randn(G.conv_layer(name).weight.shape[1:], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        shared_out = G.synthesis(ws, weight_deltas={name: delta})
        per_sample = G.synthesis(ws, weight_deltas={name: delta.expand(n, *delta.shape).clone()})
        assert (shared_out - G.synthesis(ws)).abs().max() > 1e-3  # the delta matters
    assert (per_sample - shared_out).abs().max() <= 1e-5


def test_per_sample_weight_deltas_apply_to_their_own_image(G):
    n, name = 2, "conv1"
    ws = ws_of(G, n, 0)
    deltas = 0.2 * torch.randn(n, *G.conv_layer(name).weight.shape[1:], generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        batch = G.synthesis(ws, weight_deltas={name: deltas})
        for i in range(n):
            single = G.synthesis(ws[i:i + 1], weight_deltas={name: deltas[i]})
            assert (batch[i:i + 1] - single).abs().max() <= 1e-5


def test_unknown_weight_delta_layer_is_rejected(G):
    with pytest.raises(ValueError, match="unknown weight_deltas"):
        G.synthesis(ws_of(G, 1, 0), weight_deltas={"convs.99": torch.zeros(1)})


def test_const_override(G):
    ws = ws_of(G, 2, 0)
    with torch.no_grad():
        plain = G.synthesis(ws)
        assert torch.equal(G.synthesis(ws, const=G.input.input.clone()), plain)
        other = torch.randn(2, *G.input.input.shape[1:], generator=torch.Generator().manual_seed(1))
        per_sample = G.synthesis(ws, const=other)
        assert (per_sample - plain).abs().max() > 1e-3
        assert torch.allclose(per_sample[1:], G.synthesis(ws[1:], const=other[1:]), atol=TOL)


def test_noise_inputs(G):
    ws = ws_of(G, 2, 0)
    stored = [getattr(G.noises, f"noise_{i}") for i in range(G.num_layers)]
    with torch.no_grad():
        plain = G.synthesis(ws)
        assert torch.equal(G.synthesis(ws, [None] * G.num_layers), plain)
        assert torch.equal(G.synthesis(ws, stored), plain)
        fresh = noise_of(G, 2, 7)
        assert (G.synthesis(ws, fresh) - plain).abs().max() > 1e-3
        # A None entry keeps that layer's stored map.
        mixed = [None] + fresh[1:]
        assert torch.equal(G.synthesis(ws, mixed), G.synthesis(ws, [stored[0]] + fresh[1:]))


def test_noise_list_is_validated(G):
    ws = ws_of(G, 1, 0)
    with pytest.raises(ValueError, match=f"noise must hold {G.num_layers}"):
        G.synthesis(ws, [None] * (G.num_layers - 1))
    with pytest.raises(ValueError, match=f"noise must hold {G.num_layers}"):
        G.synthesis(ws, [None] * (G.num_layers + 1))


def test_noise_shapes_follow_layer_resolutions(G):
    expected = [(1, 1, 4, 4)] + [(1, 1, r, r) for r in G.block_resolutions[1:] for _ in range(2)]
    assert G.noise_shapes == expected


def test_constructor_rejects_bad_resolution():
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Generator(48, style_dim=8, n_mlp=1, channels={4: 8, 8: 8, 16: 8, 32: 8})


def test_estimate_w_avg_is_seeded(G):
    assert torch.equal(G.estimate_w_avg(n=64, seed=4), G.estimate_w_avg(n=64, seed=4))
    assert not torch.equal(G.estimate_w_avg(n=64, seed=4), G.estimate_w_avg(n=64, seed=5))


def test_trainable_generator_renders_and_gets_weight_gradients(G):
    """The fused frozen-weight path and the autograd path (trainable weights) give the same images;
    a trainable generator also renders under no_grad."""
    trainable = copy.deepcopy(G).requires_grad_(True)
    ws, noise = ws_of(G, 2, 0), noise_of(G, 2, 1)
    with torch.no_grad():
        frozen_out = G.synthesis(ws, noise)
        assert torch.allclose(trainable.synthesis(ws, noise), frozen_out, atol=1e-5)
    out = trainable.synthesis(ws, noise)
    assert torch.allclose(out, frozen_out, atol=1e-5)
    out.square().mean().backward()
    assert all(p.grad is not None for p in trainable.convs.parameters())
