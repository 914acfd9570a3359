"""Helpers shared by the evaluation tests (imported by module name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from ganinvert.cli.evaluate import evaluate_command


def write_random_images(folder: Path, count: int, size: int = 48, seed: int = 0) -> list[Path]:
    """Smooth random RGB images (upsampled noise) as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        path = folder / f"img{i:02d}.png"
        Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(path)
        paths.append(path)
    return paths


def evaluate_args(suite: str, images: Path, generator: Path, out: Path, lpips_weights: str | None,
                  *extra: str) -> list[str]:
    args = [suite, "--images", str(images), "--generator", str(generator), "--out", str(out), "--steps", "2",
            "--threads", "1", "--grid-images", "2", "--set", "lambda_lpips=0", *extra]
    return args + (["--lpips-weights", lpips_weights] if lpips_weights else ["--no-lpips"])


def invoke(args: list[str]) -> str:
    result = CliRunner().invoke(evaluate_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def read_results(out: Path, drop: tuple[str, ...] = ("seconds",)) -> list[dict[str, str]]:
    """results.csv without the wall-clock column, which differs between any two runs."""
    with open(out / "results.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]
