"""Checkpoint loading: configuration inference for the published shapes, file formats, bad files."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ganinvert.errors import CheckpointError
from ganinvert.models.loading import build_generator, infer_config, load_generator, save_generator
from ganinvert.models.stylegan2 import default_channels
from nvidia_fixture import write_discriminator_only_fixture, write_nvidia_fixture, write_stylegan3_fixture

#: expected (resolution, channel multiplier, num_ws) of each published configuration
PUBLISHED = {"size1024_cm2": (1024, 2, 18), "size512_cm2": (512, 2, 16),
             "size256_cm2": (256, 2, 14), "size256_cm1": (256, 1, 14)}


@pytest.fixture(scope="module")
def published_shapes(shared) -> dict:
    return json.loads(shared("reference", "rosinality_state_dict_shapes.json").read_text())


@pytest.fixture(scope="module")
def G(random_generator):
    return random_generator(32, seed=11)


def random_state_dict(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors of the given shapes at the scale of a trained network: unit-normal weights
    (the equalised learning rate scales them at run time), small biases and noise strengths, and
    no FIR kernels (as older rosinality checkpoints, which the loader must accept)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith(".kernel"):
            continue
        t = torch.randn(shape, generator=g)
        if key.endswith("modulation.bias"):
            t = 1.0 + 0.1 * t
        elif key.endswith("bias") or key.endswith("noise.weight"):
            t = 0.1 * t
        elif key.startswith("style."):
            t = t * 100.0  # rosinality stores mapping weights divided by lr_mul = 0.01
        out[key] = t
    return out


def assert_same_images(G1, G2, seed: int = 0) -> None:
    z = torch.randn(2, G1.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.allclose(G1(z), G2(z), atol=1e-5)


# ----------------------------------------------------------------------------- published configurations
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configuration_loads_from_random_weights(published_shapes, name):
    resolution, multiplier, num_ws = PUBLISHED[name]
    entry = published_shapes[name]
    state_dict = random_state_dict(entry["state_dict"], seed=resolution + multiplier)
    latent_avg = torch.randn(512, generator=torch.Generator().manual_seed(1))
    G = build_generator(state_dict, latent_avg, where=name)

    assert (G.resolution, G.style_dim, G.n_mlp) == (resolution, 512, 8)
    assert G.num_ws == entry["n_latent"] == num_ws
    assert G.num_layers == entry["num_layers"]
    assert G.channels == {r: c for r, c in default_channels(multiplier).items() if r <= resolution}
    # Every tensor of the published layout exists here with the same shape and holds the loaded value.
    mine = G.state_dict()
    assert {k: list(v.shape) for k, v in mine.items()} == entry["state_dict"]
    assert all(torch.equal(mine[k], v) for k, v in state_dict.items())
    assert torch.equal(G.w_avg, latent_avg)
    if resolution == 256:
        with torch.no_grad():
            z = torch.randn(1, 512, generator=torch.Generator().manual_seed(2))
            image = G(z)
        assert image.shape == (1, 3, 256, 256) and torch.isfinite(image).all()


def test_infer_config_reads_reduced_widths(G):
    assert infer_config(G.state_dict()) == {k: v for k, v in G.config().items() if k != "blur_kernel"}


def test_missing_latent_avg_is_estimated(G):
    loaded = build_generator(G.state_dict(), None)
    assert torch.allclose(loaded.w_avg, G.estimate_w_avg(), atol=1e-6)


# ----------------------------------------------------------------------------- file formats
@pytest.mark.parametrize("layout", ["checkpoint", "bare", "safetensors"])
def test_load_generator_file_formats(tmp_path, G, layout):
    sd = {k: v.clone() for k, v in G.state_dict().items()}
    if layout == "checkpoint":
        path = tmp_path / "g.pt"
        torch.save({"g_ema": sd, "latent_avg": G.w_avg.clone(), "args": {"size": 32}}, path)
    elif layout == "bare":
        path = tmp_path / "g.pt"
        torch.save(sd, path)
    else:
        path = tmp_path / "g.safetensors"
        save_file({**{k: v.contiguous() for k, v in sd.items()}, "latent_avg": G.w_avg.clone()}, str(path))
    loaded = load_generator(path)
    assert loaded.config() == G.config()
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.source.kind == ("safetensors" if layout == "safetensors" else "rosinality")
    assert len(loaded.source.sha256) == 64
    assert_same_images(loaded, G)
    if layout == "bare":  # no latent_avg stored: estimated from seeded mapping samples
        assert torch.allclose(loaded.w_avg, G.estimate_w_avg(), atol=1e-6)
    else:
        assert torch.equal(loaded.w_avg, G.w_avg)


def test_half_precision_checkpoint_loads_as_float32(tmp_path, G):
    path = tmp_path / "half.pt"
    torch.save({"g_ema": {k: v.half() for k, v in G.state_dict().items()}, "latent_avg": G.w_avg.half()}, path)
    loaded = load_generator(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_save_generator_round_trip_is_atomic(tmp_path, G):
    path = tmp_path / "out" / "g.pt"
    save_generator(G, path)
    assert sorted(os.listdir(path.parent)) == ["g.pt"]  # no temporary files left behind
    loaded = load_generator(path)
    assert_same_images(loaded, G)
    assert torch.equal(loaded.w_avg, G.w_avg)


def test_nvidia_pickle_loads(tmp_path, G):
    path = tmp_path / "network-snapshot.pkl"
    write_nvidia_fixture(path, G)
    loaded = load_generator(path)
    assert loaded.source.kind == "nvidia-pkl"
    assert loaded.config()["channels"] == G.config()["channels"]
    assert_same_images(loaded, G)


def test_default_generator_is_reported_when_missing_or_loads():
    from ganinvert.models.loading import DEFAULT_GENERATOR
    if DEFAULT_GENERATOR.is_file():
        assert load_generator("default").resolution == 64
    else:
        with pytest.raises(CheckpointError, match="bundled default generator"):
            load_generator("default")


# ----------------------------------------------------------------------------- bad files
def _write_text(path: Path) -> Path:
    path.write_text("this is a README, not a network\n")
    return path


def _write_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _write_truncated(path: Path, G) -> Path:
    torch.save({"g_ema": G.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_FILES = {
    "text": (lambda p, G: _write_text(p / "g.pt"), "text file"),
    "empty": (lambda p, G: _write_empty(p / "g.pt"), "empty"),
    "truncated": (lambda p, G: _write_truncated(p / "g.pt", G), "truncated"),
    "random bytes": (lambda p, G: (p / "g.bin").write_bytes(bytes(range(256)) * 8) and p / "g.bin",
                     "not a recognised checkpoint"),
    "discriminator torch file": (
        lambda p, G: torch.save({"d": {"convs.0.0.weight": torch.zeros(4, 3, 1, 1),
                                       "final_linear.0.weight": torch.zeros(4, 4)}}, p / "d.pt") or p / "d.pt",
        "discriminator"),
    "bare discriminator state dict": (
        lambda p, G: torch.save({"convs.0.0.weight": torch.zeros(4, 3, 1, 1),
                                 "final_linear.0.weight": torch.zeros(4, 4)}, p / "d.pt") or p / "d.pt",
        "discriminator"),
    "list": (lambda p, G: torch.save([torch.zeros(1)], p / "l.pt") or p / "l.pt", "not a checkpoint dict"),
    "arbitrary pickle": (lambda p, G: (p / "x.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=2)) and p / "x.pkl",
                         "not a torch checkpoint"),
    "StyleGAN3 pickle": (lambda p, G: write_stylegan3_fixture(p / "sg3.pkl") or p / "sg3.pkl", "StyleGAN3"),
    "discriminator-only pickle": (lambda p, G: write_discriminator_only_fixture(p / "d.pkl") or p / "d.pkl",
                                  "discriminator only"),
    "bad safetensors": (lambda p, G: (p / "g.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{broken}") and
                        p / "g.safetensors", "not a readable safetensors"),
    "missing": (lambda p, G: p / "nope.pt", "not found"),
    "directory": (lambda p, G: p, "not a file"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_files_raise_one_line_checkpoint_errors(tmp_path, G, kind):
    make, message = BAD_FILES[kind]
    path = make(tmp_path, G)
    with pytest.raises(CheckpointError, match=message) as info:
        load_generator(path)
    assert "\n" not in str(info.value)


def _state_dict_variant(G, change: str) -> dict:
    sd = {k: v.clone() for k, v in G.state_dict().items()}
    if change == "missing tensor":
        del sd["convs.1.conv.weight"]
    elif change == "wrong shape":
        sd["convs.1.conv.weight"] = torch.zeros(1, 16, 7, 3, 3)
    elif change == "NaN":
        sd["conv1.conv.weight"][0, 0, 0, 0, 0] = float("nan")
    elif change == "unexpected tensor":
        sd["extra.weight"] = torch.zeros(1)
    return sd


@pytest.mark.parametrize("change,message", [("missing tensor", "missing"), ("wrong shape", "has shape"),
                                            ("NaN", "NaN"), ("unexpected tensor", "unexpected")])
def test_inconsistent_state_dicts_are_refused(tmp_path, G, change, message):
    path = tmp_path / "g.pt"
    torch.save({"g_ema": _state_dict_variant(G, change)}, path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_generator(path)
    assert "\n" not in str(info.value)


def test_latent_avg_size_is_checked(tmp_path, G):
    path = tmp_path / "g.pt"
    torch.save({"g_ema": G.state_dict(), "latent_avg": torch.zeros(G.style_dim + 1)}, path)
    with pytest.raises(CheckpointError, match="latent_avg"):
        load_generator(path)


def test_torch_zip_without_generator_keys_is_named(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match="top-level keys: model"):
        load_generator(path)
