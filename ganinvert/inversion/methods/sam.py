"""SAM, optimisation form: spatially-adaptive multilayer inversion (Parmar et al., "Spatially-Adaptive
Multilayer Selection for GAN Inversion and Editing", CVPR 2022; reference code
adobe-research/sam_inversion, ``src/sam_inv_optimization.py``).

The image is explained by w+ plus a masked residual Δf_b added to the output features of a few
blocks b. Each image region uses the earliest (most editable) latent space that inverts it well:
the mask of block b is 1 where the region was assigned to block b, and regions assigned to W+ use
no residual at all. W+ itself is optimised everywhere.

**Feature blocks.** SAM's spaces F4, F6, F8, F10 are the outputs of the blocks at 16, 32, 64 and
128 px (``model_utils.custom_forward`` adds them after synthesis blocks 3-6 counted from the 4 px
block as 1), whatever the generator's output size (their cars are 512 px, faces 1024 px, cats
256 px). F_k is the block whose last conv reads ws[k], i.e. our block k / 2. For any generator we
keep those of blocks 2, 3, 4, 5 that exist and are not the output block (a residual right before
the last ToRGB would be a per-pixel image offset): 1024/512/256 px -> blocks 2-5, 128 px -> 2-4,
64 px -> 2-3, 32 px -> 2. ``feature_blocks`` overrides the rule.

**Invertibility map.** SAM predicts, per latent space, the LPIPS error map an inversion in that
space would leave (a DeepLab network trained on such maps, ``train_invertibility.py``), averages it
inside each semantic segment, and gives each segment the earliest space whose mean error is at most
tau (``mask_utils.refine``; none below tau -> the latest space). This module, in this order of
preference,

* reads a label map from ``mask_path`` (0 = W+ only, k = the k-th feature block in increasing
  order; a PNG whose grey values are the labels, or a ``.npy``/``.npz`` array ``labels`` of shape
  (H, W) or (N, H, W)), or
* predicts the maps with a trained invertibility predictor (``predictor_path``;
  :mod:`ganinvert.models.sam_predictor`, trained by ``ganinvert train-inverter sam-predictor``
  on the maps of the probe inversions below), averages them inside SLIC-like superpixels (which
  stand in for SAM's semantic segments) and thresholds them with ``tau``. The default
  ``"default"`` is the predictor bundled for the bundled default generator and means "none" for
  any other generator. The main stage starts from ``w_avg`` (SAM: from the e4e encoding), or
* measures the maps: one short inversion per space (``invertibility-*`` stages, ``error_steps``
  each, with SAM's ``single_latent_inv.py`` objective: W+ alone, then W+ with an unmasked residual
  at one block), the spatial LPIPS (``error_metric="lpips"``, ``LPIPS(..., spatial=True)``) or
  squared error (``"mse"``) between each result and the target, averaged over a ``regions`` x
  ``regions`` grid of cells, which stand in for the semantic segments, and thresholded with
  ``tau`` as in ``refine``. The main stage then starts from the W+ probe's latent (SAM starts
  from the e4e encoding, which is not available here).

Masks are the label indicators resized to each block's resolution by area averaging (SAM uses
Lanczos), so they are binary where a block is at least as fine as the label grid.

**Objective** (``sam_inv_optimization.py``): ``lambda_mse * MSE + lambda_lpips * LPIPS``
+ ``lambda_mvg * sum_layers (v - mu)^T Sigma^-1 (v - mu)`` with ``v = LeakyReLU_5(w)`` and
statistics of 5000 mapped samples (``latent_utils.get_mvg_stats``; L_W of the paper)
+ ``lambda_delta * sum_{i>0} ||w_i - w_0||`` (``loss_utils.delta_loss``)
+ ``lambda_f * sum_b mean(Δf_b ** 2)`` (L_F: ``F.mse_loss`` to the zero initialisation, unmasked).
Adam (0.9, 0.999), lr 0.05 with ramp-up 0.05 / cosine ramp-down 0.25. Deviations: LPIPS uses the
AlexNet trunk (SAM: VGG), the rendering is not clamped to [-1, 1] before the losses, and the MSE is
computed at full resolution (SAM: after area-downsampling to 256 px).

The automatic map compares the probes with the image the engine hands to ``init_params``: the
clean target when one is given, else the measurement (which must then be an image). For
restoration benchmarks that pass both, give ``mask_path`` so that the clean image is not used.

**Result tensors**: ``latent`` (N, num_ws, D); ``residual.<b>`` (N, C, r, r) and ``mask.<b>``
(N, 1, r, r) per feature block; ``labels`` (N, 1, H, W) the label map; with the automatic map also
``error.w+`` and ``error.<b>`` (N, 1, regions, regions), the measured error of each space, and with
a predictor ``error.w+`` and ``error.<b>`` (N, 1, m, m), the predicted ones.

**Editing** (``model_utils.edit_image``): w+ moves by ``alpha * direction``; at each feature block
the masked regions take the features of the unedited inversion (``x * (1 - m) + f * m``), so a
region assigned to block b is changed only by the layers after b.

Example:
    >>> result = invert(G, images, "sam-opt", settings={"mask_path": "labels.png"})  # doctest: +SKIP
    >>> sorted(k for k in result.params if k.startswith("residual."))  # doctest: +SKIP
    ['residual.2', 'residual.3', 'residual.4', 'residual.5']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import GanInvertError
from ...models.encoders import optional_network_path
from ...models.sam_predictor import (KIND as PREDICTOR_KIND, InvertibilityPredictor, load_predictor,
                                     predict_label_map, select_spaces)
from ...models.mapping_statistics import cached_statistic, mapped_latents
from ...models.stylegan2 import StyleGAN2Generator
from ..losses import lpips_input
from .base import (InversionContext, Method, MethodSettings, ParamGroup, Params, Preset, Stage, SynthesisInputs,
                   context_lpips, register)

#: Blocks of SAM's F4, F6, F8, F10 (16-128 px); see the module docstring.
SAM_BLOCKS = (2, 3, 4, 5)
#: Samples of ``latent_utils.get_mvg_stats``.
PRIOR_SAMPLES = 5000
ERROR_METRICS = ("lpips", "mse")
LATENT = "latent"
LABELS = "labels"
WPLUS = "w+"


def _residual(b: int) -> str:
    return f"residual.{b}"


def _mask(b: int) -> str:
    return f"mask.{b}"


def _probe_latent(space: str) -> str:
    return f"probe.{space}.latent"


def _probe_residual(b: int) -> str:
    return f"probe.{b}.residual"


def _error(space: str) -> str:
    return f"error.{space}"


@dataclass
class SamSettings(MethodSettings):
    """Attributes:
        steps, lr, schedule: main-stage Adam steps, peak learning rate and LR schedule.
        lambda_mse, lambda_lpips: reconstruction weights.
        lambda_mvg: weight of the Gaussian prior on LeakyReLU(5)-inverted w+ (L_W).
        lambda_delta: weight of the spread of w+ around its first row.
        lambda_f: weight of the mean squared feature residuals (L_F).
        feature_blocks: blocks with a residual (None: SAM's 16-128 px blocks, see the docstring).
        mask_path: label map (0 = W+, k = k-th feature block); None predicts or measures it.
        predictor_path: invertibility predictor file used when no ``mask_path`` is given;
            "default" = the bundled one for the bundled generator (None for other generators);
            None measures the maps with probe inversions (see docstring).
        tau: error threshold of the space selection, in the units of ``error_metric``. None:
            with a predictor, the threshold calibrated on its training maps (the median W+ error,
            stored in the file; SAM's 0.225 is for their LPIPS-VGG maps at 1024 px, the AlexNet
            maps here have another scale); with measured maps, SAM's 0.225.
        error_steps: steps of each invertibility probe (measured map only).
        error_metric: "lpips" (spatial LPIPS, as SAM) or "mse" (per-pixel squared error).
        regions: the error maps are averaged over a regions x regions grid (SAM: over segments).
        lpips_weights: LPIPS weights for the "lpips" error map (None: default search).
    """

    steps: int = 1001
    lr: float = 0.05
    lambda_mse: float = 1.0
    lambda_lpips: float = 1.0
    schedule: str = "rampup-cosine"
    lambda_mvg: float = 1e-8
    lambda_delta: float = 1e-3
    lambda_f: float = 5.0
    feature_blocks: tuple[int, ...] | None = None
    mask_path: str | None = None
    predictor_path: str | None = "default"
    tau: float | None = None
    error_steps: int = 1001
    error_metric: str = "lpips"
    regions: int = 16
    lpips_weights: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.tau is not None and self.tau < 0:
            raise GanInvertError(f"tau must be >= 0 or None, got {self.tau}")
        if self.error_steps <= 0:
            raise GanInvertError(f"error_steps must be > 0, got {self.error_steps}")
        if self.error_metric not in ERROR_METRICS:
            raise GanInvertError(f"error_metric must be one of {', '.join(ERROR_METRICS)}, got {self.error_metric!r}")
        if self.regions <= 0:
            raise GanInvertError(f"regions must be > 0, got {self.regions}")
        if self.feature_blocks is not None and len(set(self.feature_blocks)) != len(self.feature_blocks):
            raise GanInvertError(f"feature_blocks must not repeat a block, got {tuple(self.feature_blocks)}")


class LeakyGaussianPrior:
    """SAM's L_W: Mahalanobis distance of LeakyReLU(5)(w) under the statistics of mapped samples
    (``latent_utils.get_mvg_stats``: covariance + 1e-8 I, mean = LeakyReLU(5)(mean w))."""

    def __init__(self, G: StyleGAN2Generator, samples: int = PRIOR_SAMPLES, seed: int = 0) -> None:
        w = mapped_latents(G, samples, seed).double()
        v = F.leaky_relu(w, 5.0)
        cov = torch.cov(v.T) + 1e-8 * torch.eye(G.style_dim, dtype=torch.float64, device=w.device)
        self.inv_cov = torch.linalg.inv(cov)
        self.mean_v = F.leaky_relu(w.mean(0), 5.0)

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (N, L, D) -> (N,), summed over the L rows as ``loss_utils.compute_mvg``."""
        dv = F.leaky_relu(latent.double(), 5.0) - self.mean_v
        return torch.einsum("nld,de,nle->n", dv, self.inv_cov, dv).to(latent.dtype)


#: SAM's region threshold (``--threshold 0.225``, adobe-research/sam_inversion), for LPIPS-VGG maps.
SAM_TAU = 0.225


def sam_feature_blocks(G: StyleGAN2Generator) -> tuple[int, ...]:
    """SAM's blocks (16-128 px) that ``G`` has below its output block."""
    return tuple(b for b in SAM_BLOCKS if b < G.num_blocks - 1)


def load_label_map(path: str | Path, batch: int, num_labels: int) -> torch.Tensor:
    """Read a label map (PNG grey values or .npy/.npz ``labels``) as (batch, 1, H, W) float labels.

    Raises GanInvertError for a missing/unreadable file, a wrong shape, non-integer values or
    labels outside ``[0, num_labels)``.
    """
    path = Path(path)
    if not path.is_file():
        raise GanInvertError(f"mask_path not found: {path}")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if "labels" not in archive.files and len(archive.files) != 1:
                    raise GanInvertError(f"{path} must hold an array 'labels' (has {', '.join(archive.files)})")
                array = archive["labels" if "labels" in archive.files else archive.files[0]]
        else:
            with Image.open(path) as img:
                array = np.asarray(img.convert("L"))
    except GanInvertError:
        raise
    except Exception as exc:  # PIL/numpy raise many types for a corrupt file
        raise GanInvertError(f"cannot read label map {path}: {type(exc).__name__}") from None
    labels = torch.as_tensor(np.asarray(array, dtype=np.float64))
    if labels.ndim == 2:
        labels = labels.expand(batch, -1, -1)
    if labels.ndim != 3 or labels.shape[0] != batch:
        raise GanInvertError(f"label map {path} must be (H, W) or ({batch}, H, W), got {tuple(array.shape)}")
    if not torch.isfinite(labels).all() or (labels != labels.round()).any():
        raise GanInvertError(f"label map {path} must hold integers")
    if labels.min() < 0 or labels.max() >= num_labels:
        raise GanInvertError(f"label map {path} has labels in [{int(labels.min())}, {int(labels.max())}]; "
                             f"allowed 0 (W+) to {num_labels - 1} (one per feature block)")
    return labels[:, None].float().contiguous()


def masks_from_labels(G: StyleGAN2Generator, labels: torch.Tensor, blocks: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per-block masks (N, 1, r, r): the indicator of label k + 1 area-resized to block k's resolution."""
    out = {}
    for k, b in enumerate(blocks):
        r = G.feature_shape(b)[1]
        out[b] = F.interpolate((labels == k + 1).float(), size=(r, r), mode="area")
    return out


@register
class SamOpt(Method):
    """w+ plus masked feature residuals at SAM's blocks, masks from an invertibility map."""

    name = "sam-opt"
    summary = "SAM (optimisation form): w+ plus masked feature residuals chosen per region by invertibility"
    Settings = SamSettings
    presets = {
        "sam-official": Preset(
            {"steps": 1001, "lr": 0.05, "schedule": "rampup-cosine", "lambda_mse": 1.0, "lambda_lpips": 1.0,
             "lambda_f": 5.0, "lambda_delta": 1e-3, "lambda_mvg": 1e-8, "tau": None, "error_steps": 1001},
            "adobe-research/sam_inversion src/sam_inv_optimization.py arguments (--num_opt_steps 1001, --lr 0.05, "
            "--lr_rampup_length 0.05, --lr_rampdown_length 0.25, --lambda_mse 1, --lambda_lpips 1, --lambda_f_rec 5, "
            "--lambda_delta 1e-3, --lambda_mvg 1e-8, --threshold 0.225, used as is with measured maps and replaced by the "
            "predictor's calibrated threshold with predicted maps, see SamSettings.tau); error_steps: src/single_latent_inv.py "
            "--num_opt_steps 1001 (the single-space inversions whose LPIPS maps train the invertibility network)"),
    }
    default_preset = "sam-official"

    def __init__(self, settings: MethodSettings | None = None) -> None:
        super().__init__(settings)
        self._predictors: dict[Path, InvertibilityPredictor] = {}

    # -- structure --------------------------------------------------------------------------
    def blocks(self, G: StyleGAN2Generator) -> tuple[int, ...]:
        """The feature blocks with a residual, in increasing order."""
        chosen = self.settings.feature_blocks
        if chosen is None:
            blocks = sam_feature_blocks(G)
            if not blocks:
                raise GanInvertError(f"a {G.resolution} px generator has none of SAM's feature blocks (16-128 px "
                                     "below the output); set feature_blocks")
            return blocks
        bad = [b for b in chosen if not 0 <= int(b) < G.num_blocks]
        if bad or not chosen:
            raise GanInvertError(f"feature_blocks must be non-empty blocks in [0, {G.num_blocks - 1}], "
                                 f"got {tuple(chosen)}")
        return tuple(sorted(int(b) for b in chosen))

    def spaces(self, G: StyleGAN2Generator) -> list[str]:
        """Latent spaces in SAM's order, earliest first: "w+" then the feature blocks."""
        return [WPLUS] + [str(b) for b in self.blocks(G)]

    def _main_names(self, G: StyleGAN2Generator) -> tuple[str, ...]:
        return (LATENT,) + tuple(_residual(b) for b in self.blocks(G))

    def _probe_names(self, space: str) -> tuple[str, ...]:
        return (_probe_latent(space),) if space == WPLUS else (_probe_latent(space), _probe_residual(int(space)))

    def predictor_file(self, G: StyleGAN2Generator) -> Path | None:
        """The predictor used for ``G`` (None: a label file is given, or the maps are measured)."""
        if self.settings.mask_path is not None:
            return None
        return optional_network_path(self.settings.predictor_path, PREDICTOR_KIND, G)

    def _measures_map(self, G: StyleGAN2Generator) -> bool:
        return self.settings.mask_path is None and self.predictor_file(G) is None

    def stages(self, G: StyleGAN2Generator) -> list[Stage]:
        s = self.settings
        main = Stage("main", s.steps, (ParamGroup(self._main_names(G), s.lr, s.schedule),))
        if not self._measures_map(G):
            return [main]
        probes = [Stage(f"invertibility-{space}", s.error_steps,
                        (ParamGroup(self._probe_names(space), s.lr, s.schedule),)) for space in self.spaces(G)]
        return probes + [main]

    def init_params(self, ctx: InversionContext) -> Params:
        G, s, n = ctx.G, self.settings, ctx.batch_size
        blocks = self.blocks(G)
        if s.mask_path is not None:
            labels = load_label_map(s.mask_path, n, len(blocks) + 1).to(G.w_avg.device)
            return self._main_params(G, G.w_avg.expand(n, G.num_ws, -1).clone(), labels)
        if ctx.image is None:
            raise GanInvertError("sam-opt's automatic invertibility map needs the image itself, not a measurement "
                                 "through a forward operator; pass a label map as mask_path")
        predictor_file = self.predictor_file(G)
        if predictor_file is not None:
            return self._predicted_params(G, ctx.image, predictor_file)
        if s.regions > G.resolution:
            raise GanInvertError(f"regions ({s.regions}) must not exceed the resolution ({G.resolution})")
        return self._probe_params(G, WPLUS, n)

    def _predicted_params(self, G: StyleGAN2Generator, target: torch.Tensor, path: Path) -> Params:
        """Main-stage tensors with the label map of the invertibility predictor in ``path``."""
        if path not in self._predictors:
            self._predictors[path] = load_predictor(path, G)
        predictor = self._predictors[path]
        if predictor.spaces != self.spaces(G):
            raise GanInvertError(f"predictor {path} predicts spaces {predictor.spaces}, sam-opt uses {self.spaces(G)}")
        images = target.detach().clamp(-1, 1)
        labels = predict_label_map(predictor, images, self._tau(predictor.calibrated_tau))
        params = self._main_params(G, G.w_avg.expand(images.shape[0], G.num_ws, -1).clone(), labels)
        maps = predictor.maps(images)
        params.update({_error(space): maps[:, k:k + 1] for k, space in enumerate(predictor.spaces)})
        return params

    def _tau(self, calibrated: float | None = None) -> float:
        """The region threshold: the setting, else a predictor's calibrated one, else SAM's."""
        if self.settings.tau is not None:
            return self.settings.tau
        return calibrated if calibrated is not None else SAM_TAU

    def _main_params(self, G: StyleGAN2Generator, latent: torch.Tensor, labels: torch.Tensor) -> Params:
        blocks = self.blocks(G)
        n = latent.shape[0]
        params: Params = {LATENT: latent, LABELS: labels}
        for b, mask in masks_from_labels(G, labels, blocks).items():
            params[_residual(b)] = torch.zeros(n, *G.feature_shape(b), device=latent.device)
            params[_mask(b)] = mask
        return params

    def _probe_params(self, G: StyleGAN2Generator, space: str, n: int) -> Params:
        params: Params = {_probe_latent(space): G.w_avg.expand(n, G.num_ws, -1).clone()}
        if space != WPLUS:
            params[_probe_residual(int(space))] = torch.zeros(n, *G.feature_shape(int(space)), device=G.w_avg.device)
        return params

    @torch.no_grad()
    def begin_stage(self, ctx: InversionContext, params: Params) -> None:
        G, stage_index = ctx.G, ctx.stage_index
        if stage_index == 0 or not self._measures_map(G):
            return
        spaces = self.spaces(G)
        finished = spaces[stage_index - 1]
        params[_error(finished)] = self._error_map(ctx, params, finished)
        if finished != WPLUS:  # the W+ probe's latent initialises the main stage
            for name in self._probe_names(finished):
                del params[name]
        if stage_index < len(spaces):
            params.update(self._probe_params(G, spaces[stage_index], params[_error(finished)].shape[0]))
            return
        labels = select_spaces([params[_error(space)] for space in spaces], self._tau())
        params.update(self._main_params(G, params.pop(_probe_latent(WPLUS)), labels))

    def _error_map(self, ctx: InversionContext, params: Params, space: str) -> torch.Tensor:
        """Error map of ``space``'s probe against the image, averaged over the region grid (N, 1, R, R)."""
        rec = self._probe_inputs(params, space).render(ctx.G)
        target = ctx.require_image(self.name).to(rec.device)
        if self.settings.error_metric == "lpips":
            lpips = context_lpips(ctx, self.settings.lpips_weights, "sam-opt's automatic invertibility map "
                                  "(or error_metric=mse, or a label map as mask_path)")
            error = lpips(lpips_input(rec), lpips_input(target), spatial=True)
        else:
            error = (rec - target).square().mean(1, keepdim=True)
        regions = self.settings.regions
        return F.adaptive_avg_pool2d(error, (regions, regions))

    # -- rendering ----------------------------------------------------------------------------
    def _stage_space(self, ctx: InversionContext) -> str | None:
        """The space whose probe the running stage optimises (None: the main stage)."""
        G = ctx.G
        if not self._measures_map(G) or ctx.stage_index >= len(self.spaces(G)):
            return None
        return self.spaces(G)[ctx.stage_index]

    def _probe_parts(self, params: Params, space: str) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(w+, residuals by block) of ``space``'s invertibility probe."""
        residuals = {} if space == WPLUS else {int(space): params[_probe_residual(int(space))]}
        return params[_probe_latent(space)], residuals

    def _main_parts(self, params: Params) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """(w+, residuals by block, masks by block) of the main stage (and of a finished result)."""
        blocks = sorted(int(k.split(".")[1]) for k in params if k.startswith("residual."))
        return params[LATENT], {b: params[_residual(b)] for b in blocks}, {b: params[_mask(b)] for b in blocks}

    def _probe_inputs(self, params: Params, space: str) -> SynthesisInputs:
        latent, residuals = self._probe_parts(params, space)
        return SynthesisInputs(ws=latent, feature_residuals=residuals or None)

    def inputs(self, ctx: InversionContext, params: Params) -> SynthesisInputs:
        space = self._stage_space(ctx)
        return self.render_inputs(ctx.G, params) if space is None else self._probe_inputs(params, space)

    def render_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        latent, residuals, masks = self._main_parts(params)
        residuals = {b: masks[b] * r for b, r in residuals.items()}
        return SynthesisInputs(ws=latent, feature_residuals=residuals or None)

    def regulariser(self, ctx: InversionContext, params: Params, inputs: SynthesisInputs) -> torch.Tensor | None:
        G, s = ctx.G, self.settings
        space = self._stage_space(ctx)
        latent, residuals = self._probe_parts(params, space) if space is not None else self._main_parts(params)[:2]
        total = latent.new_zeros(latent.shape[0])
        if s.lambda_mvg:
            prior = cached_statistic(G, LeakyGaussianPrior, lambda: LeakyGaussianPrior(G))
            total = total + s.lambda_mvg * prior(latent)
        if s.lambda_delta:
            total = total + s.lambda_delta * (latent[:, 1:] - latent[:, :1]).norm(dim=2).sum(1)
        if s.lambda_f:
            for r in residuals.values():
                total = total + s.lambda_f * r.square().flatten(1).mean(1)
        return total

    # -- editing --------------------------------------------------------------------------------
    @torch.no_grad()
    def edit_inputs(self, G: StyleGAN2Generator, params: Params, direction: torch.Tensor,
                    alpha: float, layers: Sequence[int] | None = None) -> SynthesisInputs:
        """SAM's ``edit_image``: move w+, then at each feature block keep the unedited features inside
        the block's mask (``x * (1 - m) + f * m``), expressed as feature residuals."""
        edited = super().edit_inputs(G, params, direction, alpha, layers)
        _, residuals, masks = self._main_parts(params)
        if not residuals:
            return edited
        original = self.render_inputs(G, params)
        blocks = sorted(residuals)
        # The features entering each block's ToRGB, after that block's residual.
        kept = {b: G.block_features(original.ws, b, feature_residuals=original.feature_residuals).features
                for b in blocks}
        replaced: dict[int, torch.Tensor] = {}
        for b in blocks:
            moved = G.block_features(edited.ws, b, feature_residuals=replaced).features
            replaced[b] = masks[b] * (kept[b] - moved)
        edited.feature_residuals = replaced
        return edited
