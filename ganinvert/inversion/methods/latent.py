"""Direct latent-code optimisation: Z, Z+, W, W+, (W+,B), (W+,S), (W+,S,B), (Z+,S,B).

* ``z`` / ``z+``: one z (resp. one z per ws entry) through the frozen mapping network.
* ``w`` / ``w+``: one w broadcast to every layer (resp. one per layer), Image2StyleGAN
  (Abdal et al., ICCV 2019).
* ``+b``: the per-layer noise maps B are optimised too (Image2StyleGAN++, Abdal et al., CVPR 2020).
* ``+s``: the constant 4x4 input ("content" S) is optimised too (the (W+,S) baselines of SPHInX,
  Subramanyam et al., ICML 2022, Table 1).

The P-norm+ regulariser (Zhu et al., "Improved StyleGAN Embedding: Where are the Good Latents?",
2020) is an option of the w-space methods: w is mapped back through the last mapping
activation (``LeakyReLU(5)``), PCA-whitened with statistics of 10 000 mapping samples, and its
mean squared norm is penalised with weight ``pnorm_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import GanInvertError
from ...models.mapping_statistics import cached_statistic, mapped_latents
from ...models.stylegan2 import StyleGAN2Generator
from .base import (InversionContext, Method, MethodSettings, ParamGroup, Params, Preset, Stage, SynthesisInputs,
                   check_init, encoder_start, frozen_noise, gather_noise, noise_names, randn, register)

PNORM_SAMPLES = 10_000


@dataclass
class LatentSettings(MethodSettings):
    """Attributes:
        steps, lr: Adam steps and learning rate (Image2StyleGAN §4: Adam, lr 0.01).
        noise_lr: learning rate of the noise maps B.
        content_lr: learning rate of the content tensor S.
        pnorm_weight: weight of the P-norm+ regulariser (w spaces only; 0 = off).
        init: where w and w+ start: "w_avg" (Image2StyleGAN) or "encoder", the w that
            ``init_encoder`` (a trained ``hyperinverter-e1`` network, "default" = the bundled one)
            predicts for the image, so fewer steps reach the same quality.
    """

    steps: int = 1000
    lr: float = 0.01
    noise_lr: float = 0.01
    content_lr: float = 0.01
    pnorm_weight: float = 0.0
    init: str = "w_avg"
    init_encoder: str = "default"

    def validate(self) -> None:
        super().validate()
        check_init(self.init)


class PNormStatistics:
    """PCA whitening of LeakyReLU(5)-inverted w (P-norm+ space), computed once per generator."""

    def __init__(self, G: StyleGAN2Generator, samples: int = PNORM_SAMPLES, seed: int = 0) -> None:
        with torch.no_grad():
            v = F.leaky_relu(mapped_latents(G, samples, seed), 5.0)
            self.mean = v.mean(0)
            cov = torch.cov((v - self.mean).T.double())
            eigval, eigvec = torch.linalg.eigh(cov)
            self.whiten = (eigvec / eigval.clamp_min(1e-12).sqrt()).T.float()  # (D, D)

    def norm(self, w: torch.Tensor) -> torch.Tensor:
        """Mean squared whitened norm per sample, divided by style_dim; w (N, [K,] D) -> (N,)."""
        v = F.leaky_relu(w, 5.0) - self.mean
        whitened = v @ self.whiten.T
        return whitened.square().reshape(w.shape[0], -1).sum(1) / (w[0].numel())

    @classmethod
    def of(cls, G: StyleGAN2Generator) -> "PNormStatistics":
        return cached_statistic(G, cls, lambda: cls(G))


class LatentMethod(Method):
    """Optimise latent codes (and optionally noise B and content S) directly."""

    Settings = LatentSettings
    space: str = "w+"          # "w" | "w+" | "z" | "z+"
    with_noise: bool = False
    with_content: bool = False
    presets = {
        "i2s": Preset({"steps": 5000, "lr": 0.01, "lambda_mse": 1.0, "lambda_lpips": 1.0},
                      "Image2StyleGAN (Abdal et al., ICCV 2019) §4: Adam lr 0.01, 5000 iterations, MSE + perceptual"),
    }

    def stages(self, G: StyleGAN2Generator) -> list[Stage]:
        s = self.settings
        groups = [ParamGroup(("latent",), s.lr)]
        if self.with_content:
            groups.append(ParamGroup(("content",), s.content_lr))
        if self.with_noise:
            groups.append(ParamGroup(noise_names(G), s.noise_lr))
        return [Stage("main", s.steps, tuple(groups))]

    def init_params(self, ctx: InversionContext) -> Params:
        G, rngs = ctx.G, ctx.rngs
        n, device = len(rngs), G.w_avg.device
        if self.settings.init == "encoder" and self.space not in ("w", "w+"):
            raise GanInvertError(f"method {self.name} optimises z codes; init=encoder starts w codes only")
        start = (encoder_start(ctx, self.settings.init_encoder, self.name) if self.settings.init == "encoder"
                 else G.w_avg.expand(n, -1))
        if self.space == "w":
            latent = start.clone()
        elif self.space == "w+":
            latent = G.broadcast(start).clone()
        elif self.space == "z":
            latent = randn(rngs, (G.style_dim,), device)
        else:
            latent = randn(rngs, (G.num_ws, G.style_dim), device)
        params: Params = {"latent": latent}
        if self.with_content:
            params["content"] = G.input.input.expand(n, -1, -1, -1).clone()
        if self.with_noise:
            params.update(zip(noise_names(G), frozen_noise(G, n)))
        return params

    def ws(self, G: StyleGAN2Generator, latent: torch.Tensor) -> torch.Tensor:
        if self.space == "w":
            return G.broadcast(latent)
        if self.space == "w+":
            return latent
        if self.space == "z":
            return G.broadcast(G.mapping(latent))
        return G.mapping(latent)

    def render_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        return SynthesisInputs(ws=self.ws(G, params["latent"]), noise=gather_noise(G, params),
                               const=params.get("content"))

    def regulariser(self, ctx: InversionContext, params: Params, inputs: SynthesisInputs) -> torch.Tensor | None:
        if self.settings.pnorm_weight and self.space in ("w", "w+"):
            return self.settings.pnorm_weight * PNormStatistics.of(ctx.G).norm(params["latent"])
        return None


def _latent_method(name: str, space: str, noise: bool, content: bool, summary: str) -> type[LatentMethod]:
    cls = type(f"LatentMethod_{name}", (LatentMethod,), {
        "name": name, "space": space, "with_noise": noise, "with_content": content, "summary": summary,
        "__doc__": summary})
    return register(cls)


_latent_method("w", "w", False, False, "one w for every layer (W space)")
_latent_method("w+", "w+", False, False, "one w per layer (W+, Image2StyleGAN)")
_latent_method("z", "z", False, False, "one z through the frozen mapping (Z space)")
_latent_method("z+", "z+", False, False, "one z per layer through the frozen mapping (Z+)")
_latent_method("w+b", "w+", True, False, "W+ and the noise maps B (Image2StyleGAN++)")
_latent_method("w+s", "w+", False, True, "W+ and the constant input S")
_latent_method("w+sb", "w+", True, True, "W+, the constant input S and the noise maps B")
_latent_method("z+sb", "z+", True, True, "Z+, the constant input S and the noise maps B")
