"""Full-reference image quality: PSNR, SSIM, MS-SSIM (and LPIPS through :func:`score`).

Conventions shared by every function here:

* inputs are ``(N, C, H, W)`` float images in [-1, 1] (the generator's range); they are clamped
  to [-1, 1] (generator outputs are unclamped, the saved images are not) and mapped to [0, 1],
  so every metric uses a data range of 1.0;
* results are per image, shape ``(N,)``; non-finite inputs raise :class:`GanInvertError`.

SSIM uses the 11-px Gaussian window with sigma 1.5 and K = (0.01, 0.03) of Wang et al. 2004
(Sec. III-C), as ``pytorch_msssim`` does. MS-SSIM (Wang, Simoncelli & Bovik 2003) uses up to 5
scales with the weights of its Sec. 3.2. Small images get fewer scales, see
:func:`ms_ssim_scales`.

Example::

    >>> x = torch.zeros(2, 3, 64, 64)
    >>> psnr(x, x + 0.2)    # offset 0.2 in [-1, 1] = 0.1 in [0, 1] -> 20 dB
    tensor([20.0000, 20.0000])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytorch_msssim
import torch
import torch.nn.functional as F
# The public pytorch_msssim.ms_ssim asserts a 5-scale image size (side > 16 * (win - 1)) even
# when given fewer weights, so the per-scale loop below calls its per-scale kernel directly.
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

from ..errors import GanInvertError

if TYPE_CHECKING:
    from .lpips import LPIPS

#: SSIM window (Wang et al. 2004, Sec. III-C); images need at least this many pixels per side.
SSIM_WIN_SIZE = 11
SSIM_WIN_SIGMA = 1.5
#: MS-SSIM weights from finest to coarsest scale (Wang, Simoncelli & Bovik 2003, Sec. 3.2).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _to_unit_range(x: torch.Tensor, y: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate an image pair in [-1, 1] and return it clamped and mapped to [0, 1]."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise GanInvertError(f"{metric} expects two tensors")
    if x.shape != y.shape:
        raise GanInvertError(f"{metric} inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise GanInvertError(f"{metric} expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if not x.is_floating_point() or not y.is_floating_point():
        raise GanInvertError(f"{metric} expects float images in [-1, 1], got {x.dtype} and {y.dtype}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise GanInvertError(f"{metric} inputs contain NaN or infinite values")
    return (x.clamp(-1, 1) + 1) / 2, (y.clamp(-1, 1) + 1) / 2


def _check_window_fits(x: torch.Tensor, metric: str) -> None:
    if min(x.shape[-2:]) < SSIM_WIN_SIZE:
        raise GanInvertError(
            f"{metric} needs images of at least {SSIM_WIN_SIZE} px per side, got {tuple(x.shape[-2:])}")


def ms_ssim_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales used for an image of that size.

    The largest ``S <= 5`` with ``min(height, width) > (11 - 1) * 2 ** (S - 1)``: the coarsest
    scale stays wider than the 11-px window, the same margin ``pytorch_msssim`` asserts for 5
    scales. With fewer than 5 scales the weights of the ``S`` finest are renormalised to sum
    to 1. Hence 5 scales from 161 px, 4 at 128 px, 3 at 64 px, 2 at 32 px, 1 (plain SSIM) below 21 px.

    >>> [ms_ssim_scales(s, s) for s in (256, 128, 64, 32, 16)]
    [5, 4, 3, 2, 1]
    """
    side = min(height, width)
    if side < SSIM_WIN_SIZE:
        raise GanInvertError(f"MS-SSIM needs images of at least {SSIM_WIN_SIZE} px per side, got {side}")
    return max(s for s in range(1, len(MS_SSIM_WEIGHTS) + 1)
               if side > (SSIM_WIN_SIZE - 1) * 2 ** (s - 1))


def _psnr01(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse)  # data range 1; identical images give +inf


def _ssim01(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return pytorch_msssim.ssim(a, b, data_range=1.0, size_average=False,
                               win_size=SSIM_WIN_SIZE, win_sigma=SSIM_WIN_SIGMA)


def _ms_ssim01(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    scales = ms_ssim_scales(*a.shape[-2:])
    weights = a.new_tensor(MS_SSIM_WEIGHTS[:scales])
    if scales < len(MS_SSIM_WEIGHTS):  # the published five (summing to 1.0001) stay as they are
        weights = weights / weights.sum()
    window = _fspecial_gauss_1d(SSIM_WIN_SIZE, SSIM_WIN_SIGMA).repeat(a.shape[1], 1, 1, 1)
    # Same per-scale steps as pytorch_msssim.ms_ssim: contrast-structure terms at the finer
    # scales, full SSIM at the coarsest, 2x average pooling (odd sides padded) in between.
    factors = []
    for level in range(scales):
        ssim_per_channel, cs_per_channel = _ssim(a, b, data_range=1.0, win=window, size_average=False)
        if level < scales - 1:
            factors.append(torch.relu(cs_per_channel))
            padding = [s % 2 for s in a.shape[2:]]
            a = F.avg_pool2d(a, kernel_size=2, padding=padding)
            b = F.avg_pool2d(b, kernel_size=2, padding=padding)
    factors.append(torch.relu(ssim_per_channel))
    per_channel = torch.prod(torch.stack(factors) ** weights.view(-1, 1, 1), dim=0)
    return per_channel.mean(dim=1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, ``(N,)``.

    Images in [-1, 1] are clamped and mapped to [0, 1]; the data range is 1.0, so
    ``psnr = -10 log10(mean squared error in [0, 1])``; identical images give ``inf``.
    """
    return _psnr01(*_to_unit_range(x, y, "PSNR"))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image, ``(N,)`` (11-px Gaussian window, data range 1.0 after
    mapping [-1, 1] to [0, 1]); images need at least 11 px per side."""
    a, b = _to_unit_range(x, y, "SSIM")
    _check_window_fits(a, "SSIM")
    return _ssim01(a, b)


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-scale SSIM per image, ``(N,)``, with :func:`ms_ssim_scales` scales.

    At 161 px and more this equals ``pytorch_msssim.ms_ssim(..., data_range=1)``; smaller images
    use fewer scales (renormalised weights) instead of failing.
    """
    return _ms_ssim01(*_to_unit_range(x, y, "MS-SSIM"))


@torch.no_grad()
def score(x: torch.Tensor, y: torch.Tensor, lpips: LPIPS | None = None) -> dict[str, torch.Tensor]:
    """All metrics for a batch: ``{"psnr", "ssim", "ms_ssim"[, "lpips"]}``, each ``(N,)``, detached.

    Higher is better for PSNR/SSIM/MS-SSIM, lower for LPIPS (computed on the clamped images,
    only when an :class:`~ganinvert.metrics.lpips.LPIPS` module is given).
    """
    a, b = _to_unit_range(x, y, "score")
    _check_window_fits(a, "score")
    scores = {"psnr": _psnr01(a, b), "ssim": _ssim01(a, b), "ms_ssim": _ms_ssim01(a, b)}
    if lpips is not None:
        scores["lpips"] = lpips(x.clamp(-1, 1), y.clamp(-1, 1))
    return scores
