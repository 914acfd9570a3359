"""Summaries, tables and plots of ``ganinvert evaluate`` from given rows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganinvert.evaluation.report import plot_metrics, summarise, summary_markdown, write_results_csv
from ganinvert.evaluation.suites import Shift

SHIFTS = [Shift("rot10", "rotation", 10.0, "degrees"), Shift("rot30", "rotation", 30.0, "degrees"),
          Shift("afhq", "domain", None, "dataset")]


def make_rows(with_lpips: bool = True) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for shift in SHIFTS:
        for image in range(5):
            for method, offset in (("w+", 0.0), ("sphinx", 3.0)):
                row = {"suite": "s", "shift": shift.name, "family": shift.family, "severity": shift.severity,
                       "image": f"i{image}", "method": method, "psnr": float(20 + offset + rng.normal()),
                       "ssim": float(0.5 + offset / 10), "seconds": 1.0 + image, "seed": image}
                if with_lpips:
                    row["lpips"] = float(0.4 - offset / 10)
                rows.append(row)
    return rows


def test_summary_uses_median_and_quartiles() -> None:
    rows = make_rows()
    summary = summarise(rows, SHIFTS, ["w+", "sphinx"])
    assert [(s["shift"], s["method"], s["n"]) for s in summary] == [
        (s.name, m, 5) for s in SHIFTS for m in ("w+", "sphinx")]
    values = [r["psnr"] for r in rows if r["shift"] == "rot30" and r["method"] == "sphinx"]
    entry = summary[3]
    assert entry["psnr_median"] == pytest.approx(np.median(values), abs=1e-4)
    assert entry["psnr_p25"] == pytest.approx(np.percentile(values, 25), abs=1e-4)
    assert entry["psnr_p75"] == pytest.approx(np.percentile(values, 75), abs=1e-4)
    assert entry["seconds_median"] == 3.0


def test_markdown_marks_the_best_median_per_shift() -> None:
    summary = summarise(make_rows(), SHIFTS, ["w+", "sphinx"])
    text = summary_markdown(summary, SHIFTS, ["w+", "sphinx"])
    psnr_table = text.split("### SSIM")[0]
    lpips_table = text.split("### LPIPS")[1].split("###")[0]
    for table in (psnr_table, lpips_table):   # sphinx is better on both (higher PSNR, lower LPIPS)
        for line in table.splitlines():
            if line.startswith("| rot") or line.startswith("| afhq"):
                cells = line.split(" | ")
                assert "**" not in cells[1] and cells[2].startswith("**"), line
    assert "| sphinx | 3.00 |" in text


def test_results_csv_leaves_missing_lpips_empty(tmp_path: Path) -> None:
    write_results_csv(make_rows(with_lpips=False)[:2], tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["lpips"] == "" and rows[0]["severity"] == "10.0" and rows[0]["method"] == "w+"


def test_plots_have_one_panel_per_family(tmp_path: Path) -> None:
    summary = summarise(make_rows(), SHIFTS, ["w+", "sphinx"])
    paths = plot_metrics(summary, SHIFTS, ["w+", "sphinx"], tmp_path)
    assert [p.name for p in paths] == ["psnr.png", "ssim.png", "lpips.png"]
    with Image.open(paths[0]) as img:
        assert img.size[0] > 1.5 * img.size[1]   # two panels side by side: rotation, domain
