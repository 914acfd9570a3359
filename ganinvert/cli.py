"""The ``ganinvert`` command line: parse, validate, call the library, write outputs atomically.

Every user error (a :class:`~ganinvert.errors.GanInvertError` or a bad option) is printed as one
line on stderr with exit status 2; there are no tracebacks for known problems.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Sequence

import click
import torch

from .errors import GanInvertError

GENERATOR_HELP = "Checkpoint (rosinality .pt/.safetensors or NVIDIA .pkl), or 'default' for the bundled 64 px faces."


# ----------------------------------------------------------------------------- shared options
def generator_option(f):
    return click.option("--generator", "-g", default="default", show_default=True, help=GENERATOR_HELP)(f)


def device_option(f):
    return click.option("--device", default=None, help="cpu, cuda, cuda:1 … [default: cuda when available].")(f)


def lpips_options(f):
    f = click.option("--no-lpips", is_flag=True, help="Drop the LPIPS term (lambda_lpips = 0) and the LPIPS metric.")(f)
    return click.option("--lpips-weights", default=None,
                        help="LPIPS AlexNet weights file [default: $GANINVERT_LPIPS_WEIGHTS, then torch's cache].")(f)


def pick_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise GanInvertError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GanInvertError(f"device {device} requested but CUDA is not available")
    return dev


def device_images_generator(device: str | None, images: Sequence[Path], generator: str
                            ) -> tuple[torch.device, list[Path], Any]:
    """The device, the image files under ``images`` (GanInvertError when there are none) and the
    generator loaded onto that device: the common start of the commands that read images."""
    from .io import list_images
    from .models import load_generator
    dev = pick_device(device)
    paths = list_images(images)
    if not paths:
        raise GanInvertError("no images found in the given paths")
    return dev, paths, load_generator(generator, dev)


def load_lpips(weights: str | None, disabled: bool, device: torch.device):
    """The LPIPS module, or None with --no-lpips."""
    if disabled:
        return None
    from .metrics import LPIPS
    return LPIPS(weights=weights).to(device)


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as Python literals where possible."""
    import ast
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GanInvertError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def method_settings(overrides: Sequence[str], steps: int | None, no_lpips: bool = False) -> dict[str, Any]:
    """Method settings from ``--set`` pairs, ``--steps`` and ``--no-lpips`` (shared by every optimising command)."""
    settings = parse_settings(overrides)
    if steps is not None:
        if steps <= 0:
            raise GanInvertError(f"--steps must be > 0, got {steps}")
        settings["steps"] = steps
    if no_lpips:
        settings["lambda_lpips"] = 0.0
    return settings


def unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        count = seen.get(p.stem, 0)
        seen[p.stem] = count + 1
        stems.append(p.stem if count == 0 else f"{p.stem}_{count}")
    return stems


@click.group()
@click.version_option(package_name="ganinvert")
def cli() -> None:
    """Invert images into a pretrained StyleGAN2 (SPHInX and baselines), then restore and edit them."""


# ----------------------------------------------------------------------------- methods
@cli.command("methods")
def methods_command() -> None:
    """List inversion methods and their presets, one line each."""
    from .inversion import list_methods
    for name, cls in list_methods().items():
        click.echo(f"{name:10s} {cls.summary}")
        for preset_name, preset in cls.presets.items():
            default = " (default)" if preset_name == cls.default_preset else ""
            click.echo(f"  --preset {preset_name}{default}: {preset.source}")


