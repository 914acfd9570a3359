"""The outputs of ``ganinvert evaluate``, rebuilt from the finished cells on every run.

Under ``OUT/``:

* ``results.csv``: one row per image x shift x method (:data:`RESULT_COLUMNS`), in the plan's
  order (shifts as listed, images as listed, methods as given);
* ``summary.csv`` and ``summary.md``: per shift and method, the median and the 25th / 75th
  percentiles over images of every metric (the SPHInX protocol; numpy's linear interpolation);
* ``plots/<metric>.png``: each metric against shift severity, one panel per shift family, one
  line per method (median, bars from the 25th to the 75th percentile);
* ``grids/<shift>.png``: for the first images, the clean image, the method's input and every
  method's reconstruction side by side;
* ``report.md``: setup, summary tables, plots and grids together.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..io import atomic_write_bytes, image_strip, load_image, save_pil
from .cells import cell_json_path
from .plan import EvaluationConfig, Plan
from .suites import safe_name


RESULT_COLUMNS = ("suite", "shift", "family", "severity", "image", "method", "psnr", "ssim", "lpips",
                  "seconds", "seed")
#: metric -> (title, higher is better)
METRICS = {"psnr": ("PSNR (dB)", True), "ssim": ("SSIM", True), "lpips": ("LPIPS", False)}
GRID_TILE = 128


def _metrics_in(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [m for m in METRICS if rows and all(m in r for r in rows)]


def _csv_bytes(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buf.getvalue().encode()


def write_results_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """``results.csv``; LPIPS is empty when it was not computed."""
    atomic_write_bytes(path, _csv_bytes(RESULT_COLUMNS, rows))


def summarise(rows: Sequence[dict[str, Any]], shifts: Sequence[Any], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Per (shift, method): ``n``, ``<metric>_median``, ``_p25``, ``_p75`` and ``seconds_median``.

    >>> rows = [{"shift": "a", "method": "m", "psnr": v, "ssim": 0.5, "seconds": 1.0} for v in (1, 2, 3, 10)]
    >>> from ganinvert.evaluation.suites import Shift
    >>> s = summarise(rows, [Shift("a", "f", 1.0)], ["m"])[0]
    >>> s["psnr_median"], s["psnr_p25"], s["psnr_p75"]
    (2.5, 1.75, 4.75)
    """
    metrics = _metrics_in(rows)
    out = []
    for shift in shifts:
        for method in methods:
            mine = [r for r in rows if r["shift"] == shift.name and r["method"] == method]
            if not mine:
                continue
            entry: dict[str, Any] = {"suite": mine[0]["suite"], "shift": shift.name, "family": shift.family,
                                     "severity": shift.severity, "method": method, "n": len(mine)}
            for metric in metrics:
                values = np.array([r[metric] for r in mine], dtype=np.float64)
                p25, median, p75 = np.percentile(values, [25, 50, 75])
                entry.update({f"{metric}_median": round(float(median), 4), f"{metric}_p25": round(float(p25), 4),
                              f"{metric}_p75": round(float(p75), 4)})
            entry["seconds_median"] = round(float(np.median([r["seconds"] for r in mine])), 3)
            out.append(entry)
    return out


def summary_columns(metrics: Sequence[str]) -> list[str]:
    return (["suite", "shift", "family", "severity", "method", "n"]
            + [f"{m}_{s}" for m in metrics for s in ("median", "p25", "p75")] + ["seconds_median"])


