"""``ganinvert demo``: the side-by-side of W+, (W+,S,B) and SPHInX with their perturbation strips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ganinvert.cli import main
from ganinvert.cli.demo import DEMO_METHODS, DEMO_SNR_DB, TILE, perturbed_renders

LPIPS_FILE = Path(__file__).resolve().parents[2] / ".." / "shared" / "weights" / "lpips_alex.pth"


def _lpips_args() -> list[str]:
    return ["--lpips-weights", str(LPIPS_FILE)] if LPIPS_FILE.is_file() else ["--no-lpips"]


def test_demo_writes_the_side_by_side_and_every_method_folder(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--threads", "1", *_lpips_args()]) == 0
    with Image.open(out / "demo.png") as figure:
        assert figure.width >= TILE * (2 + len(DEMO_SNR_DB)) and figure.height > TILE * len(DEMO_METHODS)
    summary = json.loads((out / "demo.json").read_text())
    assert list(summary["methods"]) == [m.name for m in DEMO_METHODS]
    assert summary["lpips"] is LPIPS_FILE.is_file() and summary["threads"] == 1
    for spec in DEMO_METHODS:
        folder = out / spec.name
        for name in ("input", "reconstruction", "comparison", "curve", *(f"perturbed_{s:g}dB" for s in DEMO_SNR_DB)):
            assert (folder / f"{name}.png").is_file(), (spec.name, name)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["steps"] == 2 and set(metrics["robustness"]) == {f"{s:g}" for s in DEMO_SNR_DB}
        assert (folder / "result.safetensors").is_file()
    printed = capsys.readouterr().out
    assert all(f"{m.title}: PSNR " in printed for m in DEMO_METHODS) and "perturbed at 10 dB" in printed


def test_a_second_demo_is_refused_at_once_without_overwrite(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    (out / "w+").mkdir(parents=True)
    assert main(["demo", "--out", str(out), "--steps", "2", "--no-lpips"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a demo" in err[0] and "--overwrite" in err[0]
    assert not (out / "demo.png").exists()
    assert main(["demo", "--out", str(out), "--steps", "2", "--threads", "1", "--no-lpips", "--overwrite"]) == 0
    assert (out / "demo.png").is_file() and (out / "w+" / "metrics.json").is_file()


@pytest.mark.parametrize("args", [["--steps", "0"], ["--seed", "-1"], ["--threads", "0"]])
def test_bad_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--no-lpips", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ganinvert: error: ")


def test_without_lpips_weights_the_demo_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import ganinvert.metrics
    monkeypatch.delenv("GANINVERT_LPIPS_WEIGHTS", raising=False)
    monkeypatch.setattr(ganinvert.metrics, "lpips_available", lambda *a, **k: False)
    assert main(["demo", "--out", str(tmp_path / "d"), "--steps", "2", "--threads", "1"]) == 0
    assert "No LPIPS weights found" in capsys.readouterr().err
    summary = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert summary["lpips"] is False and "lpips" not in summary["methods"]["w+"]


def test_the_strip_perturbs_as_latent_robustness_does(random_generator) -> None:
    """Draw k of the strip is latent_robustness's first trial when both start from the same seed,
    so the strip shows the perturbation the robustness figures measure."""
    from ganinvert.inversion import invert
    from ganinvert.metrics import psnr
    from ganinvert.tasks.robustness import latent_robustness

    G = random_generator()
    target = G(torch.randn(1, G.style_dim, generator=torch.Generator().manual_seed(3))).clamp(-1, 1)
    result = invert(G, target, "w+", settings={"steps": 3, "lambda_lpips": 0.0}, progress=False)
    clean = result.render(G)
    strip = perturbed_renders(G, result, [20.0], seed=5)
    rows = latent_robustness(G, result, [20.0], trials=1, seed=5)
    assert float(psnr(strip[0], clean)[0]) == pytest.approx(rows[0]["psnr"], abs=1e-4)
    assert torch.allclose(perturbed_renders(G, result, [300.0], seed=5)[0], clean, atol=1e-4)
    assert not torch.allclose(perturbed_renders(G, result, [20.0, 10.0], seed=5)[1], strip[0])
