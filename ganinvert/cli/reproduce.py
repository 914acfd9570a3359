"""``ganinvert reproduce``: the five experiments of the seed papers' claims, resumable, and the
report that gives each claim its verdict (:mod:`ganinvert.evaluation.reproduce`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import GanInvertError
from ..evaluation.runner import RAY_LOCAL
from .common import lpips_options, pick_device


@click.command("reproduce")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: OUT/<budget>/<experiment>/... (keep it out of git).")
@click.option("--quick", is_flag=True,
              help="Smoke test: 2 images, 200 steps, 2 shifts per evaluation (never evidence for a claim).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown report to write, figures beside it in reproduction/ [default: OUT/REPRODUCTION.md].")
@click.option("--report-only", is_flag=True, help="Compute nothing: render the report from the cells under OUT.")
@click.option("--experiments", "-e", default=None, metavar="1,2,…",
              help="Run only these experiments (1, 2, 3, 4, 5 or 5a, 5b, 5c) [default: all]; the report covers all.")
@click.option("--images-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding celeba_hq/, afhq/, cartoon/, cxr/, retina/, isic/, cars/ "
                   "[default: ../shared/data/images beside the checkout].")
@click.option("--workers", "-w", type=int, default=1, show_default=True, help="Cells run in parallel.")
@click.option("--threads", type=int, default=None, help="torch threads per worker [default: CPU cores // workers].")
@click.option("--ray", "ray_address", is_flag=False, flag_value=RAY_LOCAL, default=None, metavar="[ADDRESS]",
              help="Run the cells on Ray (a cluster ADDRESS, or a local instance when given alone); probes run locally.")
@click.option("--seed", type=int, default=0, show_default=True, help="Base seed of every cell.")
@lpips_options
@click.option("--device", default=None, help="cpu, cuda, … [default: cuda when available].")
def reproduce_command(out: Path, quick: bool, report_path: Path | None, report_only: bool, experiments: str | None,
                      images_root: Path | None, workers: int, threads: int | None, ray_address: str | None, seed: int,
                      lpips_weights: str | None, no_lpips: bool, device: str | None) -> None:
    """Run the experiments behind the seed papers' claims (SPHInX Figs. 1, 5, 9, 10-11; SAM;
    HyperInverter Table 1; F/Z+) on the bundled generator, then write the report with each
    claim's verdict.

    Every cell is saved when it finishes: running the same command again computes only the
    missing cells, and once all exist it only re-renders the report.
    """
    from ..evaluation import reproduce as rep
    from ..metrics import lpips_available

    budget = rep.QUICK if quick else rep.FULL
    report_path = report_path if report_path is not None else out / "REPRODUCTION.md"
    if not report_only:
        if workers <= 0:
            raise GanInvertError(f"--workers must be > 0, got {workers}")
        if not no_lpips and lpips_weights is None and not lpips_available():
            raise GanInvertError("no LPIPS weights found (--lpips-weights / $GANINVERT_LPIPS_WEIGHTS); the papers' "
                                 "losses use LPIPS; pass --no-lpips to run every method with MSE only")
        root = images_root if images_root is not None else rep.DEFAULT_IMAGES_ROOT
        if not root.is_dir():
            raise GanInvertError(f"images root {root} not found; pass --images-root")
        options = rep.RunOptions(root.absolute(), use_lpips=not no_lpips, lpips_weights=lpips_weights, seed=seed,
                                 device=str(pick_device(device)))
        failures = rep.run_reproduction(out, budget, options, rep.select_experiments(experiments), workers=workers,
                                        threads=threads, ray_address=ray_address, log=click.echo)
    else:
        failures = []
    results = rep.write_reproduction_report(out, report_path, log=click.echo)
    for exp_id, (data, verdict) in results.items():
        where = "not run" if data is None else f"{data.budget.name}, {data.done}/{data.total} cells"
        click.echo(f"experiment {rep.EXPERIMENTS_BY_ID[exp_id].number}: {verdict.status} ({where})")
    if failures:
        raise GanInvertError(f"{len(failures)} evaluation(s) failed: " + "; ".join(failures))


COMMANDS = {"reproduce": reproduce_command}
