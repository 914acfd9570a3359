"""Parity harness (issue #13): the official method and ganinvert's matching configuration on the
same generator checkpoint, the same images, the same steps; PSNR and LPIPS every ``--every`` steps.

    nice -n 19 python -m bench.parity.harness projector --official /path/to/stylegan2-pytorch

Cells ``<cells>/<method>/<image>.<side>.json`` are written as each run finishes, so an
interrupted comparison resumes where it stopped; sides alternate per image (official image i,
ganinvert image i, ...) so both feel the same machine load. ``--report-only`` aggregates whatever
cells exist into ``bench/results/parity/<method>.{json,md,png}``. See README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ganinvert.io import atomic_write_bytes, atomic_write_json, load_image, save_image
from ganinvert.metrics import LPIPS
from ganinvert.metrics.image_quality import psnr
from ganinvert.models import load_generator
from ganinvert.tasks.geometry import affine_shift

from . import checkpoint, projector

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "parity"
LPIPS_WEIGHTS = Path("/work/shared/weights/lpips_alex.pth")
CELEBA = Path("/work/shared/data/images/celeba_hq")
SIDES = ("official", "ganinvert")

#: method -> (official repository, runner module); each runner has run_official / run_ganinvert.
METHODS: dict[str, tuple[str, Any]] = {"projector": ("rosinality/stylegan2-pytorch", projector)}


def official_commit(path: Path, given: str | None) -> str:
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout; pass --official-commit)"


def make_images(G, folder: Path, generated: int, real: int, seed: int = 0) -> list[Path]:
    """The comparison's targets as PNGs at G's size: ``generated`` samples of G rotated by 20
    degrees, then the first ``real`` CelebA-HQ faces. Both sides read these same files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if generated:
        z = torch.randn(generated, G.style_dim, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            samples = affine_shift(G.synthesis(G.broadcast(G.mapping(z))).clamp(-1, 1), angle=20)
        for i, x in enumerate(samples):
            path = folder / f"gen{i}_rot20.png"
            if not path.exists():
                save_image(x[None], path)
            paths.append(path)
    for source in sorted(CELEBA.iterdir())[:real]:
        path = folder / f"celeba_{source.stem}.png"
        if not path.exists():
            save_image(load_image(source, G.resolution), path)
        paths.append(path)
    return paths


def measurer(target: torch.Tensor, lpips: LPIPS) -> Callable[[torch.Tensor], dict[str, float]]:
    def measure(image: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            x = image.detach().clamp(-1, 1)
            return {"psnr": float(psnr(x, target).mean()), "lpips": float(lpips(x, target).mean())}
    return measure


def run_cells(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    repo, runner = METHODS[args.method]
    G = load_generator(args.generator)
    config = G.config()
    cells = Path(args.cells) / args.method
    cells.mkdir(parents=True, exist_ok=True)
    images = make_images(G, cells / "images", args.generated, args.real)
    lpips = LPIPS(args.lpips_weights)
    with tempfile.TemporaryDirectory(prefix="parity_ckpt_") as scratch:  # a 17 MB copy: not a result
        ckpt = checkpoint.write_rosinality_checkpoint(G, Path(scratch) / "generator_rosinality.pt")
        _run_images(args, runner, G, config, ckpt, cells, images, lpips)


def _run_images(args: argparse.Namespace, runner: Any, G, config: dict, ckpt: Path, cells: Path,
                images: list[Path], lpips: LPIPS) -> None:
    for index, image in enumerate(images):
        target = load_image(image, G.resolution)
        for side in SIDES:
            out = cells / f"{image.stem}.{side}.json"
            if out.exists():
                continue
            seed = args.seed + index
            print(f"[parity] {args.method} {image.stem} {side} ...", file=sys.stderr, flush=True)
            if side == "official":
                cell = runner.run_official(Path(args.official), ckpt, image, config, args.steps, args.every, seed,
                                           lpips, measurer(target, lpips))
            else:
                cell = runner.run_ganinvert(G, target, args.steps, args.every, seed, lpips, measurer(target, lpips))
            cell.update(image=image.name, side=side, steps=args.steps, every=args.every, finished=time.time())
            atomic_write_json(out, cell)
            final = cell["curve"][-1]
            print(f"[parity]   psnr {final['psnr']:.2f} lpips {final['lpips']:.4f} "
                  f"{cell['seconds_per_step']:.3f} s/step", file=sys.stderr, flush=True)


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def report(args: argparse.Namespace) -> dict[str, Any]:
    repo, _ = METHODS[args.method]
    cells = Path(args.cells) / args.method
    loaded = {side: {p.name.split(".")[0]: json.loads(p.read_text()) for p in sorted(cells.glob(f"*.{side}.json"))}
              for side in SIDES}
    images = sorted(set(loaded["official"]) & set(loaded["ganinvert"]))
    if not images:
        raise SystemExit(f"no image has both cells under {cells}")
    steps_axis = [row["step"] for row in loaded["official"][images[0]]["curve"]]
    curves: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for side in SIDES:
        curves[side] = {}
        for metric in ("psnr", "lpips"):
            curves[side][metric] = [_quartiles([loaded[side][im]["curve"][k][metric] for im in images])
                                    for k in range(len(steps_axis))]
    first = loaded["official"][images[0]]
    result = {
        "method": args.method, "official_repo": repo,
        "official_commit": official_commit(Path(args.official), args.official_commit) if args.official else
        args.official_commit,
        "images": images, "steps": first["steps"], "every": first["every"],
        "cpu_patches": first["patches"],
        "official_command": "python projector.py " + " ".join(first["argv"]),
        "ganinvert_configuration": loaded["ganinvert"][images[0]].get("method"),
        "ganinvert_settings": loaded["ganinvert"][images[0]].get("settings"),
        "lpips": "AlexNet v0.1 (ganinvert.metrics.LPIPS), images at generator size",
        "psnr_official_median": curves["official"]["psnr"][-1][1],
        "psnr_ganinvert_median": curves["ganinvert"]["psnr"][-1][1],
        "lpips_official_median": curves["official"]["lpips"][-1][1],
        "lpips_ganinvert_median": curves["ganinvert"]["lpips"][-1][1],
        "seconds_per_step_official": statistics.median(loaded["official"][im]["seconds_per_step"] for im in images),
        "seconds_per_step_ganinvert": statistics.median(loaded["ganinvert"][im]["seconds_per_step"] for im in images),
        "per_image_final": {im: {side: loaded[side][im]["curve"][-1] for side in SIDES} for im in images},
        "curves": {"step": steps_axis, **{f"{m}_{side}_q1_median_q3": curves[side][m] for side in SIDES
                                          for m in ("psnr", "lpips")}},
    }
    result["psnr_gap_db"] = result["psnr_ganinvert_median"] - result["psnr_official_median"]
    result["lpips_gap"] = result["lpips_ganinvert_median"] - result["lpips_official_median"]
    result["within_tolerance"] = abs(result["psnr_gap_db"]) <= 0.5 and abs(result["lpips_gap"]) <= 0.01
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{args.method}.json", result)
    atomic_write_bytes(out / f"{args.method}.md", markdown(result).encode())
    plot(result, out / f"{args.method}.png")
    return result


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# Parity: {r['method']} ({r['official_repo']} @ {r['official_commit']})", "",
             f"{len(r['images'])} images, {r['steps']} steps; ganinvert side: {r['ganinvert_configuration']} "
             f"with `{json.dumps(r['ganinvert_settings'])}`.", "",
             "| | official | ganinvert | gap |", "|---|---|---|---|",
             f"| median final PSNR (dB) | {r['psnr_official_median']:.2f} | {r['psnr_ganinvert_median']:.2f} | "
             f"{r['psnr_gap_db']:+.2f} |",
             f"| median final LPIPS | {r['lpips_official_median']:.4f} | {r['lpips_ganinvert_median']:.4f} | "
             f"{r['lpips_gap']:+.4f} |",
             f"| seconds per step | {r['seconds_per_step_official']:.3f} | {r['seconds_per_step_ganinvert']:.3f} | |",
             "", f"Within tolerance (0.5 dB, 0.01 LPIPS): **{r['within_tolerance']}**", "",
             "| image | PSNR official | PSNR ganinvert | LPIPS official | LPIPS ganinvert |", "|---|---|---|---|---|"]
    for im, row in r["per_image_final"].items():
        lines.append(f"| {im} | {row['official']['psnr']:.2f} | {row['ganinvert']['psnr']:.2f} | "
                     f"{row['official']['lpips']:.4f} | {row['ganinvert']['lpips']:.4f} |")
    lines += ["", "Run-time changes to the official code:", ""] + [f"* {p}" for p in r["cpu_patches"]]
    lines += ["", f"Official command (per image): `{r['official_command']}`", ""]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = r["curves"]["step"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("psnr", "lpips")):
        for side, colour in zip(SIDES, ("tab:blue", "tab:orange")):
            q = r["curves"][f"{metric}_{side}_q1_median_q3"]
            ax.plot(steps, [v[1] for v in q], color=colour, label=f"{side} median")
            ax.fill_between(steps, [v[0] for v in q], [v[2] for v in q], color=colour, alpha=0.25)
        ax.set_xlabel("step")
        ax.set_ylabel("PSNR (dB)" if metric == "psnr" else "LPIPS (alex)")
        ax.legend()
    fig.suptitle(f"{r['method']}: official vs ganinvert ({len(r['images'])} images, quartile bands)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("method", choices=sorted(METHODS))
    p.add_argument("--official", help="local clone/extract of the official repository")
    p.add_argument("--official-commit", help="commit of that tree when it is not a git checkout")
    p.add_argument("--generator", default="default")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--generated", type=int, default=4, help="rotated generated samples")
    p.add_argument("--real", type=int, default=4, help="first CelebA-HQ faces")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lpips-weights", default=str(LPIPS_WEIGHTS))
    p.add_argument("--cells", default=str(RESULTS / "cells"))
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if not args.report_only and not args.official:
        p.error("--official PATH is required to run cells")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.report_only:
        run_cells(args)
    r = report(args)
    print(json.dumps({k: r[k] for k in ("method", "psnr_official_median", "psnr_ganinvert_median",
                                        "lpips_official_median", "lpips_ganinvert_median", "within_tolerance")}))


if __name__ == "__main__":
    main()
