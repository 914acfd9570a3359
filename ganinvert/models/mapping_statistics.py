"""Statistics of a generator's mapped latents, drawn once and cached on the generator.

P-norm+ whitening, ILO's Gaussian fit, SAM's Gaussian prior, PTI's w spread and the editing PCA
all start from the same thing: ``G.mapping(z)`` for z drawn from a ``torch.Generator`` with a
fixed seed. :func:`mapped_latents` draws them; :func:`cached_statistic` keeps what a method
computes from them per generator, device and dtype, so it is computed once per process.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, TypeVar

import torch

from .stylegan2 import StyleGAN2Generator

T = TypeVar("T")
_CACHE_ATTRIBUTE = "_mapping_statistics"


@torch.no_grad()
def mapped_latents(G: StyleGAN2Generator, samples: int, seed: int = 0, chunk: int | None = None) -> torch.Tensor:
    """w = G.mapping(z) for ``samples`` z ~ N(0, I) from a generator seeded with ``seed``: (samples, style_dim).

    ``chunk`` maps (and draws) that many at a time, to bound memory for large sample counts.
    """
    g = torch.Generator().manual_seed(seed)
    if chunk is None:
        return G.mapping(torch.randn(samples, G.style_dim, generator=g).to(G.w_avg))
    return torch.cat([G.mapping(torch.randn(min(chunk, samples - start), G.style_dim, generator=g).to(G.w_avg))
                      for start in range(0, samples, chunk)])


def w_spread(G: StyleGAN2Generator, samples: int, seed: int = 0) -> float:
    """The StyleGAN2 projectors' ``w_std``: root mean squared distance of mapped samples from their
    mean, ``sqrt(sum ||w - mean||^2 / samples)`` (cached)."""
    def build() -> float:
        w = mapped_latents(G, samples, seed)
        return float((w - w.mean(0)).square().sum() / samples) ** 0.5
    return cached_statistic(G, ("w-spread", samples, seed), build)


def mapped_mean(G: StyleGAN2Generator, samples: int, seed: int = 0) -> torch.Tensor:
    """(style_dim,) mean of ``samples`` mapped latents (the projectors' start, not the checkpoint's
    ``latent_avg``), cached."""
    return cached_statistic(G, ("w-mean", samples, seed), lambda: mapped_latents(G, samples, seed).mean(0))


def cached_statistic(G: StyleGAN2Generator, key: Hashable, build: Callable[[], T]) -> T:
    """``build()``, computed once per generator, ``key``, and G's device and dtype."""
    cache: dict[Any, Any] = G.__dict__.setdefault(_CACHE_ATTRIBUTE, {})
    full_key = (key, G.w_avg.device, G.w_avg.dtype)
    if full_key not in cache:
        cache[full_key] = build()
    return cache[full_key]
