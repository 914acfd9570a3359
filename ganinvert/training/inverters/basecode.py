"""``train-inverter fz-encoder``: F/Z+'s base-code encoder, trained on generated pictures only.

Katsumata et al. (WACV 2024) reuse BDInvert's encoder (Kang et al., ICCV 2021,
``BDInvert_Release/BDInvert/train_basecode_encoder.py``): sample codes, render the images, and
train a CNN to produce the feature map ("base code") at one block from which the rest of the
generator, ``G_{>b}``, reproduces the image. Each step here draws a fresh batch of samples
(``TrainingData.generated``), shifts a fraction of them (rotation, zoom, translation; the OOD
suite's shifts, see :mod:`.shifts`) and minimises

    image_weight * MSE(G_{>b}(E(x), c), y) (+ lpips_weight * LPIPS(G_{>b}(E(x), c), y))
    + feature_weight * MSE(E(x), f) / Var(f)

with ``f = G.block_features(ws, block)`` (warped with the picture), ``G_{>b}`` entered the way
``fz+`` enters it (``FeatureEntry(block, F)``, skip image restarted, the sample's noise), and the
detail codes ``c`` of the layers after the block chosen by ``detail_codes``:

* ``"mean"`` (default): ``w_avg`` at every layer, the detail codes F/W+ starts from
  (BDInvert ``invert.py``: ``detailcode_starting = w_avg``), and ``y = x``, the picture itself.
  E learns to invert the generator's tail at the codes inversion starts from, so its prediction
  alone already reproduces the picture; measured on ../shared celeba_hq faces (never used in
  training) this gives 26.9 dB at the first step against 16 dB for ``"sample"``
  (``bench/sam_fz.py``, MODEL_CARD.md).
* ``"sample"``: the sample's own ws, and ``y = G_{>b}(f)`` (BDInvert's training renders with the
  sampled codes); the prediction then only matches the picture under those codes, which
  inversion does not know.

``feature_weight`` regresses the generator's own activation (issue #8's target f); it is off by
default because it pulls E towards features that reproduce the picture only with the sample's
codes. BDInvert's ``train_basecode_encoder.py`` uses the image terms only (MSE + 10 x LPIPS-VGG,
Adam ``--initial_lr 1e-3``, StepLR 2000 / 0.1, batch 16, 10 000 iterations, truncation psi 0.7 on
the first 8 layers). Deviations: LPIPS-AlexNet with weight 0.1, no LR steps, truncation 1, the
shifts, and the ``"mean"`` detail codes.

Example:
    ganinvert train-inverter fz-encoder --out runs/fz --steps 3000 --batch 16 --threads 1 \\
        --lpips-weights lpips_alex.pth       # the bundled encoder's run (MODEL_CARD.md)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import GanInvertError
from ...tasks.geometry import affine_grid, affine_shift
from ...models.basecode_encoder import BaseCodeEncoder, save_basecode_encoder
from ...models.stylegan2 import FeatureEntry
from ...settings import typed_fields
from ...inversion.methods.feature import BDINVERT_FEATURE_BLOCK
from .loop import InverterTrainer, register_trainer
from .shifts import ShiftSettings


#: Detail codes that render the prediction in training (see the module docstring).
DETAIL_CODES = ("mean", "sample")


@torch.no_grad()
def shift_pairs(shifts: list[dict[str, Any] | None], image: torch.Tensor, rendered: torch.Tensor | None = None,
                features: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Warp each picture, and its rendering and base code when given, by the same shift (None: left alone).

    The shift is defined in normalised coordinates, so one transform moves the image and the
    16x16 feature map together (convolutions are close to equivariant, so the warped code renders
    close to the warped picture). Returns the warped ``image``, ``rendered`` and ``features`` (None
    where not given) and, with ``features``, a (N, 1, r, r) mask of the feature positions whose
    target is known: a black border has no feature target, and only the image terms train the code
    there.
    """
    image = image.clone()
    rendered = None if rendered is None else rendered.clone()
    features = None if features is None else features.clone()
    mask = None if features is None else torch.ones_like(features[:, :1])
    for i, shift in enumerate(shifts):
        if shift is None:
            continue
        image[i] = affine_shift(image[i:i + 1], **shift)[0]
        if rendered is not None:
            rendered[i] = affine_shift(rendered[i:i + 1], **shift)[0]
        if features is None:
            continue
        geometry = {k: v for k, v in shift.items() if k != "border"}
        grid = affine_grid(features[i:i + 1].shape, dtype=features.dtype, device=features.device, **geometry)
        padding = "reflection" if shift["border"] == "reflect" else "zeros"
        features[i] = F.grid_sample(features[i:i + 1], grid, padding_mode=padding, align_corners=False)[0]
        if shift["border"] != "reflect":
            mask[i] = F.grid_sample(mask[i:i + 1], grid, padding_mode="zeros", align_corners=False)[0]
    return image, rendered, features, mask


