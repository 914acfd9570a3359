"""Perceptual distance (LPIPS) and full-reference image quality metrics."""

from .image_quality import MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_scales, psnr, score, ssim
from .lpips import ENV_VAR as LPIPS_WEIGHTS_ENV_VAR
from .lpips import LPIPS, LPIPSWeightFiles, lpips_available, resolve_lpips_weights

__all__ = [
    "LPIPS",
    "LPIPSWeightFiles",
    "LPIPS_WEIGHTS_ENV_VAR",
    "MS_SSIM_WEIGHTS",
    "lpips_available",
    "ms_ssim",
    "ms_ssim_scales",
    "psnr",
    "resolve_lpips_weights",
    "score",
    "ssim",
]
