"""Smoke tests of bench/time_to_quality.py (its rosinality-projector reference, curves, resumable
cells, ``--quick`` reports) and of bench/speed.py's ``--precision`` table.

Timings and PSNR figures of these runs are meaningless (10 steps, tiny generators); only the
structure and the invariants are checked.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from ganinvert.inversion import invert
from ganinvert.inversion.methods.base import InversionContext, noise_names
from tests.conftest import make_random_generator, shared_file

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ttq():
    module = load_script("time_to_quality")
    yield module
    del sys.modules["bench_time_to_quality"]


@pytest.fixture(scope="module")
def speed():
    module = load_script("speed")
    yield module
    del sys.modules["bench_speed"]


def test_first_reach_is_the_first_step_at_or_above_the_target(ttq):
    assert ttq.first_reach([20.0, 25.0, 24.0, 26.0], 24.5) == 2
    assert ttq.first_reach([20.0, 25.0], 25.0) == 2
    assert ttq.first_reach([20.0, 21.0], 24.5) is None


def test_cells_rerun_a_corrupt_or_foreign_cell(ttq, tmp_path):
    cells = ttq.Cells(tmp_path)
    calls = []
    spec = {"image": "gen0", "steps": 3}
    assert cells.run("timing", "gen0-w+", spec, lambda: calls.append(1) or {"x": 1})["x"] == 1
    assert cells.run("timing", "gen0-w+", spec, lambda: calls.append(1) or {"x": 2})["x"] == 1  # resumed
    assert len(calls) == 1
    assert cells.run("timing", "gen0-w+", {**spec, "steps": 4}, lambda: calls.append(1) or {"x": 3})["x"] == 3
    cells.path("timing", "gen0-w+").write_text('{"spec": {"image"')  # cut short by hand
    assert cells.run("timing", "gen0-w+", spec, lambda: calls.append(1) or {"x": 4})["x"] == 4
    assert len(calls) == 3


def test_projector_reference_follows_projector_py(ttq):
    G = make_random_generator(32, seed=1)
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    method = ttq.RosinalityProjector(ttq.ProjectorSettings(steps=8, lambda_mse=1.0, lambda_lpips=0.0))
    (stage,) = method.stages(G)
    (group,) = stage.groups  # one Adam group: w+ and every noise map, the scheduled lr 0.1
    assert group.names == ("latent", *noise_names(G)) and group.lr == 0.1 and group.schedule == "rampup-cosine"
    params = method.init_params(InversionContext(G=G, rngs=[torch.Generator().manual_seed(0)], image=target))
    mean, latent_std = method._statistics(G)
    assert torch.equal(params["latent"], G.broadcast(mean[None]))
    assert latent_std > 0
    ctx = InversionContext(G=G, rngs=[torch.Generator().manual_seed(0)], step=0)
    noisy = method.inputs(ctx, params).ws
    assert 0 < float((noisy - params["latent"]).std()) < 2 * latent_std * 0.05
    ctx.step = 6  # t = 0.75: the w+ noise has decayed to zero
    assert torch.equal(method.inputs(ctx, params).ws, params["latent"])
    seen = []
    result = invert(G, target, method, progress=False, callback=lambda p: seen.append(p.psnr))
    assert len(seen) == 8 and all(math.isfinite(v) for v in seen)
    for name in noise_names(G):  # renormalised after every step
        noise = result.params[name]
        assert abs(float(noise.mean())) < 1e-5 and abs(float(noise.square().mean()) - 1) < 1e-4


def test_quick_run_writes_reports_and_resumes(ttq, tmp_path):
    shared_file("weights", "lpips_alex.pth")
    shared_file("data", "images", "celeba_hq")
    argv = ["--quick", "--images", "1", "--out", str(tmp_path)]
    ttq.main(argv)
    cells = sorted(tmp_path.glob("*/*.json"))
    assert {p.parent.name for p in cells} == {"accuracy", "timing"}
    assert len([p for p in cells if p.parent.name == "timing"]) == len(ttq.CONFIGURATIONS)
    report = json.loads((tmp_path / "time_to_quality.json").read_text())
    timing = report["time_to_quality"]
    assert set(timing["summary"]) == set(ttq.CONFIGURATIONS) - {"reference"}
    image = timing["images"]["gen0"]
    assert image["target_psnr"] == json.loads((tmp_path / "timing" / "gen0-reference.json").read_text())["curve"][-1]
    for config in timing["summary"]:
        run = image[config]
        assert run["step"] is None or (run["seconds"] > 0 and run["ratio"] == run["seconds"] / image["reference_seconds"])
    steps = report["steps_to_quality"]["baselines"]["bf16"]["images"]["gen0"]
    assert 0 < steps["fraction"] <= 1
    accuracy = json.loads((tmp_path / "precision.json").read_text())["accuracy"]["w+"]
    assert set(accuracy["images"]) == {"gen0"} and accuracy["steps"] == 10
    assert "| w+ bf16 |" in (tmp_path / "time_to_quality.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    ttq.main(argv)  # every cell exists: nothing runs again
    assert {p: p.stat().st_mtime_ns for p in cells} == stamps


def test_speed_precision_table(speed, capsys):
    result = speed.main(["--precision", "--json", "--tiny", "--reps", "1", "--threads", "1"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(result))
    rows = {(r["generator"], r["batch"]) for r in result["precision"]}
    assert rows == {("default", 1), ("default", 8), ("32 px tiny", 1), ("32 px tiny", 8), ("64 px tiny", 1)}
    for r in result["precision"]:
        assert r["synthesis_fp32_s"] > 0 and r["engine_step_bf16_s"] > 0 and r["engine_steps_timed"] == 2
        assert 0 < r["bf16_max_abs_err"] < 1 and math.isfinite(r["bf16_psnr_db"])
    assert set(result["environment"]["cpu_flags"]) >= {"avx512_bf16", "amx_bf16"}
    assert "max_abs_err" not in result  # no fast/reference pair in this mode: no agreement figure


def test_precision_step_is_the_plain_pass_in_float32_and_differs_in_bfloat16(speed):
    G, _ = speed.build_generator(32, torch.device("cpu"), seed=3, tiny=True)
    ws = speed.latents(G, 2, seed=0)
    fp32 = speed.precision_step(G, ws, torch.float32)()
    assert torch.equal(fp32, speed.wplus_step(G, ws, "fast")())
    bf16 = speed.precision_step(G, ws, torch.bfloat16)()
    assert bf16.dtype == torch.float32 and ws.grad.dtype == torch.float32
    max_abs, psnr = speed.precision_error(G, ws, torch.bfloat16)
    assert max_abs == pytest.approx(float((bf16 - fp32).abs().max()), rel=1e-3)
    assert 0 < max_abs and 20 < psnr < math.inf
