"""Latent-perturbation robustness (SPHInX, Subramanyam et al., ICML 2022, Fig. 1).

The w+ codes a result feeds the generator are perturbed with additive Gaussian noise at a given
signal-to-noise ratio, ``sigma = sqrt(mean(ws**2) / 10**(snr_db / 10))`` per image, and the
renders are compared with the unperturbed reconstruction (LPIPS, PSNR). Perturbing the w+ that
reaches the generator (rather than each method's own variables) puts every method on the same
footing; all other inputs (noise maps, content, features, weight residuals) stay as they are.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import torch

from ..checks import check_finite, check_seed
from ..inversion.result import InversionResult
from ..io import atomic_write_bytes
from ..metrics import psnr, ssim
from ..models.stylegan2 import StyleGAN2Generator


def perturbation_sigma(ws: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Per image, the std of the Gaussian noise that perturbs ``ws`` (N, ...) at ``snr_db``:
    ``sqrt(mean(ws**2) / 10**(snr_db / 10))``."""
    power = ws.square().reshape(ws.shape[0], -1).mean(1)
    return (power / 10 ** (snr_db / 10)).sqrt()


@torch.no_grad()
def latent_robustness(G: StyleGAN2Generator, result: InversionResult, snr_db: Sequence[float], *,
                      trials: int = 8, seed: int = 0, lpips: torch.nn.Module | None = None) -> list[dict]:
    """One row per (image, SNR level, trial) with ``psnr``, ``ssim`` and (if given) ``lpips`` to the clean render."""
    inputs = result.inputs(G)
    clean = check_finite(inputs.render(G), f"the render of this {result.method} result")
    ws = inputs.ws
    g = torch.Generator().manual_seed(check_seed(seed))
    rows = []
    for level in snr_db:
        sigma = perturbation_sigma(ws, level)
        for trial in range(trials):
            noise = torch.randn(ws.shape, generator=g).to(ws)
            inputs.ws = ws + sigma[:, None, None] * noise
            noisy = check_finite(inputs.render(G), f"the render at {level:g} dB SNR")
            scores = {"psnr": psnr(noisy, clean), "ssim": ssim(noisy, clean)}
            if lpips is not None:
                scores["lpips"] = lpips(noisy, clean)
            for i in range(ws.shape[0]):
                rows.append({"image": i, "snr_db": level, "trial": trial,
                             **{k: float(v[i]) for k, v in scores.items()}})
    inputs.ws = ws
    return rows


def write_robustness_outputs(rows: list[dict], out_dir: Path) -> None:
    """``robustness.csv`` (all rows) and ``robustness.png`` (mean ± std per level)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..inversion.report import save_figure

    out_dir = Path(out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out_dir / "robustness.csv", buf.getvalue().encode())
    metrics = [k for k in ("psnr", "ssim", "lpips") if k in rows[0]]
    levels = sorted({r["snr_db"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.2), dpi=100, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = [torch.tensor([r[metric] for r in rows if r["snr_db"] == lv]) for lv in levels]
        means = [float(v.mean()) for v in values]
        stds = [float(v.std()) if len(v) > 1 else 0.0 for v in values]
        ax.errorbar(levels, means, yerr=stds, marker="o", capsize=3)
        ax.set_xlabel("SNR of w+ perturbation (dB)")
        ax.set_ylabel(f"{metric.upper()} to clean render")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out_dir / "robustness.png")
    plt.close(fig)
