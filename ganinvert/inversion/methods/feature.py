"""Feature-space inversion: a base feature map at one block plus per-layer codes for the layers after it.

* ``fw+`` — F/W+ of BDInvert (Kang et al., "GAN Inversion for Out-of-Range Images with Geometric
  Transformations", ICCV 2021): the base code F replaces the output of block ``feature_block``
  and one w per later layer ("detail codes", W+) drives the rest. Optional P_N regulariser
  (Zhu et al. 2020, weight ``pn_weight``) on the detail codes, as in the authors' ``invert.py``.
* ``fz+`` — F/Z+ (Katsumata et al., "Revisiting Latent Space of GAN Inversion for Robust Real Image
  Editing", WACV 2024): the same base code, but the later layers read z+ codes on the sphere of
  radius ``sqrt(style_dim)``, mapped through the frozen mapping network (and truncated, as the
  authors' ``invert_zp.py`` does). The codes are retracted onto the sphere after every step.

Block mapping. BDInvert's base code is the 16x16 activation ``x03`` of genforce's StyleGAN2 (the
output of the 16x16 upsampling conv, ``--basecode_spatial_size 16``). Our generator replaces whole
block outputs (:class:`~ganinvert.models.stylegan2.FeatureEntry`), so the default
``feature_block = log2(16) - 2 = 2`` is the 16x16 block output: same spatial size, and only the
second 16x16 conv (ws[4]) is skipped in addition. Like the authors' synthesis, the skip image
restarts at the base code's ToRGB (``FeatureEntry.rgb = None``). The block index is absolute, so
the base code is 16x16 at every output resolution.

Initialisation. The authors start F from a trained base-code encoder and pull it back towards that
prediction (``--weight_basecode_term 10``). Here F starts from the encoder's prediction when
``encoder_path`` names one (:mod:`ganinvert.models.basecode_encoder`, trained on generated pictures
by ``ganinvert train-inverter fz-encoder`` to reproduce them through the rest of the generator at
the ``w_avg`` detail codes; the default ``"default"`` is the encoder bundled for the bundled default
generator and means "none" for any other generator or another ``feature_block``), and else from
the features of the ``w_avg`` render (``G.block_features``). The encoder reads the image the
engine hands to ``init_params``; when that is not an image at the generator's resolution (a
measurement through a forward operator), the ``w_avg`` features are used. ``basecode_weight``
adds BDInvert's pull ``basecode_weight * mean((F - E(x))^2)`` towards the prediction (off by
default: see ``bench/sam_fz.py``; without an encoder there is nothing to pull towards). Detail
codes start at ``w_avg`` (F/W+) or at a random point of the sphere (F/Z+, as ``invert_zp.py``
draws them).

Editing. Only ws indices read after the base code (from the ToRGB of ``feature_block`` on) can
move. ``fw+`` adds ``alpha * direction`` to those rows. For ``fz+`` the direction is read as a
z-space direction, (num_ws, style_dim): ``z' = retract(z + alpha * direction)`` per row, then
mapped (the authors' ``edit_interfacegan_zp.py`` moves z+ along z-space boundaries and
re-normalises before mapping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ...errors import GanInvertError
from ...models.basecode_encoder import KIND as ENCODER_KIND
from ...models.basecode_encoder import BaseCodeEncoder, load_basecode_encoder
from ...models.encoders import optional_network_path
from ...models.stylegan2 import FeatureEntry, StyleGAN2Generator
from .base import (InversionContext, Method, MethodSettings, ParamGroup, Params, Preset, Stage, SynthesisInputs,
                   check_direction, editable_layers, live_ws_indices, randn, register, retract_to_sphere)
from .latent import PNormStatistics

#: BDInvert's default base-code side (``--basecode_spatial_size``); block = log2(16) - 2.
BDINVERT_FEATURE_BLOCK = 2


def check_block(G: StyleGAN2Generator, block: int, setting: str) -> None:
    if not 0 <= block < G.num_blocks:
        raise GanInvertError(f"{setting} {block} is out of range for a {G.resolution} px generator "
                             f"(blocks 0..{G.num_blocks - 1}; block b outputs 4*2**b px)")


@dataclass
class FeatureSettings(MethodSettings):
    """Attributes:
        steps, lr: Adam steps and learning rate shared by F and the codes (BDInvert ``invert.py``:
            ``--num_iters 1200 --lr 0.01``, one optimiser for both).
        lambda_mse, lambda_lpips: reconstruction weights (``invert.py``: MSE 1,
            ``--weight_perceptual_term 10``).
        feature_block: the block whose output F replaces (2 = 16x16, BDInvert's default).
        encoder_path: base-code encoder that initialises F ("default": the bundled one for the
            bundled generator and feature block, else none; None: start from the w_avg features).
        basecode_weight: weight of the pull of F towards the encoder's prediction (BDInvert
            ``--weight_basecode_term``; needs an encoder).
    """

    steps: int = 1200
    lr: float = 0.01
    lambda_mse: float = 1.0
    lambda_lpips: float = 10.0
    feature_block: int = BDINVERT_FEATURE_BLOCK
    encoder_path: str | None = "default"
    basecode_weight: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.feature_block < 0:
            raise GanInvertError(f"feature_block must be >= 0, got {self.feature_block}")


@dataclass
class FWPlusSettings(FeatureSettings):
    """Attributes:
        pn_weight: weight of the P_N regulariser on the detail codes (``--weight_pnorm_term 0.01``;
            0 switches it off).
    """

    pn_weight: float = 0.01


@dataclass
class FZPlusSettings(FeatureSettings):
    """Attributes:
        truncation_psi, truncation_layers: ws indices below ``truncation_layers`` are pulled towards
            ``w_avg`` by ``psi`` after the mapping (``invert_zp.py`` defaults ``--trunc_psi 0.7
            --trunc_layers 8``; psi 1 switches it off).
    """

    truncation_psi: float = 0.7
    truncation_layers: int = 8

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.truncation_psi <= 1.0:
            raise GanInvertError(f"truncation_psi must be in [0, 1], got {self.truncation_psi}")
        if self.truncation_layers < 0:
            raise GanInvertError(f"truncation_layers must be >= 0, got {self.truncation_layers}")


class FeatureMethod(Method):
    """Base feature map ``features`` at ``feature_block`` plus codes ``latent`` for the later layers.

    Tensors: ``features`` (N, C, r, r) with ``C, r = G.feature_shape(feature_block)``, and
    ``latent`` (N, L, style_dim) for the L = ``len(live_ws_indices(G, feature_block))`` ws indices
    read after it. The skipped ws indices are held at ``w_avg``. With ``basecode_weight`` also
    ``basecode`` (N, C, r, r), the encoder's prediction that F is pulled towards (not optimised).
    """

    def block(self, G: StyleGAN2Generator) -> int:
        check_block(G, self.settings.feature_block, "feature_block")
        return self.settings.feature_block

    def live_indices(self, G: StyleGAN2Generator) -> list[int]:
        return live_ws_indices(G, self.block(G))

    def stages(self, G: StyleGAN2Generator) -> list[Stage]:
        self.block(G)
        return [Stage("main", self.settings.steps, (ParamGroup(("features", "latent"), self.settings.lr),))]

    def __init__(self, settings: MethodSettings | None = None) -> None:
        super().__init__(settings)
        self._encoders: dict[Path, BaseCodeEncoder] = {}

    def encoder(self, G: StyleGAN2Generator) -> BaseCodeEncoder | None:
        """The base-code encoder initialising F for ``G`` (None: start from the w_avg features)."""
        spec = self.settings.encoder_path
        path = optional_network_path(spec, ENCODER_KIND, G)
        if path is None:
            return None
        if path not in self._encoders:
            block = self.block(G)
            encoder = load_basecode_encoder(path, G, block=None if spec == "default" else block)
            if encoder.config["block"] != block:  # the bundled encoder serves its own block only
                return None
            self._encoders[path] = encoder
        return self._encoders[path]

    def init_params(self, ctx: InversionContext) -> Params:
        G, rngs, n = ctx.G, ctx.rngs, ctx.batch_size
        encoder = self.encoder(G)
        if self.settings.basecode_weight and (encoder is None or ctx.image is None):
            raise GanInvertError("basecode_weight needs a base-code encoder (encoder_path) and the target image")
        with torch.no_grad():
            if encoder is not None and ctx.image is not None:
                features = encoder(ctx.image.detach().clamp(-1, 1))
            else:
                mean_ws = G.broadcast(G.w_avg[None])
                features = G.block_features(mean_ws, self.block(G)).features.expand(n, -1, -1, -1).clone()
        params = {"features": features, "latent": self.initial_latent(G, rngs)}
        if self.settings.basecode_weight:
            params["basecode"] = features.clone()
        return params

    def regulariser(self, ctx: InversionContext, params: Params, inputs: SynthesisInputs) -> torch.Tensor | None:
        """BDInvert's base-code term ``basecode_weight * mean((F - E(x))^2)`` (None when off)."""
        if not self.settings.basecode_weight:
            return None
        return self.settings.basecode_weight * (params["features"] - params["basecode"]).square().flatten(1).mean(1)

    def initial_latent(self, G: StyleGAN2Generator, rngs: Sequence[torch.Generator]) -> torch.Tensor:
        raise NotImplementedError

    def live_ws(self, G: StyleGAN2Generator, latent: torch.Tensor) -> torch.Tensor:
        """w for the live indices, (N, L, style_dim), from the method's codes."""
        raise NotImplementedError

    def full_ws(self, G: StyleGAN2Generator, live: torch.Tensor) -> torch.Tensor:
        """(N, num_ws, D): ``w_avg`` at the skipped indices, ``live`` after them."""
        n, skipped = live.shape[0], G.num_ws - live.shape[1]
        return torch.cat([G.w_avg.expand(n, skipped, -1), live], 1)

    def render_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        ws = self.full_ws(G, self.live_ws(G, params["latent"]))
        return SynthesisInputs(ws=ws, feature_entry=FeatureEntry(self.block(G), params["features"]))

    def editable(self, G: StyleGAN2Generator, layers: Sequence[int] | None) -> list[int]:
        """The ws indices an edit may move: ``layers`` (default all) that come after the base code."""
        return editable_layers(G, self.live_indices(G), layers)


