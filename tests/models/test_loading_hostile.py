"""Checkpoints that are wrong in the details: every one is a one-line CheckpointError, found
before a generator is allocated; and the format registry that load_generator reads through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ganinvert.errors import CheckpointError, GanInvertError
from ganinvert.models import loading
from ganinvert.models.loading import (FORMATS, GENERATOR_HELP, SUPPORTED, CheckpointFormat, build_generator,
                                      describe_formats, load_generator, sniff_format)
from ganinvert.models.stylegan2 import StyleGAN2Generator
from nvidia_fixture import write_nvidia_fixture


@pytest.fixture(scope="module")
def G(random_generator):
    return random_generator(16, seed=3)


def state_dict(G) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in G.state_dict().items()}


def refusal(path: Path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        load_generator(path)
    assert "\n" not in str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------------- latent_avg
@pytest.mark.parametrize("latent_avg,message", [
    ("w_avg", "latent_avg is a str"),
    (torch.arange(32), "latent_avg is a torch.int64 tensor"),
    (torch.zeros(2, 16), r"latent_avg has shape \(2, 16\), expected \(32,\)"),
    (torch.zeros(4, 8), r"latent_avg has shape \(4, 8\)"),           # right count, wrong layout
    (torch.full((32,), float("nan")), "latent_avg contains NaN"),
    (torch.full((1, 32), float("inf")), "latent_avg contains NaN or infinite"),
])
def test_bad_latent_avg_is_named(tmp_path, G, latent_avg, message):
    path = tmp_path / "g.pt"
    torch.save({"g_ema": state_dict(G), "latent_avg": latent_avg}, path)
    refusal(path, message)


def test_latent_avg_of_shape_1_by_style_dim_loads(tmp_path, G):
    path = tmp_path / "g.pt"
    torch.save({"g_ema": state_dict(G), "latent_avg": G.w_avg[None].clone()}, path)
    assert torch.equal(load_generator(path).w_avg, G.w_avg)


def test_bad_latent_avg_in_safetensors(tmp_path, G):
    path = tmp_path / "g.safetensors"
    save_file({**state_dict(G), "latent_avg": torch.full((32,), float("inf"))}, str(path))
    refusal(path, "latent_avg contains NaN or infinite")


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("change,message", [
    ("inf", "to_rgbs.1.conv.weight contains NaN or infinite values"),
    ("int", "style.1.bias is a torch.int64 tensor, expected a floating-point tensor"),
    ("key", "has a key of type int"),
])
def test_bad_weights_are_named(tmp_path, G, change, message):
    sd = state_dict(G)
    if change == "inf":
        sd["to_rgbs.1.conv.weight"][0, 0, 0] = float("-inf")
    elif change == "int":
        sd["style.1.bias"] = sd["style.1.bias"].long()
    else:
        sd[7] = torch.zeros(1)
    path = tmp_path / "g.pt"
    torch.save({"g_ema": sd}, path)
    refusal(path, message)


def test_nvidia_weights_with_inf_are_named(tmp_path, G):
    poisoned = StyleGAN2Generator(16, style_dim=32, n_mlp=2, channels=G.channels).eval()
    poisoned.load_state_dict(G.state_dict())
    with torch.no_grad():
        poisoned.to_rgbs[0].bias[0, 1] = float("inf")
    path = tmp_path / "g.pkl"
    write_nvidia_fixture(path, poisoned, keys=("G_ema",))
    refusal(path, r"G_ema.synthesis.b8.torgb.bias contains NaN or Inf")


def test_non_string_top_level_keys_are_reported(tmp_path):
    path = tmp_path / "g.pt"
    torch.save({1: torch.zeros(1), "x": torch.zeros(1)}, path)
    refusal(path, "top-level keys: 1, x")


# ----------------------------------------------------------------------------- architectures implied by a few bytes
@pytest.mark.parametrize("shapes,message", [
    # A 0-element tensor of shape (1, 2**20, 0, 0): a 40 TB conv weight if the network were built.
    ({"style.1.weight": (8, 8), "input.input": (1, 2 ** 20, 0, 0)}, "has shape"),
    ({"style.1.weight": (8, 0), "input.input": (1, 8, 4, 4)}, "empty layers"),
    # 40 blocks: noise maps of (2**42)**2 values.
    ({"style.1.weight": (8, 8), "input.input": (1, 8, 4, 4),
      **{f"to_rgbs.{i}.conv.weight": (0,) for i in range(40)},
      **{f"convs.{2 * i}.conv.weight": (1, 8, 8, 0, 0) for i in range(40)}}, "too large to build"),
])
def test_tiny_files_implying_huge_networks_are_refused_before_allocation(tmp_path, shapes, message):
    path = tmp_path / "g.pt"
    torch.save({"g_ema": {k: torch.zeros(shape) for k, shape in shapes.items()}}, path)
    refusal(path, message)


def test_build_generator_checks_the_state_dict_type():
    with pytest.raises(CheckpointError, match="is a list, not a dict"):
        build_generator([torch.zeros(1)], None)


def test_a_path_that_cannot_be_opened_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        sniff_format(tmp_path)  # a directory: open() fails as for a file without read permission


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of their permissions")
def test_unreadable_file_is_a_one_line_error(tmp_path, G):
    path = tmp_path / "g.pt"
    torch.save({"g_ema": state_dict(G)}, path)
    path.chmod(0)
    refusal(path, "cannot read")


# ----------------------------------------------------------------------------- user input to the generator
def test_generator_input_errors_are_ganinvert_errors(G):
    with pytest.raises(GanInvertError, match="power of two"):
        StyleGAN2Generator(48, style_dim=8, n_mlp=1)
    with pytest.raises(GanInvertError, match="ws must be"):
        G.synthesis(torch.zeros(1, G.num_ws + 1, G.style_dim))
    with pytest.raises(GanInvertError, match="block must be in"):
        G.feature_shape(G.num_blocks)
    with pytest.raises(GanInvertError, match="impl must be one of"):
        G.synthesis(G.broadcast(G.w_avg[None]), impl="cuda")


# ----------------------------------------------------------------------------- the format registry
def test_help_and_errors_list_every_format():
    assert [fmt.name for fmt in FORMATS] == ["safetensors", "nvidia-pkl", "rosinality"]
    for fmt in FORMATS:
        assert fmt.description in describe_formats()
    assert SUPPORTED == f"supported: {describe_formats()}"
    assert describe_formats() in GENERATOR_HELP and "'default'" in GENERATOR_HELP


def test_each_format_is_sniffed_and_recorded_as_the_source_kind(tmp_path, G):
    files = {"safetensors": tmp_path / "g.safetensors", "nvidia-pkl": tmp_path / "g.pkl",
             "rosinality": tmp_path / "g.pt"}
    save_file({k: v.contiguous() for k, v in state_dict(G).items()}, str(files["safetensors"]))
    write_nvidia_fixture(files["nvidia-pkl"], G, keys=("G_ema",))
    torch.save({"g_ema": state_dict(G)}, files["rosinality"])
    for name, path in files.items():
        assert sniff_format(path).name == name
        assert load_generator(path).source.kind == name


def test_safetensors_content_is_recognised_without_the_suffix(tmp_path, G):
    path = tmp_path / "weights.bin"
    save_file({k: v.contiguous() for k, v in state_dict(G).items()}, str(path))
    assert load_generator(path).source.kind == "safetensors"


def test_a_new_format_is_one_registered_reader(tmp_path, G, monkeypatch):
    """The acceptance test of issue #15 item 8: registering a reader is all load_generator needs."""
    path = tmp_path / "g.mine"
    path.write_bytes(b"MINE")
    sd = state_dict(G)
    mine = CheckpointFormat("mine", "test files starting with MINE", lambda p, head: head.startswith(b"MINE"),
                            lambda p: (sd, G.w_avg.clone()))
    monkeypatch.setattr(loading, "FORMATS", (mine, *FORMATS))
    loaded = load_generator(path)
    assert loaded.source.kind == "mine" and torch.equal(loaded.w_avg, G.w_avg)
