"""Reconstruction loss of the engine: ``lambda_mse * MSE + lambda_lpips * LPIPS``, per sample.

Per-sample losses are summed over the batch, so each image's gradients are independent of the
batch it is in (a batch of N equals N single runs).

LPIPS resize policy: images larger than 256 px are area-downsampled to 256 px before LPIPS
(as the StyleGAN2 projector does); smaller images are compared at their own size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LPIPS_MAX_SIZE = 256


def lpips_input(x: torch.Tensor) -> torch.Tensor:
    """Bring an image batch to at most 256 px for LPIPS (area averaging)."""
    h, w = x.shape[-2:]
    if max(h, w) <= LPIPS_MAX_SIZE:
        return x
    scale = LPIPS_MAX_SIZE / max(h, w)
    return F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="area")


@dataclass
class ReconstructionLoss:
    """Per-sample loss between a (measured) rendering and the measurement.

    Attributes:
        lambda_mse: weight of the mean squared error over all measured entries.
        lambda_lpips: weight of LPIPS; used only when the measurement is an image.
        lpips: an LPIPS module (``ganinvert.metrics.LPIPS``) or None when ``lambda_lpips`` is 0.
    """

    lambda_mse: float
    lambda_lpips: float
    lpips: torch.nn.Module | None = None

    def __call__(self, predicted: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """The (N,) per-sample loss."""
        n = predicted.shape[0]
        loss = self.lambda_mse * (predicted - measured).square().reshape(n, -1).mean(1)
        if self.lambda_lpips and predicted.ndim == 4 and predicted.shape[1] == 3:
            if self.lpips is None:
                raise RuntimeError("lambda_lpips > 0 needs an LPIPS module")
            loss = loss + self.lambda_lpips * self.lpips(lpips_input(predicted), lpips_input(measured))
        return loss
