"""``ganinvert train``: a thin click wrapper around :func:`ganinvert.training.train`.

Example:
    ganinvert train --data teacher:gan-face-generate --resolution 64 --out runs/faces64 \\
        --steps 6500 --distill-steps 5000
    ganinvert train --data my_faces/ --out runs/mine --steps 20000 --resume
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import GanInvertError
from ..training.trainer import DEFAULT_CHANNELS, TrainConfig, export_generator, train
from .common import device_option, set_threads, threads_option


def _parse_channels(text: str | None) -> dict[int, int]:
    """``"4:256,8:256,16:256,32:128,64:64"`` -> ``{4: 256, ...}``."""
    if not text:
        return dict(DEFAULT_CHANNELS)
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return {int(r): int(c) for r, c in pairs}
    except ValueError as exc:
        raise GanInvertError(f"--channels must look like 4:256,8:256,... got {text!r}") from exc


@click.command("train")
@click.option("--data", required=True, help="Image folder, or teacher:gan-face-generate to distil that generator.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run directory.")
@click.option("--resolution", default=64, show_default=True, type=int)
@click.option("--steps", default=10000, show_default=True, type=int, help="Total steps, distillation included.")
@click.option("--batch", default=16, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--style-dim", default=256, show_default=True, type=int)
@click.option("--n-mlp", default=8, show_default=True, type=int)
@click.option("--channels", default=None, help="Widths per resolution, e.g. 4:256,8:256,16:256,32:128,64:64.")
@click.option("--lr", default=0.002, show_default=True, type=float)
@click.option("--r1-gamma", default=None, type=float, help="R1 weight [default: 0.0002*res^2/batch].")
@click.option("--mixing", "mixing_prob", default=0.9, show_default=True, type=float, help="Style-mixing probability.")
@click.option("--augment", default=None,
              help="DiffAugment policy (subset of color,translation,cutout; '' for none) "
                   "[default: all three for folders, none for a teacher].")
@click.option("--distill-steps", default=0, show_default=True, type=int, help="Leading pure-distillation steps (teacher only).")
@click.option("--distill-weight", default=10.0, show_default=True, type=float, help="L1 anchor weight in adversarial steps.")
@click.option("--lpips-weights", default=None, type=click.Path(dir_okay=False), help="Add LPIPS to the distillation loss.")
@click.option("--checkpoint-every", default=500, show_default=True, type=int)
@click.option("--sample-every", default=500, show_default=True, type=int)
@click.option("--resume/--no-resume", default=False, show_default=True, help="Continue from OUT/checkpoint.pt.")
@device_option
@threads_option
@click.option("--export", "export_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the inference-only generator (g_ema + latent_avg) here.")
def train_command(data: str, out: Path, resolution: int, steps: int, batch: int, seed: int, style_dim: int,
                  n_mlp: int, channels: str | None, lr: float, r1_gamma: float | None, mixing_prob: float,
                  augment: str | None, distill_steps: int, distill_weight: float, lpips_weights: str | None,
                  checkpoint_every: int, sample_every: int, resume: bool, device: str | None,
                  threads: int | None, export_path: Path | None) -> None:
    """Train a StyleGAN2 generator from an image folder or a teacher generator."""
    set_threads(threads)
    config = TrainConfig(data=data, out=out, resolution=resolution, steps=steps, batch=batch, seed=seed,
                         style_dim=style_dim, n_mlp=n_mlp, channels=_parse_channels(channels), lr=lr,
                         r1_gamma=r1_gamma, mixing_prob=mixing_prob, augment=augment, distill_steps=distill_steps,
                         distill_weight=distill_weight, lpips_weights=lpips_weights,
                         checkpoint_every=checkpoint_every, sample_every=sample_every, resume=resume, device=device)
    checkpoint = train(config)
    click.echo(f"checkpoint: {checkpoint}")
    if export_path is not None:
        click.echo(f"generator: {export_generator(checkpoint, export_path)}")


COMMANDS = {"train": train_command}
