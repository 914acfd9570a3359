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

How it runs on the one engine: :class:`Discover` is a registered method whose tensors are those of
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
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import GanInvertError
from ..inversion.methods.base import ParamGroup, Params, Preset, Stage, SynthesisInputs, randn, register
from ..inversion.methods.sphinx import Sphinx, SphinxSettings
from ..inversion.result import InversionResult
from ..models.stylegan2 import StyleGAN2Generator

ATTRIBUTES = ("rotation", "brightness", "zoom")
#: The K = 3 variants of SPHInX Appendix B (the first is the reference, alpha = 0): rotation in
#: degrees counter-clockwise, brightness as an intensity factor, zoom as a magnification.
DEFAULT_FACTORS: dict[str, tuple[float, ...]] = {
    "rotation": (0.0, 22.5, 45.0),
    "brightness": (0.5, 1.0, 1.5),
    "zoom": (1.0, 1.25, 1.75),
}
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
    factor = _check_factor(attribute, factor)
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


def _check_factor(attribute: str, factor: float) -> float:
    factor = float(factor)
    if not math.isfinite(factor):
        raise GanInvertError(f"{attribute} factor must be finite, got {factor}")
    if attribute in ("brightness", "zoom") and factor <= 0:
        raise GanInvertError(f"{attribute} factor must be > 0, got {factor}")
    return factor


