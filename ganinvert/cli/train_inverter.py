"""``ganinvert train-inverter KIND``: train a learned inverter for a generator, resumably.

Example:
    ganinvert train-inverter hyperinverter --generator default --out runs/hyper --steps 4000 \\
        --lpips-weights lpips_alex.pth
    ganinvert train-inverter hyperinverter --generator default --out runs/hyper --steps 6000 --resume
"""

from __future__ import annotations

from pathlib import Path

import click

from ..training.inverters.loop import TRAINERS, InverterTrainConfig, train_inverter
from .common import (device_option, generator_option, load_lpips, parse_settings, pick_device, set_threads,
                     threads_option)


@click.command("train-inverter")
@click.argument("kind", type=click.Choice(sorted(TRAINERS)))
@generator_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run directory.")
@click.option("--steps", default=2000, show_default=True, type=int)
@click.option("--batch", default=8, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--images", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder of real images mixed into training (see the inverter's docs).")
@click.option("--lpips-weights", default=None, type=click.Path(dir_okay=False),
              help="LPIPS AlexNet weights for the perceptual loss terms [default: none, MSE only].")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="A setting of the inverter (repeatable).")
@click.option("--checkpoint-every", default=250, show_default=True, type=int)
@click.option("--resume/--no-resume", default=False, show_default=True, help="Continue from OUT/checkpoint.pt.")
@click.option("--export", default=None, type=click.Path(dir_okay=False), help="Where to write the trained network "
              "[default: OUT/network.safetensors].")
@device_option
@threads_option
def train_inverter_command(kind: str, generator: str, out: Path, steps: int, batch: int, seed: int, images: str | None,
                           lpips_weights: str | None, settings: tuple[str, ...], checkpoint_every: int, resume: bool,
                           export: str | None, device: str | None, threads: int | None) -> None:
    """Train the learned inverter KIND (self-supervised on the generator's samples)."""
    from ..models import load_generator
    set_threads(threads)
    dev = pick_device(device)
    config = InverterTrainConfig(kind=kind, out=out, steps=steps, batch=batch, seed=seed, images=images,
                                 lpips_weights=lpips_weights, settings=parse_settings(settings),
                                 checkpoint_every=checkpoint_every, resume=resume, device=device, export=export)
    G = load_generator(generator, device=dev)
    lpips = load_lpips(lpips_weights, lpips_weights is None, dev)
    click.echo(f"network: {train_inverter(G, config, lpips)}")


COMMANDS = {"train-inverter": train_inverter_command}
