"""Training runs on tiny random networks: folder and teacher data, resume, checkpoints, errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganinvert.errors import CheckpointError, GanInvertError, ImageError
from ganinvert.models.stylegan2 import StyleGAN2Generator
from ganinvert.training import TrainConfig, export_generator, train
from ganinvert.training.data import ImageFolder
from ganinvert.training.trainer import build_networks

TINY16 = {4: 8, 8: 8, 16: 8}
TINY64 = {4: 16, 8: 8, 16: 8, 32: 4, 64: 4}
HAS_TEACHER = importlib.util.find_spec("gan_face_generate") is not None


@pytest.fixture(autouse=True)
def _one_thread():
    """Bit-exact comparisons need the same thread count in every run of a test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Four non-square PNGs rendered by a tiny random generator (so the crop path runs)."""
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        G = StyleGAN2Generator(32, style_dim=8, n_mlp=1, channels={4: 8, 8: 8, 16: 8, 32: 8})
    with torch.no_grad():
        images = G(torch.randn(4, 8, generator=torch.Generator().manual_seed(2)))
    for i, img in enumerate(images):
        array = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        target = folder / ("nested" if i % 2 else ".") / f"img{i}.png"
        Image.fromarray(array[:, 4:28]).save(target)  # 32 x 24: non-square
    (folder / "notes.txt").write_text("not an image")
    return folder


def tiny_config(data: str | Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(data=str(data), out=out, resolution=16, steps=4, batch=4, seed=3, style_dim=16, n_mlp=2,
                    channels=dict(TINY16), d_reg_every=2, checkpoint_every=2, sample_every=2, log_every=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_train_from_folder_writes_loadable_rosinality_checkpoint(image_folder: Path, tmp_path: Path) -> None:
    config = tiny_config(image_folder, tmp_path / "run")
    checkpoint = train(config)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert {"g_ema", "latent_avg", "g", "d", "g_optim", "d_optim", "step", "config"} <= set(ckpt)
    assert ckpt["step"] == 4
    G = StyleGAN2Generator(16, style_dim=16, n_mlp=2, channels=TINY16)
    G.load_state_dict(ckpt["g_ema"])  # strict: every rosinality key present, shapes match
    assert ckpt["latent_avg"].shape == (16,)
    # Training moved the weights away from their (seeded) initialisation.
    G0, _ = build_networks(config)
    moved = [k for k, v in G0.state_dict().items() if not torch.equal(v, ckpt["g"][k])]
    assert any(k.startswith("convs.") for k in moved) and any(k.startswith("style.") for k in moved)
    assert all(torch.isfinite(v).all() for v in ckpt["g_ema"].values())
    # R1 ran (d_reg_every=2) and every step was logged; grids were written.
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert any("r1" in r for r in records) and all(r["phase"] == "adversarial" for r in records)
    grids = sorted((tmp_path / "run" / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000004.png"]
    assert Image.open(grids[-1]).size == (8 * 16, 8 * 16)


def test_resume_equals_uninterrupted(image_folder: Path, tmp_path: Path) -> None:
    full = torch.load(train(tiny_config(image_folder, tmp_path / "full")), weights_only=True)
    train(tiny_config(image_folder, tmp_path / "split", steps=2))
    resumed = torch.load(train(tiny_config(image_folder, tmp_path / "split", resume=True)), weights_only=True)
    assert resumed["step"] == full["step"] == 4
    for net in ("g", "d", "g_ema"):
        for key, value in full[net].items():
            assert torch.equal(value, resumed[net][key]), f"{net}.{key} differs after resume"
    for key, value in full["g_optim"]["state"][0].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed["g_optim"]["state"][0][key]))
    assert torch.equal(full["rng"], resumed["rng"])


def test_resume_guards(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(GanInvertError, match="nothing to resume"):
        train(tiny_config(image_folder, out, resume=True))
    train(tiny_config(image_folder, out, steps=1))
    with pytest.raises(GanInvertError, match="already exists"):
        train(tiny_config(image_folder, out, steps=2))
    with pytest.raises(GanInvertError, match="settings differ.*lr"):
        train(tiny_config(image_folder, out, steps=2, lr=0.01, resume=True))


@pytest.mark.skipif(not HAS_TEACHER, reason="gan-face-generate not installed (pip install --no-deps gan-face-generate)")
def test_train_from_teacher_distils_then_fights(tmp_path: Path) -> None:
    config = TrainConfig(data="teacher:gan-face-generate", out=tmp_path / "run", resolution=64, steps=3, batch=2,
                         style_dim=100, n_mlp=1, channels=dict(TINY64), distill_steps=2, mixing_prob=0.0,
                         log_every=1, sample_every=3, checkpoint_every=3)
    ckpt = torch.load(train(config), weights_only=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records] == ["distill", "distill", "adversarial"]
    # With no mixing every sample is anchored to the teacher during the adversarial step.
    assert all(r["distill"] > 0 for r in records) and "g" in records[-1]
    G = StyleGAN2Generator(64, style_dim=100, n_mlp=1, channels=TINY64)
    G.load_state_dict(ckpt["g_ema"])


def test_teacher_needs_64px_and_large_style_dim(tmp_path: Path) -> None:
    if not HAS_TEACHER:
        pytest.skip("gan-face-generate not installed")
    with pytest.raises(GanInvertError, match="64 px"):
        train(tiny_config("teacher:gan-face-generate", tmp_path / "a"))
    with pytest.raises(GanInvertError, match="latent size 100"):
        train(tiny_config("teacher:gan-face-generate", tmp_path / "b", resolution=64, channels=dict(TINY64)))


def test_missing_teacher_package_is_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gan_face_generate" else real_find_spec(name, *a))
    with pytest.raises(GanInvertError, match="pip install --no-deps gan-face-generate") as info:
        train(tiny_config("teacher:gan-face-generate", tmp_path / "run", resolution=64, style_dim=100,
                          channels=dict(TINY64)))
    assert "\n" not in str(info.value)


def test_unknown_teacher(tmp_path: Path) -> None:
    with pytest.raises(GanInvertError, match="unknown teacher"):
        train(tiny_config("teacher:nope", tmp_path / "run"))


def test_bad_data_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GanInvertError, match="no images"):
        train(tiny_config(empty, tmp_path / "r1"))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(GanInvertError, match="no images"):
        train(tiny_config(tmp_path / "text", tmp_path / "r2"))
    with pytest.raises(GanInvertError, match="does not exist"):
        train(tiny_config(tmp_path / "missing", tmp_path / "r3"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="cannot read image"):
        ImageFolder(tmp_path / "broken", 16)


@pytest.mark.parametrize("overrides, message", [
    ({"resolution": 24}, "power of two"),
    ({"batch": 0}, "batch must be >= 1"),
    ({"mixing_prob": 1.5}, "mixing_prob"),
    ({"lr": float("nan")}, "setting 'lr' must be a finite number, got nan"),
    ({"steps": 2.5}, "setting 'steps' must be an integer, got 2.5"),
    ({"lr": 0.0}, "setting 'lr' must be > 0"),
    ({"augment": "rotate"}, "unknown augmentation"),
    ({"channels": {4: 8, 8: 8}}, "lacks widths"),
    ({"distill_steps": 2}, "needs a teacher"),
])
def test_invalid_settings(image_folder: Path, tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(GanInvertError, match=message):
        train(tiny_config(image_folder, tmp_path / "run", **overrides))


def test_image_folder_crops_and_scales(image_folder: Path) -> None:
    data = ImageFolder(image_folder, 16)
    assert len(data) == 4 and data.images.shape == (4, 3, 16, 16)
    assert data.images.min() >= -1 and data.images.max() <= 1
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(data.sample(5, g1), data.sample(5, g2))


def test_export_generator_keeps_only_inference_keys(image_folder: Path, tmp_path: Path) -> None:
    checkpoint = train(tiny_config(image_folder, tmp_path / "run", steps=1))
    path = export_generator(checkpoint, tmp_path / "g.pt", half=True, extra_meta={"note": "x"})
    exported = torch.load(path, weights_only=True)
    assert set(exported) == {"g_ema", "latent_avg", "config", "meta"}
    assert exported["g_ema"]["convs.0.conv.weight"].dtype == torch.float16
    assert exported["meta"]["note"] == "x" and exported["meta"]["step"] == 1
    G = StyleGAN2Generator(16, style_dim=16, n_mlp=2, channels=TINY16)
    G.load_state_dict({k: v.float() for k, v in exported["g_ema"].items()})
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        export_generator(tmp_path / "junk.pt", tmp_path / "h.pt")
    assert not np.isnan(exported["latent_avg"].float().numpy()).any()


def test_distillation_phase_speeds_up_the_mapping_network(image_folder: Path, tmp_path: Path) -> None:
    from ganinvert.training.trainer import _Run

    run = _Run(tiny_config(image_folder, tmp_path / "run", distill_mapping_lr_mul=50.0, distill_beta1=0.8))
    synthesis, mapping = run.g_optim.param_groups
    assert all(p is q for p, q in zip(mapping["params"], run.G.style.parameters()))
    run._set_phase(distilling=True)
    assert (synthesis["lr"], mapping["lr"], mapping["betas"]) == (0.002, 0.1, (0.8, 0.99))
    run._set_phase(distilling=False)
    assert (synthesis["lr"], mapping["lr"], synthesis["betas"]) == (0.002, 0.002, (0.0, 0.99))
