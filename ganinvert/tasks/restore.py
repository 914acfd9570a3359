"""Restoration with any inversion method: invert a measurement y = A(x) + noise, render G(theta).

The engine minimises ``L(A(G(theta)), y)``; the restoration is ``G(theta)`` itself. Two modes:

* simulated: a clean image x is given, ``y = op(x)`` is drawn from the operator's seed, and the
  restoration is scored against x (PSNR, SSIM, MS-SSIM, LPIPS) next to the degraded input
  (``psnr_measurement``);
* measured: y itself is given (a noisy, masked or low-resolution image) and no clean metrics exist.

For super-resolution the low-resolution measurement is compared with the clean image after
**bicubic** upsampling to full size (``MEASUREMENT_UPSAMPLING``); for inpainting the measurement
image shows the missing pixels black; compressed-sensing measurements are not images and have
no ``psnr_measurement``.

Example::

    op = make_operator("denoise", sigma=0.3, seed=0)
    out = restore(G, op, clean=x, method="sphinx", lpips=lpips)
    restoration_metrics(out, lpips)[0]["psnr"]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import GanInvertError
from ..inversion.report import image_metrics
from ..inversion.result import InversionResult
from ..io import load_image
from ..models.stylegan2 import StyleGAN2Generator
from .operators import as_operator

MEASUREMENT_UPSAMPLING = "bicubic"


@dataclass
class Restoration:
    """What :func:`restore` returns.

    Attributes:
        result: the inversion result (every optimised tensor).
        restoration: (N, 3, H, W) renders of the result, in [-1, 1] (unclamped).
        measurement: y, (N, ...) as the inversion saw it.
        measurement_image: y as an image at its own size (None for compressed sensing).
        clean: the clean images when known (simulated mode), else None.
    """

    result: InversionResult
    restoration: torch.Tensor
    measurement: torch.Tensor
    measurement_image: torch.Tensor | None
    clean: torch.Tensor | None

    def select(self, i: int) -> "Restoration":
        """The restoration of image ``i``."""
        def one(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[i:i + 1]
        return Restoration(self.result.select(i), self.restoration[i:i + 1], self.measurement[i:i + 1],
                           one(self.measurement_image), one(self.clean))


def restore(G: StyleGAN2Generator, operator: Any, *, clean: torch.Tensor | None = None,
            measurement: torch.Tensor | None = None, method: Any = "sphinx", preset: str | None = None,
            settings: dict[str, Any] | None = None, seed: int | Sequence[int] = 0,
            lpips: torch.nn.Module | None = None, progress: bool = True, **engine_options: Any) -> Restoration:
    """Restore images from their measurements through ``G``.

    Args:
        G: the generator.
        operator: a :class:`~ganinvert.tasks.operators.ForwardOperator` (``make_operator``) or any
            object with an ``A`` method.
        clean: (N, 3, H, W) clean images; with no ``measurement`` they are measured with
            ``operator(clean)`` (noise from the operator's seed).
        measurement: y, when it was measured rather than simulated.
        method, preset, settings, seed, lpips, progress: passed to ``invert``.
        engine_options: further ``invert`` options (checkpoint_path, checkpoint_every, resume, callback).

    Returns:
        A :class:`Restoration`.
    """
    from ..inversion import invert, make_method
    from ..inversion.methods import Method

    op = as_operator(operator)
    m = method if isinstance(method, Method) else make_method(method, preset, settings)
    if clean is None and measurement is None:
        raise GanInvertError("restore needs a clean image to measure or a measurement")
    device = G.w_avg.device
    if clean is not None:
        clean = clean.to(device)
    with torch.no_grad():
        y = op(clean) if measurement is None else measurement.to(device)
    min_side = getattr(lpips, "min_side", 0)
    if m.settings.lambda_lpips and y.ndim == 4 and y.shape[1] == 3 and min(y.shape[-2:]) < min_side:
        raise GanInvertError(f"the measurement is {y.shape[-2]}x{y.shape[-1]} px but LPIPS needs {min_side} px; "
                             "drop the LPIPS term (--no-lpips or --set lambda_lpips=0) or use a smaller --factor")
    result = invert(G, clean, m, preset=preset, operator=op.A, measurement=y, seed=seed,
                    lpips=lpips, progress=progress, **engine_options)
    restoration = result.render(G)
    with torch.no_grad():
        shown = op.measurement_as_image(y)
    return Restoration(result, restoration, y, shown, clean)


def measurement_at_full_size(image: torch.Tensor | None, size: int) -> torch.Tensor | None:
    """A measurement image brought to ``size`` px (bicubic, clamped to [-1, 1]) for comparison."""
    if image is None or image.shape[1] != 3:
        return None
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image, size=(size, size), mode=MEASUREMENT_UPSAMPLING, align_corners=False).clamp(-1, 1)


def restoration_metrics(out: Restoration, lpips: torch.nn.Module | None = None) -> list[dict[str, Any]]:
    """Per image: psnr/ssim/ms_ssim (+ lpips) of the restoration vs the clean image and
    ``psnr_measurement`` of the (upsampled) measurement vs the clean image; empty dicts without
    a clean image."""
    n = out.restoration.shape[0]
    if out.clean is None:
        return [{} for _ in range(n)]
    rows = image_metrics(out.restoration, out.clean, lpips)
    full = measurement_at_full_size(out.measurement_image, out.clean.shape[-1])
    if full is not None:
        baseline = image_metrics(full, out.clean, None)
        upsampled = full.shape[-1] != out.measurement_image.shape[-1]
        for row, base in zip(rows, baseline):
            row["psnr_measurement"] = base["psnr"]
            row["ssim_measurement"] = base["ssim"]
            if upsampled:
                row["measurement_upsampling"] = MEASUREMENT_UPSAMPLING
    return rows


def load_measurement(path: str | Path, operator: Any, resolution: int, fit: str = "crop") -> torch.Tensor:
    """Read a measured image as y for an operator whose measurements are images.

    The image is brought to the operator's ``measurement_size(resolution)`` px with the resize
    policy ``fit`` (``resolution / factor`` for super-resolution) and turned into y by its
    ``measurement_from_image`` (inpainting applies the mask again, so whatever the holes hold is
    ignored). Operators whose measurements are not images (compressed sensing) are an error.
    """
    op = as_operator(operator)
    return op.measurement_from_image(load_image(path, op.measurement_size(resolution), fit))


def write_restoration_outputs(out_dir: Path, out: Restoration, lpips: torch.nn.Module | None,
                              extra: dict[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write one image's folder as a unit (``out_dir`` must not exist unless ``overwrite``); ``out``
    holds that one image (``Restoration.select``).

    Files: ``measurement.png`` (where y is an image, at its own size), ``restoration.png``,
    ``comparison.png`` (clean | measurement | restoration, as available), ``metrics.json``,
    ``curve.png`` and ``result.safetensors`` + ``result.json``. Returns the metrics.
    """
    from ..inversion.report import write_image_folder

    out_dir = Path(out_dir)
    metrics: dict[str, Any] = restoration_metrics(out, lpips)[0]
    result = out.result
    metrics.update(steps=len(result.history.get("loss", [])), seconds=round(result.seconds, 3), method=result.method,
                   preset=result.preset, seed=result.seeds[0], **(extra or {}))
    strip = []
    if out.clean is not None:
        strip.append(("clean", out.clean))
    if out.measurement_image is not None:
        strip.append(("measurement" + (f" {metrics['psnr_measurement']:.2f} dB" if "psnr_measurement" in metrics
                                       else ""), out.measurement_image))
    strip.append((f"{result.method}" + (f" {metrics['psnr']:.2f} dB" if "psnr" in metrics else ""), out.restoration))
    images = {"clean": out.clean, "measurement": out.measurement_image, "restoration": out.restoration}
    write_image_folder(out_dir, result, metrics, images={k: v for k, v in images.items() if v is not None},
                       strip=strip, curve_title=f"{result.method} ({out_dir.name})", overwrite=overwrite)
    return metrics
