"""The ``fz-encoder`` and ``sam-predictor`` trainers: they learn, resume bit-identically (the
SAM training set included), and run from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ganinvert.cli import main as cli_main
from ganinvert.errors import GanInvertError
from ganinvert.models.basecode_encoder import load_basecode_encoder
from ganinvert.models.loading import save_generator
from ganinvert.models.sam_predictor import load_predictor
from ganinvert.training.inverters import InverterTrainConfig, TrainingData, train_inverter
from ganinvert.models.stylegan2 import FeatureEntry
from ganinvert.training.inverters.basecode import BaseCodeSettings, BaseCodeTrainer
from ganinvert.training.inverters import sam_predictor as module
from ganinvert.training.inverters.sam_predictor import SamPredictorTrainer, true_error_maps
from tests.conftest import assert_training_resumes_bit_identically, make_random_generator, same_safetensors

FZ = {"block": 1, "base_width": 4, "lpips_weight": 0.0, "lr": 3e-3}
SAM = {"images": 6, "teacher_images": 0, "error_steps": 3, "error_metric": "mse", "chunk": 3, "map_side": 8,
       "base_width": 4, "head_width": 8, "lr": 3e-3}


@pytest.fixture(scope="module")
def G():
    return make_random_generator(resolution=32, style_dim=16, channels={4: 16, 8: 16, 16: 8, 32: 8})


def _config(kind: str, out: Path, steps: int, settings: dict, **kwargs) -> InverterTrainConfig:
    return InverterTrainConfig(kind=kind, out=out, steps=steps, batch=4, settings=dict(settings), log_every=1,
                               **kwargs)


@pytest.mark.parametrize("settings", [{}, {"detail_codes": "sample", "feature_weight": 1.0, "image_weight": 0.0}])
def test_fz_encoder_learns(G, tmp_path: Path, settings: dict) -> None:
    """Default: E(x) rendered with the mean detail codes reproduces x; "sample" + features: E(x) ~ f."""
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        ws = G.broadcast(G.mapping(torch.randn(8, G.style_dim, generator=g)))
        x, f = G.synthesis(ws).clamp(-1, 1), G.block_features(ws, 1).features
    mean_ws = G.broadcast(G.w_avg[None]).expand_as(ws)

    def error(encoder) -> torch.Tensor:
        with torch.no_grad():
            code = encoder(x)
            if settings:
                return (code - f).square().mean()
            return (G.synthesis(mean_ws, feature_entry=FeatureEntry(1, code)) - x).square().mean()

    fz = {**FZ, **settings}
    config = _config("fz-encoder", tmp_path / "fz", 1, fz)
    untrained = BaseCodeTrainer(G, config, TrainingData(G, torch.Generator().manual_seed(0)), None).encoder.eval()
    trained = load_basecode_encoder(train_inverter(G, _config("fz-encoder", tmp_path / "fz", 40, fz)), G, block=1)
    assert error(trained) < 0.7 * error(untrained)


def test_fz_encoder_settings_are_checked() -> None:
    with pytest.raises(GanInvertError, match="detail_codes"):
        BaseCodeSettings(detail_codes="own")
    with pytest.raises(GanInvertError, match="at least one"):
        BaseCodeSettings(feature_weight=0.0, image_weight=0.0, lpips_weight=0.0)


def test_sam_predictor_learns_the_probe_maps(G, tmp_path: Path) -> None:
    path = train_inverter(G, _config("sam-predictor", tmp_path / "sam", 60, SAM))
    predictor = load_predictor(path, G)
    assert predictor.spaces == ["w+", "2"]
    images = torch.load(tmp_path / "sam" / "targets" / "chunk_000.pt", weights_only=True)
    assert images.shape == (3, 2, 32, 32) and (images >= 0).all()
    # The exported threshold is the median W+ error of the training maps (at the predictor's map size).
    maps = torch.cat([torch.load(f, weights_only=True) for f in sorted((tmp_path / "sam" / "targets").glob("chunk_*.pt"))])
    cells = torch.nn.functional.adaptive_avg_pool2d(maps, predictor.config["map_side"])[:, 0]
    assert predictor.calibrated_tau == pytest.approx(float(cells.median()), abs=1e-4)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sam" / "log.jsonl").read_text().splitlines()]
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])


def test_true_maps_are_the_probe_errors(G) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        x = G.synthesis(G.broadcast(G.mapping(torch.randn(2, G.style_dim, generator=g)))).clamp(-1, 1)
    maps = true_error_maps(G, x, 4, "mse", None, [0, 1])
    assert maps.shape == (2, 2, 32, 32)
    # The feature residual adds freedom, so it explains the image at least as well on average.
    assert maps[:, 1].mean() <= maps[:, 0].mean() * 1.05
    with pytest.raises(GanInvertError, match="lpips"):
        true_error_maps(G, x, 4, "lpips", None, [0, 1])


@pytest.mark.parametrize("kind, settings, trainer", [("fz-encoder", FZ, BaseCodeTrainer),
                                                     ("sam-predictor", SAM, SamPredictorTrainer)])
def test_kill_and_resume_is_bit_identical(G, tmp_path: Path, monkeypatch, kind, settings, trainer) -> None:
    assert_training_resumes_bit_identically(
        monkeypatch, trainer,
        lambda name, resume: train_inverter(G, _config(kind, tmp_path / name, 4, settings, checkpoint_every=2,
                                                       resume=resume)))


def test_sam_training_set_build_resumes_from_its_cache(G, tmp_path: Path, monkeypatch) -> None:
    whole = train_inverter(G, _config("sam-predictor", tmp_path / "whole", 2, SAM))
    # A build killed after its first chunk: the second chunk is missing and no checkpoint exists.
    calls = []
    real_maps = module.true_error_maps

    def dies_on_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_maps(*args, **kwargs)

    monkeypatch.setattr(module, "true_error_maps", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        train_inverter(G, _config("sam-predictor", tmp_path / "cut", 2, SAM))
    assert (tmp_path / "cut" / "targets" / "chunk_000.pt").is_file()
    calls.clear()
    monkeypatch.setattr(module, "true_error_maps", lambda *a, **k: (calls.append(1), real_maps(*a, **k))[1])
    again = train_inverter(G, _config("sam-predictor", tmp_path / "cut", 2, SAM))
    assert len(calls) == 1  # only the missing chunk was inverted
    assert same_safetensors(whole, again)
    # Targets of other settings are never mixed in.
    (tmp_path / "cut" / "checkpoint.pt").unlink()
    with pytest.raises(GanInvertError, match="other settings"):
        train_inverter(G, _config("sam-predictor", tmp_path / "cut", 2, dict(SAM, error_steps=4)))


def test_cli_trains_both(G, tmp_path: Path) -> None:
    save_generator(G, tmp_path / "g.pt")
    before = torch.get_num_threads()
    try:
        for kind, sets in (("fz-encoder", ["block=1", "base_width=4", "lpips_weight=0"]),
                           ("sam-predictor", ["images=2", "teacher_images=0", "error_steps=2", "error_metric=mse",
                                              "chunk=2", "map_side=8", "base_width=4"])):
            args = ["train-inverter", kind, "--generator", str(tmp_path / "g.pt"), "--out", str(tmp_path / kind),
                    "--steps", "2", "--batch", "2", "--threads", "1", "--export", str(tmp_path / f"{kind}.st")]
            for item in sets:
                args += ["--set", item]
            assert cli_main(args) in (0, None)
            assert (tmp_path / f"{kind}.st").is_file() and (tmp_path / kind / "checkpoint.pt").is_file()
    finally:
        torch.set_num_threads(before)