def _fmt(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


def summary_markdown(summary: Sequence[dict[str, Any]], shifts: Sequence[Any], methods: Sequence[str]) -> str:
    """One table per metric: shifts x methods, ``median [p25, p75]``, the best median in bold."""
    metrics = [m for m in METRICS if summary and f"{m}_median" in summary[0]]
    lookup = {(s["shift"], s["method"]): s for s in summary}
    parts = []
    for metric in metrics:
        title, higher_better = METRICS[metric]
        arrow = "higher is better" if higher_better else "lower is better"
        digits = 2 if metric == "psnr" else 3
        lines = [f"### {title}, {arrow}: median [25th, 75th percentile] over images", "",
                 "| shift | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for shift in shifts:
            entries = [lookup.get((shift.name, m)) for m in methods]
            medians = [e[f"{metric}_median"] for e in entries if e is not None]
            best = (max(medians) if higher_better else min(medians)) if medians else None
            cells = []
            for e in entries:
                if e is None:
                    cells.append("–")
                    continue
                med, p25, p75 = (_fmt(e[f"{metric}_{s}"], digits) for s in ("median", "p25", "p75"))
                text = f"{med} [{p25}, {p75}]"
                cells.append(f"**{text}**" if len(medians) > 1 and e[f"{metric}_median"] == best else text)
            lines.append(f"| {shift.name} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    seconds = ["### Optimisation time (s), median over cells", "", "| method | seconds |", "|---|---|"]
    for method in methods:
        values = [s["seconds_median"] for s in summary if s["method"] == method]
        if values:
            seconds.append(f"| {method} | {float(np.median(values)):.2f} |")
    parts.append("\n".join(seconds))
    return "\n\n".join(parts) + "\n"


def plot_metrics(summary: Sequence[dict[str, Any]], shifts: Sequence[Any], methods: Sequence[str],
                 out_dir: Path) -> list[Path]:
    """``<metric>.png`` per metric: median and 25-75th percentile bars against severity."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..inversion.report import save_figure

    metrics = [m for m in METRICS if summary and f"{m}_median" in summary[0]]
    families: dict[str, list[Any]] = {}
    for shift in shifts:
        families.setdefault(shift.family, []).append(shift)
    lookup = {(s["shift"], s["method"]): s for s in summary}
    paths = []
    for metric in metrics:
        title, higher_better = METRICS[metric]
        fig, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 3.4), dpi=100, squeeze=False)
        for ax, (family, members) in zip(axes[0], families.items()):
            numeric = all(s.severity is not None for s in members)
            members = sorted(members, key=lambda s: s.severity) if numeric else members
            severities = [s.severity for s in members] if numeric else [0.0]
            spread = (max(severities) - min(severities)) or max(abs(severities[0]), 1.0)
            for k, method in enumerate(methods):
                points = [(i, s, lookup[(s.name, method)]) for i, s in enumerate(members) if (s.name, method) in lookup]
                if not points:
                    continue
                # Methods side by side around each position so that their bars do not overlap.
                offset = (k - (len(methods) - 1) / 2) * (0.8 if not numeric else 0.03 * spread) / len(methods)
                x = [s.severity + offset if numeric else i + offset for i, s, _ in points]
                med = np.array([e[f"{metric}_median"] for _, _, e in points])
                low = med - np.array([e[f"{metric}_p25"] for _, _, e in points])
                high = np.array([e[f"{metric}_p75"] for _, _, e in points]) - med
                ax.errorbar(x, med, yerr=[low, high], marker="o", ms=4, capsize=3, lw=1.2,
                            linestyle="-" if numeric else "none", label=method)
            if numeric:
                ax.set_xlabel(members[0].unit or family)
            else:
                ax.set_xticks(range(len(members)))
                ax.set_xticklabels([s.name for s in members], rotation=30, ha="right")
                ax.set_xlabel(family)
            ax.set_title(family)
            ax.set_ylabel(f"{title} ({'↑' if higher_better else '↓'})")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        save_figure(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def _gray_tile(size: int) -> torch.Tensor:
    return torch.zeros(1, 3, size, size)


def write_grids(plan: Plan, rows: Sequence[dict[str, Any]], out: Path, grid_images: int) -> list[tuple[str, Path]]:
    """One PNG per shift (per suite when grouped): rows = images, columns = clean, input, methods."""

    suite = plan.suite
    psnr = {(r["shift"], r["image"], r["method"]): r.get("psnr") for r in rows}
    cell_dirs: dict[tuple[tuple[str, ...], str], Path] = {}
    for task in plan.tasks:
        cell_dirs[(task.shift_names, task.image)] = cell_json_path(out, task.key).parent
    groups = ([("all", tuple(s.name for s in plan.shifts), plan.images[plan.shifts[0].name])] if suite.grouped
              else [(s.name, (s.name,), plan.images[s.name]) for s in plan.shifts])
    written = []
    for name, shift_names, refs in groups:
        strips = []
        for ref in refs[:grid_images]:
            folder = cell_dirs[(shift_names, ref.name)]
            clean = load_image(folder / "clean.png")
            size = clean.shape[-1]
            tiles, labels = [], []
            if suite.has_clean_column:
                tiles.append(clean)
                labels.append(f"{ref.name}: clean")
            shown = folder / "input.png"
            tiles.append(load_image(shown) if shown.is_file() else _gray_tile(size))
            labels.append(("input" if suite.has_clean_column else f"{ref.name}: input") if shown.is_file()
                          else "measurement (not an image)")
            for method in plan.methods:
                tiles.append(load_image(folder / f"{safe_name(method.label)}.png"))
                value = None if suite.grouped else psnr.get((shift_names[0], ref.name, method.label))
                labels.append(method.label if value is None else f"{method.label} {value:.2f} dB")
            strips.append(image_strip(tiles, labels, height=GRID_TILE))
        grid = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips)), "white")
        top = 0
        for strip in strips:
            grid.paste(strip, (0, top))
            top += strip.height
        path = out / "grids" / f"{name}.png"
        save_pil(grid, path)
        written.append((name, path))
    return written


def write_report(plan: Plan, config: EvaluationConfig, rows: Sequence[dict[str, Any]], out: Path,
                 grid_images: int = 4) -> None:
    """Write every output listed in the module docstring from ``rows`` (see ``collect_rows``)."""
    from ..io import atomic_write_json

    out = Path(out)
    methods = [m.label for m in plan.methods]
    write_results_csv(rows, out / "results.csv")
    summary = summarise(rows, plan.shifts, methods)
    metrics = _metrics_in(rows)
    atomic_write_bytes(out / "summary.csv", _csv_bytes(summary_columns(metrics), summary))
    tables = summary_markdown(summary, plan.shifts, methods)
    atomic_write_bytes(out / "summary.md", tables.encode())
    plots = plot_metrics(summary, plan.shifts, methods, out / "plots")
    grids = write_grids(plan, rows, out, grid_images) if grid_images > 0 else []
    atomic_write_json(out / "evaluation.json", {"config": config.to_dict(), "generator_sha256": plan.generator_sha256,
                                                "lpips_files": plan.lpips_files, "suite_options": plan.suite.options(),
                                                "cells": len(plan.tasks), "rows": len(rows)})
    atomic_write_bytes(out / "report.md", _report_markdown(plan, config, rows, tables, plots, grids, out).encode())


def _report_markdown(plan: Plan, config: EvaluationConfig, rows: Sequence[dict[str, Any]], tables: str,
                     plots: Sequence[Path], grids: Sequence[tuple[str, Path]], out: Path) -> str:
    suite = plan.suite
    image_counts = sorted({len(v) for v in plan.images.values()})
    lines = [f"# ganinvert evaluate: {suite.name}", "",
             f"{suite.summary[0].upper()}{suite.summary[1:]}. Reconstructions are scored against "
             f"{suite.scored_against}.", "", "## Setup", "",
             f"- generator: `{config.generator}` (sha256 `{plan.generator_sha256[:16]}…`)",
             f"- images: {', '.join(f'`{p}`' for p in config.images)}; "
             f"{'/'.join(map(str, image_counts))} per shift"
             + (f" (at most {config.max_images})" if config.max_images else ""),
             f"- shifts: {', '.join(f'`{s.name}`' for s in plan.shifts)}",
             f"- base seed: {config.seed} (each cell's seed is derived from it, the image, the shift and "
             "the method; see `results.csv`)"]
    if suite.options():
        lines.append("- suite options: " + ", ".join(f"{k} = {v}" for k, v in suite.options().items()))
    lines.append("- metrics: PSNR and SSIM on images in [0, 1] (data range 1)"
                 + (", LPIPS (AlexNet, v0.1)" if "lpips" in _metrics_in(rows) else "; LPIPS off")
                 + "; seconds: optimisation wall time per image")
    lines += ["", "| method | preset | steps | lr | lambda_mse | lambda_lpips |", "|---|---|---|---|---|---|"]
    for method in plan.methods:
        s = method.settings()
        lines.append(f"| {method.label} | {method.resolved_preset() or 'none'} | {s['steps']} | {s['lr']} | "
                     f"{s['lambda_mse']} | {s['lambda_lpips']} |")
    lines += ["", f"{len(plan.tasks)} cells, {len(rows)} rows.", "",
              "## Results", "", "Per shift and method over the images; files: [results.csv](results.csv) "
              "(every row), [summary.csv](summary.csv).", "", tables, "## Plots", ""]
    for path in plots:
        rel = path.relative_to(out).as_posix()
        lines += [f"![{path.stem}]({rel})", ""]
    if grids:
        lines += ["## Examples", "", "Rows: images; columns: " + ("clean image, " if suite.has_clean_column else "")
                  + "the method's input, then each method's reconstruction (with its PSNR).", ""]
        for name, path in grids:
            lines += [f"### {name}", "", f"![{name}]({path.relative_to(out).as_posix()})", ""]
    lines += ["## Files", "", "- `cells/`: one JSON per cell (metrics, seed, fingerprint) with its PNGs; "
              "re-running the same command skips every finished cell.",
              "- `evaluation.json`: the configuration of the last run.", ""]
    return "\n".join(lines)
