"""Result files that are damaged, mismatched, forged or non-finite are refused with one-line errors;
source images are recorded and checked; results with NaN renders never reach an image."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from ganinvert.errors import GanInvertError
from ganinvert.inversion import InversionResult, invert
from ganinvert.inversion import result as result_module
from ganinvert.inversion.result import source_image_record, stack_results, tensors_sha256
from ganinvert.io import save_image
from ganinvert.tasks.robustness import latent_robustness

SETTINGS = {"steps": 2, "lambda_lpips": 0.0}


@pytest.fixture(scope="module")
def G(random_generator):
    return random_generator(16, channels={4: 16, 8: 16, 16: 8}, style_dim=16, seed=3)


@pytest.fixture(scope="module")
def made(G):
    """A finished w+ result of one generated image, and one of another image."""
    z = torch.randn(2, G.style_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = G.synthesis(G.broadcast(G.mapping(z)))
    return [invert(G, images[i:i + 1], "w+", settings=SETTINGS, seed=i, progress=False) for i in range(2)]


def refused(path: Path, fragment: str) -> str:
    with pytest.raises(GanInvertError) as excinfo:
        InversionResult.load(path)
    message = str(excinfo.value)
    assert fragment in message and "\n" not in message, message
    return message


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    meta_path = path.with_suffix(".json")
    meta_path.write_text(json.dumps(change(json.loads(meta_path.read_text()))))


def forge(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the tensors and make result.json agree (names, shapes, hash): a consistent forgery."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path))
    edit_json(path, lambda m: {**m, "tensors": {k: list(v.shape) for k, v in tensors.items()},
                               "tensors_sha256": tensors_sha256(tensors)})


# ----------------------------------------------------------------------------- result.json
@pytest.mark.parametrize("text,fragment", [
    ("[1, 2]", "not a ganinvert result"),
    ("{not json", "cannot read result"),
    ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    ("\xff\xfe", "cannot read result"),
])
def test_unreadable_json_is_refused(tmp_path, made, text, fragment) -> None:
    path = made[0].save(tmp_path / "r")
    path.with_suffix(".json").write_text(text, encoding="latin-1")
    refused(path, fragment)


@pytest.mark.parametrize("change,fragment", [
    (lambda m: {k: v for k, v in m.items() if k != "method"}, "'method' must be a method name, got nothing"),
    (lambda m: {**m, "settings": "x"}, "'settings' must be an object"),
    (lambda m: {**m, "settings": {**m["settings"], "steps": "x"}}, "steps"),
    (lambda m: {**m, "settings": {**m["settings"], "bogus": 1}}, "unknown setting"),
    (lambda m: {**m, "method": "nope"}, "unknown method"),
    (lambda m: {**m, "seeds": []}, "'seeds' is empty"),
    (lambda m: {**m, "seeds": [2 ** 70]}, "seed must be an integer in [0, 2**63 - 1]"),
    (lambda m: {**m, "seconds": -1}, "'seconds' must be a finite number >= 0"),
    (lambda m: {**m, "history": {"loss": ["x"]}}, "history 'loss'"),
    (lambda m: {**m, "generator": {"config": "x"}}, "'config' must be an object"),
    (lambda m: {**m, "generator": {**m["generator"], "config": {**m["generator"]["config"], "n_mlp": 10 ** 9}}},
     "'n_mlp' must be an integer in 0..64"),
    (lambda m: {**m, "generator": {**m["generator"], "config": {**m["generator"]["config"], "resolution": 12}}},
     "recorded generator configuration is invalid"),
    (lambda m: {**m, "source_images": [{"path": "a.png"}]}, "'source_images' must hold one"),
    (lambda m: {**m, "tensors_sha256": "abc"}, "'tensors_sha256' is not a sha256"),
    (lambda m: {**m, "format": "ganinvert-result/1"}, "older ganinvert"),
])
def test_bad_json_fields_are_refused(tmp_path, made, change, fragment) -> None:
    path = made[0].save(tmp_path / "r")
    edit_json(path, change)
    refused(path, fragment)


def test_nan_literal_in_json_is_refused(tmp_path, made) -> None:
    path = made[0].save(tmp_path / "r")
    meta_path = path.with_suffix(".json")
    meta_path.write_text(meta_path.read_text().replace('"seconds": ', '"seconds": NaN, "x": ', 1))
    refused(path, "NaN is not valid JSON")


# ----------------------------------------------------------------------------- result.safetensors
@pytest.mark.parametrize("damage,fragment", [
    (lambda t: {}, "lacks tensor(s) latent that r.json lists"),
    (lambda t: {**t, "evil": torch.zeros(1, 3)}, "holds tensor(s) evil that r.json does not list"),
    (lambda t: {"latent": torch.zeros(1, 7, 16)}, "has shape (1, 7, 16); r.json records"),
    (lambda t: {"latent": t["latent"].expand(2, -1, -1)}, "not 1 (the number of seeds)"),
    (lambda t: {"latent": t["latent"].to(torch.int32)}, "is int32; results hold float32"),
    (lambda t: {"latent": t["latent"].double()}, "is float64; results hold float32"),
    (lambda t: {"latent": t["latent"] * float("nan")}, "contains NaN or infinite values"),
    (lambda t: {"latent": t["latent"] + float("inf")}, "contains NaN or infinite values"),
    (lambda t: {"latent": t["latent"] + 1}, "do not belong together"),
])
def test_bad_tensors_are_refused(tmp_path, made, damage, fragment) -> None:
    path = made[0].save(tmp_path / "r")
    save_file({k: v.contiguous() for k, v in damage(load_file(str(path))).items()}, str(path))
    refused(path, fragment)


@pytest.mark.parametrize("missing", [".json", ".safetensors"])
def test_either_file_of_the_pair_missing_is_refused(tmp_path, made, missing) -> None:
    path = made[0].save(tmp_path / "r")
    path.with_suffix(missing).unlink()
    refused(path, f"r{missing} is missing")


def test_pair_left_by_a_kill_between_the_two_writes_is_refused(tmp_path, made, monkeypatch) -> None:
    path = made[0].save(tmp_path / "r")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(result_module, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        made[1].save(path)  # the new tensors are written, the old JSON stays
    monkeypatch.undo()
    refused(path, "do not belong together")


def test_consistent_forgeries_must_fit_the_method_and_generator(tmp_path, made) -> None:
    path = made[0].save(tmp_path / "r")
    forge(path, {"latent": torch.zeros(1, 7, 16)})
    refused(path, "do not fit method w+ on a generator of the recorded configuration")
    forge(path, {"codes": torch.zeros(1, 6, 16)})
    refused(path, "method w+ renders from tensor 'latent', which the result lacks")


# ----------------------------------------------------------------------------- what loads
def test_valid_results_load_back_exactly(tmp_path, G, made) -> None:
    pair = stack_results(made)
    loaded = InversionResult.load(pair.save(tmp_path / "r"))
    assert loaded.params.keys() == pair.params.keys()
    assert all(torch.equal(loaded.params[k], pair.params[k]) for k in pair.params)
    assert loaded.seeds == [0, 1] and torch.equal(loaded.render(G), pair.render(G))


def test_history_without_psnr_is_valid_json_and_loads_as_nan(tmp_path, G, made) -> None:
    target = made[0].render(G)
    blind = invert(G, None, "w+", measurement=target, settings=SETTINGS, progress=False)  # no clean image: no PSNR
    path = blind.save(tmp_path / "r")

    def refuse(name):
        raise AssertionError(f"{name} written into result.json")

    meta = json.loads(path.with_suffix(".json").read_text(), parse_constant=refuse)
    assert meta["history"]["psnr"] == [None, None]
    assert all(math.isnan(p) for p in InversionResult.load(path).history["psnr"])


def test_saving_a_non_finite_result_is_refused(tmp_path, made) -> None:
    broken = dataclasses.replace(made[0], params={"latent": made[0].params["latent"] * float("nan")})
    with pytest.raises(GanInvertError, match="contains NaN"):
        broken.save(tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_renders_raise(G, made) -> None:
    broken = dataclasses.replace(made[0], params={"latent": made[0].params["latent"] * float("nan")})
    with pytest.raises(GanInvertError, match="render of this w\\+ result contains NaN"):
        broken.render(G)
    with pytest.raises(GanInvertError, match="contains NaN"):
        broken.render_draws(G, 2)
    with pytest.raises(GanInvertError, match="render of this w\\+ result contains NaN"):
        latent_robustness(G, broken, [20.0], trials=1)


def test_seeds_out_of_range_are_refused_before_torch_overflows(G, made) -> None:
    with pytest.raises(GanInvertError, match="seed must be an integer in"):
        made[0].render_draws(G, 1, seed=2 ** 70)
    with pytest.raises(GanInvertError, match="seed must be an integer in"):
        latent_robustness(G, made[0], [20.0], trials=1, seed=-1)


# ----------------------------------------------------------------------------- source images
def test_source_image_is_recorded_and_checked(tmp_path, G, made) -> None:
    image = tmp_path / "face.png"
    save_image(made[0].render(G), image)
    result = dataclasses.replace(made[0], source_images=[source_image_record(image)])
    loaded = InversionResult.load(result.save(tmp_path / "r"))
    meta = json.loads((tmp_path / "r.json").read_text())
    assert meta["source_images"] == [{"path": str(image), "sha256": result.source_images[0]["sha256"]}]
    loaded.check_source(image)
    loaded.check_source()  # the recorded path
    assert stack_results([loaded, loaded]).select(1).source_images == loaded.source_images
    save_image(made[1].render(G), tmp_path / "other.png")
    with pytest.raises(GanInvertError, match="is not the image this result was inverted from"):
        loaded.check_source(tmp_path / "other.png")
    with pytest.raises(GanInvertError, match="source image not found"):
        loaded.check_source(tmp_path / "gone.png")
    with pytest.raises(GanInvertError, match="records no source image"):
        made[0].check_source(image)
