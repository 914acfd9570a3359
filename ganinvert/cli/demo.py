"""``ganinvert demo``: the project's point at first sight.

The bundled example (a rotated face: out of distribution for the bundled 64 px face generator)
is inverted with W+, (W+,S,B) and SPHInX, and each solution's w+ is perturbed at 20 and 10 dB
SNR (SPHInX Fig. 1). One ``demo.png`` shows it all with the numbers on the image: a high PSNR
is easy (the noise maps B of (W+,S,B) can memorise pixels); whether the solution survives a
small move in latent space is the other half of the story. Each method's own output folder
(``OUT/<method>/``: reconstruction, perturbed renders, metrics.json, loss curve, result file)
is kept too.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import click
import torch

from ..errors import GanInvertError
from .common import device_option, lpips_options, optional_lpips, overwrite_option, pick_device


@dataclass(frozen=True)
class DemoMethod:
    """A method of the demo: its registry name and preset, its name on the image, its steps."""

    name: str
    preset: str | None
    title: str
    steps: int


#: Budgets: 24-28 ms per step with 2 threads on 2 idle cores (29-36 ms with 1 thread) at 64 px, so the
#: whole demo takes about 1.7 minutes there (2.5 on a busy machine, 1 thread); SPHInX converges slowest.
DEMO_METHODS = (DemoMethod("w+", None, "W+", 700), DemoMethod("w+sb", None, "(W+,S,B)", 700),
                DemoMethod("sphinx", "sphinx-official", "SPHInX", 2000))
#: The SNRs of the perturbation strip (dB) and the draws behind each robustness figure.
DEMO_SNR_DB = (20.0, 10.0)
TRIALS = 8
TILE = 192
#: 1-minute load average above which torch runs one thread (threads fighting over busy cores
#: made the old demo take 16 minutes on a shared 2-core machine).
BUSY_LOAD = 1.0


def demo_threads(threads: int | None) -> int:
    """``threads`` if given, else torch's default on an idle machine and 1 on a busy one."""
    if threads is not None:
        if threads < 1:
            raise GanInvertError(f"--threads must be >= 1, got {threads}")
        return threads
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] > BUSY_LOAD
    return 1 if busy else torch.get_num_threads()


@torch.no_grad()
def perturbed_renders(G: Any, result: Any, snr_db: Sequence[float], seed: int) -> list[torch.Tensor]:
    """One render of ``result`` per SNR with its w+ perturbed as in
    :func:`ganinvert.tasks.robustness.latent_robustness`; the noise is drawn from ``seed`` and the
    level's index only, so every method gets the same draw."""
    from ..checks import check_finite
    from ..tasks.robustness import perturbation_sigma

    inputs = result.inputs(G)
    ws = inputs.ws
    renders = []
    for k, level in enumerate(snr_db):
        noise = torch.randn(ws.shape, generator=torch.Generator().manual_seed(seed + k)).to(ws)
        inputs.ws = ws + perturbation_sigma(ws, level)[:, None, None] * noise
        renders.append(check_finite(inputs.render(G), f"the render at {level:g} dB SNR"))
    return renders


