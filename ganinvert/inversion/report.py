"""The one writer of per-image output folders (:func:`write_image_folder`, used by ``invert``,
``restore`` and ``discover``), what ``ganinvert invert`` puts in it, and the plots every command shares.

Per image, ``DIR/<stem>/``: ``input.png`` (the image as used), ``reconstruction.png``,
``comparison.png`` (side by side), ``metrics.json`` (psnr, ssim, ms_ssim, lpips, steps, seconds),
``curve.png`` (loss and PSNR per step) and ``result.safetensors`` + ``result.json``. Every folder
is built beside its place and renamed into it (:func:`ganinvert.outputs.staged_folder`), so it
appears complete or not at all.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..io import atomic_write_bytes, atomic_write_json, image_strip, save_image, save_pil
from ..metrics import score
from ..outputs import staged_folder
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


def write_image_folder(folder: Path, result: InversionResult, record: dict[str, Any], *,
                       images: Mapping[str, torch.Tensor] | None = None, strip: Sequence[tuple[str, torch.Tensor]] = (),
                       strip_name: str = "comparison.png", record_name: str = "metrics.json",
                       curve_title: str = "", extra: Callable[[Path], Any] | None = None,
                       overwrite: bool = False) -> None:
    """Write one image's output folder as a unit.

    Files: ``<name>.png`` for each of ``images``, the labelled side-by-side ``strip`` (label,
    image) as ``strip_name``, ``curve.png`` (``result``'s history), whatever ``extra(folder)``
    writes, ``result.safetensors`` + ``result.json`` and, last, ``record`` as ``record_name``.
    ``folder`` must not exist unless ``overwrite``.
    """
    with staged_folder(folder, overwrite) as temp:
        for name, image in (images or {}).items():
            save_image(image, temp / f"{name}.png")
        if strip:
            save_pil(image_strip([image for _, image in strip], [label for label, _ in strip]), temp / strip_name)
        plot_curves(result.history, temp / "curve.png", title=curve_title)
        if extra is not None:
            extra(temp)
        result.save(temp / "result.safetensors")
        atomic_write_json(temp / record_name, record)


def write_inversion_outputs(out_dir: Path, target: torch.Tensor, result: InversionResult,
                            reconstruction: torch.Tensor, lpips: torch.nn.Module | None,
                            extra_metrics: dict[str, Any] | None = None,
                            extra_images: Sequence[tuple[str, torch.Tensor]] = (),
                            overwrite: bool = False) -> dict[str, Any]:
    """Write one image's folder (see the module docstring; ``out_dir`` must not exist unless
    ``overwrite``); returns its metrics."""
    metrics = image_metrics(reconstruction, target, lpips)[0]
    metrics.update(steps=len(result.history.get("loss", [])), seconds=round(result.seconds, 3),
                   method=result.method, preset=result.preset, seed=result.seeds[0])
    metrics.update(extra_metrics or {})
    strip = [("input", target), *extra_images, (f"{result.method} {metrics['psnr']:.2f} dB", reconstruction)]
    write_image_folder(Path(out_dir), result, metrics,
                       images={"input": target, "reconstruction": reconstruction, **dict(extra_images)},
                       strip=strip, curve_title=f"{result.method} ({Path(out_dir).name})", overwrite=overwrite)
    return metrics
