"""``train-inverter fz-encoder``: F/Z+'s base-code encoder, trained on generated pairs only.

Katsumata et al. (WACV 2024) reuse BDInvert's encoder (Kang et al., ICCV 2021,
``BDInvert_Release/BDInvert/train_basecode_encoder.py``): sample codes, render the images, and
regress the generator's activation at the base-code block from the image. Each step here draws a
fresh batch of samples (``TrainingData.generated``) and minimises

    feature_weight * MSE(E(x), f) / Var(f) + image_weight * MSE(G_{>b}(E(x)), G_{>b}(f))
    (+ lpips_weight * LPIPS(G_{>b}(E(x)), G_{>b}(f)) when LPIPS weights are given)

with ``f = G.block_features(ws, block)`` and ``G_{>b}`` the rest of the generator with the sample's
own ws and noise, entered the way ``fz+`` enters it (``FeatureEntry(block, F)``, skip image
restarted). BDInvert's ``train_basecode_encoder.py`` uses the image terms only (MSE + 10 x
LPIPS-VGG of the reconstruction through the generator with the sample's own codes; Adam
``--initial_lr 1e-3``, StepLR 2000 / 0.1, batch 16, 10 000 iterations); the feature regression is
added here (issue #8: target f) as a direct signal at every position of F, and the image terms
weight the feature errors by what they change in the image. Deviations:
LPIPS-AlexNet with weight 0.1, no LR steps, truncation 1 (BDInvert samples with psi 0.7 on the
first 8 layers).

Example:
    ganinvert train-inverter fz-encoder --out runs/fz --steps 500 --batch 8 --threads 1 \\
        --lpips-weights lpips_alex.pth       # the bundled encoder's run
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import GanInvertError
from ...models.basecode_encoder import BaseCodeEncoder, save_basecode_encoder
from ...models.stylegan2 import FeatureEntry
from ...inversion.methods.feature import BDINVERT_FEATURE_BLOCK
from .loop import InverterTrainer, register_trainer


@dataclass
class BaseCodeSettings:
    """Attributes:
        block: base-code block (2 = 16x16, ``fz+``/``fw+``'s default ``feature_block``).
        base_width: encoder channels at the input side.
        lr: Adam learning rate (``train_basecode_encoder.py --initial_lr 1e-3``).
        feature_weight, image_weight, lpips_weight: loss weights (see the module docstring).
    """

    block: int = BDINVERT_FEATURE_BLOCK
    base_width: int = 32
    lr: float = 1e-3
    feature_weight: float = 1.0
    image_weight: float = 1.0
    lpips_weight: float = 0.1

    def __post_init__(self) -> None:
        for name in ("lr", "feature_weight", "image_weight", "lpips_weight"):
            value = float(getattr(self, name))
            if not value >= 0 or value == float("inf"):
                raise GanInvertError(f"fz-encoder setting {name} must be a finite number >= 0, got {value}")
        if self.lr <= 0:
            raise GanInvertError(f"fz-encoder lr must be > 0, got {self.lr}")


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
            target = G.block_features(batch.ws, s.block, batch.noise).features
            target_image = G.synthesis(batch.ws, batch.noise, feature_entry=FeatureEntry(s.block, target))
        predicted = self.encoder(batch.image)
        # MSE relative to the batch's feature variance, so the weights do not depend on the block's scale.
        feature_loss = F.mse_loss(predicted, target) / target.var().clamp_min(1e-12)
        loss = s.feature_weight * feature_loss
        stats = {"feature_nmse": float(feature_loss.detach())}
        if s.image_weight or (s.lpips_weight and self.lpips is not None):
            image = G.synthesis(batch.ws, batch.noise, feature_entry=FeatureEntry(s.block, predicted))
            image_loss = F.mse_loss(image, target_image)
            loss = loss + s.image_weight * image_loss
            stats["image_mse"] = float(image_loss.detach())
            if s.lpips_weight and self.lpips is not None:
                perceptual = self.lpips(image, target_image).mean()
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