# ----------------------------------------------------------------------------- invert
@cli.command("invert")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@generator_option
@click.option("--method", "-m", default="sphinx", show_default=True, help="See `ganinvert methods`.")
@click.option("--preset", default=None, help="A preset of the method [default: the method's own].")
@click.option("--steps", type=int, default=None, help="Optimisation steps [default: the preset's].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override one method setting.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=4, show_default=True, help="Images inverted together (vectorised).")
@click.option("--fit", type=click.Choice(["crop", "pad", "stretch"]), default="crop", show_default=True,
              help="How images that are not square at the generator's resolution are fitted.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint in OUT.")
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@lpips_options
@device_option
def invert_command(images: tuple[Path, ...], generator: str, method: str, preset: str | None, steps: int | None,
                   overrides: tuple[str, ...], seed: int, batch_size: int, fit: str, out: Path, resume: bool,
                   checkpoint_every: int, lpips_weights: str | None, no_lpips: bool, device: str | None) -> None:
    """Invert IMAGES (files or folders) and write, per image, OUT/<stem>/ with the reconstruction,
    a side-by-side, metrics.json, the loss/PSNR curve and the result file."""
    from .io import load_image
    from .inversion import invert, make_method
    from .inversion.report import write_inversion_outputs

    settings = method_settings(overrides, steps, no_lpips)
    if batch_size <= 0 or checkpoint_every <= 0:
        raise GanInvertError("--batch-size and --checkpoint-every must be > 0")
    make_method(method, preset, settings)  # validate before loading anything heavy
    dev, paths, G = device_images_generator(device, images, generator)
    targets = [load_image(p, G.resolution, fit) for p in paths]
    lpips = load_lpips(lpips_weights, no_lpips, dev)
    stems = unique_stems(paths)
    for start in range(0, len(paths), batch_size):
        batch = torch.cat(targets[start:start + batch_size]).to(dev)
        names = stems[start:start + batch_size]
        ckpt = out / ".checkpoints" / f"{'+'.join(names)[:100]}.pt"
        result = invert(G, batch, method, preset=preset, settings=settings, seed=seed, lpips=lpips,
                        checkpoint_path=ckpt, checkpoint_every=checkpoint_every, resume=resume)
        for i, name in enumerate(names):
            single = result.select(i)
            # Rendered alone, as `ganinvert render` will: a batched rendering can differ in the last
            # float bits, which may flip a PNG pixel.
            metrics = write_inversion_outputs(out / name, batch[i:i + 1], single, single.render(G), lpips)
            click.echo(f"{name}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}"
                       + (f", LPIPS {metrics['lpips']:.3f}" if "lpips" in metrics else "")
                       + f" ({metrics['seconds']:.1f} s) -> {out / name}")
    with contextlib.suppress(OSError):  # finished runs delete their checkpoints; drop the empty folder
        (out / ".checkpoints").rmdir()


# ----------------------------------------------------------------------------- render
@cli.command("render")
@click.argument("result_path", type=click.Path(path_type=Path))
@generator_option
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write.")
@click.option("--draws", type=int, default=0, show_default=True,
              help="Also render K fresh random draws (SPHInX) into a strip beside OUT.")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
def render_command(result_path: Path, generator: str, out: Path, draws: int, seed: int, device: str | None) -> None:
    """Re-create the reconstruction stored in RESULT."""
    from .io import image_strip, save_image, save_pil
    from .inversion import InversionResult
    from .models import load_generator

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
@cli.command("robustness")
@click.argument("result_path", type=click.Path(path_type=Path))
@generator_option
@click.option("--snr-db", default="30,20,10,5,0", show_default=True, help="Comma-separated SNR levels in dB.")
@click.option("--trials", type=int, default=8, show_default=True, help="Noise draws per level.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path))
@lpips_options
@device_option
def robustness_command(result_path: Path, generator: str, snr_db: str, trials: int, seed: int, out: Path,
                       lpips_weights: str | None, no_lpips: bool, device: str | None) -> None:
    """Perturb RESULT's w+ codes with Gaussian noise at the given SNRs (SPHInX Fig. 1); CSV + plot."""
    from .inversion import InversionResult
    from .models import load_generator
    from .tasks.robustness import latent_robustness, write_robustness_outputs

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
@cli.command("sample")
@generator_option
@click.option("--n", "count", type=int, default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--truncation", type=float, default=1.0, show_default=True, help="Truncation psi towards w_avg.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path))
@device_option
def sample_command(generator: str, count: int, seed: int, truncation: float, out: Path, device: str | None) -> None:
    """Write N PNG samples of the generator (z from a torch.Generator seeded with SEED)."""
    from .io import save_image
    from .models import load_generator

    if count <= 0:
        raise GanInvertError(f"--n must be > 0, got {count}")
    G = load_generator(generator, pick_device(device))
    z = torch.randn(count, G.style_dim, generator=torch.Generator().manual_seed(seed)).to(G.w_avg.device)
    with torch.inference_mode():
        for start in range(0, count, 32):
            images = G(z[start:start + 32], truncation_psi=truncation)
            for i, img in enumerate(images):
                save_image(img, out / f"sample_{start + i:05d}.png")
    click.echo(f"wrote {count} samples to {out}")


# ----------------------------------------------------------------------------- demo
# 3000 of the preset's 5000 steps: about 2 minutes on a 2-core CPU (measured), within the demo's budget.
DEMO_STEPS = 3000


@cli.command("demo")
@click.option("--out", "-o", default="demo-out", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--steps", type=int, default=DEMO_STEPS, show_default=True,
              help="SPHInX steps (the official preset's 5000 are cut to keep the demo near 2 minutes on a CPU).")
@click.option("--seed", type=int, default=0, show_default=True)
@lpips_options
@device_option
def demo_command(out: Path, steps: int, seed: int, lpips_weights: str | None, no_lpips: bool,
                 device: str | None) -> None:
    """Invert the bundled example image (an out-of-distribution, rotated face) with SPHInX
    (official preset) into the bundled default generator, and write the outputs to OUT."""
    from .metrics import lpips_available
    from .models.loading import ASSETS

    if not no_lpips and lpips_weights is None and not lpips_available():
        click.echo("note: no LPIPS weights found (--lpips-weights / $GANINVERT_LPIPS_WEIGHTS); "
                   "running SPHInX with the MSE term only", err=True)
        no_lpips = True
    args = ["invert", str(ASSETS / "example.png"), "--method", "sphinx", "--preset", "sphinx-official",
            "--steps", str(steps), "--seed", str(seed), "--out", str(out)]
    args += ["--no-lpips"] if no_lpips else (["--lpips-weights", lpips_weights] if lpips_weights else [])
    args += ["--device", device] if device else []
    invert_command.main(args=args[1:], prog_name="ganinvert invert", standalone_mode=False)


def _register_optional_commands() -> None:
    from .evaluation.cli import evaluate_command
    from .training.cli import train_command
    from .training.inverters.cli import train_inverter_command
    from .tasks.cli import task_commands
    cli.add_command(train_command, "train")
    cli.add_command(train_inverter_command, "train-inverter")
    cli.add_command(evaluate_command, "evaluate")
    for name, command in task_commands().items():
        cli.add_command(command, name)


_register_optional_commands()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI, turning known errors into one stderr line and exit status 2."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="ganinvert", standalone_mode=False)
    except GanInvertError as exc:
        click.echo(f"ganinvert: error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("ganinvert: aborted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare `ganinvert`: the help, as click shows it
        click.echo(exc.ctx.get_help(), err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"ganinvert: error: {exc.format_message()}", err=True)
        return 2
    except OSError as exc:  # an unwritable output folder, a full disk: the user's environment, not a bug
        click.echo(f"ganinvert: error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("ganinvert: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
