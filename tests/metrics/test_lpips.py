"""LPIPS: parity with the lpips package, weight resolution and input validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ganinvert.errors import GanInvertError, WeightsNotFoundError
from ganinvert.metrics import LPIPS, LPIPS_WEIGHTS_ENV_VAR, lpips_available, resolve_lpips_weights
from ganinvert.metrics.lpips import _unit_normalize

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
SHARED_WEIGHTS = SHARED / "weights" / "lpips_alex.pth"
SHARED_EXPECTED = SHARED / "reference" / "lpips_alex_expected.pt"
needs_shared = pytest.mark.skipif(
    not (SHARED_WEIGHTS.is_file() and SHARED_EXPECTED.is_file()),
    reason="../shared LPIPS weights/reference outputs absent (they are not part of the repo)")

# torchvision AlexNet / VGG16 `features` conv shapes and lpips head widths (the file format).
ALEX_CONVS = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
ALEX_HEADS = (64, 192, 384, 256, 256)
VGG_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
             14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512),
             26: (512, 512), 28: (512, 512)}
VGG_HEADS = (64, 128, 256, 512, 512)


def random_state(net: str = "alex", seed: int = 0) -> dict[str, torch.Tensor]:
    """A complete LPIPS state dict with random (He-scaled) trunk and non-negative heads."""
    g = torch.Generator().manual_seed(seed)
    convs = ALEX_CONVS if net == "alex" else {i: (o, c, 3) for i, (o, c) in VGG_CONVS.items()}
    heads = ALEX_HEADS if net == "alex" else VGG_HEADS
    state = {}
    for index, (c_out, c_in, k) in convs.items():
        he_std = (2 / (c_in * k * k)) ** 0.5
        state[f"features.{index}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * he_std
        state[f"features.{index}.bias"] = torch.randn(c_out, generator=g) * 0.1
    for k, c in enumerate(heads):
        state[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=g) / c
    return state


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lpips") / "random_alex.pth"
    torch.save(random_state(), path)
    return path


@pytest.fixture(scope="module")
def random_lpips(random_weights) -> LPIPS:
    return LPIPS(random_weights)


@pytest.fixture(scope="module")
def real_lpips() -> LPIPS:
    if not SHARED_WEIGHTS.is_file():
        pytest.skip("../shared/weights/lpips_alex.pth absent (not part of the repo)")
    return LPIPS(SHARED_WEIGHTS)


def images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@needs_shared
def test_matches_lpips_package_reference(real_lpips):
    ref = torch.load(SHARED_EXPECTED, weights_only=False)
    expected = torch.tensor(ref["lpips_alex"])
    sizes = torch.tensor([x.shape[-1] for x in ref["x"]])
    for size in sizes.unique():  # batched per size: batching must not change per-image values
        idx = (sizes == size).nonzero()[:, 0].tolist()
        x = torch.cat([ref["x"][i] for i in idx])
        y = torch.cat([ref["y"][i] for i in idx])
        got = real_lpips(x, y)
        assert got.shape == (len(idx),)
        torch.testing.assert_close(got, expected[idx], atol=1e-4, rtol=0)


@needs_shared
def test_spatial_map_averages_to_about_the_distance(real_lpips):
    ref = torch.load(SHARED_EXPECTED, weights_only=False)
    for x, y in zip(ref["x"][::3], ref["y"][::3]):
        distance_map = real_lpips(x, y, spatial=True)
        assert distance_map.shape == (1, 1, *x.shape[-2:])
        assert (distance_map >= 0).all()  # the lpips heads are non-negative
        # Bilinear upsampling (align_corners=False) weights border pixels differently, so the
        # mean of the map only approximates the spatially averaged distance.
        torch.testing.assert_close(distance_map.mean(dim=(1, 2, 3)), real_lpips(x, y), rtol=2e-3, atol=0)


def test_identical_images_have_zero_distance(random_lpips):
    x = images(3, 64, seed=1)
    assert torch.equal(random_lpips(x, x.clone()), torch.zeros(3))
    assert torch.equal(random_lpips(x, x, spatial=True), torch.zeros(3, 1, 64, 64))


def test_gradients_are_finite_and_nonzero(random_lpips):
    x = images(2, 48, seed=2).requires_grad_()
    y = images(2, 48, seed=3)
    random_lpips(x, y).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    x.grad = None
    random_lpips(x, y, spatial=True).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_unit_normalize_has_finite_gradient_at_all_zero_features():
    # A location where every channel is zero (possible after ReLU): sqrt's derivative is
    # infinite there, so lpips' sqrt(sum f**2) form would give a NaN gradient.
    features = torch.rand(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    features[0, :, 0, 0] = 0
    features.requires_grad_()
    (_unit_normalize(features) * torch.arange(4.0).view(1, 4, 1, 1)).sum().backward()
    assert torch.isfinite(features.grad).all()


def test_module_is_frozen_and_in_eval_mode(random_lpips):
    assert not any(p.requires_grad for p in random_lpips.parameters())
    assert not random_lpips.training
    trunk_keys = {f"features.{i}.{p}" for i in ALEX_CONVS for p in ("weight", "bias")}
    assert set(random_lpips.state_dict()) == trunk_keys | {f"lin{k}.model.1.weight" for k in range(5)}


def test_state_dict_round_trips_and_lpips_module_key_names_load(random_lpips, tmp_path):
    x, y = images(2, 40, seed=4), images(2, 40, seed=5)
    expected = random_lpips(x, y)
    own = tmp_path / "own.pth"
    torch.save(random_lpips.state_dict(), own)
    torch.testing.assert_close(LPIPS(own)(x, y), expected, atol=0, rtol=0)
    as_safetensors = tmp_path / "own.safetensors"
    save_file(random_lpips.state_dict(), str(as_safetensors))
    torch.testing.assert_close(LPIPS(as_safetensors)(x, y), expected, atol=0, rtol=0)

    # The state dict of lpips.LPIPS itself: trunk under net.sliceK.<torchvision index>, plus
    # scaling-layer buffers that are not used.
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    lpips_style = {}
    for key, value in random_lpips.state_dict().items():
        if key.startswith("features."):
            index = int(key.split(".")[1])
            key = f"net.slice{slice_of[index]}.{key.split('.', 1)[1]}"
        lpips_style[key] = value
    lpips_style["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    torch.save(lpips_style, tmp_path / "lpips_style.pth")
    torch.testing.assert_close(LPIPS(tmp_path / "lpips_style.pth")(x, y), expected, atol=0, rtol=0)


def test_vgg_trunk_runs_with_its_own_layout(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(random_state("vgg"), path)
    model = LPIPS(path, net="vgg")
    x, y = images(1, 16, seed=6), images(1, 16, seed=7)
    distance = model(x, y)
    assert distance.shape == (1,) and torch.isfinite(distance).all() and distance.item() > 0
    with pytest.raises(GanInvertError, match="alex"):
        LPIPS(path, net="alex")  # a VGG file is not an AlexNet file
    with pytest.raises(GanInvertError, match="unknown LPIPS net"):
        LPIPS(path, net="squeeze")


@pytest.mark.parametrize("x_shape, y_shape, message", [
    ((1, 3, 64, 64), (1, 3, 64, 32), "differ in shape"),
    ((1, 1, 64, 64), (1, 1, 64, 64), r"\(N, 3, H, W\)"),
    ((3, 64, 64), (3, 64, 64), r"\(N, 3, H, W\)"),
    ((1, 3, 30, 64), (1, 3, 30, 64), "at least 31 px"),
])
def test_invalid_inputs_are_rejected(random_lpips, x_shape, y_shape, message):
    with pytest.raises(GanInvertError, match=message):
        random_lpips(torch.zeros(x_shape), torch.zeros(y_shape))


def test_smallest_alexnet_input_and_integer_images(random_lpips):
    assert random_lpips(images(1, 31, seed=8), images(1, 31, seed=9)).shape == (1,)
    with pytest.raises(GanInvertError, match="float"):
        as_bytes = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
        random_lpips(as_bytes, as_bytes)


def test_missing_file_error_says_where_to_put_weights(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError, match="--lpips-weights") as info:
        LPIPS(missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    assert not lpips_available(missing)


def test_nothing_found_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV_VAR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torchvision cache
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_lpips_weights()
    message = str(info.value)
    assert "\n" not in message
    assert LPIPS_WEIGHTS_ENV_VAR in message and "--lpips-weights" in message
    assert str(tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in message
    assert not lpips_available()


def test_environment_variable_and_argument_precedence(random_weights, tmp_path, monkeypatch):
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV_VAR, str(random_weights))
    found = resolve_lpips_weights()
    assert found.trunk == random_weights and found.heads is None and LPIPS_WEIGHTS_ENV_VAR in found.source
    assert lpips_available()
    assert resolve_lpips_weights(random_weights).source == "weights argument"
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV_VAR, str(tmp_path / "gone.pth"))
    with pytest.raises(WeightsNotFoundError, match="gone.pth"):  # a set variable is not skipped
        resolve_lpips_weights()


def test_trunk_and_heads_as_two_files(tmp_path, random_lpips):
    state = random_lpips.state_dict()
    trunk, heads = tmp_path / "trunk.pth", tmp_path / "heads.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, trunk)
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, heads)
    x, y = images(1, 40, seed=10), images(1, 40, seed=11)
    expected = random_lpips(x, y)
    for spec in ((trunk, heads), f"{trunk}{os.pathsep}{heads}"):
        model = LPIPS(spec)
        assert model.weight_files.files == (trunk, heads)
        torch.testing.assert_close(model(x, y), expected, atol=0, rtol=0)
    with pytest.raises(GanInvertError, match="lin0.model.1.weight"):
        LPIPS(trunk)  # trunk alone lacks the heads


def test_torchvision_cache_with_lpips_package_heads(tmp_path, monkeypatch, random_lpips):
    """Fallback: torchvision's cached AlexNet + the heads inside an installed lpips package."""
    state = random_lpips.state_dict()
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    trunk = {k: v for k, v in state.items() if k.startswith("features.")}
    trunk["classifier.1.weight"] = torch.zeros(2, 2)  # torchvision files also hold the classifier
    torch.save(trunk, checkpoints / "alexnet-owt-7be5be79.pth")
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('lpips must not be imported')\n")
    heads = package / "weights" / "v0.1" / "alex.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, heads)
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV_VAR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    found = resolve_lpips_weights()
    assert found.files == (checkpoints / "alexnet-owt-7be5be79.pth", heads)
    x, y = images(1, 40, seed=12), images(1, 40, seed=13)
    torch.testing.assert_close(LPIPS()(x, y), random_lpips(x, y), atol=0, rtol=0)


def test_wrong_keys_shapes_and_unreadable_files(tmp_path):
    wrong_keys = tmp_path / "wrong_keys.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 11, 11)}, wrong_keys)
    with pytest.raises(GanInvertError, match="lack 15 of 15 keys"):
        LPIPS(wrong_keys)

    state = random_state()
    state["lin2.model.1.weight"] = torch.zeros(1, 100, 1, 1)
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save(state, wrong_shape)
    shapes = r"lin2.model.1.weight has shape \(1, 100, 1, 1\), expected \(1, 384, 1, 1\)"
    with pytest.raises(GanInvertError, match=shapes):
        LPIPS(wrong_shape)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsNotFoundError, match="cannot read LPIPS weights"):
        LPIPS(garbage)

    not_a_state_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(GanInvertError, match="not a state dict"):
        LPIPS(not_a_state_dict)
