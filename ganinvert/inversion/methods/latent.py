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

The StyleGAN2 projector (rosinality/stylegan2-pytorch ``projector.py``) is the ``wb`` method (or
``w+b`` for its ``--w_plus``) with the ``rosinality-projector`` preset: w starts at the mean of
10 000 mapped samples, the noise maps at N(0, I); both share one Adam group (lr 0.1,
``get_lr``'s ramp-up / cosine ramp-down); w gets Gaussian noise of ``w_std * 0.05 * max(0, 1 -
t / 0.75)^2`` every step; the loss adds ``1e5 *`` the noise autocorrelation, and every noise map
is renormalised after each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import GanInvertError
from ...models.mapping_statistics import cached_statistic, mapped_latents, mapped_mean, w_spread
from ..schedules import get_schedule
from ...models.stylegan2 import StyleGAN2Generator
from .base import (InversionContext, Method, MethodSettings, ParamGroup, Params, Preset, Stage, SynthesisInputs,
                   check_init, encoder_start, frozen_noise, gather_noise, noise_autocorrelation, noise_names, randn,
                   register)

PNORM_SAMPLES = 10_000
NOISE_INITS = ("generator", "normal")
#: projector.py: ``n_mean_latent = 10000`` mapped samples give the start and w_std.
PROJECTOR_SAMPLES = 10_000


@dataclass
class LatentSettings(MethodSettings):
    """Attributes:
        steps, lr: Adam steps and learning rate (Image2StyleGAN §4: Adam, lr 0.01).
        noise_lr: learning rate of the noise maps B.
        content_lr: learning rate of the content tensor S.
        pnorm_weight: weight of the P-norm+ regulariser (w spaces only; 0 = off).
        init: where w and w+ start: "w_avg" (Image2StyleGAN), "sample-mean" (the mean of 10 000
            mapped samples, the projector's ``latent_mean``) or "encoder", the w that
            ``init_encoder`` (a trained ``hyperinverter-e1`` network, "default" = the bundled one)
            predicts for the image, so fewer steps reach the same quality.
        schedule: LR schedule of the latent and noise groups.
        noise_init: where optimised noise maps start: "generator" (G's stored maps) or "normal"
            (fresh N(0, I) draws, the projector's ``normal_()``).
        noise_regularize_weight: weight of the noise maps' autocorrelation (StyleGAN2 projector).
        w_noise_factor, w_noise_ramp: Gaussian noise added to w each step, with std
            ``w_std * w_noise_factor * max(0, 1 - t / w_noise_ramp)^2`` (t = step / steps).
        normalise_noise: renormalise each noise map to zero mean and unit (unbiased) std after
            every step (the projector's ``noise_normalize_``).
    """

    steps: int = 1000
    lr: float = 0.01
    noise_lr: float = 0.01
    content_lr: float = 0.01
    pnorm_weight: float = 0.0
    init: str = "w_avg"
    init_encoder: str = "default"
    schedule: str = "constant"
    noise_init: str = "generator"
    noise_regularize_weight: float = 0.0
    w_noise_factor: float = 0.0
    w_noise_ramp: float = 0.75
    normalise_noise: bool = False

    def validate(self) -> None:
        super().validate()
        if self.init != "sample-mean":
            check_init(self.init)
        get_schedule(self.schedule)
        if self.noise_init not in NOISE_INITS:
            raise GanInvertError(f"noise_init must be one of {', '.join(NOISE_INITS)}, got {self.noise_init!r}")
        if self.w_noise_ramp <= 0:
            raise GanInvertError(f"w_noise_ramp must be > 0, got {self.w_noise_ramp}")


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
        groups = [ParamGroup(("latent",), s.lr, s.schedule)]
        if self.with_content:
            groups.append(ParamGroup(("content",), s.content_lr))
        if self.with_noise:
            groups.append(ParamGroup(noise_names(G), s.noise_lr, s.schedule))
        return [Stage("main", s.steps, tuple(groups))]

    def init_params(self, ctx: InversionContext) -> Params:
        G, rngs = ctx.G, ctx.rngs
        n, device = len(rngs), G.w_avg.device
        if self.settings.init == "encoder" and self.space not in ("w", "w+"):
            raise GanInvertError(f"method {self.name} optimises z codes; init=encoder starts w codes only")
        s = self.settings
        if s.init == "encoder":
            start = encoder_start(ctx, s.init_encoder, self.name)
        elif s.init == "sample-mean":
            start = mapped_mean(G, PROJECTOR_SAMPLES).expand(n, -1)
        else:
            start = G.w_avg.expand(n, -1)
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
            noise = ([randn(rngs, shape[1:], device) for shape in G.noise_shapes] if s.noise_init == "normal"
                     else frozen_noise(G, n))
            params.update(zip(noise_names(G), noise))
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

    def inputs(self, ctx: InversionContext, params: Params) -> SynthesisInputs:
        s, inputs = self.settings, self.render_inputs(ctx.G, params)
        if not s.w_noise_factor or self.space not in ("w", "w+"):
            return inputs
        # projector.py: latent_noise(latent_in, w_std * noise * max(0, 1 - t / noise_ramp) ** 2)
        strength = w_spread(ctx.G, PROJECTOR_SAMPLES) * s.w_noise_factor * max(
            0.0, 1 - ctx.step / s.steps / s.w_noise_ramp) ** 2
        latent = params["latent"]
        noisy = latent + randn(ctx.rngs, latent.shape[1:], latent.device) * strength
        inputs.ws = self.ws(ctx.G, noisy)
        return inputs

    def regulariser(self, ctx: InversionContext, params: Params, inputs: SynthesisInputs) -> torch.Tensor | None:
        s, terms = self.settings, []
        if s.pnorm_weight and self.space in ("w", "w+"):
            terms.append(s.pnorm_weight * PNormStatistics.of(ctx.G).norm(params["latent"]))
        if s.noise_regularize_weight and self.with_noise:
            terms.append(s.noise_regularize_weight * noise_autocorrelation(gather_noise(ctx.G, params)))
        return sum(terms[1:], terms[0]) if terms else None

    @torch.no_grad()
    def project(self, ctx: InversionContext, params: Params) -> None:
        if self.settings.normalise_noise and self.with_noise:
            for name in noise_names(ctx.G):  # projector.py noise_normalize_: unbiased std
                noise = params[name]
                noise -= noise.mean((1, 2, 3), keepdim=True)
                noise /= noise.std((1, 2, 3), keepdim=True)


