"""The shared inverter training loop with HyperInverter's trainers: learning, resuming, errors, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ganinvert.cli import main as cli_main
from ganinvert.errors import GanInvertError
from ganinvert.models.hyperinverter import load_hyperinverter, load_wencoder
from ganinvert.models.loading import save_generator
from ganinvert.training.inverters import InverterTrainConfig, train_inverter
from ganinvert.training.inverters.hyperinverter import HyperTrainer
from tests.conftest import assert_training_resumes_bit_identically

TINY_E1 = {"base_width": 4, "max_width": 16, "hidden": 32}
TINY_E2 = {"base_width": 4, "max_width": 16, "feature_dim": 32, "hidden_dim": 4}


@pytest.fixture(scope="module")
def generator(random_generator):
    return random_generator(resolution=16, style_dim=16, channels={4: 16, 8: 16, 16: 8})


def _held_out(G, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        return G.synthesis(G.broadcast(G.mapping(torch.randn(n, G.style_dim, generator=g)))).clamp(-1, 1)


def _train_e1(G, out: Path, steps: int, **kwargs) -> Path:
    config = InverterTrainConfig(kind="hyperinverter-e1", out=out, steps=steps, batch=4,
                                 settings={**TINY_E1, "lr": 2e-3}, log_every=1, **kwargs)
    return train_inverter(G, config)


@pytest.fixture(scope="module")
def e1_file(generator, tmp_path_factory) -> Path:
    return _train_e1(generator, tmp_path_factory.mktemp("e1"), steps=40)


def _hyper_config(out: Path, e1: Path, steps: int, **kwargs) -> InverterTrainConfig:
    return InverterTrainConfig(kind="hyperinverter", out=out, steps=steps, batch=4,
                               settings={**TINY_E2, "e1_path": str(e1), "lr": 2e-3}, log_every=1, **kwargs)


def _mse(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).square().mean())


def test_phase_one_learns(generator, e1_file: Path) -> None:
    G, x = generator, _held_out(generator)
    e1 = load_wencoder(e1_file, G)
    with torch.no_grad():
        before = _mse(G.synthesis(G.broadcast(G.w_avg.expand(len(x), -1))), x)  # the untrained E1's output
        after = _mse(G.synthesis(G.broadcast(e1(x))), x)
    assert after < 0.9 * before


def test_phase_two_improves_on_e1(generator, e1_file: Path, tmp_path: Path) -> None:
    G, x = generator, _held_out(generator)
    net = load_hyperinverter(train_inverter(G, _hyper_config(tmp_path / "h", e1_file, steps=30)), G)
    with torch.no_grad():
        w, deltas = net(x, G)
        e1_error = _mse(G.synthesis(G.broadcast(w)), x)
        hyper_error = _mse(G.synthesis(G.broadcast(w), weight_deltas=deltas), x)
    assert hyper_error < e1_error


def test_kill_and_resume_is_bit_identical(generator, e1_file: Path, tmp_path: Path, monkeypatch) -> None:
    G = generator
    assert_training_resumes_bit_identically(
        monkeypatch, HyperTrainer,
        lambda name, resume: train_inverter(G, _hyper_config(tmp_path / name, e1_file, steps=4, checkpoint_every=2,
                                                             resume=resume)))
    # Extending a finished phase-I run continues it as if it had been asked for more steps at once.
    longer = _train_e1(G, tmp_path / "e1_long", steps=4)
    _train_e1(G, tmp_path / "e1_ext", steps=2)
    extended = _train_e1(G, tmp_path / "e1_ext", steps=4, resume=True)
    a, b = load_file(str(longer)), load_file(str(extended))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_other_settings_is_refused(generator, e1_file: Path, tmp_path: Path) -> None:
    G = generator
    train_inverter(G, _hyper_config(tmp_path / "r", e1_file, steps=1))
    config = _hyper_config(tmp_path / "r", e1_file, steps=2, resume=True)
    config.settings["lr"] = 1e-3
    with pytest.raises(GanInvertError, match="settings differ"):
        train_inverter(G, config)
    with pytest.raises(GanInvertError, match="already exists"):
        train_inverter(G, _hyper_config(tmp_path / "r", e1_file, steps=2))
    with pytest.raises(GanInvertError, match="unknown setting.*no_such_setting for inverter hyperinverter-e1; known: "):
        train_inverter(G, InverterTrainConfig(kind="hyperinverter-e1", out=tmp_path / "bad", steps=1,
                                              settings={"no_such_setting": 1}))


def test_cli_trains_phase_one_end_to_end(generator, tmp_path: Path, capsys) -> None:
    G = generator
    save_generator(G, tmp_path / "g.pt")
    before = torch.get_num_threads()
    try:
        code = cli_main(["train-inverter", "hyperinverter-e1", "--generator", str(tmp_path / "g.pt"),
                         "--out", str(tmp_path / "run"), "--steps", "2", "--batch", "2", "--threads", "1",
                         "--set", "base_width=4", "--set", "max_width=8", "--set", "hidden=16",
                         "--export", str(tmp_path / "e1.safetensors")])
    finally:
        torch.set_num_threads(before)
    assert code == 0, capsys.readouterr().err
    from ganinvert.models.loading import load_generator
    assert load_wencoder(tmp_path / "e1.safetensors", load_generator(tmp_path / "g.pt")).config["hidden"] == 16
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "run" / "log.jsonl").is_file()


def test_real_images_join_the_batch(generator, e1_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    for config in (InverterTrainConfig(kind="hyperinverter-e1", out=tmp_path / "e1", steps=2, batch=4,
                                       images=str(folder), settings=TINY_E1, log_every=1),
                   _hyper_config(tmp_path / "h", e1_file, steps=2, images=str(folder))):
        train_inverter(generator, config)
        log = (Path(config.out) / "log.jsonl").read_text().splitlines()
        assert len(log) == 2
