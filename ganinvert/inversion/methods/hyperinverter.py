"""HyperInverter as an inversion method: one forward pass of trained networks, no optimisation.

* ``hyperinverter``: E1's w broadcast to every layer plus the hypernetworks' per-image weight
  residuals (Dinh et al., CVPR 2022; see :mod:`ganinvert.models.hyperinverter`).
* ``hyperinverter-e1``: E1's w alone (the phase-I encoder, a W-space encoder baseline).

Both have no optimisation stages: the engine runs ``init_params`` (the forward pass) and returns;
the result's ``seconds`` is that call's time (including loading the network on a method
instance's first use).

Result tensors: ``latent`` (N, num_ws, style_dim), the w+ broadcast of the predicted w, and for
``hyperinverter`` ``delta.<layer>`` (N, out, in, k, k) for every layer with a hypernetwork, in
PTI's residual format (:mod:`ganinvert.inversion.methods.pti`), so rendering, ``edit`` (moves
``latent``, keeps the residuals, as the reference edits with the predicted weights) and
``interpolate`` (blends codes and residuals) work on them unchanged.

Example:
    >>> result = invert(G, images, "hyperinverter")   # doctest: +SKIP
    ganinvert invert face.png --method hyperinverter --out out/ --no-lpips
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import GanInvertError
from ...models.hyperinverter import load_hyperinverter, load_wencoder
from ...models.stylegan2 import StyleGAN2Generator
from .base import InversionContext, Method, MethodSettings, Params, Preset, Stage, SynthesisInputs, register
from .pti import DELTA_PREFIX, weight_deltas

LATENT = "latent"


@dataclass
class EncoderSettings(MethodSettings):
    """Attributes:
        network_path: the trained network ("default": the one bundled for the default generator).
        steps, lr, lambda_mse, lambda_lpips: unused (nothing is optimised); steps is 0 and
            lambda_lpips 0 so no LPIPS module is required.
    """

    steps: int = 0
    lr: float = 0.01
    lambda_mse: float = 1.0
    lambda_lpips: float = 0.0
    network_path: str = "default"

    def validate(self) -> None:  # not MethodSettings's: steps is 0 here
        if self.steps != 0:
            raise GanInvertError(f"encoder methods run no optimisation steps; steps must be 0, got {self.steps}")
        if not self.network_path:
            raise GanInvertError("network_path must name a network file or 'default'")


class _EncoderMethod(Method):
    Settings = EncoderSettings
    default_preset = "official"

    def __init__(self, settings: MethodSettings | None = None) -> None:
        super().__init__(settings)
        self._networks: dict[int, torch.nn.Module] = {}

    def stages(self, G: StyleGAN2Generator) -> list[Stage]:
        return []

    def network(self, G: StyleGAN2Generator) -> torch.nn.Module:
        """The trained network for ``G``, loaded once per generator."""
        key = id(G)
        if key not in self._networks:
            self._networks[key] = self._load(self.settings.network_path, G)
        return self._networks[key]

    def _load(self, spec: str, G: StyleGAN2Generator) -> torch.nn.Module:
        raise NotImplementedError

    def render_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        return SynthesisInputs(ws=params[LATENT], weight_deltas=weight_deltas(params) or None)


@register
class HyperInverterMethod(_EncoderMethod):
    """E1's w + per-image conv weight residuals predicted by the hypernetworks."""

    name = "hyperinverter"
    summary = "HyperInverter (CVPR 2022): encoder w + hypernetwork weight residuals, one forward pass"
    presets = {"official": Preset({"network_path": "default"},
                                  "the network trained for the bundled generator (assets/inverters/MODEL_CARD.md)")}

    def _load(self, spec: str, G: StyleGAN2Generator) -> torch.nn.Module:
        return load_hyperinverter(spec, G)

    @torch.no_grad()
    def init_params(self, ctx: InversionContext) -> Params:
        G = ctx.G
        w, deltas = self.network(G)(ctx.require_image(self.name), G)
        params: Params = {LATENT: G.broadcast(w).contiguous()}
        params.update((DELTA_PREFIX + name, delta.contiguous()) for name, delta in deltas.items())
        return params


@register
class HyperInverterE1Method(_EncoderMethod):
    """E1's w alone (HyperInverter's phase I)."""

    name = "hyperinverter-e1"
    summary = "HyperInverter's phase-I W encoder alone, one forward pass"
    presets = {"official": Preset({"network_path": "default"},
                                  "the network trained for the bundled generator (assets/inverters/MODEL_CARD.md)")}

    def _load(self, spec: str, G: StyleGAN2Generator) -> torch.nn.Module:
        return load_wencoder(spec, G)

    @torch.no_grad()
    def init_params(self, ctx: InversionContext) -> Params:
        return {LATENT: ctx.G.broadcast(self.network(ctx.G)(ctx.require_image(self.name))).contiguous()}