def _font(size: int) -> Any:
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def demo_figure(target: torch.Tensor, rows: Sequence[dict[str, Any]], note: str) -> Any:
    """The side-by-side: one row per method (input, reconstruction, perturbed renders), every
    number printed under its image; ``rows``: title, steps, seconds, metrics, render, perturbed."""
    from PIL import Image, ImageDraw

    from ..io import tensor_to_pil

    big, small = _font(17), _font(13)
    header_w, caption_h, title_h, columns_h = 170, 44, 64, 26
    width = header_w + TILE * (2 + len(DEMO_SNR_DB))
    height = title_h + columns_h + len(rows) * (TILE + caption_h)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 6), "ganinvert demo: a rotated face (out of distribution) inverted into the bundled 64 px "
              "face generator", fill="black", font=big)
    draw.text((10, 30), "PSNR (higher is better) and LPIPS (lower) to the input. Perturbed: Gaussian noise on the "
              "solution's w+ at that SNR, one draw for all (SPHInX Fig. 1).", fill="black", font=small)
    draw.text((10, 46), note, fill="dimgray", font=small)
    heads = ["input", "reconstruction"] + [f"w+ perturbed, {snr:g} dB SNR" for snr in DEMO_SNR_DB]
    for j, head in enumerate(heads):
        draw.text((header_w + j * TILE + 6, title_h + 5), head, fill="black", font=small)

    def tile(image: torch.Tensor) -> Any:
        return tensor_to_pil(image[:1]).resize((TILE, TILE), Image.Resampling.NEAREST)

    for i, row in enumerate(rows):
        top = title_h + columns_h + i * (TILE + caption_h)
        draw.text((10, top + TILE // 2 - 24), row["title"], fill="black", font=big)
        draw.text((10, top + TILE // 2 + 2), f"{row['steps']} steps, {row['seconds']:.0f} s", fill="dimgray",
                  font=small)
        captions = [("", "the bundled example")] + [
            (f"PSNR {m['psnr']:.2f} dB", f"LPIPS {m['lpips']:.3f}" if "lpips" in m else "")
            for m in (row["metrics"], *row["perturbed_metrics"])]
        for j, (image, (line, detail)) in enumerate(zip([target, row["render"], *row["perturbed"]], captions)):
            left = header_w + j * TILE + 6
            canvas.paste(tile(image), (header_w + j * TILE, top))
            draw.text((left, top + TILE + 3), line, fill="black", font=big)
            draw.text((left, top + TILE + 23), detail, fill="dimgray", font=small)
    return canvas


def _demo_paths(out: Path) -> list[Path]:
    return [out / "demo.png", out / "demo.json"] + [out / m.name for m in DEMO_METHODS]


@click.command("demo")
@click.option("--out", "-o", default="demo-out", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--steps", type=int, default=None,
              help="Steps of every method [default: W+ 700, (W+,S,B) 700, SPHInX 2000: under 3 minutes on 2 idle cores].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None,
              help="torch CPU threads [default: torch's choice, 1 when the machine is busy].")
@overwrite_option
@lpips_options
@device_option
def demo_command(out: Path, steps: int | None, seed: int, threads: int | None, overwrite: bool,
                 lpips_weights: str | None, no_lpips: bool, device: str | None) -> None:
    """Invert the bundled example image (a rotated face) with W+, (W+,S,B) and SPHInX into the
    bundled generator, perturb each solution in w+, and write OUT/demo.png (side by side, with
    PSNRs) plus OUT/<method>/ per method."""
    from ..checks import check_seed
    from ..inversion import invert, make_method
    from ..inversion.report import image_metrics, write_image_folder
    from ..io import atomic_write_json, load_image, save_pil
    from ..models import load_generator
    from ..models.loading import ASSETS
    from ..tasks.robustness import latent_robustness

    started = time.perf_counter()
    if steps is not None and steps <= 0:
        raise GanInvertError(f"--steps must be > 0, got {steps}")
    seed = check_seed(seed, "--seed")
    existing = [p for p in _demo_paths(out) if os.path.lexists(p)]
    if existing and not overwrite:
        raise GanInvertError(f"{out} already holds a demo ({existing[0]}); pass --overwrite to replace it")
    torch.set_num_threads(demo_threads(threads))
    dev = pick_device(device)
    lpips = optional_lpips(lpips_weights, no_lpips, dev)
    if lpips is None:
        note = ("LPIPS off (--no-lpips)" if no_lpips else "No LPIPS weights found (--lpips-weights / "
                "$GANINVERT_LPIPS_WEIGHTS): every method ran with the MSE term only; no LPIPS figures.")
        if not no_lpips:
            click.echo(f"note: {note}", err=True)
    else:
        note = "Loss: MSE + LPIPS (AlexNet), as each method's settings weight them."
    G = load_generator("default", dev)
    target = load_image(ASSETS / "example.png", G.resolution).to(dev)
    rows = []
    for spec in DEMO_METHODS:
        settings: dict[str, Any] = {"steps": steps if steps is not None else spec.steps}
        if lpips is None:
            settings["lambda_lpips"] = 0.0
        make_method(spec.name, spec.preset, settings)  # validates before the run
        click.echo(f"{spec.title}: {settings['steps']} steps …")
        result = invert(G, target, spec.name, preset=spec.preset, settings=settings, seed=seed, lpips=lpips)
        render = result.render(G)
        metrics = image_metrics(render, target, lpips)[0]
        perturbed = perturbed_renders(G, result, DEMO_SNR_DB, seed)
        perturbed_metrics = [image_metrics(p, target, lpips)[0] for p in perturbed]
        stability = latent_robustness(G, result, DEMO_SNR_DB, trials=TRIALS, seed=seed, lpips=lpips)
        robustness = {f"{snr:g}": {"example_to_input": pm, "mean_to_reconstruction": {
            k: sum(r[k] for r in stability if r["snr_db"] == snr) / TRIALS
            for k in ("psnr", "ssim", "lpips") if k in stability[0]}} for snr, pm in zip(DEMO_SNR_DB, perturbed_metrics)}
        record = {**metrics, "method": spec.name, "preset": result.preset, "steps": settings["steps"],
                  "seconds": round(result.seconds, 3), "seed": seed, "robustness_trials": TRIALS,
                  "robustness": robustness}
        names = [f"perturbed_{snr:g}dB" for snr in DEMO_SNR_DB]
        write_image_folder(out / spec.name, result, record,
                           images={"input": target, "reconstruction": render, **dict(zip(names, perturbed))},
                           strip=[("input", target), (f"{spec.title} {metrics['psnr']:.2f} dB", render)]
                           + [(f"{snr:g} dB SNR: {pm['psnr']:.2f} dB", p)
                              for snr, p, pm in zip(DEMO_SNR_DB, perturbed, perturbed_metrics)],
                           curve_title=f"{spec.title} on the bundled example", overwrite=overwrite)
        click.echo(f"{spec.title}: PSNR {metrics['psnr']:.2f} dB"
                   + (f", LPIPS {metrics['lpips']:.3f}" if "lpips" in metrics else "")
                   + "".join(f"; perturbed at {snr:g} dB: {pm['psnr']:.2f} dB"
                             for snr, pm in zip(DEMO_SNR_DB, perturbed_metrics))
                   + f" ({result.seconds:.0f} s) -> {out / spec.name}")
        rows.append({"title": spec.title, "steps": settings["steps"], "seconds": result.seconds, "metrics": metrics,
                     "render": render, "perturbed": perturbed, "perturbed_metrics": perturbed_metrics,
                     "record": record})
    summary = {"image": "ganinvert/assets/example.png", "generator": "default", "lpips": lpips is not None,
               "threads": torch.get_num_threads(), "snr_db": list(DEMO_SNR_DB),
               "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
               "methods": {spec.name: row["record"] for spec, row in zip(DEMO_METHODS, rows)},
               "wall_seconds": round(time.perf_counter() - started, 1)}
    atomic_write_json(out / "demo.json", summary)
    save_pil(demo_figure(target, rows, note), out / "demo.png")
    click.echo(f"wrote {out / 'demo.png'} ({time.perf_counter() - started:.0f} s)")


COMMANDS = {"demo": demo_command}
