"""Restoration: simulated and measured modes, the measurement baselines, the written folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from task_fixtures import FAST, random_generator, sample

from ganinvert.errors import GanInvertError
from ganinvert.io import save_image
from ganinvert.metrics import psnr
from ganinvert.tasks import Compose, Downsampling, Inpainting, box_mask, make_operator
from ganinvert.tasks.restore import (MEASUREMENT_UPSAMPLING, load_measurement, restoration_metrics, restore,
                                     write_restoration_outputs)

W_PLUS = {**FAST, "steps": 60, "lr": 0.05}


@pytest.fixture(scope="module")
def G():
    return random_generator()


@pytest.fixture(scope="module")
def clean(G):
    return sample(G, seed=1)


@pytest.fixture(scope="module")
def denoised(G, clean):
    return restore(G, make_operator("denoise", sigma=0.5, seed=3), clean=clean, method="w+", settings=W_PLUS,
                   progress=False)


def test_simulated_measurement_is_the_seeded_operator_output(denoised, clean) -> None:
    expected = make_operator("denoise", sigma=0.5, seed=3)(clean)
    assert torch.equal(denoised.measurement, expected)
    assert torch.equal(denoised.measurement_image, expected)
    assert denoised.restoration.shape == clean.shape and denoised.result.method == "w+"


def test_denoising_beats_the_noisy_input_on_the_generators_own_sample(denoised) -> None:
    metrics = restoration_metrics(denoised)[0]
    assert metrics["psnr_measurement"] == pytest.approx(float(psnr(denoised.measurement, denoised.clean)), abs=1e-4)
    assert metrics["psnr"] > metrics["psnr_measurement"] + 3, metrics


def test_restoration_is_reproducible(G, clean) -> None:
    runs = [restore(G, make_operator("inpaint", mask=box_mask(G.resolution, 0.25, seed=0), sigma=0.1, seed=2),
                    clean=clean, method="w+", settings={**FAST, "steps": 5}, progress=False) for _ in range(2)]
    assert torch.equal(runs[0].measurement, runs[1].measurement)
    assert torch.equal(runs[0].restoration, runs[1].restoration)


def test_sr_measurement_is_compared_after_bicubic_upsampling(G, clean) -> None:
    out = restore(G, make_operator("sr", factor=4, image_size=G.resolution), clean=clean, method="w+",
                  settings={**FAST, "steps": 2}, progress=False)
    assert out.measurement_image.shape[-1] == G.resolution // 4
    metrics = restoration_metrics(out)[0]
    up = F.interpolate(out.measurement, size=clean.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    assert MEASUREMENT_UPSAMPLING == "bicubic" and metrics["measurement_upsampling"] == "bicubic"
    assert metrics["psnr_measurement"] == pytest.approx(float(psnr(up, clean)), abs=1e-4)


def test_compressed_sensing_has_no_measurement_image(G, clean) -> None:
    op = make_operator("cs", fraction=0.3, image_size=G.resolution, seed=0)
    out = restore(G, op, clean=clean, method="w+", settings={**FAST, "steps": 2}, progress=False)
    assert out.measurement.shape == (1, op.num_measurements) and out.measurement_image is None
    metrics = restoration_metrics(out)[0]
    assert "psnr" in metrics and "psnr_measurement" not in metrics


def test_measured_mode_has_no_clean_metrics(G, clean) -> None:
    op = make_operator("denoise", sigma=0.2, seed=0)
    out = restore(G, op, measurement=op(clean), method="w+", settings={**FAST, "steps": 2}, progress=False)
    assert out.clean is None and restoration_metrics(out) == [{}]
    with pytest.raises(GanInvertError, match="clean image to measure or a measurement"):
        restore(G, op, method="w+", settings=FAST)


def test_load_measurement(tmp_path: Path, G, clean) -> None:
    save_image(clean, tmp_path / "x.png")
    mask = box_mask(G.resolution, 0.25, seed=0)
    inpaint = Inpainting(mask)
    y = load_measurement(tmp_path / "x.png", inpaint, G.resolution)
    assert torch.equal(y, inpaint.A(y)) and bool((y[..., mask[0, 0] == 0] == 0).all())  # holes ignored
    low = load_measurement(tmp_path / "x.png", make_operator("sr", factor=2), G.resolution)
    assert low.shape == (1, 3, G.resolution // 2, G.resolution // 2)
    with pytest.raises(GanInvertError, match="not images"):
        load_measurement(tmp_path / "x.png", make_operator("cs", fraction=0.5, image_size=G.resolution), G.resolution)


def test_load_measurement_asks_the_operator_for_size_and_contents(tmp_path: Path, G, clean) -> None:
    # No operator-type chain: a composed operator's measured file is read at its measurement size
    # (the resolution / 2 of the downsampling) and masked by its last operator.
    save_image(clean, tmp_path / "x.png")
    half = G.resolution // 2
    mask = box_mask(half, 0.25, seed=3)
    op = Compose(Downsampling(2), Inpainting(mask))
    y = load_measurement(tmp_path / "x.png", op, G.resolution)
    assert y.shape == (1, 3, half, half) and torch.equal(y, op.ops[-1].A(y))
    assert bool((y[..., mask[0, 0] == 0] == 0).all()) and bool((y[..., mask[0, 0] == 1] != 0).any())
    with pytest.raises(GanInvertError, match="--factor 3 does not divide"):
        load_measurement(tmp_path / "x.png", Downsampling(3), G.resolution)


def test_write_restoration_outputs(tmp_path: Path, denoised) -> None:
    metrics = write_restoration_outputs(tmp_path / "img", denoised.select(0), None, {"task": "denoise"})
    names = {p.name for p in (tmp_path / "img").iterdir()}
    assert {"measurement.png", "restoration.png", "comparison.png", "clean.png", "metrics.json", "curve.png",
            "result.safetensors", "result.json"} <= names
    stored = json.loads((tmp_path / "img" / "metrics.json").read_text())
    assert stored == pytest.approx(metrics) and stored["task"] == "denoise" and stored["steps"] == W_PLUS["steps"]
