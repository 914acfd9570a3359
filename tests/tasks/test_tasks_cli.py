"""``ganinvert restore | edit | interpolate | directions | discover`` through ``ganinvert.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from task_fixtures import sample, saved_generator

from ganinvert import cli as main_cli
from ganinvert.cli import tasks as task_cli
from ganinvert.io import save_image

NAMES = ("restore", "edit", "interpolate", "directions", "discover")

@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANINVERT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    G = saved_generator(root / "g.pt", seed=0)
    saved_generator(root / "other.pt", seed=7)
    for seed in (1, 2):
        save_image(sample(G, seed), root / f"s{seed}.png")
    mask = np.full((G.resolution, G.resolution), 255, np.uint8)
    mask[4:10, 4:10] = 0
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:8, :8]).save(root / "small_mask.png")
    return {"root": root, "g": root / "g.pt", "other": root / "other.pt", "s1": root / "s1.png",
            "s2": root / "s2.png", "mask": root / "mask.png", "small_mask": root / "small_mask.png"}


def run(*args: object) -> int:
    return main_cli.main([str(a) for a in args])


def one_line_error(capsys: pytest.CaptureFixture, *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("ganinvert: error:") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def restored(files: dict[str, Path], out: Path, *extra: object) -> int:
    return run("restore", files["s1"], files["s2"], "-g", files["g"], "--method", "w+", "--steps", 2, "--no-lpips",
               "--out", out, *extra)


def test_the_group_serves_the_task_commands() -> None:
    assert tuple(task_cli.COMMANDS) == NAMES
    assert all(main_cli.cli.commands[name] is task_cli.COMMANDS[name] for name in NAMES)


@pytest.mark.parametrize("task, options", [("denoise", ["--sigma", 0.3]), ("cs", ["--fraction", 0.2]),
                                           ("sr", ["--factor", 2]), ("inpaint", ["--mask", "MASK"])])
def test_restore_writes_every_file(tmp_path: Path, files, task: str, options: list) -> None:
    options = [files["mask"] if o == "MASK" else o for o in options]
    assert restored(files, tmp_path, "--task", task, *options) == 0
    for stem in ("s1", "s2"):
        folder = tmp_path / stem
        metrics = json.loads((folder / "metrics.json").read_text())
        assert {"psnr", "ssim", "task", "method"} <= set(metrics) and metrics["task"] == task
        assert (folder / "restoration.png").is_file() and (folder / "comparison.png").is_file()
        assert (folder / "result.safetensors").is_file()
        assert (folder / "measurement.png").is_file() == (task != "cs")
        assert ("psnr_measurement" in metrics) == (task != "cs")


def test_restore_measured_sr_takes_the_low_resolution_image(tmp_path: Path, files) -> None:
    Image.open(files["s1"]).resize((8, 8), Image.Resampling.BOX).save(tmp_path / "low.png")
    assert run("restore", tmp_path / "low.png", "--measured", "--task", "sr", "--factor", 2, "-g", files["g"],
               "--method", "w+", "--steps", 2, "--no-lpips", "--out", tmp_path / "out") == 0
    metrics = json.loads((tmp_path / "out" / "low" / "metrics.json").read_text())
    assert "psnr" not in metrics and metrics["measured"] is True
    with Image.open(tmp_path / "out" / "low" / "measurement.png") as img:
        assert img.size == (8, 8)


@pytest.mark.parametrize("options, fragments", [
    (["--task", "cs", "--fraction", 1.5], ["fraction must be in (0, 1]"]),
    (["--task", "cs", "--fraction", 0], ["fraction must be in (0, 1]"]),
    (["--task", "inpaint", "--mask", "SMALL"], ["8x8", "16x16"]),
    (["--task", "denoise"], ["needs --sigma"]),
    (["--task", "cs", "--fraction", 0.5, "--measured"], ["not images"]),
    (["--task", "denoise", "--sigma", 0.1, "--factor", 2], ["--factor is for task 'sr'"]),
    (["--task", "denoise", "--sigma", 0.1, "--set", "bogus=1"], ["unknown setting"]),
])
def test_restore_bad_inputs_exit_2_with_one_line(tmp_path: Path, files, capsys, options: list, fragments) -> None:
    options = [files["small_mask"] if o == "SMALL" else o for o in options]
    assert restored(files, tmp_path, *options) == 2
    one_line_error(capsys, *fragments)


def test_edit_directions_and_interpolate(tmp_path: Path, files, capsys) -> None:
    assert restored(files, tmp_path / "r", "--task", "denoise", "--sigma", 0.2) == 0
    a, b = tmp_path / "r" / "s1" / "result.safetensors", tmp_path / "r" / "s2" / "result.safetensors"

    assert run("edit", a, "-g", files["g"], "--direction", "pca:0", "--strength=-2,0,2", "--layers", "1-3",
               "--no-lpips", "--out", tmp_path / "edit") == 0
    record = json.loads((tmp_path / "edit" / "edit.json").read_text())
    assert [f["alpha"] for f in record["frames"]] == [-2.0, 0.0, 2.0] and record["layers"] == [1, 2, 3]
    assert record["frames"][1]["rmse"] == 0.0 and min(record["frames"][0]["rmse"], record["frames"][2]["rmse"]) > 0
    assert {"edit_strip.png", "edit_00.png", "edit_02.png"} <= {p.name for p in (tmp_path / "edit").iterdir()}

    assert run("directions", "-g", files["g"], "--k", 3, "--out", tmp_path / "dirs.pt") == 0
    saved = torch.load(tmp_path / "dirs.pt", weights_only=True)
    assert saved["directions"].shape == (3, 16) and saved["explained_variance"].shape == (3,)
    assert len(saved["generator_sha256"]) == 64
    assert run("edit", a, "-g", files["g"], "--direction", f"{tmp_path / 'dirs.pt'}:1", "--no-lpips",
               "--out", tmp_path / "edit2") == 0

    assert run("interpolate", a, b, "-g", files["g"], "--steps", 4, "--out", tmp_path / "interp") == 0
    names = {p.name for p in (tmp_path / "interp").iterdir()}
    assert {"interp_strip.png", "interp.gif", "interp_00.png", "interp_03.png"} <= names
    capsys.readouterr()

    np.save(tmp_path / "wide.npy", np.ones(17, np.float32))
    assert run("edit", a, "-g", files["g"], "--direction", tmp_path / "wide.npy", "--out", tmp_path / "e3") == 2
    one_line_error(capsys, "has shape (17,)", "style_dim 16")
    assert run("edit", a, "-g", files["g"], "--direction", "pca:0", "--layers", "2-40", "--out", tmp_path / "e3") == 2
    one_line_error(capsys, "--layers", "out of range")

    other = tmp_path / "o"
    assert run("restore", files["s1"], "-g", files["other"], "--method", "w+", "--steps", 1, "--no-lpips",
               "--task", "denoise", "--sigma", 0.2, "--out", other) == 0
    capsys.readouterr()
    assert run("interpolate", a, other / "s1" / "result.safetensors", "-g", files["g"], "--out", tmp_path / "i2") == 2
    one_line_error(capsys, "different generators")
    assert run("edit", other / "s1" / "result.safetensors", "-g", files["g"], "--direction", "pca:0",
               "--out", tmp_path / "e4") == 2
    one_line_error(capsys, "result was made with generator")


def test_discover_writes_traversal_and_alphas(tmp_path: Path, files, capsys) -> None:
    assert run("discover", files["s1"], "--attribute", "rotation", "-g", files["g"], "--steps", 3,
               "--set", "attribute_lr=0.5", "--frames-per-segment", 2, "--out", tmp_path) == 0
    record = json.loads((tmp_path / "s1" / "discovery.json").read_text())
    assert record["factors"] == [0.0, 22.5, 45.0] and len(record["alphas"]) == 3 and record["alphas"][0] == 0.0
    assert len(record["traversal_alphas"]) == 5 and len(record["psnr"]) == 3
    names = {p.name for p in (tmp_path / "s1").iterdir()}
    assert {"variants.png", "traversal_strip.png", "traversal.gif", "result.safetensors", "curve.png"} <= names
    assert "alphas 0.000" in capsys.readouterr().out
    assert run("discover", files["s1"], "--attribute", "zoom", "--factors", "1,0", "-g", files["g"],
               "--out", tmp_path / "bad") == 2
    one_line_error(capsys, "zoom factor must be > 0")
