"""Attribute discovery with SPHInX (Subramanyam et al., ICML 2022, Appendix B).

Given one image and K transformed copies of it along an attribute (rotation, brightness, zoom),
SPHInX learns, jointly,

* the projection heads (Ps, and Pc / noise maps B if enabled) that give the shared code
  w*+ = Ps(z+), a fresh z+ every step as in plain SPHInX;
* one direction D (num_ws, style_dim) whose rows are normalised, D^ = D / ||D||_row;
* step sizes alpha_2 < ... < alpha_K, with alpha_1 = 0 for the first (reference) variant,

so that variant k renders from ``w*+ + alpha_k * D^``. A hinge keeps the steps ordered with a
margin tau (authors' code: tau = 2, weight 0.5)::

    R = max(0, tau - alpha_2) + sum_k max(0, tau - (alpha_{k+1} - alpha_k))

Afterwards, walking along D^ renders the attribute continuously (:func:`traverse`).
This follows the authors' ``main.py`` (``learn_att_inversion``) and ``model.py``
(``Attribute_learner``) in Rakshith-2905/SPHInX.

How it runs on the one engine: :class:`~ganinvert.inversion.methods.discover.Discover` is a
registered method whose tensors are those of
SPHInX plus ``attr.direction`` and ``attr.alpha``, all with batch = images, so every image keeps
its own heads, direction and steps. Its ``inputs`` expand each image's w*+ into its K variants,
so one engine step renders N*K images; the operator :meth:`Discover.stack_variants` folds them
into (N, K*3, H, W) and the measurement is the K variants stacked the same way. The engine's
per-image MSE over that stack is the mean of the K variant MSEs, which is the authors' loss;
``regulariser`` adds the hinge. The engine's LPIPS term compares 3-channel images only, so this
method runs with ``lambda_lpips = 0`` (the authors' code also drops LPIPS below 256 px).

Example::

    result = discover(G, image, "rotation", settings={"steps": 2000})
    print(alphas(result))                      # e.g. [[0.0, 2.3, 4.6]]
    frames = traverse(G, result, traversal_alphas(alphas(result)[0]))
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..checks import check_images, check_shape
from ..errors import GanInvertError
from ..inversion import invert, make_method
from ..inversion.methods.base import Params
from ..inversion.methods.discover import ATTRIBUTES, DEFAULT_FACTORS, Discover, check_factor
from ..inversion.result import InversionResult
from ..models.stylegan2 import StyleGAN2Generator

_IDENTITY = {"rotation": 0.0, "brightness": 1.0, "zoom": 1.0}


# ----------------------------------------------------------------------------- attribute variants
def apply_attribute(image: torch.Tensor, attribute: str, factor: float) -> torch.Tensor:
    """One variant of (N, 3, H, W) images in [-1, 1].

    * rotation: ``factor`` degrees counter-clockwise about the centre, bilinear; the corners that
      come from outside are 0 (mid-grey), as torchvision's ``rotate`` on [-1, 1] tensors in the
      authors' ``utils.rot_image``;
    * zoom: magnify by ``factor`` about the centre (the central 1/factor of the field, resized
      back, bilinear), the authors' ``utils.zoom`` without rounding the crop to whole pixels;
    * brightness: intensities in [0, 1] times ``factor``, clipped (torchvision's
      ``adjust_brightness``). The authors' ``control_brightness`` scales the [-1, 1] values, which
      changes contrast about mid-grey rather than brightness.

    >>> x = torch.zeros(1, 3, 8, 8)
    >>> bool(torch.equal(apply_attribute(x, "rotation", 0.0), x))
    True
    """
    if attribute not in ATTRIBUTES:
        raise GanInvertError(f"unknown attribute {attribute!r}; choose one of {', '.join(ATTRIBUTES)}")
    factor = check_factor(attribute, factor)
    if factor == _IDENTITY[attribute]:
        return image.clone()
    if attribute == "brightness":
        return (((image + 1) / 2) * factor).clamp(0, 1) * 2 - 1
    # affine_grid maps output coordinates (x right, y down, in [-1, 1]) to where they sample the
    # input; this matrix turns the content counter-clockwise as displayed and magnifies by `scale`.
    angle = math.radians(factor) if attribute == "rotation" else 0.0
    scale = factor if attribute == "zoom" else 1.0
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=image.dtype, device=image.device)
    grid = F.affine_grid(theta.expand(image.shape[0], 2, 3), list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def attribute_variants(image: torch.Tensor, attribute: str, factors: Sequence[float]) -> torch.Tensor:
    """The K variants of each image: (N, 3, H, W) -> (N, K, 3, H, W)."""
    check_shape(image, "N, 3, H, W", "image")
    return torch.stack([apply_attribute(image, attribute, f) for f in factors], dim=1)


# ----------------------------------------------------------------------------- running it
def discover(G: StyleGAN2Generator, image: torch.Tensor, attribute: str = "rotation",
             factors: Sequence[float] | None = None, *, preset: str | None = None,
             settings: dict[str, Any] | None = None, seed: int | Sequence[int] = 0, progress: bool = True,
             callback: Callable | None = None, checkpoint_path: str | None = None, checkpoint_every: int = 100,
             resume: bool = False) -> InversionResult:
    """Learn an attribute direction from K variants of each image (SPHInX Appendix B).

    Args:
        G: the generator.
        image: (N, 3, H, W) images in [-1, 1] at G's resolution; each gets its own direction.
        attribute: one of ``ATTRIBUTES``; factors: its K values (default ``DEFAULT_FACTORS``).
        preset, settings: of the ``discover`` method (e.g. ``{"steps": 2000}``).
        seed, progress, callback, checkpoint_path, checkpoint_every, resume: as for ``invert``.

    Returns:
        The result of method ``discover``; :func:`alphas` reads the learned steps and
        ``result.render(G)`` renders the N*K variants.
    """
    if attribute not in ATTRIBUTES:
        raise GanInvertError(f"unknown attribute {attribute!r}; choose one of {', '.join(ATTRIBUTES)}")
    check_images(image, G.resolution, "image")
    factors = tuple(float(f) for f in (DEFAULT_FACTORS[attribute] if factors is None else factors))
    method = make_method("discover", preset, {**(settings or {}), "attribute": attribute, "factors": factors})
    variants = attribute_variants(image.to(G.w_avg.device), attribute, factors)
    measurement = variants.reshape(image.shape[0], -1, *image.shape[-2:])
    return invert(G, None, method, preset=preset, operator=method.stack_variants, measurement=measurement,
                  seed=seed, progress=progress, callback=callback, checkpoint_path=checkpoint_path,
                  checkpoint_every=checkpoint_every, resume=resume)


def _discover_parts(G: StyleGAN2Generator, result: InversionResult) -> tuple[Discover, Params]:
    if result.method != Discover.name:
        raise GanInvertError(f"expected a result of method discover, got {result.method}")
    result.check_generator(G)
    return result.method_instance(), {k: v.to(G.w_avg.device) for k, v in result.params.items()}


def alphas(result: InversionResult) -> list[list[float]]:
    """Per image, the K learned steps (the first, the reference's, is 0)."""
    if result.method != Discover.name:
        raise GanInvertError(f"expected a result of method discover, got {result.method}")
    return Discover.alphas(result.params).tolist()


def traversal_alphas(learned: Sequence[float], per_segment: int = 4, beyond: float = 0.0) -> list[float]:
    """Alphas for a walk through the learned ones, ``per_segment`` frames per segment (the authors'
    ``interpolate_vector``), optionally continued ``beyond`` times the total range past both ends."""
    if per_segment < 1:
        raise GanInvertError(f"per_segment must be >= 1, got {per_segment}")
    points: list[float] = []
    for lo, hi in zip(learned[:-1], learned[1:]):
        points += [lo + (hi - lo) * i / per_segment for i in range(per_segment)]
    points.append(float(learned[-1]))
    if beyond > 0:
        span = (learned[-1] - learned[0]) * beyond
        step = (learned[-1] - learned[0]) / max(1, len(points) - 1)
        extra = max(1, round(span / step)) if step else 0
        points = [learned[0] - step * i for i in range(extra, 0, -1)] + points + \
                 [learned[-1] + step * i for i in range(1, extra + 1)]
    return [float(p) for p in points]


@torch.no_grad()
def traverse(G: StyleGAN2Generator, result: InversionResult, walk: Sequence[float]) -> torch.Tensor:
    """Render each image's w*+ moved by every alpha of ``walk`` along its learned D^: (T, N, 3, H, W)."""
    method, params = _discover_parts(G, result)
    n = result.batch_size
    steps = torch.tensor([float(a) for a in walk], device=G.w_avg.device).expand(n, -1)
    images = method.shifted(method.base_inputs(G, params), params, steps).render(G)
    return images.reshape(n, len(walk), *images.shape[1:]).transpose(0, 1)


@torch.no_grad()
def variant_reconstructions(G: StyleGAN2Generator, result: InversionResult) -> torch.Tensor:
    """The K variant renders of each image, (N, K, 3, H, W)."""
    method, params = _discover_parts(G, result)
    images = method.render_inputs(G, params).render(G)
    return images.reshape(result.batch_size, method.num_variants, *images.shape[1:])
