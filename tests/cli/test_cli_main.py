"""The ``ganinvert`` command line: one-line errors with exit status 2, and the files a run writes.

(Named test_cli_main.py: tests/training/test_cli.py exists and test folders have no __init__.py,
so a second test_cli.py would clash in pytest's default import mode.)
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ganinvert.cli import main
from ganinvert.models.loading import save_generator

REPO = Path(__file__).resolve().parents[2]


def nvidia_fixture():
    """tests/models/nvidia_fixture.py, imported by path (its folder is not on sys.path from here)."""
    spec = importlib.util.spec_from_file_location("nvidia_fixture", REPO / "tests" / "models" / "nvidia_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory, random_generator) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("cli")
    save_generator(random_generator(32, seed=51), d / "g.pt")
    save_generator(random_generator(32, seed=52), d / "other.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / "photo.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "square.jpg", quality=95)
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    (d / "empty.png").write_bytes(b"")
    (d / "notes.pt").write_text("a text file, not weights\n")
    torch.save({"d": {"convs.0.0.weight": torch.zeros(8, 3, 1, 1), "final_linear.0.weight": torch.zeros(1, 8)}},
               d / "discriminator.pt")
    nvidia_fixture().write_stylegan3_fixture(d / "stylegan3.pkl")
    return SimpleNamespace(dir=d, **{p.stem.replace("-", "_"): p for p in d.iterdir()})


def cli(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("ganinvert: error: ") and message in lines[0], lines[0]


# ----------------------------------------------------------------------------- bad input
BAD_INVERT = {
    "corrupt image": (lambda f: [f.corrupt, "-g", f.g], "cannot read image"),
    "empty image": (lambda f: [f.empty, "-g", f.g], "empty file"),
    "missing image": (lambda f: [f.dir / "nope.png", "-g", f.g], "image not found"),
    "text file as checkpoint": (lambda f: [f.photo, "-g", f.notes], "text file, not a checkpoint"),
    "discriminator checkpoint": (lambda f: [f.photo, "-g", f.discriminator], "discriminator"),
    "StyleGAN3 pickle": (lambda f: [f.photo, "-g", f.stylegan3], "StyleGAN3"),
    "missing generator": (lambda f: [f.photo, "-g", f.dir / "none.pt"], "not found"),
    "missing LPIPS weights": (lambda f: [f.photo, "-g", f.g, "--lpips-weights", "/nonexistent/lpips.pth"],
                              "/nonexistent/lpips.pth"),
    "unknown method": (lambda f: [f.photo, "-g", f.g, "--no-lpips", "-m", "w++"], "unknown method 'w++'"),
    "unknown preset": (lambda f: [f.photo, "-g", f.g, "--no-lpips", "--preset", "turbo"], "unknown preset"),
    "zero steps": (lambda f: [f.photo, "-g", f.g, "--no-lpips", "--steps", "0"], "--steps must be > 0"),
    "negative steps": (lambda f: [f.photo, "-g", f.g, "--no-lpips", "--steps", "-5"], "--steps must be > 0"),
    "steps not a number": (lambda f: [f.photo, "-g", f.g, "--steps", "many"], "'many' is not a valid integer"),
    "malformed --set": (lambda f: [f.photo, "-g", f.g, "--no-lpips", "--set", "lr"], "key=value"),
    "unknown setting": (lambda f: [f.photo, "-g", f.g, "--no-lpips", "--set", "speed=2"], "unknown setting"),
    "bad fit": (lambda f: [f.photo, "-g", f.g, "--fit", "zoom"], "'zoom' is not one of"),
    "unavailable device": (lambda f: [f.photo, "-g", f.g, "--no-lpips", "--device", "cuda:7"],
                           "CUDA is not available") if not torch.cuda.is_available() else
                          (lambda f: [f.photo, "-g", f.g, "--no-lpips", "--device", "warp"], "unknown device"),
}


@pytest.mark.parametrize("case", list(BAD_INVERT))
def test_invert_bad_input_is_one_line_with_status_2(capsys, files, tmp_path, case):
    make_args, message = BAD_INVERT[case]
    # "--steps 2" first, so that a case's own --steps wins and a wrongly accepted case stays short.
    code, out, err = cli(capsys, "invert", "--steps", "2", *make_args(files), "-o", tmp_path / "out")
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_missing_required_option(capsys, files):
    code, _, err = cli(capsys, "invert", files.photo, "-g", files.g)
    assert_one_line_error(code, err, "Missing option '--out'")


def test_unknown_command(capsys):
    code, _, err = cli(capsys, "invertt")
    assert_one_line_error(code, err, "No such command")


def test_output_path_that_cannot_be_a_folder(capsys, files):
    code, _, err = cli(capsys, "sample", "-g", files.g, "--n", "1", "-o", files.photo / "sub")
    assert_one_line_error(code, err, str(files.photo))


def test_subprocess_reports_a_corrupt_image_in_one_line(files, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ganinvert.cli", "invert", str(files.corrupt), "-g", str(files.g),
                           "--no-lpips", "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, "cannot read image")
    assert proc.stdout == ""


# ----------------------------------------------------------------------------- a successful run
@pytest.fixture(scope="module")
def inverted(files, tmp_path_factory, shared):
    """Two images inverted together with LPIPS as a metric (lambda_lpips 0 keeps the run fast)."""
    out = tmp_path_factory.mktemp("run")
    code = main(["invert", str(files.photo), str(files.square), "-g", str(files.g), "-m", "w+", "--steps", "5",
                 "--set", "lambda_lpips=0", "--batch-size", "2", "--lpips-weights",
                 str(shared("weights", "lpips_alex.pth")), "-o", str(out)])
    assert code == 0
    return out


def test_invert_writes_every_file(inverted):
    expected = {"input.png", "reconstruction.png", "comparison.png", "metrics.json", "curve.png",
                "result.safetensors", "result.json"}
    assert sorted(p.name for p in inverted.iterdir()) == ["photo", "square"]  # no checkpoints, locks or temp folders
    for name in ("photo", "square"):
        folder = inverted / name
        assert {p.name for p in folder.iterdir()} == expected
        metrics = json.loads((folder / "metrics.json").read_text())
        assert {"psnr", "ssim", "lpips", "steps", "seconds"} <= set(metrics)
        assert metrics["steps"] == 5 and metrics["method"] == "w+"
        assert 0 < metrics["psnr"] < 100 and 0 <= metrics["lpips"]
        assert Image.open(folder / "input.png").size == (32, 32)
        assert Image.open(folder / "reconstruction.png").size == (32, 32)
        meta = json.loads((folder / "result.json").read_text())
        assert meta["settings"]["steps"] == 5 and meta["settings"]["lambda_lpips"] == 0


def test_render_recreates_the_reconstruction_exactly(capsys, files, inverted, tmp_path):
    for name in ("photo", "square"):
        code, out, err = cli(capsys, "render", inverted / name / "result.safetensors", "-g", files.g,
                             "-o", tmp_path / f"{name}.png")
        assert code == 0 and err == ""
        again = np.asarray(Image.open(tmp_path / f"{name}.png"))
        np.testing.assert_array_equal(again, np.asarray(Image.open(inverted / name / "reconstruction.png")))


def test_render_refuses_another_generator(capsys, files, inverted, tmp_path):
    code, _, err = cli(capsys, "render", inverted / "photo" / "result.safetensors", "-g", files.other,
                       "-o", tmp_path / "x.png")
    assert_one_line_error(code, err, "result was made with generator")
    assert not (tmp_path / "x.png").exists()


def test_render_missing_result(capsys, files, tmp_path):
    code, _, err = cli(capsys, "render", tmp_path / "none.safetensors", "-g", files.g, "-o", tmp_path / "x.png")
    assert_one_line_error(code, err, "result not found")


def test_sphinx_run_and_render_draws(capsys, files, tmp_path):
    code, out, _ = cli(capsys, "invert", files.square, "-g", files.g, "--steps", "3", "--no-lpips", "-o", tmp_path)
    assert code == 0 and "square: PSNR" in out
    result = tmp_path / "square" / "result.safetensors"
    assert json.loads(result.with_suffix(".json").read_text())["method"] == "sphinx"
    code, out, _ = cli(capsys, "render", result, "-g", files.g, "--draws", "2", "-o", tmp_path / "r.png")
    assert code == 0
    strip = Image.open(tmp_path / "r_draws2.png")
    assert strip.size == (3 * 256, 256 + 14)  # the fixed render and 2 draws, 256 px each, labelled
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "r.png")),
                                  np.asarray(Image.open(tmp_path / "square" / "reconstruction.png")))


def test_methods_lists_the_registered_methods(capsys):
    code, out, _ = cli(capsys, "methods")
    assert code == 0
    names = {line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")}
    assert {"w", "w+", "z", "z+", "w+b", "w+s", "w+sb", "z+sb", "sphinx"} <= names
    assert "--preset sphinx-official (default)" in out


def test_sample_is_seeded(capsys, files, tmp_path):
    for run in ("a", "b"):
        assert cli(capsys, "sample", "-g", files.g, "--n", "2", "--seed", "3", "-o", tmp_path / run)[0] == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["sample_00000.png", "sample_00001.png"]
    for name in names:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / name)),
                                      np.asarray(Image.open(tmp_path / "b" / name)))
