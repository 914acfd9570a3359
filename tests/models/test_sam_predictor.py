"""SAM's invertibility predictor: shapes, superpixels, segment averaging, label maps, files, and
``sam-opt`` using a predictor file instead of probe inversions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ganinvert.errors import CheckpointError, GanInvertError
from ganinvert.inversion import invert
from ganinvert.inversion.methods import make_method
from ganinvert.models.encoders import save_network
from ganinvert.models.encoders import optional_network_path
from ganinvert.models.sam_predictor import (InvertibilityPredictor, load_predictor, predict_label_map, rgb_to_lab,
                                            save_predictor, segment_mean, superpixels)
from tests.conftest import generated_images, make_random_generator


@pytest.fixture(scope="module")
def G():
    return make_random_generator(resolution=32, style_dim=16, channels={4: 16, 8: 16, 16: 8, 32: 8})


def _constant_predictor(errors: list[float]) -> InvertibilityPredictor:
    """A predictor of the spaces W+ and block 2 whose map for space k is the constant errors[k]
    (zero last-layer weights, bias log(errors[k] + log_eps))."""
    predictor = InvertibilityPredictor(32, ["w+", "2"], map_side=8, base_width=4, head_width=4)
    with torch.no_grad():
        for head, e in zip(predictor.heads, errors):
            head[-1].weight.zero_()
            head[-1].bias.fill_(float(predictor.log_target(torch.tensor(e))))
    return predictor.eval()


def test_maps_have_one_non_negative_channel_per_space(G) -> None:
    predictor = InvertibilityPredictor(32, ["w+", "2"], map_side=8, base_width=4)
    log_maps, maps = predictor(generated_images(G, 3)), predictor.maps(generated_images(G, 3))
    assert log_maps.shape == maps.shape == (3, 2, 8, 8) and (maps >= 0).all()
    assert torch.allclose(predictor.log_target(maps), log_maps, atol=1e-5)
    assert predictor.predict_maps(generated_images(G, 1)).shape == (1, 2, 32, 32)
    with pytest.raises(GanInvertError, match="map_side"):
        InvertibilityPredictor(32, ["w+"], map_side=32)
    with pytest.raises(GanInvertError, match="images must be \\(N, 3"):
        predictor(torch.zeros(1, 3, 16, 16))
    with pytest.raises(GanInvertError, match="NaN"):
        predictor(torch.full((1, 3, 32, 32), float("nan")))


def test_lab_of_white_and_black() -> None:
    lab = rgb_to_lab(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1).expand(2, 3, 1, 1))
    assert torch.allclose(lab[0, :, 0, 0], torch.tensor([100.0, 0.0, 0.0]), atol=0.05)
    assert torch.allclose(lab[1, :, 0, 0], torch.zeros(3), atol=0.05)


def test_superpixels_follow_a_colour_edge() -> None:
    image = torch.full((1, 3, 16, 16), -1.0)
    image[..., 5:] = torch.tensor([0.8, -0.5, 0.2]).view(1, 3, 1, 1)  # edge off the 4x4 grid lines
    labels = superpixels(image, segments=4, compactness=1.0)
    assert labels.shape == (1, 16, 16)
    left, right = set(labels[0, :, :5].unique().tolist()), set(labels[0, :, 5:].unique().tolist())
    assert not left & right  # no superpixel straddles the edge


def test_segment_mean_averages_inside_segments() -> None:
    values = torch.arange(8.0).view(1, 1, 2, 4)
    segments = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 2]]])
    out = segment_mean(values, segments)
    expected = torch.tensor([[[[2.5, 2.5, 11 / 3, 11 / 3], [2.5, 2.5, 11 / 3, 7.0]]]])
    assert torch.allclose(out, expected)
    with pytest.raises(GanInvertError, match="segments"):
        segment_mean(values, segments[:, :1])


def test_label_map_takes_the_earliest_space_below_tau(G) -> None:
    x = generated_images(G, 2)
    predictor = _constant_predictor([0.5, 0.1])
    assert (predict_label_map(predictor, x, tau=0.6) == 0).all()
    assert (predict_label_map(predictor, x, tau=0.2) == 1).all()
    assert (predict_label_map(predictor, x, tau=0.05) == 1).all()  # none below tau: the latest space
    # A given segmentation is used: one segment per half averages a map that differs between halves.
    trained = InvertibilityPredictor(32, ["w+", "2"], map_side=8, base_width=4)
    halves = torch.zeros(2, 32, 32, dtype=torch.long)
    halves[:, :, 16:] = 1
    labels = predict_label_map(trained, x, tau=0.0, segments=halves)
    assert labels.shape == (2, 1, 32, 32)
    assert all(labels[i, 0, :, :16].unique().numel() == 1 and labels[i, 0, :, 16:].unique().numel() == 1
               for i in range(2))


def test_files_round_trip_and_refuse_other_kinds(G, tmp_path: Path) -> None:
    predictor = InvertibilityPredictor(32, ["w+", "2"], map_side=8, base_width=4)
    path = save_predictor(predictor, tmp_path / "p.safetensors", G, meta={"steps": 1})
    loaded = load_predictor(path, G)
    x = generated_images(G)
    assert torch.equal(loaded(x), predictor.eval()(x)) and loaded.config == predictor.config
    save_network(torch.nn.Linear(2, 2), tmp_path / "other.safetensors", kind="fz-encoder", config={}, generator=G)
    with pytest.raises(CheckpointError, match="not a sam-predictor"):
        load_predictor(tmp_path / "other.safetensors", G)


def test_optional_network_path(G, tmp_path: Path) -> None:
    assert optional_network_path(None, "sam-predictor", G) is None
    assert optional_network_path("default", "sam-predictor", G) is None  # no bundled network for this G
    with pytest.raises(GanInvertError, match="not found"):
        optional_network_path(tmp_path / "missing.safetensors", "sam-predictor", G)


@pytest.mark.parametrize("errors, label", [([0.05, 0.01], 0), ([0.9, 0.01], 1)])
def test_sam_opt_uses_the_predictor_file(G, tmp_path: Path, errors: list[float], label: int) -> None:
    path = save_predictor(_constant_predictor(errors), tmp_path / "p.safetensors", G)
    settings = {"predictor_path": str(path), "steps": 3, "tau": 0.1, "lambda_lpips": 0.0}
    method = make_method("sam-opt", overrides=settings)
    assert [st.name for st in method.stages(G)] == ["main"]  # no probe inversions
    result = invert(G, generated_images(G), "sam-opt", settings=settings, progress=False)
    assert (result.params["labels"] == label).all()
    assert result.params["mask.2"].sum() == (0 if label == 0 else result.params["mask.2"].numel())
    assert torch.allclose(result.params["error.w+"], torch.tensor(errors[0]), atol=1e-5)
    assert len(result.history["loss"]) == 3


def test_default_tau_is_the_predictors_calibrated_threshold(G, tmp_path: Path) -> None:
    # W+ error 0.05: above a calibrated 0.03 (-> the feature block), below SAM's 0.225 (-> W+).
    predictor = _constant_predictor([0.05, 0.01])
    calibrated = save_predictor(predictor, tmp_path / "c.safetensors", G, meta={"calibrated_tau": 0.03})
    uncalibrated = save_predictor(predictor, tmp_path / "u.safetensors", G)
    assert load_predictor(calibrated, G).calibrated_tau == 0.03 and load_predictor(uncalibrated, G).calibrated_tau is None
    for path, label in ((calibrated, 1), (uncalibrated, 0)):
        settings = {"predictor_path": str(path), "steps": 1, "lambda_lpips": 0.0}
        assert (invert(G, generated_images(G), "sam-opt", settings=settings, progress=False).params["labels"] == label).all()
    explicit = {"predictor_path": str(calibrated), "steps": 1, "lambda_lpips": 0.0, "tau": 0.1}
    assert (invert(G, generated_images(G), "sam-opt", settings=explicit, progress=False).params["labels"] == 0).all()


def test_sam_opt_without_a_predictor_measures_the_map(G, tmp_path: Path) -> None:
    method = make_method("sam-opt", overrides={"error_steps": 2, "steps": 2})  # "default" -> none for this G
    assert [st.name for st in method.stages(G)] == ["invertibility-w+", "invertibility-2", "main"]
    mismatched = InvertibilityPredictor(32, ["w+", "1", "2"], map_side=8, base_width=4)
    path = save_predictor(mismatched, tmp_path / "p.safetensors", G)
    with pytest.raises(GanInvertError, match="predicts spaces"):
        invert(G, generated_images(G, 1), "sam-opt", settings={"predictor_path": str(path), "steps": 1, "lambda_lpips": 0.0},
               progress=False)


def test_bundled_predictor_serves_the_default_generator() -> None:
    from ganinvert.models import load_generator
    from ganinvert.models.encoders import BUNDLED_DIR
    default = load_generator("default")
    assert optional_network_path("default", "sam-predictor", default) == BUNDLED_DIR / "sam-predictor.safetensors"
    method = make_method("sam-opt")
    assert method.predictor_file(default) is not None and [st.name for st in method.stages(default)] == ["main"]
    assert load_predictor("default", default).spaces == method.spaces(default) == ["w+", "2", "3"]
    assert (BUNDLED_DIR / "sam-predictor.safetensors").stat().st_size < 25e6