def attribute_variants(image: torch.Tensor, attribute: str, factors: Sequence[float]) -> torch.Tensor:
    """The K variants of each image: (N, 3, H, W) -> (N, K, 3, H, W)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise GanInvertError(f"image must be (N, 3, H, W), got {tuple(image.shape)}")
    return torch.stack([apply_attribute(image, attribute, f) for f in factors], dim=1)


# ----------------------------------------------------------------------------- the method
@dataclass
class DiscoverSettings(SphinxSettings):
    """SPHInX settings plus those of the attribute learner.

    Attributes:
        attribute: which attribute the variants change (provenance; the variants are the target).
        factors: the K attribute values, the first being the reference (alpha = 0).
        mono_weight: weight of the ordering hinge; margin: its tau.
        attribute_lr: constant learning rate of D and the alphas.
    """

    lambda_lpips: float = 0.0
    attribute: str = "rotation"
    factors: tuple[float, ...] = DEFAULT_FACTORS["rotation"]
    mono_weight: float = 0.5
    margin: float = 2.0
    attribute_lr: float = 1e-3

    def validate(self) -> None:
        super().validate()
        if self.attribute not in ATTRIBUTES:
            raise GanInvertError(f"unknown attribute {self.attribute!r}; choose one of {', '.join(ATTRIBUTES)}")
        if len(self.factors) < 2:
            raise GanInvertError(f"attribute discovery needs at least 2 factors, got {list(self.factors)}")
        if len(set(self.factors)) != len(self.factors):
            raise GanInvertError(f"attribute factors must be distinct, got {list(self.factors)}")
        for factor in self.factors:
            _check_factor(self.attribute, factor)
        if self.lambda_lpips:
            raise GanInvertError("method discover compares K stacked variants and supports lambda_lpips = 0 only")
        if self.margin <= 0 or self.mono_weight < 0 or self.attribute_lr <= 0:
            raise GanInvertError("discover needs margin > 0, mono_weight >= 0 and attribute_lr > 0")


_SPHINX_OFFICIAL = Sphinx.presets["sphinx-official"].settings


@register
class Discover(Sphinx):
    """SPHInX attribute discovery; see the module docstring. Renders the K variants of each image."""

    name = "discover"
    summary = "SPHInX attribute discovery (App. B): shared heads, a w+ direction D and ordered steps alpha_k"
    Settings = DiscoverSettings
    presets = {
        "sphinx-official": Preset(
            {**_SPHINX_OFFICIAL, "lambda_lpips": 0.0, "mono_weight": 0.5, "margin": 2.0, "attribute_lr": 1e-3},
            "authors' code, Rakshith-2905/SPHInX main.py learn_att_inversion (--step 5000, --lr 0.001 with get_lr "
            "on the Ps group, --mono_weight 0.5, margin torch.tensor(2), Attribute_learner in an Adam group at the "
            "default lr 1e-3, LPIPS dropped below 256 px) and model.py Attribute_learner (alpha zeros(K-1), "
            "D randn(n_latent, 512), rows normalised)"),
    }
    default_preset = "sphinx-official"

    @property
    def num_variants(self) -> int:
        return len(self.settings.factors)

    def init_params(self, G: StyleGAN2Generator, target: torch.Tensor, rngs: Sequence[torch.Generator]) -> Params:
        channels = 3 * self.num_variants
        if target.ndim != 4 or target.shape[1] != channels:
            raise GanInvertError(f"method discover inverts the {self.num_variants} attribute variants of an image "
                                 f"stacked as (N, {channels}, H, W), got {tuple(target.shape)}; use "
                                 "`ganinvert discover` or ganinvert.tasks.discovery.discover")
        params = super().init_params(G, target, rngs)
        params["attr.direction"] = randn(rngs, (G.num_ws, G.style_dim), G.w_avg.device)
        params["attr.alpha"] = torch.zeros(len(rngs), self.num_variants - 1, device=G.w_avg.device)
        return params

    def stages(self, G: StyleGAN2Generator) -> list[Stage]:
        (main,) = super().stages(G)
        attr = ParamGroup(("attr.direction", "attr.alpha"), self.settings.attribute_lr)
        return [Stage(main.name, main.steps, main.groups + (attr,))]

    # -- the variants -------------------------------------------------------------------------
    @staticmethod
    def alphas(params: Params) -> torch.Tensor:
        """(N, K) steps along D^, the reference variant's 0 first."""
        alpha = params["attr.alpha"]
        return torch.cat([torch.zeros_like(alpha[:, :1]), alpha], 1)

    @staticmethod
    def unit_direction(params: Params) -> torch.Tensor:
        """D with unit-norm rows, (N, num_ws, style_dim)."""
        d = params["attr.direction"]
        return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def shifted(self, base: SynthesisInputs, params: Params, alphas: torch.Tensor) -> SynthesisInputs:
        """Each image's inputs moved by alphas (N, T) along its D^: N*T inputs, image-major."""
        n, t = alphas.shape
        ws = base.ws[:, None] + alphas[:, :, None, None] * self.unit_direction(params)[:, None]

        def repeat(x: torch.Tensor | None) -> torch.Tensor | None:
            return x.repeat_interleave(t, 0) if x is not None and x.shape[0] == n else x

        noise = [repeat(x) for x in base.noise] if base.noise is not None else None
        return SynthesisInputs(ws=ws.reshape(n * t, *ws.shape[2:]), noise=noise, const=repeat(base.const))

    def inputs(self, G: StyleGAN2Generator, params: Params, rngs: Sequence[torch.Generator]) -> SynthesisInputs:
        return self.shifted(super().inputs(G, params, rngs), params, self.alphas(params))

    def base_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        """The reference variant's inputs (w*+ with the stored draw), one per image."""
        return super().render_inputs(G, params)

    def render_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        return self.shifted(self.base_inputs(G, params), params, self.alphas(params))

    def stack_variants(self, images: torch.Tensor) -> torch.Tensor:
        """The engine's operator: (N*K, 3, H, W) renders -> (N, K*3, H, W)."""
        return images.reshape(-1, 3 * self.num_variants, *images.shape[-2:])

    def regulariser(self, G: StyleGAN2Generator, params: Params, inputs: SynthesisInputs) -> torch.Tensor:
        s = self.settings
        alpha = params["attr.alpha"]
        hinge = torch.relu(s.margin - alpha[:, 0]) + torch.relu(s.margin - alpha.diff(dim=1)).sum(1)
        return s.mono_weight * hinge

    def edit_inputs(self, G: StyleGAN2Generator, params: Params, direction: torch.Tensor,
                    alpha: float, layers: Sequence[int] | None = None) -> SynthesisInputs:
        """Edits move the reference variant's w*+ (one render per image)."""
        inputs = self.base_inputs(G, params)
        mask = torch.zeros(G.num_ws, 1, device=inputs.ws.device, dtype=inputs.ws.dtype)
        mask[list(range(G.num_ws)) if layers is None else list(layers)] = 1
        inputs.ws = inputs.ws + alpha * mask * direction.to(inputs.ws)
        return inputs


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
    from ..inversion import invert, make_method  # the engine imports this module's registry entry

    if attribute not in ATTRIBUTES:
        raise GanInvertError(f"unknown attribute {attribute!r}; choose one of {', '.join(ATTRIBUTES)}")
    expected = (3, G.resolution, G.resolution)
    if image.ndim != 4 or tuple(image.shape[1:]) != expected:
        raise GanInvertError(f"image must be (N, {', '.join(map(str, expected))}), got {tuple(image.shape)}")
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
