"""Small seeded generators for the restoration/editing tests (shared by tests/tasks/test_*.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from ganinvert.models.loading import load_generator, save_generator
from ganinvert.models.stylegan2 import StyleGAN2Generator
from tests.conftest import seeded_generator

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
LPIPS_WEIGHTS = SHARED / "weights" / "lpips_alex.pth"
FAST = {"lambda_lpips": 0.0}


def random_generator(seed: int = 0, resolution: int = 16) -> StyleGAN2Generator:
    """A tiny StyleGAN2 whose every random tensor comes from a generator seeded with ``seed``."""
    return seeded_generator(resolution, style_dim=16, channels={4: 16, 8: 16, 16: 8, 32: 8}, seed=seed)


def saved_generator(path: Path, seed: int = 0, resolution: int = 16) -> StyleGAN2Generator:
    """Write a random generator to ``path`` and load it back (so it has a ``source`` and sha256)."""
    save_generator(random_generator(seed, resolution), path)
    return load_generator(path)


def sample(G: StyleGAN2Generator, seed: int, n: int = 1) -> torch.Tensor:
    """n images of G from seeded z, (n, 3, H, W)."""
    with torch.no_grad():
        return G(torch.randn(n, G.style_dim, generator=torch.Generator().manual_seed(seed)))
