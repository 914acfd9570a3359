"""``ganinvert restore | edit | interpolate | directions | discover``: restoration and latent editing."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click
import torch

from ..errors import GanInvertError
from ..inversion.methods.discover import ATTRIBUTES
from ..tasks.operators import make_operator, operator_class, operator_help, operator_names
from .common import (claimed_outputs, device_images_generator, device_option, fit_option, generator_option,
                     load_lpips, lpips_options, method_options, method_settings, optional_lpips, out_dir_option,
                     overwrite_option, pick_device, run_identity)


def _per_image_dirs(out: Path, n: int) -> list[Path]:
    return [out] if n == 1 else [out / f"image_{i:02d}" for i in range(n)]


# ------------------------------------------------------------------------- restore
@click.command("restore")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--task", required=True, type=click.Choice(operator_names()), help=operator_help())
@click.option("--sigma", type=float, default=None,
              help="Noise std on the [-1, 1] scale (required for denoise; optional noise for cs/inpaint/sr).")
@click.option("--fraction", type=float, default=None, help="cs: kept fraction of measurements, in (0, 1].")
@click.option("--mask", type=click.Path(path_type=Path), default=None,
              help="inpaint: mask image, white = observed, at the generator's resolution.")
@click.option("--resize-mask", is_flag=True, help="inpaint: resize a mask of another size (nearest).")
@click.option("--factor", type=int, default=None, help="sr: downsampling factor.")
@click.option("--measured", is_flag=True,
              help="IMAGES are measurements y (noisy / masked / low-resolution images), not clean images.")
@generator_option
@method_options(seed_help="Seeds the measurement and the inversion.", batch_help="Images inverted together.")
@fit_option("How images that are not square at the needed size are fitted.")
@out_dir_option
@overwrite_option
@lpips_options
@device_option
def restore_command(images: tuple[Path, ...], task: str, sigma: float | None, fraction: float | None,
                    mask: Path | None, resize_mask: bool, factor: int | None, measured: bool, generator: str,
                    method: str, preset: str | None, steps: int | None, overrides: tuple[str, ...], seed: int,
                    batch_size: int, fit: str, out: Path, overwrite: bool, lpips_weights: str | None,
                    no_lpips: bool, device: str | None) -> None:
    """Restore IMAGES through the generator: simulate the TASK's measurement of each clean image
    (or read measured ones with --measured), invert it and write OUT/<name>/ with measurement.png,
    restoration.png, comparison.png, metrics.json (PSNR/SSIM/LPIPS vs the clean image and
    psnr_measurement of the degraded input; sr inputs are upsampled bicubically), curve.png and
    the result file (folders as `ganinvert invert` writes them; see --overwrite)."""
    from ..inversion import make_method
    from ..inversion.result import source_image_record
    from ..io import load_image
    from ..models.loading import file_sha256
    from ..outputs import output_names
    from ..tasks.restore import load_measurement, restore, write_restoration_outputs

    settings = method_settings(overrides, steps, no_lpips)
    if batch_size <= 0:
        raise GanInvertError(f"--batch-size must be > 0, got {batch_size}")
    operator_class(task, measured=measured)  # before loading anything heavy
    m = make_method(method, preset, settings)  # validate before loading anything heavy
    dev, paths, G = device_images_generator(device, images, generator)
    # The noise level does not enter the inversion (A is the identity), so measured denoising needs no --sigma.
    op = make_operator(task, image_size=G.resolution, sigma=sigma, fraction=fraction, mask=mask,
                       factor=factor, seed=seed, resize_mask=resize_mask, measured=measured).to(dev)
    lpips = load_lpips(lpips_weights, no_lpips, dev)
    if measured:
        clean, y = None, torch.cat([load_measurement(p, op, G.resolution, fit) for p in paths]).to(dev)
    else:
        clean = torch.cat([load_image(p, G.resolution, fit) for p in paths]).to(dev)
        with torch.no_grad():
            y = op(clean)  # one draw for the whole list, so batching does not change the noise
    task_record = {"task": task, "sigma": sigma, "fraction": fraction, "mask": None if mask is None else str(mask),
                   "factor": factor, "measured": measured, "operator_seed": seed}
    sources = [source_image_record(p) for p in paths]
    # The noise is one draw for the whole list, so each image's measurement depends on the list.
    identity = run_identity("restore", G, m, preset, seed, lpips, fit=fit, resize_mask=resize_mask,
                            mask_sha256=None if mask is None else file_sha256(mask), **task_record,
                            images=[s["sha256"] for s in sources])
    with claimed_outputs(out, output_names(paths), sources, identity, resume=False, overwrite=overwrite) as run:
        for start in range(0, len(paths), batch_size):
            part = slice(start, start + batch_size)
            restored = restore(G, op, clean=None if clean is None else clean[part], measurement=y[part],
                               method=method, preset=preset, settings=settings, seed=seed, lpips=lpips)
            for k, i in enumerate(range(len(paths))[part]):
                one = restored.select(k)
                one.result.source_images = [sources[i]]
                metrics = write_restoration_outputs(
                    run.folder(i), one, lpips,
                    {**{key: v for key, v in task_record.items() if v is not None}, "run_id": run.runs[i]},
                    overwrite=run.claims[i].replace)
                summary = (f"PSNR {metrics['psnr']:.2f} dB" if "psnr" in metrics else "restored")
                if "psnr_measurement" in metrics:
                    summary += f" (measurement {metrics['psnr_measurement']:.2f} dB)"
                click.echo(f"{run.names[i]}: {summary} ({metrics['seconds']:.1f} s) -> {run.folder(i)}")

# ------------------------------------------------------------------------- edit
@click.command("edit")
@click.argument("result_path", type=click.Path(path_type=Path))
@click.option("--direction", "-d", required=True,
              help="pca:K (K-th principal direction of w, in standard deviations), FILE (.pt/.npy/.npz of "
                   "shape (D,), (1, D) or (num_ws, D)) or FILE:K (row K of a `ganinvert directions` file).")
@click.option("--strength", default="-3,-1.5,0,1.5,3", show_default=True, help="Comma-separated alphas.")
@click.option("--layers", default="all", show_default=True,
              help="ws indices to move: 'i-j' (inclusive), 'i,j,k' or 'all'.")
@generator_option
@out_dir_option
@lpips_options
@device_option
def edit_command(result_path: Path, direction: str, strength: str, layers: str, generator: str, out: Path,
                 lpips_weights: str | None, no_lpips: bool, device: str | None) -> None:
    """Move RESULT along a direction by each strength (with the rule of the result's method) and write
    OUT/edit_strip.png, one PNG per strength and edit.json (RMSE and LPIPS to the alpha = 0 render)."""
    from ..inversion import InversionResult
    from ..io import atomic_write_json
    from ..models import load_generator
    from ..tasks.editing import edit, edit_distances, parse_layers, parse_strengths, resolve_direction, write_frames

    alphas = parse_strengths(strength)
    result = InversionResult.load(result_path)
    dev = pick_device(device)
    G = load_generator(generator, dev)
    result.check_generator(G)
    chosen = parse_layers(layers, G.num_ws)
    d = resolve_direction(G, direction)
    frames = edit(G, result, d, alphas, chosen)
    reference = edit(G, result, d, [0.0], chosen)[0]
    lpips = optional_lpips(lpips_weights, no_lpips, dev)
    for i, folder in enumerate(_per_image_dirs(out, result.batch_size)):
        distances = edit_distances(frames[:, i:i + 1], reference[i:i + 1], lpips)
        write_frames(frames[:, i], [f"a={a:g}" for a in alphas], folder, "edit")
        atomic_write_json(folder / "edit.json", {
            "result": str(result_path), "method": result.method, "direction": direction,
            "layers": "all" if chosen is None else chosen,
            "frames": [{"alpha": a, **row} for a, row in zip(alphas, distances)]})
        click.echo(f"wrote {len(alphas)} edits to {folder} (" + ", ".join(
            f"a={a:g}: " + (f"LPIPS {row['lpips']:.3f}" if "lpips" in row else f"RMSE {row['rmse']:.3f}")
            for a, row in zip(alphas, distances)) + ")")

# ------------------------------------------------------------------------- interpolate
@click.command("interpolate")
@click.argument("result_a", type=click.Path(path_type=Path))
@click.argument("result_b", type=click.Path(path_type=Path))
@click.option("--steps", type=int, default=8, show_default=True, help="Frames, both ends included.")
@click.option("--frame-ms", type=int, default=120, show_default=True, help="GIF frame duration.")
@generator_option
@out_dir_option
@device_option
def interpolate_command(result_a: Path, result_b: Path, steps: int, frame_ms: int, generator: str, out: Path,
                        device: str | None) -> None:
    """Blend the generator inputs of RESULT_A and RESULT_B (same method and generator) and write
    OUT/interp_strip.png, OUT/interp.gif and one PNG per frame; the ends are the two reconstructions."""
    from ..inversion import InversionResult
    from ..models import load_generator
    from ..tasks.editing import write_frames
    from ..tasks.interpolation import check_compatible, interpolate

    if steps < 2:
        raise GanInvertError(f"--steps must be >= 2 (both ends included), got {steps}")
    if frame_ms <= 0:
        raise GanInvertError(f"--frame-ms must be > 0, got {frame_ms}")
    a, b = InversionResult.load(result_a), InversionResult.load(result_b)
    check_compatible(a, b)  # before loading the generator
    G = load_generator(generator, pick_device(device))
    frames = interpolate(G, a, b, steps)
    times = torch.linspace(0, 1, steps).tolist()
    for i, folder in enumerate(_per_image_dirs(out, frames.shape[1])):
        write_frames(frames[:, i], [f"t={t:.2f}" for t in times], folder, "interp", gif_ms=frame_ms)
        click.echo(f"wrote {steps} frames, interp_strip.png and interp.gif to {folder}")

# ------------------------------------------------------------------------- directions
@click.command("directions")
@generator_option
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path), help=".pt file")
@click.option("--k", "k", type=int, default=None, help="Keep the K strongest directions [default: all].")
@click.option("--samples", type=int, default=None, help="Mapped samples [default: 10 000].")
@click.option("--seed", type=int, default=None, help="Seed of the sampled z [default: 0].")
@device_option
def directions_command(generator: str, out: Path, k: int | None, samples: int | None, seed: int | None,
                       device: str | None) -> None:
    """Write the principal directions of the generator's w (GANSpace-style PCA of sampled w) to OUT:
    'directions' (K, style_dim) unit vectors, strongest first, 'explained_variance' and 'generator_sha256'.
    Use one with `ganinvert edit --direction OUT:INDEX`."""
    from ..models import load_generator
    from ..tasks.editing import PCA_SAMPLES, PCA_SEED, pca_directions

    if out.suffix not in (".pt", ".pth"):
        raise GanInvertError(f"--out must be a .pt file, got {out.name}")
    G = load_generator(generator, pick_device(device))
    full = pca_directions(G, PCA_SAMPLES if samples is None else samples, PCA_SEED if seed is None else seed)
    pca = full.first(G.style_dim if k is None else k)
    pca.save(out)
    share = pca.explained_variance / full.explained_variance.sum()
    click.echo(f"wrote {pca.directions.shape[0]} directions to {out}: they explain "
               f"{float(share.sum()) * 100:.1f}% of the variance of w (the first {float(share[0]) * 100:.1f}%)")

# ------------------------------------------------------------------------- discover
@click.command("discover")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--attribute", required=True, type=click.Choice(ATTRIBUTES))
@click.option("--factors", default=None,
              help="Comma-separated attribute values, the first being the reference [default: rotation "
                   "0,22.5,45 degrees; brightness 0.5,1,1.5; zoom 1,1.25,1.75].")
@generator_option
@method_options(method=None, preset_help="A preset of method discover [default: sphinx-official].")
@fit_option()
@click.option("--frames-per-segment", type=int, default=4, show_default=True,
              help="Traversal frames between consecutive learned alphas.")
@click.option("--frame-ms", type=int, default=150, show_default=True, help="GIF frame duration.")
@out_dir_option
@overwrite_option
@device_option
def discover_command(images: tuple[Path, ...], attribute: str, factors: str | None, generator: str,
                     preset: str | None, steps: int | None, overrides: tuple[str, ...], seed: int, fit: str,
                     frames_per_segment: int, frame_ms: int, out: Path, overwrite: bool, device: str | None) -> None:
    """Learn an ATTRIBUTE direction from K transformed copies of each image (SPHInX App. B) and write
    OUT/<name>/ with variants.png (targets over reconstructions), the traversal along the direction
    (traversal_strip.png, traversal.gif, frames), discovery.json (alphas, PSNR per variant) and the
    result (folders as `ganinvert invert` writes them; see --overwrite)."""
    from ..inversion import make_method
    from ..inversion.report import image_metrics, write_image_folder
    from ..inversion.result import source_image_record
    from ..io import load_image
    from ..outputs import output_names
    from ..tasks.discovery import (DEFAULT_FACTORS, alphas, attribute_variants, discover, traversal_alphas, traverse,
                                   variant_reconstructions)
    from ..tasks.editing import write_frames

    settings = method_settings(overrides, steps)
    if factors is None:
        values = DEFAULT_FACTORS[attribute]
    else:
        try:
            values = tuple(float(v) for v in factors.split(",") if v.strip())
        except ValueError:
            raise GanInvertError(f"--factors must be comma-separated numbers, got {factors!r}") from None
    if frames_per_segment < 1 or frame_ms <= 0:
        raise GanInvertError("--frames-per-segment and --frame-ms must be > 0")
    m = make_method("discover", preset, {**settings, "attribute": attribute, "factors": values})
    dev, paths, G = device_images_generator(device, images, generator)
    batch = torch.cat([load_image(p, G.resolution, fit) for p in paths]).to(dev)
    sources = [source_image_record(p) for p in paths]
    identity = run_identity("discover", G, m, preset, seed, None, fit=fit, frames_per_segment=frames_per_segment,
                            frame_ms=frame_ms)
    with claimed_outputs(out, output_names(paths), sources, identity, resume=False, overwrite=overwrite,
                         record="discovery.json") as run:
        result = discover(G, batch, attribute, values, preset=preset, settings=settings, seed=seed)
        learned = alphas(result)
        targets = attribute_variants(batch, attribute, values)
        recon = variant_reconstructions(G, result)
        for i, name in enumerate(run.names):
            walk = traversal_alphas(learned[i], frames_per_segment)
            frames = traverse(G, result.select(i), walk)[:, 0]
            scores = image_metrics(recon[i], targets[i], None)
            labels = [f"{attribute} {f:g}" for f in values] + [f"a={a:.2f}, {s['psnr']:.1f} dB"
                                                               for a, s in zip(learned[i], scores)]
            one = result.select(i)
            one.source_images = [sources[i]]
            record = {"attribute": attribute, "factors": list(values), "alphas": learned[i],
                      "psnr": [s["psnr"] for s in scores], "ssim": [s["ssim"] for s in scores],
                      "traversal_alphas": walk, "steps": len(one.history.get("loss", [])),
                      "seconds": round(one.seconds, 3), "seed": seed, "run_id": run.runs[i]}
            write_image_folder(run.folder(i), one, record, strip=list(zip(labels, [*targets[i], *recon[i]])),
                               strip_name="variants.png", record_name="discovery.json",
                               curve_title=f"discover {attribute} ({name})",
                               extra=partial(write_frames, frames, [f"a={a:.2f}" for a in walk], prefix="traversal",
                                             gif_ms=frame_ms),
                               overwrite=run.claims[i].replace)
            click.echo(f"{name}: alphas " + ", ".join(f"{a:.3f}" for a in learned[i])
                       + " | PSNR per variant " + ", ".join(f"{s['psnr']:.2f}" for s in scores)
                       + f" -> {run.folder(i)}")


COMMANDS = {"restore": restore_command, "edit": edit_command, "interpolate": interpolate_command,
            "directions": directions_command, "discover": discover_command}