ROSINALITY_PROJECTOR = Preset(
    {"steps": 1000, "lr": 0.1, "noise_lr": 0.1, "schedule": "rampup-cosine", "lambda_mse": 0.0, "lambda_lpips": 1.0,
     "init": "sample-mean", "noise_init": "normal", "noise_regularize_weight": 1e5, "w_noise_factor": 0.05,
     "w_noise_ramp": 0.75, "normalise_noise": True},
    "rosinality/stylegan2-pytorch projector.py defaults (--step 1000 --lr 0.1 --noise 0.05 --noise_ramp 0.75 "
    "--noise_regularize 1e5 --mse 0; get_lr rampup 0.05 / rampdown 0.25 on the one Adam group of w and the noise "
    "maps; latent_mean and latent_std of n_mean_latent = 10000 mapped samples; noises normal_(), "
    "noise_normalize_ after each step); LPIPS is AlexNet here (the script's VGG weights are not available), "
    "and its draws come from per-image generators")


def _latent_method(name: str, space: str, noise: bool, content: bool, summary: str,
                   extra_presets: dict[str, Preset] | None = None) -> type[LatentMethod]:
    cls = type(f"LatentMethod_{name}", (LatentMethod,), {
        "name": name, "space": space, "with_noise": noise, "with_content": content, "summary": summary,
        "__doc__": summary, "presets": {**LatentMethod.presets, **(extra_presets or {})}})
    return register(cls)


_latent_method("w", "w", False, False, "one w for every layer (W space)")
_latent_method("wb", "w", True, False, "one w and the noise maps B (the StyleGAN2 projector)",
               {"rosinality-projector": ROSINALITY_PROJECTOR})
_latent_method("w+", "w+", False, False, "one w per layer (W+, Image2StyleGAN)")
_latent_method("z", "z", False, False, "one z through the frozen mapping (Z space)")
_latent_method("z+", "z+", False, False, "one z per layer through the frozen mapping (Z+)")
_latent_method("w+b", "w+", True, False, "W+ and the noise maps B (Image2StyleGAN++)",
               {"rosinality-projector": ROSINALITY_PROJECTOR})  # projector.py --w_plus
_latent_method("w+s", "w+", False, True, "W+ and the constant input S")
_latent_method("w+sb", "w+", True, True, "W+, the constant input S and the noise maps B")
_latent_method("z+sb", "z+", True, True, "Z+, the constant input S and the noise maps B")
