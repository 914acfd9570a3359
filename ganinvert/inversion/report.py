"""What ``ganinvert invert`` writes for each image, and the plots every command shares.

Per image, ``DIR/<stem>/``: ``input.png`` (the image as used), ``reconstruction.png``,
``comparison.png`` (side by side), ``metrics.json`` (psnr, ssim, ms_ssim, lpips, steps, seconds),
``curve.png`` (loss and PSNR per step) and ``result.safetensors`` + ``result.json``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from ..io import atomic_write_bytes, atomic_write_json, image_strip, save_image, save_pil
from ..metrics import score
from .result import InversionResult


def plot_curves(history: dict[str, list[float]], path: Path, title: str = "") -> None:
    """Loss (log scale) and PSNR against step, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax_loss = plt.subplots(figsize=(6, 3.2), dpi=100)
    steps = range(1, len(history.get("loss", [])) + 1)
    ax_loss.plot(steps, history.get("loss", []), color="tab:blue", lw=1)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss", color="tab:blue")
    if history.get("loss") and min(history["loss"]) > 0:
        ax_loss.set_yscale("log")
    psnr = [p for p in history.get("psnr", []) if not math.isnan(p)]
    if psnr:
        ax_psnr = ax_loss.twinx()
        ax_psnr.plot(steps, history["psnr"], color="tab:orange", lw=1)
        ax_psnr.set_ylabel("PSNR (dB)", color="tab:orange")
    ax_loss.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def save_figure(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(path), buf.getvalue())


def image_metrics(reconstruction: torch.Tensor, target: torch.Tensor, lpips: torch.nn.Module | None) -> list[dict[str, float]]:
    """psnr/ssim/ms_ssim (+ lpips) per image, as plain floats."""
    with torch.no_grad():
        scores = score(reconstruction, target, lpips=lpips)
    return [{k: float(v[i]) for k, v in scores.items()} for i in range(target.shape[0])]


def write_inversion_outputs(out_dir: Path, target: torch.Tensor, result: InversionResult,
                            reconstruction: torch.Tensor, lpips: torch.nn.Module | None,
                            extra_metrics: dict[str, Any] | None = None,
                            extra_images: Sequence[tuple[str, torch.Tensor]] = ()) -> dict[str, Any]:
    """Write one image's folder (see the module docstring); returns its metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = image_metrics(reconstruction, target, lpips)[0]
    metrics.update(steps=len(result.history.get("loss", [])), seconds=round(result.seconds, 3),
                   method=result.method, preset=result.preset, seed=result.seeds[0])
    metrics.update(extra_metrics or {})
    save_image(target, out_dir / "input.png")
    save_image(reconstruction, out_dir / "reconstruction.png")
    for name, img in extra_images:
        save_image(img, out_dir / f"{name}.png")
    labels = ["input"] + [name for name, _ in extra_images] + [f"{result.method} {metrics['psnr']:.2f} dB"]
    save_pil(image_strip([target, *[img for _, img in extra_images], reconstruction], labels), out_dir / "comparison.png")
    plot_curves(result.history, out_dir / "curve.png", title=f"{result.method} ({out_dir.name})")
    result.save(out_dir / "result.safetensors")
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics
