"""Fixtures of the evaluation tests: a tiny random generator file, a few images, LPIPS weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ganinvert.models.loading import save_generator
from ganinvert.models.stylegan2 import StyleGAN2Generator

from eval_fixtures import write_random_images

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
CELEBA = SHARED / "data" / "images" / "celeba_hq"
LPIPS_WEIGHTS = SHARED / "weights" / "lpips_alex.pth"


@pytest.fixture(scope="session")
def generator_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 32 px StyleGAN2 (built under a forked, seeded RNG) saved as a rosinality checkpoint."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        G = StyleGAN2Generator(32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16})
    G.requires_grad_(False).eval()
    with torch.no_grad():
        G.w_avg.copy_(G.estimate_w_avg())
    path = tmp_path_factory.mktemp("generator") / "tiny32.pt"
    save_generator(G, path)
    return path


@pytest.fixture(scope="session")
def face_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with 3 aligned faces from ../shared (CelebA-HQ), or 3 random images without it."""
    folder = tmp_path_factory.mktemp("faces")
    if CELEBA.is_dir():
        for src in sorted(CELEBA.glob("*.jpg"))[:3]:
            (folder / src.name).symlink_to(src.resolve())
    else:
        write_random_images(folder, 3)
    return folder


@pytest.fixture(scope="session")
def lpips_weights() -> str | None:
    """The shared LPIPS weights, or None (the tests then run with --no-lpips)."""
    return str(LPIPS_WEIGHTS) if LPIPS_WEIGHTS.is_file() else None
