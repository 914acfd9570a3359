"""The ``discover`` method: SPHInX attribute discovery (Subramanyam et al., ICML 2022, App. B).

The shared code w*+ = Ps(z+) of SPHInX, a direction D (num_ws, style_dim) with unit-norm rows and
ordered steps alpha_k: variant k renders from ``w*+ + alpha_k * D^``. The task that builds the
variants, runs this method and walks along D lives in :mod:`ganinvert.tasks.discovery`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ...errors import GanInvertError
from ...models.stylegan2 import StyleGAN2Generator
from .base import (InversionContext, ParamGroup, Params, Preset, Stage, SynthesisInputs, layer_mask, randn,
                   register)
from .sphinx import Sphinx, SphinxSettings

ATTRIBUTES = ("rotation", "brightness", "zoom")
#: The K = 3 variants of SPHInX Appendix B (the first is the reference, alpha = 0): rotation in
#: degrees counter-clockwise, brightness as an intensity factor, zoom as a magnification.
DEFAULT_FACTORS: dict[str, tuple[float, ...]] = {
    "rotation": (0.0, 22.5, 45.0),
    "brightness": (0.5, 1.0, 1.5),
    "zoom": (1.0, 1.25, 1.75),
}


def check_factor(attribute: str, factor: float) -> float:
    """``factor`` as a float, refusing non-finite values and non-positive brightness or zoom."""
    factor = float(factor)
    if not math.isfinite(factor):
        raise GanInvertError(f"{attribute} factor must be finite, got {factor}")
    if attribute in ("brightness", "zoom") and factor <= 0:
        raise GanInvertError(f"{attribute} factor must be > 0, got {factor}")
    return factor


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
            check_factor(self.attribute, factor)
        if self.lambda_lpips:
            raise GanInvertError("method discover compares K stacked variants and supports lambda_lpips = 0 only")
        if self.margin <= 0:
            raise GanInvertError(f"margin must be > 0, got {self.margin}")


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

    def init_params(self, ctx: InversionContext) -> Params:
        G, rngs, channels = ctx.G, ctx.rngs, 3 * self.num_variants
        y = ctx.measurement
        if ctx.operator != self.stack_variants or y is None or y.ndim != 4 or y.shape[1] != channels:
            raise GanInvertError(f"method discover inverts the {self.num_variants} attribute variants of an image "
                                 f"stacked as (N, {channels}, H, W) through its stack_variants operator; use "
                                 "`ganinvert discover` or ganinvert.tasks.discovery.discover")
        params = super().init_params(ctx)
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

    def inputs(self, ctx: InversionContext, params: Params) -> SynthesisInputs:
        return self.shifted(super().inputs(ctx, params), params, self.alphas(params))

    def base_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        """The reference variant's inputs (w*+ with the stored draw), one per image."""
        return super().render_inputs(G, params)

    def render_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        return self.shifted(self.base_inputs(G, params), params, self.alphas(params))

    def stack_variants(self, images: torch.Tensor) -> torch.Tensor:
        """The engine's operator: (N*K, 3, H, W) renders -> (N, K*3, H, W)."""
        return images.reshape(-1, 3 * self.num_variants, *images.shape[-2:])

    def regulariser(self, ctx: InversionContext, params: Params, inputs: SynthesisInputs) -> torch.Tensor:
        s = self.settings
        alpha = params["attr.alpha"]
        hinge = torch.relu(s.margin - alpha[:, 0]) + torch.relu(s.margin - alpha.diff(dim=1)).sum(1)
        return s.mono_weight * hinge

    def edit_inputs(self, G: StyleGAN2Generator, params: Params, direction: torch.Tensor,
                    alpha: float, layers: Sequence[int] | None = None) -> SynthesisInputs:
        """Edits move the reference variant's w*+ (one render per image)."""
        inputs = self.base_inputs(G, params)
        inputs.ws = inputs.ws + alpha * layer_mask(G, layers, inputs.ws) * direction.to(inputs.ws)
        return inputs
