"""``ganinvert reproduce``: the five experiments end to end on a tiny budget (the CI smoke test of
the pipeline and the report writer), resuming, the verdict rules, and the experiment definitions.

The pipeline runs on renders of the bundled generator saved under the folder names the
experiments read (so it needs no ../shared data); the checks of the real image folders skip
when ../shared is absent.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ganinvert.cli import main
from ganinvert.evaluation import reproduce as rep
from ganinvert.evaluation.runner import plan_evaluation

LPIPS_FILE = Path(__file__).resolve().parents[2] / ".." / "shared" / "weights" / "lpips_alex.pth"
#: Two steps, one image, two shifts per evaluation, two perturbation draws: the whole set in seconds.
TINY = rep.Budget("tiny", steps=2, images=1, few_shifts=True, own_budgets=False, trials=2)


def _folders() -> list[str]:
    return sorted({f for e in rep.EXPERIMENTS for ev in e.evaluations for f in ev.folders})


@pytest.fixture(scope="module")
def images_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two renders of the bundled generator in every folder an experiment reads."""
    from ganinvert.io import save_image
    from ganinvert.models import load_generator

    root = tmp_path_factory.mktemp("images")
    G = load_generator("default")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for folder in _folders():
            for i in range(2):
                save_image(G(torch.randn(1, G.style_dim, generator=g)).clamp(-1, 1), root / folder / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def options(images_root: Path) -> rep.RunOptions:
    if LPIPS_FILE.is_file():
        return rep.RunOptions(images_root, use_lpips=True, lpips_weights=str(LPIPS_FILE))
    return rep.RunOptions(images_root, use_lpips=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, options: rep.RunOptions) -> tuple[Path, list[str]]:
    """Every experiment at the tiny budget, then its report; (OUT, log lines)."""
    out = tmp_path_factory.mktemp("repro")
    log: list[str] = []
    failures = rep.run_reproduction(out, TINY, options, rep.select_experiments(None), threads=1, log=log.append)
    assert failures == []
    rep.write_reproduction_report(out, out / "REPRODUCTION.md", log=log.append)
    return out, log


def test_every_experiment_runs_and_the_report_has_each_part(run: tuple[Path, list[str]]) -> None:
    out, _ = run
    text = (out / "REPRODUCTION.md").read_text()
    for exp in rep.EXPERIMENTS:
        section = text.split(f"## Experiment {exp.number}: ")[1].split("\n## ")[0]
        assert exp.claim in section
        verdict = re.search(r"\*\*Verdict: ([^*]+)\.\*\*", section).group(1)
        assert verdict == rep.HOLDS or verdict.startswith(("does not hold", "holds only")), (exp.id, verdict)
        assert "smoke test" in section and "complete (" in section  # never shown as the papers' budget
        assert "**Rule.**" in section and "- Time: " in section
        figures = re.findall(r"!\[[^]]*\]\((reproduction/[^)]+\.png)\)", section)
        assert figures, exp.id
        for figure in figures:
            assert (out / figure).stat().st_size > 1000
        if exp.id not in ("5b-hyperinverter", "5c-fz-editing"):
            assert "Step budget:" in section and "| 2 | 2 |" in section  # planned and recorded steps
    assert "| 1 | SPHInX Fig. 5: geometric out-of-distribution shifts | tiny (smoke test) | 12/12 |" in text


def test_probes_measure_the_cells_own_solutions(run: tuple[Path, list[str]], options: rep.RunOptions) -> None:
    out, _ = run
    exp2 = rep.load_experiment(out, TINY, options, rep.EXPERIMENTS_BY_ID["2-fig1-robustness"])
    probes = exp2.evaluations["robustness"].probes["noise-energy"]
    assert len(probes) == len(rep.FIG5_METHODS)
    assert all(r["matches_cell"] is True for r in probes.values())  # the same inversion as the cell
    by_method = {label: r for (_, label), r in probes.items()}
    assert by_method["sphinx"]["optimised_noise"] and not by_method["w+"]["optimised_noise"]
    assert len(by_method["w+"]["layers"]) == 9 and by_method["w+"]["layers"][-1]["resolution"] == 64
    exp5c = rep.load_experiment(out, TINY, options, rep.EXPERIMENTS_BY_ID["5c-fz-editing"])
    edits = exp5c.evaluations["faces"].probes["edit"]
    assert {label for _, label in edits} == {"w+", "fw+", "fz+"}
    assert all(r["matches_cell"] is True and min(r["edit_rmse"]) > 0 for r in edits.values())


def test_a_rerun_computes_only_what_is_missing(run: tuple[Path, list[str]], options: rep.RunOptions) -> None:
    out, _ = run
    exp2 = rep.EXPERIMENTS_BY_ID["2-fig1-robustness"]
    ev_out = rep.evaluation_out(out, TINY, exp2, exp2.evaluations[0])
    cell = ev_out / "cells" / "robustness" / "all" / "img0" / "w+sb.json"
    probe = rep.probe_path(ev_out, "noise-energy", "robustness/all/img0/z+sb")
    assert cell.is_file() and probe.is_file()
    cell.unlink()
    probe.unlink()
    log: list[str] = []
    assert rep.run_reproduction(out, TINY, options, [exp2], threads=1, log=log.append) == []
    timing = rep.read_timing(out, TINY, exp2)[-1]
    # w+sb's cell (its probe still holds: the same inversion gives the same solution) and z+sb's probe.
    assert (timing["cells_computed"], timing["probes_computed"]) == (1, 1)
    log.clear()
    assert rep.run_reproduction(out, TINY, options, [exp2], threads=1, log=log.append) == []
    assert (rep.read_timing(out, TINY, exp2)[-1]["cells_computed"],
            rep.read_timing(out, TINY, exp2)[-1]["probes_computed"]) == (0, 0)
    assert "6 cells: 6 already done, 0 to run" in log and "probes noise-energy: 0 to run" in log


def test_cli_report_only_renders_without_computing(run: tuple[Path, list[str]], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run
    report = tmp_path / "docs" / "REPRODUCTION.md"
    cells = sorted(p.stat().st_mtime_ns for p in out.rglob("cells/**/*.json"))
    assert main(["reproduce", "--out", str(out), "--report-only", "--report", str(report)]) == 0
    assert report.is_file() and (report.parent / "reproduction" / "1-fig5-geometric.png").is_file()
    assert "](reproduction/1-fig5-geometric.png)" in report.read_text()
    printed = capsys.readouterr().out
    assert "experiment 1: " in printed and "(tiny, 12/12 cells)" in printed
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("cells/**/*.json")) == cells  # nothing recomputed


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--out", str(tmp_path / "none"), "--report-only"]) == 2
    assert main(["reproduce", "--out", str(tmp_path / "x"), "--experiments", "7", "--no-lpips",
                 "--images-root", str(tmp_path)]) == 2
    assert main(["reproduce", "--out", str(tmp_path / "x"), "--no-lpips", "--images-root", str(tmp_path / "no")]) == 2
    assert main(["reproduce", "--out", str(tmp_path / "x"), "--no-lpips", "--images-root", str(tmp_path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 4 and all(line.startswith("ganinvert: error: ") for line in lines)
    assert "holds no reproduction run" in lines[0] and "unknown experiment '7'" in lines[1]
    assert "not found" in lines[2] and "has no folder celeba_hq/" in lines[3]


# ----------------------------------------------------------------------------- the verdict rules
def _with_psnr(data: rep.ExperimentData, psnr: dict[tuple[str, str], float]) -> rep.ExperimentData:
    """``data`` with its rows' PSNR replaced by ``psnr[(shift, method)]``."""
    evaluations = {}
    for key, ev in data.evaluations.items():
        rows = [{**r, "psnr": psnr[(r["shift"], r["method"])]} for r in ev.rows]
        evaluations[key] = replace(ev, rows=rows)
    return replace(data, evaluations=evaluations)


def test_fig5_rule_compares_the_slopes(run: tuple[Path, list[str]], options: rep.RunOptions) -> None:
    out, _ = run
    data = rep.load_experiment(out, TINY, options, rep.EXPERIMENTS_BY_ID["1-fig5-geometric"])
    # rot10 -> rot30: SPHInX loses 1 dB, every baseline 3 dB (but stays higher): SPHInX degrades less.
    flatter = {(s, m): (30.0 if m == "sphinx" else 35.0) - (1.0 if m == "sphinx" else 3.0) * (s == "rot30")
               for s in ("rot10", "rot30") for m in rep.FIG5_METHODS}
    assert rep.verdict_fig5(_with_psnr(data, flatter), {}).status == rep.HOLDS
    steeper = {(s, m): 30.0 - (4.0 if m == "sphinx" else 1.0) * (s == "rot30")
               for s in ("rot10", "rot30") for m in rep.FIG5_METHODS}
    verdict = rep.verdict_fig5(_with_psnr(data, steeper), {})
    assert verdict.status == rep.FAILS
    assert any("PSNR slope (dB per 10 degrees): SPHInX (Ps,Pc,B) -2.00" in e for e in verdict.evidence)


def test_restoration_rule_names_the_levels_where_it_holds(run: tuple[Path, list[str]], options: rep.RunOptions) -> None:
    out, _ = run
    data = rep.load_experiment(out, TINY, options, rep.EXPERIMENTS_BY_ID["4-fig10-11-restoration"])
    wins = {"sigma0.1", "cs5"}
    psnr = {(s, m): 20.0 + (2.0 if (m == "sphinx") == (s in wins) else 0.0)
            for s in ("sigma0.1", "sigma0.4", "cs1", "cs5") for m in rep.RESTORE_METHODS}
    assert rep.verdict_restoration(_with_psnr(data, psnr), {}).status == "holds only at sigma0.1, cs5"


def test_combine_and_level_phrases() -> None:
    assert rep.combine([("a", True), ("b", True)]) == rep.HOLDS
    assert rep.combine([("a", False), ("b", False)]) == rep.FAILS
    assert rep.combine([("a", None)]) == rep.UNDETERMINED
    assert rep.combine([("a", True), ("b", False), ("c", None)]) == \
        "holds only for a (undetermined for c: cells missing)"
    suite = rep.make_suite("robustness")
    levels = [suite.parse_shift(f"snr{v}") for v in (30, 20, 10, 5)]
    assert rep._level_phrase(["snr5", "snr10"], levels, " dB", "SNR") == "holds only at SNR <= 10 dB"
    assert rep._level_phrase(["snr30"], levels, " dB", "SNR") == "holds only at SNR >= 30 dB"
    assert rep._level_phrase(["snr30", "snr10"], levels, " dB", "SNR") == "holds only at SNR 10 dB, 30 dB"


# ----------------------------------------------------------------------------- the definitions
def test_budgets_of_the_definitions(tmp_path: Path) -> None:
    """quick: 200 steps and 2 shifts everywhere; full: >= 2000 steps in 1-4, each method's own in 5."""
    root = tmp_path
    for exp in rep.EXPERIMENTS:
        for ev in exp.evaluations:
            quick = ev.config(rep.QUICK, root, use_lpips=False, lpips_weights=None, seed=0, device="cpu")
            full = ev.config(rep.FULL, root, use_lpips=True, lpips_weights=None, seed=0, device="cpu")
            assert len(quick.shifts or quick.images) == min(2, len(ev.shifts or ev.folders))
            assert quick.max_images == 2 and full.max_images == 6
            for q, f in zip(quick.methods, full.methods):
                qs, fs = q.settings(), f.settings()
                assert qs["lambda_lpips"] == 0.0
                if q.name.startswith("hyperinverter"):
                    continue
                assert qs["steps"] + qs.get("pivot_steps", 0) == 200
                if exp.number in "1234":
                    assert fs["steps"] == 2000
            if exp.id == "5b-hyperinverter":
                steps = {m.label: m.settings()["steps"] for m in full.methods}
                assert steps["w+"] == 1000 and steps["pti"] == 350 and steps["fz+"] == 1200
    sphinx_ps = rep.method("sphinx-ps", rep.FULL).settings()
    assert (sphinx_ps["content"], sphinx_ps["noise"], sphinx_ps["steps"]) == (False, False, 2000)


def test_the_shared_image_folders_hold_every_experiments_images() -> None:
    root = rep.DEFAULT_IMAGES_ROOT
    if not root.is_dir():
        pytest.skip(f"{root} is absent (the ../shared data folder is not in a fresh clone)")
    rep.check_images_root(root, rep.EXPERIMENTS)
    for exp in rep.EXPERIMENTS:
        for ev in exp.evaluations:
            config = ev.config(rep.FULL, root, use_lpips=False, lpips_weights=None, seed=0, device="cpu")
            plan = plan_evaluation(config, 1, 6)
            for shift in plan.shifts:
                available = len(list((root / (shift.name if ev.shifts is None else ev.folders[0])).iterdir()))
                assert len(plan.images[shift.name]) == min(6, available), (exp.id, shift.name)
