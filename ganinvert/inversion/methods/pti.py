"""PTI: Pivotal Tuning Inversion (Roich et al., "Pivotal Tuning for Latent-based Editing of Real
Images", ACM TOG 2022; reference code danielroich/PTI).

Two stages, each with its own Adam optimiser:

1. ``pivot`` (paper §3.1): one w, broadcast to every layer, found with the StyleGAN2-ADA projector
   that PTI ships (``training/projectors/w_projector.py``): it starts at ``G.w_avg``, adds Gaussian
   noise to w whose scale ``w_std * 0.05 * max(0, 1 - t / 0.75) ** 2`` decays over the first 75 %
   of the steps, optimises the per-layer noise maps too (drawn from N(0, I), penalised by the
   multi-scale autocorrelation regulariser with weight 1e5 and re-normalised to zero mean and unit
   variance after every step), and uses the ramp-up/cosine ramp-down LR schedule with peak 0.01.
   As in PTI, the optimised noise maps are thrown away afterwards (the projector works on a copy of
   the generator); stage 2 and the result use the generator's stored noise (``noise_mode='const'``).
2. ``tune`` (paper §3.2): the pivot is frozen and the generator is tuned around it. Here the
   generator itself never changes: the tuning is expressed as **per-image residuals** that the
   result carries and ``G.synthesis(weight_deltas=...)`` adds at render time:

   * ``delta.<layer>`` (N, out, in, k, k) for every modulated convolution
     (``G.conv_layer_names()``: the 3x3 convs and the 1x1 ToRGB convs), in parameter units before
     the equalised-lr scale, so Adam on a zero-initialised residual follows exactly the trajectory
     Adam on the weight itself would;
   * ``delta.const`` (N, C, 4, 4) for the constant input (``tune_const``).

   The original PTI tunes every synthesis parameter (``torch.optim.Adam(G.parameters())``). Not
   tuned here: the style affines (modulation weights and biases), the activation biases, the ToRGB
   biases and the noise strengths (4.7 M of the 28.3 M synthesis parameters at 1024 px config-f).
   At the pivot a change of the affines is exactly representable by the conv residuals (the
   modulated weight is ``weight[o, i] * style[i]``), so it only matters away from the pivot (edits);
   the biases and noise strengths have no counterpart here.

Optional locality regularisation (paper §3.3, ``criteria/localitly_regulizer.py``): each step
draws ``locality_samples`` latents w ~ mapping(z) truncated with psi 0.5, moves from the pivot
towards each by a distance ``locality_alpha`` (the norm is taken over the whole (num_ws, D) ws
tensor, as PTI does on its (1, 18, 512) codes, so each row moves by alpha / sqrt(num_ws)), renders
it without noise with and without the residuals, and adds ``0.1 * MSE + 0.1 * LPIPS`` between the
two renderings.

Memory: the residuals of the 1024 px config-f generator hold 23.6 M floats per image (94 MB in
float32); with Adam's two moments and the gradient, about 380 MB per image, plus the per-image
modulated and demodulated weights that the grouped convolution builds and keeps for backward
(a few more tensors of the same size). ``residual_parameter_count(G)`` gives the count for any
generator.

Result tensors: ``pivot`` (N, D), ``delta.<layer>`` (N, out, in, k, k) for every name of
``G.conv_layer_names()`` and ``delta.const`` (N, C, 4, 4) when ``tune_const``.

Editing moves the pivot (``ws = broadcast(pivot) + alpha * direction``) and keeps the residuals,
as PTI edits with the tuned generator. For interpolating residuals, :func:`weight_deltas` returns
them keyed by layer name.

Deviations from the reference code (constraints of the shared engine):
both stages use the engine's one loss ``lambda_mse * MSE + lambda_lpips * LPIPS`` (AlexNet), while
PTI's projector uses the VGG16 perceptual distance alone in stage 1; PTI stops stage 2 early once
LPIPS <= 0.06 (``LPIPS_value_threshold``), here stage 2 always runs ``steps`` steps; w_avg is the
generator's stored average, not 600 fresh samples.

Example:
    >>> result = invert(G, images, "pti", settings={"lambda_lpips": 0})  # doctest: +SKIP
    >>> result.params["delta.conv1"].shape  # doctest: +SKIP
    torch.Size([4, 512, 512, 3, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ...errors import GanInvertError
from ...models.mapping_statistics import w_spread
from ...models.stylegan2 import StyleGAN2Generator
from ..losses import lpips_input
from .base import (InversionContext, Method, MethodSettings, ParamGroup, Params, Preset, Stage, SynthesisInputs,
                   context_lpips, gather_noise, noise_autocorrelation, noise_names, randn, register)

DELTA_PREFIX = "delta."
CONST_DELTA = "delta.const"
PIVOT = "pivot"
#: Steps the pivot stage has taken, (N,); it drives the decaying w-noise and lives only in stage 1.
#: ``w_avg_samples=600`` and ``np.random.RandomState(123)`` of PTI's call to the projector
#: (training/coaches/base_coach.py ``calc_inversions``, w_projector.py).
W_STD_SAMPLES, W_STD_SEED = 600, 123


@dataclass
class PTISettings(MethodSettings):
    """Attributes:
        steps, lr: stage-2 steps and Adam learning rate of the residuals (``max_pti_steps``,
            ``pti_learning_rate``).
        lambda_mse, lambda_lpips: reconstruction weights of both stages (``pt_l2_lambda``,
            ``pt_lpips_lambda``).
        pivot_steps: stage-1 steps (``first_inv_steps``).
        pivot_lr, pivot_schedule: peak LR and schedule of stage 1 (the projector's
            ``initial_learning_rate`` and ramp-up 0.05 / cosine ramp-down 0.25).
        pivot_noise: optimise the noise maps in stage 1 (the projector does), discarded after it.
        noise_regularize_weight: weight of the noise autocorrelation penalty in stage 1.
        w_noise_factor, w_noise_ramp: initial scale (times w_std) of the noise added to w in
            stage 1 and the fraction of the stage over which it decays to zero.
        tune_const: add a per-image residual to the constant input in stage 2.
        locality: add the locality regulariser in stage 2 (``use_locality_regularization``).
        locality_alpha: distance from the pivot of the regularising latents (``regulizer_alpha``).
        locality_samples: latents per step (``latent_ball_num_of_samples``).
        locality_truncation: truncation psi of those latents.
        locality_lambda_mse, locality_lambda_lpips: its weights (``regulizer_l2_lambda``,
            ``regulizer_lpips_lambda``).
        lpips_weights: LPIPS weights for the locality regulariser (None: $GANINVERT_LPIPS_WEIGHTS
            or torch's cache, see ``ganinvert.metrics.resolve_lpips_weights``).
    """

    steps: int = 350
    lr: float = 3e-4
    lambda_mse: float = 1.0
    lambda_lpips: float = 1.0
    pivot_steps: int = 450
    pivot_lr: float = 0.01
    pivot_schedule: str = "rampup-cosine"
    pivot_noise: bool = True
    noise_regularize_weight: float = 1e5
    w_noise_factor: float = 0.05
    w_noise_ramp: float = 0.75
    tune_const: bool = True
    locality: bool = False
    locality_alpha: float = 30.0
    locality_samples: int = 1
    locality_truncation: float = 0.5
    locality_lambda_mse: float = 0.1
    locality_lambda_lpips: float = 0.1
    lpips_weights: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.pivot_steps <= 0:
            raise GanInvertError(f"pivot_steps must be > 0, got {self.pivot_steps}")
        if not 0 < self.w_noise_ramp <= 1:
            raise GanInvertError(f"w_noise_ramp must be in (0, 1], got {self.w_noise_ramp}")
        if self.locality_samples <= 0:
            raise GanInvertError(f"locality_samples must be > 0, got {self.locality_samples}")
        for name in ("w_noise_factor", "locality_alpha"):
            if getattr(self, name) < 0:
                raise GanInvertError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class PTIInputs(SynthesisInputs):
    """Synthesis inputs plus the latents the locality regulariser drew in the same iteration."""

    locality_ws: list[torch.Tensor] | None = None


def weight_delta_shapes(G: StyleGAN2Generator) -> dict[str, tuple[int, ...]]:
    """Per-image residual shape (out, in, k, k) of every modulated conv, keyed by layer name."""
    return {name: tuple(G.conv_layer(name).weight.shape[1:]) for name in G.conv_layer_names()}


def residual_parameter_count(G: StyleGAN2Generator, tune_const: bool = True) -> int:
    """Floats PTI's stage 2 stores and optimises per image for ``G``."""
    count = sum(math.prod(shape) for shape in weight_delta_shapes(G).values())
    return count + (G.input.input.numel() if tune_const else 0)


def weight_deltas(params: Params) -> dict[str, torch.Tensor]:
    """The conv residuals of a PTI result's params, keyed by layer name (``G.conv_layer_names()``)."""
    return {k[len(DELTA_PREFIX):]: v for k, v in params.items() if k.startswith(DELTA_PREFIX) and k != CONST_DELTA}


@register
class PTI(Method):
    """Pivotal tuning: a W pivot, then per-image residuals of every modulated conv weight."""

    name = "pti"
    summary = "Pivotal Tuning Inversion: W pivot, then per-image residuals of every conv weight (+ const)"
    Settings = PTISettings
    presets = {
        "pti-official": Preset(
            {"pivot_steps": 450, "pivot_lr": 0.01, "pivot_schedule": "rampup-cosine", "pivot_noise": True,
             "noise_regularize_weight": 1e5, "w_noise_factor": 0.05, "w_noise_ramp": 0.75,
             "steps": 350, "lr": 3e-4, "lambda_mse": 1.0, "lambda_lpips": 1.0, "locality": False,
             "locality_alpha": 30.0, "locality_samples": 1, "locality_truncation": 0.5,
             "locality_lambda_mse": 0.1, "locality_lambda_lpips": 0.1},
            "danielroich/PTI configs/hyperparameters.py @f1331c4 (first_inv_steps 450, max_pti_steps 350, "
            "pti_learning_rate 3e-4, pt_l2_lambda 1, pt_lpips_lambda 1, use_locality_regularization False, "
            "regulizer_alpha 30, latent_ball_num_of_samples 1, regulizer_l2/lpips_lambda 0.1); "
            "training/projectors/w_projector.py (initial_learning_rate 0.01 — first_inv_lr 5e-3 is overwritten "
            "by the schedule at step 0 —, initial_noise_factor 0.05, noise_ramp_length 0.75, lr ramp-up 0.05 / "
            "ramp-down 0.25, regularize_noise_weight 1e5); criteria/localitly_regulizer.py (truncation_psi 0.5)"),
        "pti-locality": Preset(
            {"pivot_steps": 450, "pivot_lr": 0.01, "pivot_schedule": "rampup-cosine", "pivot_noise": True,
             "noise_regularize_weight": 1e5, "w_noise_factor": 0.05, "w_noise_ramp": 0.75,
             "steps": 350, "lr": 3e-4, "lambda_mse": 1.0, "lambda_lpips": 1.0, "locality": True,
             "locality_alpha": 30.0, "locality_samples": 1, "locality_truncation": 0.5,
             "locality_lambda_mse": 0.1, "locality_lambda_lpips": 0.1},
            "as pti-official with the locality regulariser on (PTI paper §3.3; configs/hyperparameters.py "
            "@85632a3 has use_locality_regularization = True)"),
    }
    default_preset = "pti-official"

    def __init__(self, settings: MethodSettings | None = None) -> None:
        super().__init__(settings)

    # -- structure --------------------------------------------------------------------------
    def delta_names(self, G: StyleGAN2Generator) -> tuple[str, ...]:
        names = tuple(DELTA_PREFIX + layer for layer in G.conv_layer_names())
        return names + ((CONST_DELTA,) if self.settings.tune_const else ())

    def stages(self, G: StyleGAN2Generator) -> list[Stage]:
        s = self.settings
        pivot_names = (PIVOT,) + (noise_names(G) if s.pivot_noise else ())
        return [Stage("pivot", s.pivot_steps, (ParamGroup(pivot_names, s.pivot_lr, s.pivot_schedule),)),
                Stage("tune", s.steps, (ParamGroup(self.delta_names(G), s.lr),))]

    def init_params(self, ctx: InversionContext) -> Params:
        G, rngs, n, device = ctx.G, ctx.rngs, ctx.batch_size, ctx.device
        params: Params = {PIVOT: G.w_avg.expand(n, -1).clone()}
        if self.settings.pivot_noise:
            # w_projector.py: ``buf[:] = torch.randn_like(buf)`` before optimising the noise.
            params.update((name, randn(rngs, shape[1:], device)) for name, shape in zip(noise_names(G), G.noise_shapes))
        return params

    def begin_stage(self, ctx: InversionContext, params: Params) -> None:
        G = ctx.G
        if ctx.stage_index != 1:
            return
        # The projector's noise maps end with stage 1 (PTI discards them too).
        for name in noise_names(G):
            params.pop(name, None)
        n, device = params[PIVOT].shape[0], params[PIVOT].device
        for layer, shape in weight_delta_shapes(G).items():
            params[DELTA_PREFIX + layer] = torch.zeros(n, *shape, device=device)
        if self.settings.tune_const:
            params[CONST_DELTA] = torch.zeros(n, *G.input.input.shape[1:], device=device)

    # -- rendering ----------------------------------------------------------------------------
    @staticmethod
    def _tuned(G: StyleGAN2Generator, params: Params) -> tuple[dict[str, torch.Tensor] | None, torch.Tensor | None]:
        """The conv residuals (None before stage 2) and the tuned constant input (None: G's own)."""
        const_delta = params.get(CONST_DELTA)
        return weight_deltas(params) or None, (G.input.input + const_delta if const_delta is not None else None)

    def render_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        deltas, const = self._tuned(G, params)
        return SynthesisInputs(ws=G.broadcast(params[PIVOT]), noise=gather_noise(G, params), const=const,
                               weight_deltas=deltas)

    def inputs(self, ctx: InversionContext, params: Params) -> SynthesisInputs:
        G, rngs = ctx.G, ctx.rngs
        base = self.render_inputs(G, params)
        pivot = params[PIVOT]
        if ctx.stage_index == 0:  # the projector's decaying Gaussian noise on w
            s = self.settings
            step = torch.full((pivot.shape[0],), float(ctx.step), device=pivot.device)
            ramp = (1 - step / s.pivot_steps / s.w_noise_ramp).clamp_min(0).square()
            scale = self._w_std_of(G) * s.w_noise_factor * ramp
            w = pivot + randn(rngs, pivot.shape[1:], pivot.device) * scale[:, None]
            return PTIInputs(ws=G.broadcast(w), noise=base.noise, const=base.const, weight_deltas=base.weight_deltas)
        locality = self._locality_ws(G, pivot, rngs) if self.settings.locality else None
        return PTIInputs(ws=base.ws, noise=base.noise, const=base.const, weight_deltas=base.weight_deltas,
                         locality_ws=locality)

    @staticmethod
    def _w_std_of(G: StyleGAN2Generator) -> float:
        """The projector's w_std (``w_projector.py``: 600 samples)."""
        return w_spread(G, W_STD_SAMPLES, W_STD_SEED)

    def _locality_ws(self, G: StyleGAN2Generator, pivot: torch.Tensor,
                     rngs: Sequence[torch.Generator]) -> list[torch.Tensor]:
        """Latents at distance alpha from the pivot towards truncated random latents (PTI's
        ``get_morphed_w_code``), one (N, num_ws, D) tensor per sample."""
        s = self.settings
        z = randn(rngs, (s.locality_samples, G.style_dim), pivot.device)
        with torch.no_grad():
            w = G.truncate(G.mapping(z), s.locality_truncation)  # (N, S, D)
        anchor = G.broadcast(pivot.detach())
        out = []
        for k in range(s.locality_samples):
            direction = G.broadcast(w[:, k]) - anchor
            norm = direction.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
            out.append(anchor + s.locality_alpha * direction / norm)
        return out

    # -- losses ---------------------------------------------------------------------------------
    def regulariser(self, ctx: InversionContext, params: Params, inputs: SynthesisInputs) -> torch.Tensor | None:
        G, s = ctx.G, self.settings
        noise = gather_noise(G, params)
        if ctx.stage_index == 0:
            if noise is None or not s.noise_regularize_weight:
                return None
            return s.noise_regularize_weight * noise_autocorrelation(noise)
        locality_ws = getattr(inputs, "locality_ws", None)
        if not locality_ws:
            return None
        n = params[PIVOT].shape[0]
        zeros = [torch.zeros(n, *shape[1:], device=params[PIVOT].device) for shape in G.noise_shapes]
        deltas, const = self._tuned(G, params)
        total = params[PIVOT].new_zeros(n)
        for ws in locality_ws:
            # noise_mode='none' in PTI: both renderings without noise.
            tuned = G.synthesis(ws, zeros, const=const, weight_deltas=deltas)
            with torch.no_grad():
                original = G.synthesis(ws, zeros)
            if s.locality_lambda_mse:
                total = total + s.locality_lambda_mse * (tuned - original).square().flatten(1).mean(1)
            if s.locality_lambda_lpips:
                lpips = context_lpips(ctx, s.lpips_weights, "pti's locality regulariser (or locality_lambda_lpips=0)")
                distance = lpips(lpips_input(original), lpips_input(tuned))
                total = total + s.locality_lambda_lpips * distance
        return total / len(locality_ws)

    @torch.no_grad()
    def project(self, ctx: InversionContext, params: Params) -> None:
        if ctx.stage_index != 0:
            return
        # w_projector.py normalises every noise map to zero mean and unit variance after each step.
        for name in noise_names(ctx.G):
            if name in params:
                n = params[name]
                n -= n.mean((1, 2, 3), keepdim=True)
                n *= n.square().mean((1, 2, 3), keepdim=True).rsqrt()
