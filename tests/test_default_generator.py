"""The bundled default generator, `ganinvert sample` and `ganinvert demo` (no ../shared needed)."""

from __future__ import annotations

import json

import torch
from PIL import Image

from ganinvert import load_generator
from ganinvert.cli import main
from ganinvert.models.loading import ASSETS, DEFAULT_GENERATOR


def test_default_generator_loads_and_renders_faces_at_64px():
    G = load_generator("default")
    assert DEFAULT_GENERATOR.stat().st_size <= 25_000_000
    assert (G.resolution, G.num_ws, G.style_dim) == (64, 10, 256)
    assert G.source.kind == "rosinality" and len(G.source.sha256) == 64
    with torch.no_grad():
        images = G(torch.randn(4, G.style_dim, generator=torch.Generator().manual_seed(0)))
    assert images.shape == (4, 3, 64, 64) and torch.isfinite(images).all()
    # A trained generator gives distinct, non-flat images (a random one gives near-constant colour noise).
    assert images.std(dim=(1, 2, 3)).min() > 0.1
    assert (images[0] - images[1]).abs().mean() > 0.05
    assert not any(p.requires_grad for p in G.parameters())


def test_sample_command_is_deterministic(tmp_path, capsys):
    for run in ("a", "b"):
        assert main(["sample", "--n", "3", "--seed", "7", "--out", str(tmp_path / run)]) == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["sample_00000.png", "sample_00001.png", "sample_00002.png"]
    for name in files:
        a, b = Image.open(tmp_path / "a" / name), Image.open(tmp_path / "b" / name)
        assert a.size == (64, 64) and a.tobytes() == b.tobytes()
    assert main(["sample", "--n", "1", "--seed", "8", "--out", str(tmp_path / "c")]) == 0
    assert Image.open(tmp_path / "c" / files[0]).tobytes() != Image.open(tmp_path / "a" / files[0]).tobytes()


def test_demo_inverts_the_bundled_example(tmp_path, capsys):
    assert (ASSETS / "example.png").is_file()
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "3", "--no-lpips"]) == 0
    folder = out / "sphinx"  # one folder per method of the side-by-side; SPHInX's is checked here
    for name in ("input.png", "reconstruction.png", "comparison.png", "curve.png", "metrics.json",
                 "result.safetensors", "result.json"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["method"] == "sphinx" and metrics["preset"] == "sphinx-official" and metrics["steps"] == 3
    assert metrics["psnr"] > 0
