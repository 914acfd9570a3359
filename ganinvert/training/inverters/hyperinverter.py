"""Training of HyperInverter's two phases (Dinh et al., CVPR 2022) in the shared inverter loop.

* ``hyperinverter-e1`` (phase I): the W encoder E1. Loss per step, on generated samples
  ``x = G(w)``: ``lambda_mse * MSE(G(E1(x)), x) + lambda_lpips * LPIPS(G(E1(x)), x) +
  lambda_latent * MSE(E1(x), w)``; the latent term is possible only on generated pairs, so real
  images (``--images``; half of each batch) get the two image terms only. The reference trains E1
  with pSp/e4e (README "Phase I"), whose image losses are L2 (1.0) + LPIPS (0.8).
* ``hyperinverter`` (phase II): E1 (setting ``e1_path``, "default" = the bundled one) frozen, E2 and
  the hypernetworks trained with ``lambda_mse * MSE + lambda_lpips * LPIPS`` on the final
  reconstruction (reference ``sample_scripts/train_human_faces.sh``: ``hyper_l2_lambda 1.0``,
  ``hyper_lpips_lambda 0.8``).

Not used here, unlike the reference: the identity loss (``hyper_id_lambda 0.1``; needs a face
recognition network, which is not available) and the adversarial term (``hyper_adv_lambda 0.005``
from step 200 000 with the generator's pretrained discriminator; no trained discriminator ships
for the default generator, and a CPU run of a few thousand steps never reaches the step where the
reference switches it on).

The generator renders with its stored noise (the reference's ``noise_mode="const"``); the
targets are sampled with fresh random noise from the run's generator.

Learning rates: the reference uses Adam with 1e-4 (``encoder_learning_rate``) over 500 000
steps; the CPU runs here last a few thousand steps, so the defaults are raised (see the settings).

Example:
    ganinvert train-inverter hyperinverter-e1 --out runs/e1 --steps 2000 --lpips-weights lpips_alex.pth
    ganinvert train-inverter hyperinverter --out runs/hyper --steps 1500 --set e1_path=runs/e1/network.safetensors
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from ...errors import GanInvertError
from ...inversion.losses import lpips_input
from ...models.hyperinverter import (E1_KIND, KIND, HyperInverter, WEncoder, load_wencoder, save_hyperinverter,
                                     save_wencoder)
from ...models.stylegan2 import StyleGAN2Generator
from ...settings import typed_fields
from .loop import InverterTrainConfig, InverterTrainer, TrainingData, register_trainer


def _typed_with_sizes(settings: Any, *sizes: str) -> None:
    """Convert ``settings`` to their field types (lr > 0, loss weights >= 0: see
    :mod:`ganinvert.settings`) and check that the network sizes ``sizes`` are >= 1."""
    typed_fields(settings)
    for name in sizes:
        if getattr(settings, name) < 1:
            raise GanInvertError(f"{name} must be >= 1, got {getattr(settings, name)}")


@dataclass
class E1Settings:
    """Attributes:
        lr: Adam learning rate (reference 1e-4 for 500k steps; 5e-4 for a short CPU run).
        lambda_mse, lambda_lpips: image loss weights (pSp's ``l2_lambda 1.0``, ``lpips_lambda 0.8``).
        lambda_latent: weight of the squared w error on generated pairs (ours; the issue asks for
            a latent loss, the reference's pSp-trained E1 has none).
        base_width, max_width, hidden: E1 size (see :class:`~ganinvert.models.hyperinverter.WEncoder`).
    """

    lr: float = 5e-4
    lambda_mse: float = 1.0
    lambda_lpips: float = 0.8
    lambda_latent: float = 1.0
    base_width: int = 16
    max_width: int = 128
    hidden: int = 512

    def __post_init__(self) -> None:
        _typed_with_sizes(self, "base_width", "max_width", "hidden")


@register_trainer
class E1Trainer(InverterTrainer):
    """Phase I: the W encoder."""

    kind = E1_KIND
    Settings = E1Settings

    def __init__(self, G: StyleGAN2Generator, config: InverterTrainConfig, data: TrainingData,
                 lpips: torch.nn.Module | None) -> None:
        super().__init__(G, config, data, lpips)
        s = self.settings
        self.e1 = _seeded(lambda: WEncoder.for_generator(G, base_width=s.base_width, max_width=s.max_width,
                                                         hidden=s.hidden), data.rng)
        self.modules = {"e1": self.e1}
        self.optimizers = {"e1": torch.optim.Adam(self.e1.parameters(), lr=s.lr)}

    def train_step(self, step: int) -> dict[str, float]:
        s, G = self.settings, self.G
        n_real = self.config.batch // 2 if self.data.folder is not None else 0
        batch = self.data.generated(self.config.batch - n_real)
        real = self.data.real(n_real) if n_real else None
        target = batch.image if real is None else torch.cat([batch.image, real])
        w = self.e1(target)
        x = G.synthesis(G.broadcast(w))
        stats = _image_losses(x, target, s.lambda_mse, s.lambda_lpips, self.lpips)
        latent = (w[:batch.w.shape[0]] - batch.w).square().mean()
        loss = stats.pop("loss") + s.lambda_latent * latent
        self.optimizers["e1"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["e1"].step()
        return {"loss": float(loss.detach()), "latent": float(latent.detach()), **{k: float(v) for k, v in stats.items()}}

    def export(self, path: Path, meta: dict[str, Any]) -> Path:
        return save_wencoder(self.e1, path, self.G, meta)


@dataclass
class HyperSettings:
    """Attributes:
        e1_path: the phase-I encoder ("default": the one bundled for the default generator).
        lr: Adam learning rate of E2 and the hypernetworks (reference 1e-4 for 500k steps;
            5e-4 for a short CPU run: 3e-4 and 1e-3 gave the same held-out PSNR gain, +1.3 dB
            over E1, after 40 steps of batch 4 on the default generator).
        lambda_mse, lambda_lpips: ``hyper_l2_lambda 1.0``, ``hyper_lpips_lambda 0.8``
            (sample_scripts/train_human_faces.sh).
        hidden_dim: the paper's D (reference 128-256 for 512 channels; 16 at 64 px).
        feature_dim, base_width, max_width: E2 size.
        include_torgb: give the 1x1 ToRGB convs hypernetworks too (reference ``conv_without_bias``;
            off by default, see :mod:`ganinvert.models.hyperinverter`).
    """

    e1_path: str = "default"
    lr: float = 5e-4
    lambda_mse: float = 1.0
    lambda_lpips: float = 0.8
    hidden_dim: int = 16
    feature_dim: int = 256
    base_width: int = 16
    max_width: int = 128
    include_torgb: bool = False

    def __post_init__(self) -> None:
        _typed_with_sizes(self, "hidden_dim", "feature_dim", "base_width", "max_width")


@register_trainer
class HyperTrainer(InverterTrainer):
    """Phase II: E2 and the hypernetworks, E1 frozen."""

    kind = KIND
    Settings = HyperSettings

    def __init__(self, G: StyleGAN2Generator, config: InverterTrainConfig, data: TrainingData,
                 lpips: torch.nn.Module | None) -> None:
        super().__init__(G, config, data, lpips)
        s = self.settings
        e1 = load_wencoder(s.e1_path, G)
        self.net = _seeded(lambda: HyperInverter.for_generator(
            G, e1, include_torgb=s.include_torgb, base_width=s.base_width, max_width=s.max_width,
            feature_dim=s.feature_dim, hidden_dim=s.hidden_dim), data.rng)
        trainable = [p for name, p in self.net.named_parameters() if not name.startswith("e1.")]
        self.modules = {"hyperinverter": self.net}
        self.optimizers = {"hyperinverter": torch.optim.Adam(trainable, lr=s.lr)}

    def train_step(self, step: int) -> dict[str, float]:
        s, G = self.settings, self.G
        n_real = self.config.batch // 2 if self.data.folder is not None else 0
        target = self.data.generated(self.config.batch - n_real).image
        if n_real:
            target = torch.cat([target, self.data.real(n_real)])
        w, deltas = self.net(target, G)
        x = G.synthesis(G.broadcast(w), weight_deltas=deltas)
        stats = _image_losses(x, target, s.lambda_mse, s.lambda_lpips, self.lpips)
        loss = stats.pop("loss")
        self.optimizers["hyperinverter"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["hyperinverter"].step()
        return {"loss": float(loss.detach()), **{k: float(v) for k, v in stats.items()}}

    def export(self, path: Path, meta: dict[str, Any]) -> Path:
        return save_hyperinverter(self.net, path, self.G, {**meta, "e1_path": str(self.settings.e1_path)})


def _image_losses(x: torch.Tensor, target: torch.Tensor, lambda_mse: float, lambda_lpips: float,
                  lpips: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    """Batch-mean ``lambda_mse * MSE + lambda_lpips * LPIPS`` (LPIPS skipped without a module)."""
    mse = (x - target).square().mean()
    out = {"loss": lambda_mse * mse, "mse": mse.detach()}
    if lpips is not None and lambda_lpips:
        distance = lpips(lpips_input(x), lpips_input(target)).mean()
        out["loss"] = out["loss"] + lambda_lpips * distance
        out["lpips"] = distance.detach()
    return out


_Module = TypeVar("_Module", bound=torch.nn.Module)


def _seeded(build: Callable[[], _Module], rng: torch.Generator) -> _Module:
    """Build a module with its random initialisation drawn from ``rng`` (never the global RNG).

    torch's initialisers draw from the default generator; it is seeded from ``rng`` for the
    construction and restored afterwards, so the run stays a function of its seed.
    """
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=rng))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
