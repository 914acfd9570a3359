"""Smoke tests of bench/speed.py: its fast-vs-reference agreement check and its JSON output.

They use the script's tiny generators (16 channels), so they take seconds; the timings they
produce are meaningless and are only checked for shape.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from ganinvert.models import stylegan2

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("bench_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture
def broken_fast_path(monkeypatch):
    """The fused styled conv with its noise input dropped: a fast path that no longer matches."""
    real = stylegan2.modulated_conv_act
    monkeypatch.setattr(stylegan2, "modulated_conv_act",
                        lambda x, style, demod, noise, *rest: real(x, style, demod, torch.zeros_like(noise), *rest))


def test_agreement_of_fast_and_reference_is_within_tolerance(speed):
    G, where = speed.build_generator(32, torch.device("cpu"), seed=3, tiny=True)
    assert "tiny" in where
    ws = speed.latents(G, 3, seed=0)
    assert 0 <= speed.agreement(G, ws) <= speed.TOLERANCE


def test_agreement_check_detects_a_fast_path_that_differs(speed, broken_fast_path):
    G, _ = speed.build_generator(32, torch.device("cpu"), seed=3, tiny=True)
    assert speed.agreement(G, speed.latents(G, 2, seed=0)) > speed.TOLERANCE


def test_agreement_covers_batches_the_fast_path_runs_one_sample_at_a_time(speed, monkeypatch):
    # 256 px with 16 channels: the last block holds 2**20 values per sample, where the CPU fast path
    # runs a batch one sample at a time.
    G, _ = speed.build_generator(256, torch.device("cpu"), seed=5, tiny=True)
    ws = speed.latents(G, 2, seed=0)
    assert G._per_sample_from(G.num_blocks - 1, torch.zeros(2, 16, 128, 128), {}, "fast")
    assert speed.agreement(G, ws) <= speed.TOLERANCE
    # Every sample rendered with sample 0's inputs: the check must notice.
    real = G._sample_inputs
    monkeypatch.setattr(G, "_sample_inputs", lambda i, *args: real(0, *args))
    assert speed.agreement(G, ws) > speed.TOLERANCE


def test_script_exits_nonzero_when_the_paths_disagree(speed, broken_fast_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        speed.main(["--quick-synthesis", "16", "--tiny", "--json", "--reps", "1", "--threads", "1"])
    assert exit_info.value.code == 1
    assert json.loads(capsys.readouterr().out)["max_abs_err"] > speed.TOLERANCE


def test_quick_json_has_the_acceptance_keys(speed, capsys):
    result = speed.main(["--quick", "--json", "--tiny", "--reps", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert json.loads(out) == json.loads(json.dumps(result))  # stdout holds the JSON object and nothing else
    for key in ("speedup_64_b1", "per_image_cost_b8_vs_b1", "sphinx_overhead_64"):
        assert math.isfinite(result[key]), key
    assert result["speedup_64_b1"] > 0 and result["per_image_cost_b8_vs_b1"] > 0
    assert result["max_abs_err"] <= speed.TOLERANCE
    timed = {(r["what"], r["size"], r["batch"], r["impl"]) for r in result["rows"]}
    assert ("synthesis fwd+bwd wrt w+", 64, 8, "fast") in timed
    assert ("synthesis fwd+bwd wrt SPHInX heads+noise", 64, 1, "fast") in timed
    assert any(what.startswith("engine SPHInX step") for what, *_ in timed)
    assert all(r["seconds"] > 0 and r["reps"] == 1 for r in result["rows"])
