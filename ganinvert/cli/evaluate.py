"""``ganinvert evaluate``: the papers' experiments as one resumable command.

Example (the out-of-distribution geometric study on the bundled generator, SPHInX with its
official preset next to three baselines, four worker processes)::

    ganinvert evaluate ood-geometric --images faces/ --methods w+,w+sb,z+sb,sphinx:sphinx-official \\
        --steps 1000 --workers 4 --out eval/geometric
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import GanInvertError
from ..evaluation.plan import EvaluationConfig, MethodSpec, parse_methods
from ..evaluation.runner import RAY_LOCAL, run_evaluation
from ..evaluation.suites import BORDERS, SUITES
from ..settings import field_types
from .common import device_option, generator_option, lpips_options, out_dir_option, parse_settings, pick_device


def _split(items: tuple[str, ...]) -> list[str]:
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def apply_overrides(methods: list[MethodSpec], overrides: dict[str, Any], steps: int | None,
                    no_lpips: bool) -> list[MethodSpec]:
    """``--set`` (``KEY`` for every method, ``METHOD.KEY`` for one name or label), ``--steps`` and
    ``--no-lpips`` folded into each method's overrides."""
    per_method: dict[str, dict[str, Any]] = {m.label: {} for m in methods}
    for key, value in overrides.items():
        target, dot, setting = key.rpartition(".")
        matches = [m for m in methods if not dot or target in (m.name, m.label)]
        if not matches:
            raise GanInvertError(f"--set {key}: no method {target!r} among {', '.join(per_method)}")
        for method in matches:
            per_method[method.label][setting] = value
    if steps is not None:
        if steps <= 0:
            raise GanInvertError(f"--steps must be > 0, got {steps}")
        for values in per_method.values():
            values["steps"] = steps
    if no_lpips:
        for values in per_method.values():
            values["lambda_lpips"] = 0.0
    return [m.with_overrides(per_method[m.label]) for m in methods]


def _suite_options(suite: str, **given: Any) -> dict[str, Any]:
    """The suite-specific options (``--border``, ``--trials``) that ``suite`` takes; the others
    have no effect on it (make_suite refuses options a suite does not take)."""
    accepted = field_types(SUITES[suite])
    return {name: value for name, value in given.items() if name in accepted}


@click.command("evaluate")
@click.argument("suite", type=click.Choice(list(SUITES)), metavar="SUITE")
@click.option("--images", "-i", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Image folder or file (repeatable). ood-domain: each folder is one shift.")
@click.option("--methods", "-m", multiple=True, default=("w+,sphinx",), show_default=True,
              help="Comma-separated METHOD or METHOD:PRESET (see `ganinvert methods`), repeatable.")
@click.option("--steps", type=int, default=None, help="Optimisation steps of every method [default: presets'].")
@click.option("--set", "overrides", multiple=True, metavar="[METHOD.]KEY=VALUE",
              help="Override a setting of every method, or of one (e.g. sphinx.lr=0.002).")
@click.option("--shifts", "-s", multiple=True,
              help="Comma-separated shift names [default: the suite's], e.g. rot10,scale0.75,tx50; "
                   "sigma0.4; cs2; snr10; ood-domain: folder names.")
@click.option("--max-images", type=int, default=None, help="Use the first K images (per shift).")
@click.option("--seed", type=int, default=0, show_default=True, help="Base seed of every cell's seed.")
@generator_option
@out_dir_option
@click.option("--workers", "-w", type=int, default=1, show_default=True,
              help="Cells run in parallel (worker processes, or Ray tasks with --ray).")
@click.option("--threads", type=int, default=None,
              help="torch threads per worker [default: CPU cores // workers].")
@click.option("--batch-size", "-b", type=int, default=1, show_default=True,
              help="Images of one shift and method inverted together (faster, esp. on a GPU).")
@click.option("--ray", "ray_address", is_flag=False, flag_value=RAY_LOCAL, default=None, metavar="[ADDRESS]",
              help="Run cells on Ray: a cluster ADDRESS (e.g. auto, ray://head:10001), or a local "
                   "instance when given alone. Needs `pip install 'ganinvert[ray]'`.")
@click.option("--border", type=click.Choice(BORDERS), default="reflect", show_default=True,
              help="ood-geometric: fill of the regions a shift uncovers.")
@click.option("--trials", type=int, default=8, show_default=True,
              help="robustness: perturbation draws per SNR level.")
@click.option("--grid-images", type=int, default=4, show_default=True,
              help="Images per example grid (0: no grids).")
@lpips_options
@device_option
def evaluate_command(suite: str, images: tuple[Path, ...], methods: tuple[str, ...], steps: int | None,
                     overrides: tuple[str, ...], shifts: tuple[str, ...], max_images: int | None, seed: int,
                     generator: str, out: Path, workers: int, threads: int | None, batch_size: int,
                     ray_address: str | None,
                     border: str, trials: int, grid_images: int, lpips_weights: str | None, no_lpips: bool,
                     device: str | None) -> None:
    """Run the evaluation SUITE (ood-geometric, ood-domain, denoise, cs, robustness) on IMAGES
    for every method, and write OUT/results.csv, summary.csv/.md, plots/, grids/ and report.md.

    Every (image, shift, method) cell is saved under OUT/cells/ when it finishes; running
    the same command again only computes the missing cells.
    """
    if grid_images < 0:
        raise GanInvertError(f"--grid-images must be >= 0, got {grid_images}")
    specs = apply_overrides(parse_methods(methods), parse_settings(overrides), steps, no_lpips)
    config = EvaluationConfig(
        suite=suite, images=tuple(images), methods=tuple(specs), generator=generator,
        suite_options=_suite_options(suite, border=border, trials=trials), shifts=tuple(_split(shifts)) or None,
        max_images=max_images, seed=seed, use_lpips=not no_lpips, lpips_weights=lpips_weights,
        device=str(pick_device(device)))
    run_evaluation(config, out, workers=workers, threads=threads, batch_size=batch_size,
                   ray_address=ray_address, grid_images=grid_images, log=click.echo)


COMMANDS = {"evaluate": evaluate_command}
