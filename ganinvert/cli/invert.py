"""``ganinvert methods | invert | render | robustness | sample``: inverting images and
looking at the results."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from ..checks import check_seed
from ..errors import GanInvertError
from .common import (claimed_outputs, device_images_generator, device_option, fit_option, generator_option,
                     load_lpips, lpips_options, method_options, method_settings, out_dir_option, overwrite_option,
                     pick_device, run_identity)


@click.command("methods")
def methods_command() -> None:
    """List inversion methods and their presets, one line each."""
    from ..inversion import list_methods
    for name, cls in list_methods().items():
        click.echo(f"{name:10s} {cls.summary}")
        for preset_name, preset in cls.presets.items():
            default = " (default)" if preset_name == cls.default_preset else ""
            click.echo(f"  --preset {preset_name}{default}: {preset.source}")


# ----------------------------------------------------------------------------- invert
@click.command("invert")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@generator_option
@method_options(batch_help="Images inverted together (vectorised).")
@fit_option()
@out_dir_option
@click.option("--resume", is_flag=True,
              help="Skip images this run has finished (OUT/<name>/) and continue an interrupted batch from its "
                   "checkpoint in OUT/.checkpoints.")
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@overwrite_option
@lpips_options
@device_option
def invert_command(images: tuple[Path, ...], generator: str, method: str, preset: str | None, steps: int | None,
                   overrides: tuple[str, ...], seed: int, batch_size: int, fit: str, out: Path, resume: bool,
                   checkpoint_every: int, overwrite: bool, lpips_weights: str | None, no_lpips: bool,
                   device: str | None) -> None:
    """Invert IMAGES (files or folders) and write, per image, OUT/<name>/ with the reconstruction,
    a side-by-side, metrics.json, the loss/PSNR curve and the result file.

    <name> is the image's stem made file-name safe (``_1``, ``_2`` … when names repeat). Each folder
    appears complete or not at all; one of another run is replaced only with --overwrite, and two
    runs cannot write the same folder at once.
    """
    from ..io import load_image
    from ..inversion import invert, make_method
    from ..inversion.report import write_inversion_outputs
    from ..inversion.result import source_image_record
    from ..outputs import Checkpoints, output_names

    settings = method_settings(overrides, steps, no_lpips)
    if batch_size <= 0 or checkpoint_every <= 0:
        raise GanInvertError("--batch-size and --checkpoint-every must be > 0")
    m = make_method(method, preset, settings)  # validate before loading anything heavy
    dev, paths, G = device_images_generator(device, images, generator)
    targets = [load_image(p, G.resolution, fit) for p in paths]
    lpips = load_lpips(lpips_weights, no_lpips, dev)
    sources = [source_image_record(p) for p in paths]
    identity = run_identity("invert", G, m, preset, seed, lpips, fit=fit)
    batches = [range(start, min(start + batch_size, len(paths))) for start in range(0, len(paths), batch_size)]
    with claimed_outputs(out, output_names(paths), sources, identity, resume=resume, overwrite=overwrite) as run:
        checkpoints = Checkpoints(out)
        checkpoints.reconcile([[run.names[i] for i in b] for b in batches], run.locks, resume)
        for batch in batches:
            names = [run.names[i] for i in batch]
            if all(run.claims[i].done for i in batch):
                checkpoints.end(names)
                for i in batch:
                    click.echo(run.skip_message(i))
                continue
            # A batch is always inverted whole, as planned, so a resumed run gives the same bits.
            result = invert(G, torch.cat([targets[i] for i in batch]).to(dev), method, preset=preset,
                            settings=settings, seed=seed, lpips=lpips,
                            checkpoint_path=checkpoints.begin(names, batch_size),
                            checkpoint_every=checkpoint_every, resume=resume)
            for k, i in enumerate(batch):
                if run.claims[i].done:
                    click.echo(run.skip_message(i))
                    continue
                single = result.select(k)
                single.source_images = [sources[i]]
                # Rendered alone, as `ganinvert render` will: a batched rendering can differ in the last
                # float bits, which may flip a PNG pixel.
                metrics = write_inversion_outputs(run.folder(i), targets[i].to(dev), single, single.render(G), lpips,
                                                  extra_metrics={"run_id": run.runs[i]},
                                                  overwrite=run.claims[i].replace)
                click.echo(f"{run.names[i]}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}"
                           + (f", LPIPS {metrics['lpips']:.3f}" if "lpips" in metrics else "")
                           + f" ({metrics['seconds']:.1f} s) -> {run.folder(i)}")
            checkpoints.end(names)


# ----------------------------------------------------------------------------- render
@click.command("render")
@click.argument("result_path", type=click.Path(path_type=Path))
@generator_option
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write.")
@click.option("--draws", type=int, default=0, show_default=True,
              help="Also render K fresh random draws (SPHInX) into a strip beside OUT.")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
def render_command(result_path: Path, generator: str, out: Path, draws: int, seed: int, device: str | None) -> None:
    """Re-create the reconstruction stored in RESULT."""
    from ..io import image_strip, save_image, save_pil
    from ..inversion import InversionResult
    from ..models import load_generator

    if draws < 0:
        raise GanInvertError(f"--draws must be >= 0, got {draws}")
    check_seed(seed, "--seed")
    result = InversionResult.load(result_path)
    G = load_generator(generator, pick_device(device))
    image = result.render(G)
    save_image(image[:1], out)
    click.echo(f"wrote {out}")
    if draws > 0:
        samples = result.render_draws(G, draws, seed)[:, 0]
        strip_path = out.with_name(out.stem + f"_draws{draws}.png")
        save_pil(image_strip([image[0], *samples], ["fixed"] + [f"draw {k}" for k in range(draws)]), strip_path)
        click.echo(f"wrote {strip_path}")


# ----------------------------------------------------------------------------- robustness
@click.command("robustness")
@click.argument("result_path", type=click.Path(path_type=Path))
@generator_option
@click.option("--snr-db", default="30,20,10,5,0", show_default=True, help="Comma-separated SNR levels in dB.")
@click.option("--trials", type=int, default=8, show_default=True, help="Noise draws per level.")
@click.option("--seed", type=int, default=0, show_default=True)
@out_dir_option
@lpips_options
@device_option
def robustness_command(result_path: Path, generator: str, snr_db: str, trials: int, seed: int, out: Path,
                       lpips_weights: str | None, no_lpips: bool, device: str | None) -> None:
    """Perturb RESULT's w+ codes with Gaussian noise at the given SNRs (SPHInX Fig. 1); CSV + plot."""
    from ..inversion import InversionResult
    from ..models import load_generator
    from ..tasks.robustness import latent_robustness, write_robustness_outputs

    try:
        levels = [float(v) for v in snr_db.split(",") if v.strip()]
    except ValueError:
        raise GanInvertError(f"--snr-db must be comma-separated numbers, got {snr_db!r}") from None
    if not levels or trials <= 0:
        raise GanInvertError("give at least one --snr-db level and --trials > 0")
    dev = pick_device(device)
    result = InversionResult.load(result_path)
    G = load_generator(generator, dev)
    lpips = load_lpips(lpips_weights, no_lpips, dev)
    rows = latent_robustness(G, result, levels, trials=trials, seed=seed, lpips=lpips)
    write_robustness_outputs(rows, out)
    click.echo(f"wrote {out / 'robustness.csv'} and {out / 'robustness.png'}")


# ----------------------------------------------------------------------------- sample
@click.command("sample")
@generator_option
@click.option("--n", "count", type=int, default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--truncation", type=float, default=1.0, show_default=True, help="Truncation psi towards w_avg.")
@out_dir_option
@device_option
def sample_command(generator: str, count: int, seed: int, truncation: float, out: Path, device: str | None) -> None:
    """Write N PNG samples of the generator (z from a torch.Generator seeded with SEED)."""
    from ..io import save_image
    from ..models import load_generator

    if count <= 0:
        raise GanInvertError(f"--n must be > 0, got {count}")
    check_seed(seed, "--seed")
    G = load_generator(generator, pick_device(device))
    z = torch.randn(count, G.style_dim, generator=torch.Generator().manual_seed(seed)).to(G.w_avg.device)
    with torch.inference_mode():
        for start in range(0, count, 32):
            images = G(z[start:start + 32], truncation_psi=truncation)
            for i, img in enumerate(images):
                save_image(img, out / f"sample_{start + i:05d}.png")
    click.echo(f"wrote {count} samples to {out}")


COMMANDS = {"methods": methods_command, "invert": invert_command, "render": render_command,
            "robustness": robustness_command, "sample": sample_command}
