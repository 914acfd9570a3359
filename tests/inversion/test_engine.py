"""The inversion engine: resumable runs, batch independence, input validation, losses and result files."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from ganinvert.errors import GanInvertError
from ganinvert.inversion import InversionResult, Progress, invert, make_method
from ganinvert.inversion.result import stack_results

NO_LPIPS = {"lambda_lpips": 0.0}


class Killed(Exception):
    """Raised from the progress callback to simulate a run killed mid-way."""


@pytest.fixture(scope="module")
def G(random_generator):
    return random_generator(32, seed=21)


@pytest.fixture(scope="module")
def targets(G):
    """Four in-domain images from per-layer latents near w_avg."""
    z = torch.randn(4, G.num_ws, G.style_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return G.synthesis(G.truncate(G.mapping(z), 0.7))


def run(G, target, method="w+", steps=6, **kwargs):
    settings = {"steps": steps, **NO_LPIPS, **kwargs.pop("settings", {})}
    return invert(G, target, method, settings=settings, progress=False, **kwargs)


def assert_same_params(a: InversionResult, b: InversionResult, tol: float) -> None:
    assert a.params.keys() == b.params.keys()
    for name in a.params:
        assert a.params[name].shape == b.params[name].shape, name
        assert (a.params[name] - b.params[name]).abs().max() <= tol, name


# ----------------------------------------------------------------------------- kill and resume
@pytest.mark.parametrize("method", ["w+", "w+sb", "sphinx"])
def test_killed_run_resumes_to_the_same_tensors(tmp_path, G, targets, method):
    target, ckpt = targets[:2], tmp_path / "run" / "ckpt.pt"
    steps, every, kill_at = 12, 4, 7
    uninterrupted = run(G, target, method, steps=steps, seed=[3, 4])

    def kill(progress: Progress) -> None:
        if progress.step == kill_at:
            raise Killed

    with pytest.raises(Killed):
        run(G, target, method, steps=steps, seed=[3, 4], checkpoint_path=ckpt, checkpoint_every=every, callback=kill)
    assert os.listdir(ckpt.parent) == ["ckpt.pt"]  # saved at step 4, atomically (no temp files)
    assert torch.load(ckpt, weights_only=True)["global_step"] == every

    seen = []
    resumed = run(G, target, method, steps=steps, seed=[3, 4], checkpoint_path=ckpt, checkpoint_every=every,
                  resume=True, callback=lambda p: seen.append(p.step))
    assert seen == list(range(every + 1, steps + 1))  # continued after the checkpoint
    assert_same_params(resumed, uninterrupted, 1e-6)
    assert resumed.history["loss"] == pytest.approx(uninterrupted.history["loss"], rel=1e-6)
    assert len(resumed.history["psnr"]) == steps
    assert not ckpt.exists()  # a finished run removes its checkpoint


def test_resume_without_checkpoint_starts_fresh(tmp_path, G, targets):
    fresh = run(G, targets[:1], checkpoint_path=tmp_path / "none.pt", resume=True)
    assert_same_params(fresh, run(G, targets[:1]), 0.0)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, G, targets):
    ckpt = tmp_path / "ckpt.pt"

    def kill(progress: Progress) -> None:
        if progress.step == 3:
            raise Killed

    with pytest.raises(Killed):
        run(G, targets[:1], steps=6, checkpoint_path=ckpt, checkpoint_every=2, callback=kill)
    with pytest.raises(GanInvertError, match="different run"):
        run(G, targets[:1], steps=6, settings={"lr": 0.02}, checkpoint_path=ckpt, resume=True)
    with pytest.raises(GanInvertError, match="different run"):
        run(G, targets[1:2], steps=6, checkpoint_path=ckpt, resume=True)


def test_unreadable_checkpoint_is_reported(tmp_path, G, targets):
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_text("garbage")
    with pytest.raises(GanInvertError, match="cannot read checkpoint"):
        run(G, targets[:1], checkpoint_path=ckpt, resume=True)


# ----------------------------------------------------------------------------- batch independence
@pytest.mark.parametrize("method", ["w+", "sphinx"])
def test_batch_equals_single_runs(reference_generator_32, method):
    """Per-image losses, generators and slices: a batch of 4 equals 4 single runs. (Few steps: Adam
    turns float32 round-off differences between batched and single convolutions into growing
    differences over long runs.)"""
    G = reference_generator_32
    z = torch.randn(4, G.style_dim, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        target = G.synthesis(G.broadcast(G.truncate(G.mapping(z), 0.7)))
    seeds = [5, 6, 7, 8]
    batch = run(G, target, method, steps=10, seed=seeds)
    for i, seed in enumerate(seeds):
        single = run(G, target[i:i + 1], method, steps=10, seed=seed)
        assert_same_params(single, batch.select(i), 1e-4)


def test_one_seed_for_a_batch_gives_identical_images_identical_results(G, targets):
    twice = torch.cat([targets[:1], targets[:1]])
    result = run(G, twice, "sphinx", seed=2)
    assert result.seeds == [2, 2]
    for name, tensor in result.params.items():
        assert torch.allclose(tensor[0], tensor[1], atol=1e-5), name


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad,message", [
    (torch.zeros(1, 3, 16, 16), "target must be"),
    (torch.zeros(3, 32, 32), "target must be"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
])
def test_bad_targets(G, bad, message):
    with pytest.raises(GanInvertError, match=message):
        run(G, bad)


def test_other_bad_arguments(G, targets):
    with pytest.raises(GanInvertError, match="2 seeds for 1 images"):
        run(G, targets[:1], seed=[1, 2])
    with pytest.raises(GanInvertError, match="target image or a measurement"):
        run(G, None)
    with pytest.raises(GanInvertError, match="uses LPIPS"):
        invert(G, targets[:1], "w+", settings={"steps": 2}, progress=False)
    with pytest.raises(GanInvertError, match="2 measurements for 1 target"):
        run(G, targets[:1], measurement=targets[:2])
    with pytest.raises(GanInvertError, match="measurement contains NaN"):
        run(G, None, measurement=torch.full((1, 3, 32, 32), float("inf")))


@pytest.mark.parametrize("args,message", [
    (("nope", None, None), "unknown method 'nope'"),
    (("w+", "fast", None), "unknown preset 'fast'"),
    (("w+", None, {"stepz": 3}), "unknown setting"),
    (("w+", None, {"steps": 0}), "steps must be > 0"),
    (("w+", None, {"lr": -1.0}), "setting 'lr' must be > 0"),
    (("sphinx", None, {"schedule": "zigzag"}), "unknown LR schedule"),
    (("sphinx", None, {"activation": "tanh"}), "activation"),
])
def test_make_method_validates(args, message):
    with pytest.raises(GanInvertError, match=message):
        make_method(*args)


# ----------------------------------------------------------------------------- loss, operator, progress
def test_first_loss_is_mse_plus_lpips_of_the_initial_image(G, targets, shared):
    from ganinvert.metrics import LPIPS
    lpips = LPIPS(weights=shared("weights", "lpips_alex.pth"))
    result = invert(G, targets[:2], "w+", settings={"steps": 1, "lambda_mse": 0.5, "lambda_lpips": 2.0},
                    lpips=lpips, progress=False)
    with torch.no_grad():
        start = G.synthesis(G.broadcast(G.w_avg[None].expand(2, -1)))  # w+ starts at w_avg
        expected = 0.5 * (start - targets[:2]).square().flatten(1).mean(1) + 2.0 * lpips(start, targets[:2])
    assert result.history["loss"][0] == pytest.approx(float(expected.mean()), rel=1e-4)


def test_operator_and_measurement(G, targets):
    def downsample(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 4)

    measured = downsample(targets[:1])
    with_clean = run(G, targets[:1], steps=30, operator=downsample, settings={"lr": 0.05})
    blind = run(G, None, steps=30, operator=downsample, measurement=measured, settings={"lr": 0.05})
    # The method never sees the clean image, so both runs are the same optimisation.
    assert_same_params(with_clean, blind, 1e-6)
    assert all(p == p for p in with_clean.history["psnr"])  # a clean target gives PSNR per step
    assert all(p != p for p in blind.history["psnr"])       # no clean target: NaN
    assert with_clean.history["loss"][-1] < 0.5 * with_clean.history["loss"][0]


def test_progress_callback_and_history(G, targets):
    seen: list[Progress] = []
    result = run(G, targets[:2], steps=5, callback=seen.append)
    assert [p.step for p in seen] == [1, 2, 3, 4, 5]
    assert all(p.total == 5 and p.stage == "main" for p in seen)
    assert [p.loss for p in seen] == result.history["loss"]
    assert len(result.history["psnr"]) == 5 and result.seconds > 0


def test_generator_is_not_modified(G, targets, hash_state):
    before = hash_state(G)
    flags = [p.requires_grad for p in G.parameters()]
    run(G, targets[:1], "w+sb", steps=3)
    assert hash_state(G) == before
    assert [p.requires_grad for p in G.parameters()] == flags


# ----------------------------------------------------------------------------- results
def test_result_save_load_render(tmp_path, G, targets):
    result = run(G, targets[:2], "w+b", steps=4, seed=[1, 2])
    path = result.save(tmp_path / "res")
    assert path.name == "res.safetensors" and sorted(os.listdir(tmp_path)) == ["res.json", "res.safetensors"]
    meta = json.loads((tmp_path / "res.json").read_text())
    assert meta["method"] == "w+b" and meta["settings"]["steps"] == 4 and meta["seeds"] == [1, 2]
    assert meta["generator"]["config"]["resolution"] == 32
    loaded = InversionResult.load(tmp_path / "res.json")
    assert_same_params(loaded, result, 0.0)
    assert loaded.history == result.history
    assert torch.equal(loaded.render(G), result.render(G))
    draws = loaded.render_draws(G, 3)
    assert draws.shape == (3, 2, 3, 32, 32)
    assert all(torch.equal(d, draws[0]) for d in draws)  # a deterministic method draws nothing


def test_select_and_stack_are_inverse(G, targets):
    result = run(G, targets[:3], "w+s", steps=2, seed=[0, 1, 2])
    parts = [result.select(i) for i in range(3)]
    assert all(p.batch_size == 1 for p in parts)
    assert_same_params(stack_results(parts), result, 0.0)


def test_result_refuses_another_generator(G, targets, random_generator):
    result = run(G, targets[:1], steps=2)
    other_config = random_generator(32, channels={4: 32, 8: 32, 16: 16, 32: 8}, seed=0)
    with pytest.raises(GanInvertError, match="different configuration"):
        result.render(other_config)
    result.generator["sha256"] = "0" * 64
    same_config = random_generator(32, seed=99)
    same_config.source = type("Source", (), {"sha256": "f" * 64, "path": "other.pt"})()
    with pytest.raises(GanInvertError, match="made with generator"):
        result.render(same_config)


@pytest.mark.parametrize("damage,message", [
    ("missing", "result not found"),
    ("json", "cannot read result"),
    ("format", "not a ganinvert result"),
])
def test_result_load_errors(tmp_path, G, targets, damage, message):
    path = run(G, targets[:1], steps=1).save(tmp_path / "r")
    meta = path.with_suffix(".json")
    if damage == "missing":
        path.unlink()
    elif damage == "json":
        meta.write_text("{not json")
    else:
        meta.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(GanInvertError, match=message):
        InversionResult.load(path)


@pytest.mark.parametrize("method", ["w+", "ilo", "pti"])
def test_a_callback_can_stop_the_run_and_the_result_renders(G, targets, method):
    seen: list[int] = []

    def stop_after_three(p) -> bool:
        seen.append(p.step)
        assert p.image.shape == targets[:1].shape and not p.image.requires_grad
        return p.step == 3

    result = invert(G, targets[:1], method, settings={"steps": 40, "lambda_lpips": 0.0}, callback=stop_after_three,
                    progress=False)
    assert seen == [1, 2, 3] and len(result.history["loss"]) == 3
    assert result.extra == {"precision": "fp32", "stopped_at": 3}
    image = result.render(G)
    assert image.shape == targets[:1].shape and torch.isfinite(image).all()
