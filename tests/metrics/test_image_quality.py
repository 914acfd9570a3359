"""PSNR / SSIM / MS-SSIM conventions, the small-image MS-SSIM policy and score()."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import pytorch_msssim
import torch

from ganinvert.errors import GanInvertError
from ganinvert.metrics import LPIPS, MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_scales, psnr, score, ssim

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / ".." / "shared" / "weights" / "lpips_alex.pth"


def pair(n: int, height: int, width: int | None = None, seed: int = 0, noise: float = 0.3):
    """A random image batch in [-1, 1] and a noisy copy of it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, height, width or height, generator=g) * 2 - 1
    y = (x + noise * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, y


def test_psnr_of_a_constant_offset():
    x = torch.zeros(2, 3, 16, 16)
    # An offset of 0.2 in [-1, 1] is 0.1 in [0, 1]: MSE 0.01 -> 20 dB; 0.02 -> 40 dB.
    torch.testing.assert_close(psnr(x, x + 0.2), torch.full((2,), 20.0))
    torch.testing.assert_close(psnr(x, x - 0.02), torch.full((2,), 40.0))
    assert torch.isinf(psnr(x, x)).all()


def test_psnr_is_per_image_and_clamps_to_the_image_range():
    x = torch.zeros(2, 3, 8, 8)
    y = torch.stack([torch.full((3, 8, 8), 0.2), torch.full((3, 8, 8), 5.0)])  # 5.0 is clamped to 1
    # second image: |0 - 1| = 1 in [-1, 1] = 0.5 in [0, 1] -> -10 log10(0.25)
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0, -10 * math.log10(0.25)]))


def test_ssim_of_identical_images_is_one_and_decreases_with_noise():
    x, y = pair(2, 32)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    _, noisier = pair(2, 32, noise=0.6)
    assert (ssim(x, noisier) < ssim(x, y)).all() and (ssim(x, y) < 1).all()


def test_ssim_matches_pytorch_msssim_in_unit_range():
    x, y = pair(3, 40, seed=1)
    expected = pytorch_msssim.ssim((x + 1) / 2, (y + 1) / 2, data_range=1.0, size_average=False)
    torch.testing.assert_close(ssim(x, y), expected)


@pytest.mark.parametrize("side, scales", [(1024, 5), (256, 5), (161, 5), (160, 4), (128, 4), (81, 4),
                                          (80, 3), (64, 3), (41, 3), (40, 2), (32, 2), (21, 2),
                                          (20, 1), (11, 1)])
def test_ms_ssim_scale_policy(side, scales):
    assert ms_ssim_scales(side, side + 7) == scales
    assert ms_ssim_scales(side + 7, side) == scales  # the smaller side decides


def test_ms_ssim_equals_pytorch_msssim_at_five_scales():
    x, y = pair(2, 176, 192, seed=2)
    expected = pytorch_msssim.ms_ssim((x + 1) / 2, (y + 1) / 2, data_range=1.0, size_average=False)
    torch.testing.assert_close(ms_ssim(x, y), expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("side", [64, 32, 33])
def test_ms_ssim_works_on_small_images(side):
    x, y = pair(2, side, seed=side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pytorch_msssim warns when it must skip smoothing
        value = ms_ssim(x, y)
        same = ms_ssim(x, x)
    assert value.shape == (2,) and ((value > 0) & (value < 1)).all()
    torch.testing.assert_close(same, torch.ones(2))


def test_ms_ssim_uses_renormalised_weights_of_the_finest_scales():
    # Identical structure at every scale but a brightness offset: only the luminance term of the
    # coarsest scale departs from 1, so MS-SSIM = ssim_coarsest ** (w_last / sum(w)).
    x = torch.zeros(1, 3, 64, 64)
    y = x + 0.5
    scales = ms_ssim_scales(64, 64)
    weights = MS_SSIM_WEIGHTS[:scales]
    # constant images: SSIM = luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), data range 1
    c1 = 0.01 ** 2
    mu_x, mu_y = 0.5, 0.75
    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    expected = luminance ** (weights[-1] / sum(weights))
    # Rounding in the window sums leaves the contrast terms ~1e-4 from 1; without the
    # renormalisation the result would be 0.976 instead of 0.963.
    torch.testing.assert_close(ms_ssim(x, y), torch.tensor([expected]), atol=1e-3, rtol=0)


def test_ms_ssim_with_one_scale_is_ssim():
    x, y = pair(2, 18, seed=3)
    torch.testing.assert_close(ms_ssim(x, y), ssim(x, y).clamp_min(0))


@pytest.mark.parametrize("metric", [psnr, ssim, ms_ssim])
def test_invalid_inputs_are_rejected(metric):
    x, _ = pair(1, 32)
    bad = x.clone()
    bad[0, 1, 3, 3] = float("nan")
    with pytest.raises(GanInvertError, match="NaN"):
        metric(x, bad)
    with pytest.raises(GanInvertError, match="differ in shape"):
        metric(x, x[..., :16])
    with pytest.raises(GanInvertError, match=r"\(N, C, H, W\)"):
        metric(x[0], x[0])
    with pytest.raises(GanInvertError, match="float"):
        metric(x.to(torch.uint8), x.to(torch.uint8))


@pytest.mark.parametrize("metric", [ssim, ms_ssim, score])
def test_images_smaller_than_the_window_are_rejected(metric):
    x, y = pair(1, 10, 32)
    with pytest.raises(GanInvertError, match="at least 11 px"):
        metric(x, y)


def test_score_keys_values_and_detached():
    x, y = pair(2, 64, seed=4)
    x.requires_grad_()
    scores = score(x, y)
    assert set(scores) == {"psnr", "ssim", "ms_ssim"}
    torch.testing.assert_close(scores["psnr"], psnr(x, y).detach())
    torch.testing.assert_close(scores["ssim"], ssim(x, y).detach())
    torch.testing.assert_close(scores["ms_ssim"], ms_ssim(x, y).detach())
    assert all(v.shape == (2,) and not v.requires_grad for v in scores.values())


def test_metrics_are_differentiable():
    x, y = pair(1, 64, seed=5)
    x.requires_grad_()
    (ssim(x, y) + ms_ssim(x, y) + psnr(x, y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(),
                    reason="../shared/weights/lpips_alex.pth absent (not part of the repo)")
def test_score_with_lpips_uses_the_clamped_images():
    lpips = LPIPS(SHARED_WEIGHTS)
    x, y = pair(2, 64, seed=6)
    overshoot = x * 1.5  # an unclamped generator output
    scores = score(overshoot, y, lpips=lpips)
    assert set(scores) == {"psnr", "ssim", "ms_ssim", "lpips"}
    torch.testing.assert_close(scores["lpips"], lpips(overshoot.clamp(-1, 1), y))
    assert (scores["lpips"] > 0).all()
