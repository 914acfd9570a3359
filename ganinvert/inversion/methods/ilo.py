"""ILO: Intermediate Layer Optimization (Daras, Dean, Jalal, Dimakis, ICML 2021).

Progressive rounds over the generator's first blocks, each a :class:`Stage` with its own Adam:

* round 0 optimises z+ (one z per ws index) and the noise maps of blocks 0..2;
* round k >= 1 optimises the feature map that block k-1 outputs (``features.{k-1}``, the input of
  block k), the z+ rows still read after it, and the noise maps of blocks k..k+2. The feature map
  starts at the value the previous round's solution induces (``anchor.{k-1}``) and, after every
  step, is projected back onto the l1 ball of radius r_k around it: the search stays within a
  small l1 ball around the manifold induced by the previous round (paper §3, Algorithm 1).

Reading of the authors' code (giannisdaras/ilo ``ilo_stylegan.py``, ``configs/config.yaml``):

* Layer indices. Their ``start_layer`` k is our block k (0 = the 4x4 block, k = the 4*2**k px
  block); ``gen_outs[k]`` is the output of block k-1. Their config for 1024 px config-f runs four
  rounds from layer 0, so the last round optimises the 16x16 output of block 2. The rule is kept
  in absolute blocks at every resolution (round k's variable is 2**(k+1) px) because the
  coarse-to-fine meaning of the rounds is tied to feature resolution, not to depth; a generator
  needs at least as many blocks as rounds.
* Latents. Their z+ goes through a Gaussian-fit proxy of the mapping network (``MappingProxy``
  with PULSE's ``gaussian_fit.pt``): ``w = LeakyReLU_0.2(std * z + mean)``, where mean/std are
  per-dimension statistics of ``LeakyReLU_5(mapping(z))``, the inverted last mapping activation.
  ``mapping="gaussian-fit"`` does the same with statistics of 10 000 seeded mapping samples (PULSE
  used 10**6); ``mapping="network"`` uses the real mapping network instead.
* ``project: true`` is PULSE's ``SphericalOptimizer``: after each step every z row and every noise
  map is rescaled to the norm it started with. Here the initial draws are put on the spheres of
  their expected radii (sqrt(style_dim) for a z row, the side r for an r x r noise map), so the
  sphere needs no stored radius.
* The noise maps of round k are their ``noise_list = range(5 + 2k)`` minus the maps of blocks the
  round skips, i.e. the maps of blocks k..k+2.
* ``geocross`` (0.01) is PULSE's pairwise geodesic regulariser on the z rows; their code slices
  the batch dimension (``latent_z[2 * start_layer:]``), evidently meaning the rows read in this
  round, which is what is used here.
* The l1 projection of ``gen_outs`` is switched off in the shipped config (``do_project_gen_out:
  false``) although the paper's algorithm uses it; preset ``ilo`` switches it on with their radii
  ``max_radius_gen_out: [1000, 1000, 6000]`` (indexed by round, entry 0 unused; their list stops
  before round 3 would index it, so later rounds reuse the last entry); preset ``ilo-code`` keeps
  it off. The radii are l1 norms of 512-channel config-f feature maps; for other widths and sizes
  they are scaled by ``numel(ours) / numel(config-f)`` to keep the same budget per entry.
* Their synthesis restarts the skip image at the entry block (``skip=None``), so each round begins
  from a different image than the previous one ended with. Here the skip image of the earlier
  blocks is carried over (``rgb.{k-1}``, fixed) so that round k starts exactly where round k-1
  stopped.
* The LR schedule: their ``get_lr`` ramps up over the first 5 % and down (cosine) over the last
  75 % of each round (``lr_same_pace: false``): the engine's ``"ilo"`` schedule.

Editing: only the ws indices read after the last round's feature map move (their z rows are what
ILO optimises); ``direction`` is added in w space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ...errors import GanInvertError
from ...models.mapping_statistics import cached_statistic, mapped_latents
from ...models.stylegan2 import FeatureEntry, StyleGAN2Generator, default_channels
from ..schedules import get_schedule
from .base import (InversionContext, Method, MethodSettings, ParamGroup, Params, Preset, Stage, SynthesisInputs,
                   check_direction, editable_layers, gather_noise, live_ws_indices, randn, register,
                   retract_to_sphere)

GAUSSIAN_FIT_SAMPLES = 10_000
MAPPINGS = ("gaussian-fit", "network")
#: Blocks whose noise maps a round optimises, counted from the round's first live block
#: (``noise_list = range(5 + 2 * start_layer)`` in ``ilo_stylegan.py``).
NOISE_BLOCKS_PER_ROUND = 3


def project_l1_ball(x: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each sample of ``x`` onto the l1 ball of ``radius`` around 0.

    ``argmin_u ||u - x_i||_2 s.t. ||u||_1 <= r_i`` for every ``x_i = x[i]`` (all dims after the
    first flattened), by the sort-based algorithm of Duchi, Shalev-Shwartz, Singer and Chandra,
    "Efficient Projections onto the l1-Ball for Learning in High Dimensions" (ICML 2008), Fig. 1:
    the solution soft-thresholds x_i by the theta that puts it on the sphere. Samples already in
    the ball are returned unchanged. The threshold is computed in float64.

    Args:
        x: (N, ...) tensor.
        radius: a float >= 0 or an (N,) tensor of radii.

    Example:
        >>> project_l1_ball(torch.tensor([[3.0, -1.0, 0.5]]), 2.0)
        tensor([[2., -0., 0.]])
    """
    radius_t = torch.as_tensor(radius, dtype=torch.float64, device=x.device)
    if radius_t.ndim == 0:
        radius_t = radius_t.expand(x.shape[0])
    if radius_t.shape != (x.shape[0],):
        raise GanInvertError(f"l1 radius must be a number or one per sample ({x.shape[0]}), "
                             f"got shape {tuple(radius_t.shape)}")
    if not (torch.isfinite(radius_t).all() and (radius_t >= 0).all()):
        raise GanInvertError("l1 radius must be finite and >= 0")
    if not torch.isfinite(x).all():
        raise GanInvertError("cannot project NaN or infinite values onto the l1 ball")
    flat = x.reshape(x.shape[0], -1)
    magnitude = flat.abs().to(torch.float64)
    inside = magnitude.sum(1) <= radius_t
    if inside.all():
        return x.clone()
    sorted_mag = magnitude.sort(1, descending=True).values
    cumulative = sorted_mag.cumsum(1)
    count = torch.arange(1, flat.shape[1] + 1, device=x.device, dtype=torch.float64)
    # rho: the last (1-based) j with sorted_mag_j > (cumulative_j - r) / j; it always exists for r >= 0
    # (j = 1 holds whenever x != 0, and x outside the ball is nonzero).
    support = sorted_mag * count > cumulative - radius_t[:, None]
    rho = (support * count).amax(1).clamp_min(1)
    theta = (cumulative.gather(1, rho.long()[:, None] - 1).squeeze(1) - radius_t) / rho
    shrunk = torch.sign(flat) * (magnitude - theta[:, None]).clamp_min(0).to(x.dtype)
    return torch.where(inside[:, None], flat, shrunk).reshape(x.shape)


