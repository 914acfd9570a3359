"""Settings typed once (ganinvert.settings): method settings, the inverter trainers' settings and the
evaluation suites' options are converted to their fields' types, and every bad value is refused in
one line that names the setting and the type it expects, through the API and the command line."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ganinvert.cli import main
from ganinvert.errors import GanInvertError
from ganinvert.evaluation.suites import SUITES, make_suite
from ganinvert.inversion.methods import list_methods, make_method
from ganinvert.models.loading import save_generator
from ganinvert.settings import coerce_settings, field_types, replace_typed
from ganinvert.training.inverters.loop import TRAINERS, InverterTrainConfig, train_inverter
from ganinvert.training.trainer import TrainConfig


@dataclasses.dataclass
class Example:
    steps: int = 10
    lr: float = 0.01
    flag: bool = False
    name: str = "a"
    radius: float | None = None
    shares: tuple[float, ...] = (1.0,)
    blocks: tuple[int, ...] | None = None
    widths: dict[int, int] = dataclasses.field(default_factory=dict)
    lambda_mse: float = 1.0
    locality_lambda_mse: float = 0.1
    noise_lr: float = 0.01
    pn_weight: float = 0.0


# ----------------------------------------------------------------------------- the conversion
def test_valid_values_are_converted_to_the_field_types() -> None:
    typed = coerce_settings(Example, {"steps": 3.0, "lr": 1, "flag": True, "name": 8, "radius": 2,
                                      "shares": [1, 2.5], "blocks": [2, 3], "widths": {4: 8}})
    assert typed == {"steps": 3, "lr": 1.0, "flag": True, "name": "8", "radius": 2.0, "shares": (1.0, 2.5),
                     "blocks": (2, 3), "widths": {4: 8}}
    assert type(typed["steps"]) is int and type(typed["lr"]) is float and type(typed["radius"]) is float
    assert coerce_settings(Example, {"radius": None, "blocks": None, "name": Path("x/y")}) == {
        "radius": None, "blocks": None, "name": "x/y"}
    assert replace_typed(Example(), lr=1).lr == 1.0 and type(replace_typed(Example(), lr=1).lr) is float


@pytest.mark.parametrize("values, message", [
    ({"steps": "abc"}, "setting 'steps' must be an integer, got 'abc'"),
    ({"steps": 2.5}, "setting 'steps' must be an integer, got 2.5"),
    ({"steps": True}, "setting 'steps' must be an integer, got True"),
    ({"steps": math.inf}, "setting 'steps' must be an integer, got inf"),
    ({"lr": "nan"}, "setting 'lr' must be a finite number, got 'nan'"),
    ({"lr": math.nan}, "setting 'lr' must be a finite number, got nan"),
    ({"lr": math.inf}, "setting 'lr' must be a finite number, got inf"),
    ({"lr": False}, "setting 'lr' must be a finite number, got False"),
    ({"lr": 0}, "setting 'lr' must be > 0 (a learning rate), got 0"),
    ({"noise_lr": -0.1}, "setting 'noise_lr' must be > 0 (a learning rate), got -0.1"),
    ({"lambda_mse": [1, 2]}, "setting 'lambda_mse' must be a finite number, got [1, 2]"),
    ({"lambda_mse": -1}, "setting 'lambda_mse' must be >= 0 (a loss weight), got -1"),
    ({"locality_lambda_mse": -1.0}, "setting 'locality_lambda_mse' must be >= 0 (a loss weight)"),
    ({"pn_weight": -0.5}, "setting 'pn_weight' must be >= 0 (a loss weight), got -0.5"),
    ({"flag": 1}, "setting 'flag' must be True or False, got 1"),
    ({"flag": "false"}, "setting 'flag' must be True or False, got 'false'"),
    ({"name": None}, "setting 'name' must be a string, got None"),
    ({"name": 1.5}, "setting 'name' must be a string, got 1.5"),
    ({"radius": "big"}, "setting 'radius' must be a finite number or None, got 'big'"),
    ({"radius": math.inf}, "setting 'radius' must be a finite number or None, got inf"),
    ({"shares": 5}, "setting 'shares' must be a tuple of finite numbers, got 5"),
    ({"shares": (1.0, math.nan)}, "setting 'shares' must be a tuple of finite numbers, got (1.0, nan)"),
    ({"blocks": (2, 2.5)}, "setting 'blocks' must be a tuple of integers or None, got (2, 2.5)"),
    ({"widths": {4: "x"}}, "setting 'widths' must be a mapping of an integer to an integer, got {4: 'x'}"),
    ({"stepz": 3}, "unknown setting(s) stepz for Example; known: blocks, flag, lambda_mse, "),
])
def test_bad_values_are_one_line_errors_naming_setting_and_type(values: dict, message: str) -> None:
    with pytest.raises(GanInvertError) as info:
        coerce_settings(Example, values)
    assert message in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- every settings class
def _settings_classes() -> list[type]:
    return ([cls.Settings for cls in list_methods().values()] + [t.Settings for t in TRAINERS.values()]
            + [TrainConfig, InverterTrainConfig])


def _float_fields() -> list[tuple[type, str]]:
    """Every float setting (alone or in a tuple, or optional) of every method and trainer."""
    out = set()
    for cls in _settings_classes():
        for name, annotation in field_types(cls).items():
            if "float" in str(annotation):
                out.add((cls, name))
    return sorted(out, key=lambda c: (c[0].__name__, c[1]))


def test_every_float_setting_refuses_non_finite_values() -> None:
    fields = _float_fields()
    assert len(fields) > 40  # the sweep covers the settings, not an empty list
    for cls, name in fields:
        annotation = str(field_types(cls)[name])
        for bad in (math.inf, -math.inf, math.nan):
            value = (1.0, bad) if "tuple" in annotation else bad
            with pytest.raises(GanInvertError, match=f"setting '{name}' must be"):
                coerce_settings(cls, {name: value})


def test_defaults_and_presets_keep_their_values() -> None:
    """The conversion changes no default and no preset value: only their types are made exact."""
    for name, cls in list_methods().items():
        default = cls.Settings()
        assert dataclasses.asdict(default) == {f.name: f.default if f.default is not dataclasses.MISSING
                                               else f.default_factory() for f in dataclasses.fields(default)}
        for preset_name, preset in cls.presets.items():
            settings = make_method(name, preset_name).settings
            assert {k: getattr(settings, k) for k in preset.settings} == preset.settings, (name, preset_name)


@pytest.mark.parametrize("overrides, message", [
    ({"steps": "abc"}, "setting 'steps' must be an integer, got 'abc'"),
    ({"lr": "nan"}, "setting 'lr' must be a finite number, got 'nan'"),
    ({"lr": math.inf}, "setting 'lr' must be a finite number, got inf"),
    ({"lambda_lpips": math.inf}, "setting 'lambda_lpips' must be a finite number, got inf"),
    ({"lambda_mse": [1, 2]}, "setting 'lambda_mse' must be a finite number, got [1, 2]"),
    ({"lambda_mse": -1}, "setting 'lambda_mse' must be >= 0 (a loss weight), got -1"),
    ({"steps": 2.5}, "setting 'steps' must be an integer, got 2.5"),
    ({"steps": True}, "setting 'steps' must be an integer, got True"),
])
@pytest.mark.parametrize("method", ["w+", "sphinx", "ilo", "sam-opt", "pti", "fw+"])
def test_make_method_refuses_ill_typed_settings(method: str, overrides: dict, message: str) -> None:
    with pytest.raises(GanInvertError, match="^" + re.escape(message)):
        make_method(method, None, overrides)


def test_method_settings_built_directly_are_typed_too() -> None:
    settings = type(make_method("w+").settings)(lr=1, steps=5.0)
    assert settings.lr == 1.0 and type(settings.lr) is float and type(settings.steps) is int
    with pytest.raises(GanInvertError, match="setting 'lr' must be a finite number, got nan"):
        type(make_method("w+").settings)(lr=math.nan)


def test_method_specific_settings() -> None:
    assert make_method("ilo", None, {"round_shares": [1, 3]}).settings.round_shares == (1.0, 3.0)
    assert make_method("sam-opt", None, {"feature_blocks": [2, 3]}).settings.feature_blocks == (2, 3)
    sphinx = make_method("sphinx", None, {"content_input": 8, "encoder_widths": (64, "D/2")}).settings
    assert sphinx.content_input == "8" and sphinx.encoder_widths == ("64", "D/2")
    for overrides, message in [
        ({"round_shares": ()}, "round_shares must be numbers >= 0 with a positive sum"),
        ({"round_shares": [1, "x"]}, "setting 'round_shares' must be a tuple of finite numbers"),
        ({"feature_radii": ()}, "feature_radii must be a non-empty tuple"),
        ({"feature_radii": (1.0, math.inf)}, "setting 'feature_radii' must be a tuple of finite numbers or None"),
        ({"geocross": math.nan}, "setting 'geocross' must be a finite number"),
    ]:
        with pytest.raises(GanInvertError, match=re.escape(message)):
            make_method("ilo", None, overrides)
    for overrides, message in [
        ({"decoder_widths": ()}, "the last decoder width must be 'D'"),
        ({"encoder_widths": ("x",)}, "widths must be integers >= 1, 'D', 'C', 'D/k' or 'C/k', got 'x'"),
        ({"encoder_widths": ("D/0",)}, "got 'D/0'"),
        ({"content_input": "-3"}, "got '-3'"),
        ({"noise": "yes"}, "setting 'noise' must be True or False, got 'yes'"),
        ({"content_lr": 0}, "setting 'content_lr' must be > 0 (a learning rate)"),
    ]:
        with pytest.raises(GanInvertError, match=re.escape(message)):
            make_method("sphinx", None, overrides)
    with pytest.raises(GanInvertError, match="setting 'pnorm_weight' must be >= 0"):
        make_method("w+", None, {"pnorm_weight": -1.0})
    with pytest.raises(GanInvertError, match="setting 'tau' must be a finite number or None, got 'big'"):
        make_method("sam-opt", None, {"tau": "big"})
    with pytest.raises(GanInvertError, match="setting 'mono_weight' must be >= 0"):
        make_method("discover", None, {"mono_weight": -0.5})
    with pytest.raises(GanInvertError, match="setting 'network_path' must be a string, got None"):
        make_method("hyperinverter", None, {"network_path": None})


# ----------------------------------------------------------------------------- trainers
def test_trainer_settings_are_typed(random_generator, tmp_path: Path) -> None:
    G = random_generator(32, seed=0)
    for settings, message in [
        ({"hidden": "abc"}, "setting 'hidden' must be an integer, got 'abc'"),
        ({"lr": math.nan}, "setting 'lr' must be a finite number, got nan"),
        ({"lambda_latent": -1}, "setting 'lambda_latent' must be >= 0 (a loss weight), got -1"),
        ({"base_width": 0}, "base_width must be >= 1, got 0"),
        ({"no_such_setting": 1}, "unknown setting(s) no_such_setting for inverter hyperinverter-e1; known: "),
    ]:
        config = InverterTrainConfig(kind="hyperinverter-e1", out=tmp_path / "run", steps=1, settings=settings)
        with pytest.raises(GanInvertError) as info:
            train_inverter(G, config)
        assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()
    with pytest.raises(GanInvertError, match="setting 'steps' must be an integer, got 2.5"):
        train_inverter(G, InverterTrainConfig(kind="hyperinverter-e1", out=tmp_path / "run", steps=2.5))
    fz = TRAINERS["fz-encoder"].Settings
    assert fz(max_angle=20).max_angle == 20.0 and type(fz(max_angle=20).max_angle) is float
    with pytest.raises(GanInvertError, match="setting 'image_weight' must be a finite number, got inf"):
        fz(image_weight=math.inf)
    with pytest.raises(GanInvertError, match="setting 'error_steps' must be an integer, got 'many'"):
        TRAINERS["sam-predictor"].Settings(error_steps="many")


# ----------------------------------------------------------------------------- suites
def test_make_suite_refuses_unknown_and_ill_typed_options() -> None:
    assert make_suite("robustness", trials=2.0).trials == 2 and type(make_suite("robustness", trials=2.0).trials) is int
    assert make_suite("ood-geometric", border="black").border == "black"
    for name, options, message in [
        ("denoise", {"trials": 2}, "unknown option(s) trials for suite denoise; known: none"),
        ("ood-geometric", {"trials": 2}, "unknown option(s) trials for suite ood-geometric; known: border"),
        ("robustness", {"trials": "abc"}, "option 'trials' must be an integer, got 'abc'"),
        ("robustness", {"trials": True}, "option 'trials' must be an integer, got True"),
        ("ood-geometric", {"border": 3.5}, "option 'border' must be a string, got 3.5"),
    ]:
        with pytest.raises(GanInvertError) as info:
            make_suite(name, **options)
        assert message in str(info.value), str(info.value)
    assert all(make_suite(name).options() == SUITES[name]().options() for name in SUITES)


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def files(tmp_path_factory, random_generator) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("settings")
    save_generator(random_generator(32, seed=51), d / "g.pt")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "photo.png")
    return SimpleNamespace(dir=d, g=d / "g.pt", photo=d / "photo.png")


def _assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0] == f"ganinvert: error: {message}" or lines[0].startswith(f"ganinvert: error: {message}"), lines[0]


BAD_SETS = {
    "steps=abc": "setting 'steps' must be an integer, got 'abc'",
    "lr=nan": "setting 'lr' must be a finite number, got 'nan'",
    "lr=1e999": "setting 'lr' must be a finite number, got inf",
    "lambda_lpips=1e999": "setting 'lambda_lpips' must be a finite number, got inf",
    "lambda_mse=[1,2]": "setting 'lambda_mse' must be a finite number, got [1, 2]",
    "lambda_mse=-1": "setting 'lambda_mse' must be >= 0 (a loss weight), got -1",
    "steps=2.5": "setting 'steps' must be an integer, got 2.5",
    "steps=True": "setting 'steps' must be an integer, got True",
}


@pytest.mark.parametrize("item", list(BAD_SETS))
def test_invert_set_is_typed(capsys, files, tmp_path: Path, item: str) -> None:
    # No --steps (it would override steps=...) and no --no-lpips (it would override lambda_lpips=...).
    code = main(["invert", str(files.photo), "-g", str(files.g), "-m", "w+", "--set", item, "-o", str(tmp_path / "o")])
    _assert_one_line_error(code, capsys.readouterr().err, BAD_SETS[item])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("item, message", [
    ("hidden=abc", "setting 'hidden' must be an integer, got 'abc'"),
    ("lr=nan", "setting 'lr' must be a finite number, got 'nan'"),
    ("lr=1e999", "setting 'lr' must be a finite number, got inf"),
    ("lambda_lpips=1e999", "setting 'lambda_lpips' must be a finite number, got inf"),
    ("lambda_mse=[1,2]", "setting 'lambda_mse' must be a finite number, got [1, 2]"),
    ("lambda_mse=-1", "setting 'lambda_mse' must be >= 0 (a loss weight), got -1"),
    ("hidden=2.5", "setting 'hidden' must be an integer, got 2.5"),
    ("hidden=True", "setting 'hidden' must be an integer, got True"),
    ("speed=2", "unknown setting(s) speed for inverter hyperinverter-e1; known: "),
])
def test_train_inverter_set_is_typed(capsys, files, tmp_path: Path, item: str, message: str) -> None:
    code = main(["train-inverter", "hyperinverter-e1", "-g", str(files.g), "--out", str(tmp_path / "run"),
                 "--steps", "1", "--batch", "1", "--set", "base_width=4", "--set", "max_width=8", "--set", item])
    _assert_one_line_error(code, capsys.readouterr().err, message)
    assert not (tmp_path / "run").exists()


def test_evaluate_set_is_typed(capsys, files, tmp_path: Path) -> None:
    code = main(["evaluate", "denoise", "--images", str(files.photo), "-g", str(files.g), "--methods", "w+",
                 "--no-lpips", "--set", "lr=1e999", "--trials", "3", "--out", str(tmp_path / "e")])
    _assert_one_line_error(code, capsys.readouterr().err, "setting 'lr' must be a finite number, got inf")


def test_subprocess_reports_a_bad_set_in_one_line(files, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ganinvert.cli", "invert", str(files.photo), "-g", str(files.g),
                           "--no-lpips", "--set", "steps=abc", "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    _assert_one_line_error(proc.returncode, proc.stderr, "setting 'steps' must be an integer, got 'abc'")