@register
class FWPlus(FeatureMethod):
    name = "fw+"
    summary = "F/W+ (BDInvert): base feature map at a block plus one w per later layer"
    Settings = FWPlusSettings
    presets = {
        "bdinvert": Preset(
            {"steps": 1200, "lr": 0.01, "lambda_mse": 1.0, "lambda_lpips": 10.0, "pn_weight": 0.01,
             "feature_block": BDINVERT_FEATURE_BLOCK},
            "BDInvert (Kang et al., ICCV 2021), kkang831/BDInvert_Release BDInvert/invert.py defaults: --num_iters "
            "1200 --lr 0.01, MSE 1, --weight_perceptual_term 10, --weight_pnorm_term 0.01, --basecode_spatial_size 16 "
            "(block 2); the encoder-anchored --weight_basecode_term is off by default (basecode_weight, see the module "
            "docstring)"),
    }
    default_preset = "bdinvert"

    def initial_latent(self, G: StyleGAN2Generator, rngs: Sequence[torch.Generator]) -> torch.Tensor:
        # invert.py: detail codes start at w_avg; nothing is drawn.
        return G.w_avg.expand(len(rngs), len(self.live_indices(G)), -1).clone()

    def live_ws(self, G: StyleGAN2Generator, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def regulariser(self, ctx: InversionContext, params: Params, inputs: SynthesisInputs) -> torch.Tensor | None:
        basecode = super().regulariser(ctx, params, inputs)
        if not self.settings.pn_weight:
            return basecode
        # invert.py averages the squared P_N coordinates over all num_ws rows, skipped ones (at w_avg) included.
        pn = self.settings.pn_weight * PNormStatistics.of(ctx.G).norm(inputs.ws)
        return pn if basecode is None else pn + basecode

    def edit_inputs(self, G: StyleGAN2Generator, params: Params, direction: torch.Tensor,
                    alpha: float, layers: Sequence[int] | None = None) -> SynthesisInputs:
        check_direction(G, direction)
        return super().edit_inputs(G, params, direction, alpha, self.editable(G, layers))


@register
class FZPlus(FeatureMethod):
    name = "fz+"
    summary = "F/Z+ (Katsumata et al.): base feature map plus z+ codes on the sphere for the later layers"
    Settings = FZPlusSettings
    presets = {
        "katsumata": Preset(
            {"steps": 1200, "lr": 0.01, "lambda_mse": 1.0, "lambda_lpips": 10.0,
             "feature_block": BDINVERT_FEATURE_BLOCK, "truncation_psi": 0.7, "truncation_layers": 8},
            "Katsumata et al. (WACV 2024), raven38/hypershpere-gan-inversion BDInvert_Release/BDInvert/invert_zp.py "
            "defaults: --num_iters 1200 --lr 0.01, MSE 1, --weight_perceptual_term 10, --basecode_spatial_size 16, "
            "--trunc_psi 0.7 --trunc_layers 8, P_N term disabled; z+ normalised to the sqrt(512) sphere"),
    }
    default_preset = "katsumata"

    def radius(self, G: StyleGAN2Generator) -> float:
        return math.sqrt(G.style_dim)

    def initial_latent(self, G: StyleGAN2Generator, rngs: Sequence[torch.Generator]) -> torch.Tensor:
        z = randn(rngs, (len(self.live_indices(G)), G.style_dim)).to(G.w_avg)
        return retract_to_sphere(z, self.radius(G))

    def live_ws(self, G: StyleGAN2Generator, latent: torch.Tensor) -> torch.Tensor:
        w = G.mapping(latent)
        s = self.settings
        truncated = torch.tensor([i < s.truncation_layers for i in self.live_indices(G)], device=w.device)
        if s.truncation_psi == 1.0 or not truncated.any():
            return w
        return torch.where(truncated[None, :, None], G.truncate(w, s.truncation_psi), w)

    @torch.no_grad()
    def project(self, ctx: InversionContext, params: Params) -> None:
        params["latent"].copy_(retract_to_sphere(params["latent"], self.radius(ctx.G)))

    def edit_inputs(self, G: StyleGAN2Generator, params: Params, direction: torch.Tensor,
                    alpha: float, layers: Sequence[int] | None = None) -> SynthesisInputs:
        """Move z+ along ``direction`` read as a z-space direction, back onto the sphere, then map."""
        check_direction(G, direction)
        z = params["latent"]
        editable = set(self.editable(G, layers))
        rows = torch.tensor([i in editable for i in self.live_indices(G)], device=z.device)[None, :, None]
        moved = retract_to_sphere(z + alpha * direction[self.live_indices(G)].to(z), self.radius(G))
        return self.render_inputs(G, {**params, "latent": torch.where(rows, moved, z)})
