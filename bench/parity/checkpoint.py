"""The generator checkpoint both sides load: rosinality's ``{"g_ema", "latent_avg"}`` format.

ganinvert's bundled checkpoint already is one (plus ``config``/``meta`` entries); the harness
writes a copy holding tensors only, so the official scripts' plain ``torch.load(ckpt)`` (which
defaults to ``weights_only=True``) reads it, and so that both sides demonstrably load one file.
"""

from __future__ import annotations

from pathlib import Path


from ganinvert.io import atomic_torch_save
from ganinvert.models import load_generator
from ganinvert.models.stylegan2 import StyleGAN2Generator


def rosinality_checkpoint(G: StyleGAN2Generator) -> dict[str, object]:
    """``{"g_ema": state_dict, "latent_avg": w_avg}`` with detached CPU tensors."""
    state = {k: v.detach().cpu().clone() for k, v in G.state_dict().items()}
    return {"g_ema": state, "latent_avg": G.w_avg.detach().cpu().clone()}


def write_rosinality_checkpoint(G: StyleGAN2Generator, path: Path) -> Path:
    """Write :func:`rosinality_checkpoint` atomically; returns ``path``."""
    atomic_torch_save(rosinality_checkpoint(G), Path(path))
    return Path(path)


def read_back(path: Path) -> StyleGAN2Generator:
    """The checkpoint loaded by ganinvert (the round-trip check of the conversion)."""
    return load_generator(path)