class GaussianFit:
    """PULSE's Gaussian fit of the inverted last mapping activation, used by ILO as its mapping.

    ``v = LeakyReLU_5(mapping(z))`` undoes the final LeakyReLU(0.2) (the sqrt(2) gain cancels in
    the round trip), and ``w = LeakyReLU_0.2(std * z + mean)`` maps a Gaussian z to the W manifold.
    """

    def __init__(self, G: StyleGAN2Generator, samples: int = GAUSSIAN_FIT_SAMPLES, seed: int = 0) -> None:
        with torch.no_grad():
            v = F.leaky_relu(mapped_latents(G, samples, seed), 5.0)
            self.mean, self.std = v.mean(0), v.std(0)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(z * self.std + self.mean, 0.2)

    @classmethod
    def of(cls, G: StyleGAN2Generator) -> "GaussianFit":
        return cached_statistic(G, cls, lambda: cls(G))


@dataclass
class ILOSettings(MethodSettings):
    """Attributes:
        steps: total steps of all rounds, split in proportion to ``round_shares``.
        round_shares: relative lengths of the rounds (>= 0); their number is the number of rounds
            (config ``steps: [50, 50, 25, 25]``).
        lr: Adam learning rate of every round and tensor (config ``lr: 0.1``).
        schedule: LR schedule within each round (see the module docstring).
        mapping: ``"gaussian-fit"`` (the authors' MappingProxy) or ``"network"``.
        spherical: keep z rows and noise maps on their spheres (config ``project: true``).
        feature_radii: l1 radius of each round's feature deviation in config-f units (entry k for
            round k, entry 0 unused, the last reused); ``None`` disables the projection.
        geocross: weight of the geodesic regulariser on the z rows (config ``geocross: 0.01``).
    """

    steps: int = 150
    lr: float = 0.1
    lambda_mse: float = 1.0
    lambda_lpips: float = 1.0
    round_shares: tuple[float, ...] = (50.0, 50.0, 25.0, 25.0)
    schedule: str = "ilo"
    mapping: str = "gaussian-fit"
    spherical: bool = True
    feature_radii: tuple[float, ...] | None = (1000.0, 1000.0, 6000.0)
    geocross: float = 0.01

    def validate(self) -> None:
        super().validate()
        if not self.round_shares or min(self.round_shares) < 0 or not sum(self.round_shares) > 0:
            raise GanInvertError(f"round_shares must be numbers >= 0 with a positive sum, got {self.round_shares!r}")
        if self.mapping not in MAPPINGS:
            raise GanInvertError(f"mapping must be one of {', '.join(MAPPINGS)}, got {self.mapping!r}")
        if self.feature_radii is not None and (not self.feature_radii or min(self.feature_radii) < 0):
            raise GanInvertError(f"feature_radii must be a non-empty tuple of numbers >= 0, or None; "
                                 f"got {self.feature_radii!r}")
        if not self.geocross >= 0:
            raise GanInvertError(f"geocross must be >= 0, got {self.geocross}")
        get_schedule(self.schedule)

    def round_steps(self) -> list[int]:
        """Steps of each round: ``steps`` split by cumulative rounding of the shares (150 -> 50, 50, 25, 25).

        A round can get 0 steps (few ``steps``, or a 0 share): it then only moves the optimisation
        to its feature map, as a 0 in the authors' ``steps`` list skips a layer.
        """
        total, cumulative, bounds = sum(map(float, self.round_shares)), 0.0, [0]
        for share in self.round_shares:
            cumulative += float(share)
            bounds.append(round(self.steps * cumulative / total))
        return [b - a for a, b in zip(bounds, bounds[1:])]


