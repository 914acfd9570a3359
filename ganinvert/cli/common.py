"""What every ``ganinvert`` command shares: options, device and LPIPS set-up, ``--set`` parsing and
the mapping of known errors to one stderr line with exit status 2.

Each command module imports this one; nothing here imports a command module.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click
import torch

from ..errors import GanInvertError
from ..io import FIT_POLICIES
from ..models.loading import GENERATOR_HELP
from ..outputs import Claim, OutputLocks, claim_folders, output_folder, run_id, sweep_stale

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


# ----------------------------------------------------------------------------- shared options
def generator_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--generator", "-g", default="default", show_default=True, help=GENERATOR_HELP)(f)


def device_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--device", default=None, help="cpu, cuda, cuda:1 … [default: cuda when available].")(f)


def lpips_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--no-lpips", is_flag=True, help="Drop the LPIPS term (lambda_lpips = 0) and the LPIPS metric.")(f)
    return click.option("--lpips-weights", default=None,
                        help="LPIPS AlexNet weights file [default: $GANINVERT_LPIPS_WEIGHTS, then torch's cache].")(f)


def out_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path))(f)


def fit_option(help_text: str = "How images that are not square at the generator's resolution are fitted."
               ) -> Decorator:
    return click.option("--fit", type=click.Choice(FIT_POLICIES), default=FIT_POLICIES[0], show_default=True,
                        help=help_text)


def method_options(*, method: str | None = "sphinx", preset_help: str = "A preset of the method [default: the "
                   "method's own].", seed_help: str | None = None, batch_help: str | None = None) -> Decorator:
    """``--method`` (unless ``method`` is None), ``--preset``, ``--steps``, ``--set``, ``--seed`` and
    ``--batch-size`` (when ``batch_help`` is given): the options of every optimising command."""
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        if batch_help is not None:
            f = click.option("--batch-size", type=int, default=4, show_default=True, help=batch_help)(f)
        f = click.option("--seed", type=int, default=0, show_default=True, help=seed_help)(f)
        f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                         help="Override one method setting.")(f)
        f = click.option("--steps", type=int, default=None, help="Optimisation steps [default: the preset's].")(f)
        f = click.option("--preset", default=None, help=preset_help)(f)
        if method is not None:
            f = click.option("--method", "-m", default=method, show_default=True, help="See `ganinvert methods`.")(f)
        return f
    return apply


def threads_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--threads", default=None, type=int, help="torch CPU threads [default: torch's choice].")(f)


# ----------------------------------------------------------------------------- shared set-up
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


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise GanInvertError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def device_images_generator(device: str | None, images: Sequence[Path], generator: str
                            ) -> tuple[torch.device, list[Path], Any]:
    """The device, the image files under ``images`` (GanInvertError when there are none) and the
    generator loaded onto that device: the common start of the commands that read images."""
    from ..io import list_images
    from ..models import load_generator
    dev = pick_device(device)
    paths = list_images(images)
    if not paths:
        raise GanInvertError("no images found in the given paths")
    return dev, paths, load_generator(generator, dev)


def load_lpips(weights: str | None, disabled: bool, device: torch.device):
    """The LPIPS module, or None with --no-lpips."""
    if disabled:
        return None
    from ..metrics import LPIPS
    return LPIPS(weights=weights).to(device)


def optional_lpips(weights: str | None, disabled: bool, device: torch.device):
    """LPIPS for reporting only: explicit weights must load, default weights are used if present."""
    from ..metrics import lpips_available
    if disabled or (weights is None and not lpips_available()):
        return None
    return load_lpips(weights, False, device)


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as Python literals where possible, else kept as
    text. Where the settings are built, :func:`ganinvert.settings.coerce_settings` converts each to
    its field's type or raises a one-line error naming the setting and the type."""
    import ast
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GanInvertError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
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


# ----------------------------------------------------------------------------- per-image output folders
def overwrite_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--overwrite", is_flag=True,
                        help="Replace OUT/<name>/ folders that hold another run's output (refused without it).")(f)


def run_identity(command: str, G: Any, method: Any, preset: str | None, seed: int, lpips: Any,
                 **options: Any) -> dict[str, Any]:
    """Everything but the image that determines one image's output folder (``outputs.run_id``):
    not the device, the batch size or the checkpoint interval."""
    from ..models.loading import file_sha256
    source = getattr(G, "source", None)
    return {"command": command, "method": method.name,
            "preset": preset if preset is not None else method.default_preset,
            "settings": method.settings.to_dict(), "seed": seed,
            "generator": {"sha256": getattr(source, "sha256", None), "config": G.config()},
            "lpips_sha256": None if lpips is None else [file_sha256(f) for f in lpips.weight_files.files], **options}


@dataclass
class OutputRun:
    """The folders one command writes: per image its name, run id and claim (done / replaces a folder)."""

    out: Path
    names: list[str]
    runs: list[str]
    claims: list[Claim]
    locks: OutputLocks

    def folder(self, i: int) -> Path:
        return output_folder(self.out, self.names[i])

    def skip_message(self, i: int) -> str:
        return f"{self.names[i]}: already done by this run, skipped -> {self.folder(i)}"


@contextlib.contextmanager
def claimed_outputs(out: Path, names: Sequence[str], sources: Sequence[dict[str, str]], identity: dict[str, Any],
                    *, resume: bool, overwrite: bool, record: str = "metrics.json") -> Iterator[OutputRun]:
    """Lock ``OUT/<name>`` for every name for the block (another run holding one: GanInvertError),
    delete what killed runs left, and decide per folder whether it is done or refused (see
    :func:`ganinvert.outputs.claim_folders`). ``sources``: each image's ``{"path", "sha256"}``."""
    out.mkdir(parents=True, exist_ok=True)
    with OutputLocks(out) as locks:
        locks.acquire(names)
        sweep_stale(out, locks)
        runs = [run_id({**identity, "image_sha256": source["sha256"]}) for source in sources]
        claims = claim_folders(out, names, runs, resume=resume, overwrite=overwrite, record=record)
        yield OutputRun(out, list(names), runs, claims, locks)


# ----------------------------------------------------------------------------- errors
def run(command: click.Command, argv: Sequence[str] | None, prog_name: str = "ganinvert") -> int:
    """Run ``command``, turning known errors into one stderr line and exit status 2."""
    try:
        command.main(args=list(argv) if argv is not None else None, prog_name=prog_name, standalone_mode=False)
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