@dataclass
class BaseCodeSettings(ShiftSettings):
    """Attributes (and the shift ranges of :class:`~.shifts.ShiftSettings`, the OOD suite's
    rotations, zooms and translations; ``shifted_fraction=0`` trains on aligned samples only):
        block: base-code block (2 = 16x16, ``fz+``/``fw+``'s default ``feature_block``).
        base_width: encoder channels at the input side.
        lr: Adam learning rate (``train_basecode_encoder.py --initial_lr 1e-3``).
        detail_codes: codes of the layers after the block in training, "mean" or "sample" (see
            the module docstring).
        feature_weight, image_weight, lpips_weight: loss weights (see the module docstring).
    """

    block: int = BDINVERT_FEATURE_BLOCK
    base_width: int = 32
    lr: float = 1e-3
    detail_codes: str = "mean"
    feature_weight: float = 0.0
    image_weight: float = 1.0
    lpips_weight: float = 0.1

    def __post_init__(self) -> None:
        typed_fields(self)  # field types, lr > 0, the *_weight >= 0 (see ganinvert.settings)
        if self.base_width < 1:
            raise GanInvertError(f"fz-encoder base_width must be >= 1, got {self.base_width}")
        if self.detail_codes not in DETAIL_CODES:
            raise GanInvertError(f"fz-encoder detail_codes must be one of {', '.join(DETAIL_CODES)}, "
                                 f"got {self.detail_codes!r}")
        if not (self.feature_weight or self.image_weight or self.lpips_weight):
            raise GanInvertError("fz-encoder needs at least one of feature_weight, image_weight, lpips_weight > 0")
        self.shifts  # validates the shift ranges


@register_trainer
class BaseCodeTrainer(InverterTrainer):
    """Trains :class:`~ganinvert.models.basecode_encoder.BaseCodeEncoder` for ``settings.block``."""

    kind = "fz-encoder"
    Settings = BaseCodeSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s, G = self.settings, self.G
        if not 0 <= s.block < G.num_blocks - 1:
            raise GanInvertError(f"fz-encoder block must be in [0, {G.num_blocks - 2}] (below the output block), "
                                 f"got {s.block}")
        # torch's default initialisation, seeded from the run's generator; fork_rng leaves the global
        # RNG as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=self.data.rng)))
            self.encoder = BaseCodeEncoder.for_generator(G, s.block, s.base_width).to(G.w_avg.device)
        self.modules = {"encoder": self.encoder}
        self.optimizers = {"encoder": torch.optim.Adam(self.encoder.parameters(), lr=s.lr, betas=(0.9, 0.99))}

    def train_step(self, step: int) -> dict[str, float]:
        s, G = self.settings, self.G
        batch = self.data.generated(self.config.batch)
        with torch.no_grad():
            # The generator's own activation is needed only to regress it or to render with the sample's codes.
            features = None
            if s.feature_weight or s.detail_codes == "sample":
                features = G.block_features(batch.ws, s.block, batch.noise).features
            if s.detail_codes == "mean":
                detail_ws, rendered = G.broadcast(G.w_avg[None]).expand_as(batch.ws), None
            else:
                detail_ws = batch.ws
                rendered = G.synthesis(batch.ws, batch.noise, feature_entry=FeatureEntry(s.block, features))
        shifts = [s.shifts.draw(self.data.rng) for _ in range(len(batch.image))]
        image, rendered, shifted_features, mask = shift_pairs(shifts, batch.image, rendered, features)
        target_image = image if rendered is None else rendered
        predicted = self.encoder(image)
        loss, stats = predicted.new_zeros(()), {}
        if s.feature_weight:
            # MSE over the positions with a target, relative to the batch's feature variance, so the
            # weight does not depend on the block's scale.
            variance = features.var().clamp_min(1e-12)
            squared = (predicted - shifted_features).square() * mask
            feature_loss = squared.mean() / mask.mean().clamp_min(1e-12) / variance
            loss = loss + s.feature_weight * feature_loss
            stats["feature_nmse"] = float(feature_loss.detach())
        if s.image_weight or (s.lpips_weight and self.lpips is not None):
            reconstruction = G.synthesis(detail_ws, batch.noise, feature_entry=FeatureEntry(s.block, predicted))
            image_loss = F.mse_loss(reconstruction, target_image)
            loss = loss + s.image_weight * image_loss
            stats["image_mse"] = float(image_loss.detach())
            if s.lpips_weight and self.lpips is not None:
                perceptual = self.lpips(reconstruction, target_image).mean()
                loss = loss + s.lpips_weight * perceptual
                stats["lpips"] = float(perceptual.detach())
        optimizer = self.optimizers["encoder"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats["loss"] = float(loss.detach())
        return stats

    def export(self, path: Path, meta: dict[str, Any]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_basecode_encoder(self.encoder, path, self.G, meta)
