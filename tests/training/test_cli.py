"""``ganinvert train`` as a click command (the lead registers it on the main group)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from ganinvert.errors import GanInvertError
from ganinvert.cli.train import train_command


def test_cli_trains_and_exports(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(data / f"{i}.jpg")
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(train_command, [
            "--data", str(data), "--out", str(tmp_path / "run"), "--resolution", "8", "--steps", "2",
            "--batch", "2", "--style-dim", "8", "--n-mlp", "1", "--channels", "4:8,8:8", "--threads", "1",
            "--augment", "translation", "--export", str(tmp_path / "g.pt")])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert "checkpoint:" in result.output and (tmp_path / "run" / "checkpoint.pt").is_file()
    assert set(torch.load(tmp_path / "g.pt", weights_only=True)) == {"g_ema", "latent_avg", "config", "meta"}


def test_cli_bad_channels_raise_ganinvert_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_command, ["--data", str(tmp_path), "--out", str(tmp_path / "r"),
                                                "--channels", "4-256"])
    assert isinstance(result.exception, GanInvertError) and "--channels" in str(result.exception)