_PRESET_COMMON = {"steps": 150, "round_shares": (50.0, 50.0, 25.0, 25.0), "lr": 0.1, "schedule": "ilo",
                  "lambda_mse": 1.0, "lambda_lpips": 1.0, "mapping": "gaussian-fit", "spherical": True,
                  "geocross": 0.01}
_CONFIG = ("giannisdaras/ilo configs/config.yaml: steps [50, 50, 25, 25], lr 0.1, project true, geocross 0.01, "
           "mse 1, pe 1; ilo_stylegan.py MappingProxy (gaussian_fit.pt)")


@register
class ILO(Method):
    name = "ilo"
    summary = "ILO: z+ and noise, then progressively the features entering deeper blocks within l1 balls"
    Settings = ILOSettings
    presets = {
        "ilo": Preset({**_PRESET_COMMON, "feature_radii": (1000.0, 1000.0, 6000.0)},
                      "ILO (Daras et al., ICML 2021) §3 / Algorithm 1 (l1 ball around the previous layer's range) "
                      f"with {_CONFIG}; max_radius_gen_out [1000, 1000, 6000] with the projection on"),
        "ilo-code": Preset({**_PRESET_COMMON, "feature_radii": None},
                           f"{_CONFIG}; do_project_gen_out false, as the config ships"),
    }
    default_preset = "ilo"

    # -- structure ------------------------------------------------------------------------------
    def num_rounds(self, G: StyleGAN2Generator) -> int:
        rounds = len(self.settings.round_shares)
        if rounds > G.num_blocks:
            raise GanInvertError(f"ILO with {rounds} rounds needs a generator with at least {rounds} blocks; "
                                 f"this {G.resolution} px one has {G.num_blocks} (use fewer round_shares)")
        return rounds

    @staticmethod
    def entry_block(round_index: int) -> int | None:
        """The block whose output round ``round_index`` optimises (None for round 0)."""
        return None if round_index == 0 else round_index - 1

    def live_rows(self, G: StyleGAN2Generator, round_index: int) -> list[int]:
        """z rows (= ws indices) read by the generator in a round."""
        return live_ws_indices(G, self.entry_block(round_index))

    def noise_indices(self, G: StyleGAN2Generator, round_index: int) -> list[int]:
        last = min(round_index + NOISE_BLOCKS_PER_ROUND, G.num_blocks) - 1
        return [i for b in range(round_index, last + 1) for i in G.block_noise_indices(b)]

    def round_names(self, G: StyleGAN2Generator, round_index: int) -> tuple[str, ...]:
        entry = self.entry_block(round_index)
        features = () if entry is None else (f"features.{entry}",)
        return ("latent", *features, *(f"noise_{i}" for i in self.noise_indices(G, round_index)))

    def stages(self, G: StyleGAN2Generator) -> list[Stage]:
        s = self.settings
        self.num_rounds(G)
        return [Stage(f"round{k}", steps, (ParamGroup(self.round_names(G, k), s.lr, s.schedule),))
                for k, steps in enumerate(s.round_steps())]

    def radius(self, G: StyleGAN2Generator, round_index: int) -> float | None:
        """l1 radius of round ``round_index``'s feature deviation for this generator (None: unconstrained)."""
        radii = self.settings.feature_radii
        if radii is None or round_index == 0:
            return None
        block = self.entry_block(round_index)
        channels, side, _ = G.feature_shape(block)
        config_f = default_channels(2)[side] * side * side
        return float(radii[min(round_index, len(radii) - 1)]) * channels * side * side / config_f

    # -- tensors --------------------------------------------------------------------------------
    def init_params(self, ctx: InversionContext) -> Params:
        G, rngs = ctx.G, ctx.rngs
        self.num_rounds(G)
        like = G.w_avg  # device and dtype of the generator
        params: Params = {"latent": retract_to_sphere(randn(rngs, (G.num_ws, G.style_dim)).to(like),
                                                      math.sqrt(G.style_dim))}
        for i, shape in enumerate(G.noise_shapes):
            params[f"noise_{i}"] = retract_to_sphere(randn(rngs, shape[1:]).to(like), shape[-1], dims=(1, 2, 3))
        return params

    def begin_stage(self, ctx: InversionContext, params: Params) -> None:
        G, stage_index = ctx.G, ctx.stage_index
        block = self.entry_block(stage_index)
        if block is None:
            return
        with torch.no_grad():
            previous = self.round_inputs(G, params, stage_index - 1)
            entry = G.block_features(previous.ws, block, previous.noise, feature_entry=previous.feature_entry)
        params[f"features.{block}"] = entry.features.clone()
        params[f"anchor.{block}"] = entry.features.clone()
        if entry.rgb is not None:
            params[f"rgb.{block}"] = entry.rgb.clone()

    def ws(self, G: StyleGAN2Generator, latent: torch.Tensor) -> torch.Tensor:
        return GaussianFit.of(G)(latent) if self.settings.mapping == "gaussian-fit" else G.mapping(latent)

    def final_round(self, G: StyleGAN2Generator) -> int:
        """The round a finished result renders from: the last."""
        return self.num_rounds(G) - 1

    def round_inputs(self, G: StyleGAN2Generator, params: Params, round_index: int) -> SynthesisInputs:
        """Generator inputs of round ``round_index``: z through the mapping, entering at its feature map."""
        block = self.entry_block(round_index)
        entry = None if block is None else FeatureEntry(block, params[f"features.{block}"], params.get(f"rgb.{block}"))
        return SynthesisInputs(ws=self.ws(G, params["latent"]), noise=gather_noise(G, params), feature_entry=entry)

    def inputs(self, ctx: InversionContext, params: Params) -> SynthesisInputs:
        return self.round_inputs(ctx.G, params, ctx.stage_index)

    def render_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        return self.round_inputs(G, params, self.final_round(G))

    # -- losses and constraints -----------------------------------------------------------------
    def regulariser(self, ctx: InversionContext, params: Params, inputs: SynthesisInputs) -> torch.Tensor | None:
        rows = self.live_rows(ctx.G, ctx.stage_index)
        if not self.settings.geocross or len(rows) < 2:
            return None
        return self.settings.geocross * geocross(params["latent"][:, rows])

    @torch.no_grad()
    def project(self, ctx: InversionContext, params: Params) -> None:
        G, stage_index = ctx.G, ctx.stage_index
        if self.settings.spherical:
            rows = self.live_rows(G, stage_index)
            latent = params["latent"]
            latent[:, rows] = retract_to_sphere(latent[:, rows], math.sqrt(G.style_dim))
            for i in self.noise_indices(G, stage_index):
                noise = params[f"noise_{i}"]
                noise.copy_(retract_to_sphere(noise, noise.shape[-1], dims=(1, 2, 3)))
        radius = self.radius(G, stage_index)
        if radius is not None:
            block = self.entry_block(stage_index)
            features, anchor = params[f"features.{block}"], params[f"anchor.{block}"]
            features.copy_(anchor + project_l1_ball(features - anchor, radius))

    def edit_inputs(self, G: StyleGAN2Generator, params: Params, direction: torch.Tensor,
                    alpha: float, layers: Sequence[int] | None = None) -> SynthesisInputs:
        """``alpha * direction`` added in w space to the ``layers`` read after the last feature map."""
        check_direction(G, direction)
        allowed = editable_layers(G, self.live_rows(G, self.final_round(G)), layers)
        return super().edit_inputs(G, params, direction, alpha, allowed)


def geocross(latent: torch.Tensor) -> torch.Tensor:
    """PULSE's GEOCROSS per sample: mean squared pairwise angle between the rows, times dim / 8.

    ``latent`` (N, K, D) -> (N,). The angle is ``2 atan2(|x - y|, |x + y|)``; the 1e-9 inside the
    square roots keeps the gradient finite on the diagonal.
    """
    x, y = latent[:, None], latent[:, :, None]
    a = ((x - y).square().sum(-1) + 1e-9).sqrt()
    b = ((x + y).square().sum(-1) + 1e-9).sqrt()
    angle = 2 * torch.atan2(a, b)
    return (angle.square() * latent.shape[-1]).mean((1, 2)) / 8
