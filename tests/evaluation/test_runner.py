"""``ganinvert evaluate`` end to end: outputs, resume (no work twice, kill and restart), workers, suites."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ganinvert.errors import GanInvertError
from ganinvert.cli.evaluate import apply_overrides, evaluate_command
from ganinvert.evaluation.plan import MethodSpec, parse_methods
from ganinvert.evaluation.runner import derive_seed

from eval_fixtures import evaluate_args, invoke, read_results, write_random_images

SHIFTS = "rot20,tx100"
METHODS = "w+,w+sb,sphinx"
N_CELLS = 3 * 2 * 3


def geometric_args(face_images: Path, generator: Path, out: Path, lpips_weights: str | None, *extra: str) -> list[str]:
    return evaluate_args("ood-geometric", face_images, generator, out, lpips_weights,
                         "--shifts", SHIFTS, "--methods", METHODS, *extra)


def cell_files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / "cells").rglob("*.json"))}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, face_images: Path, generator_path: Path,
                  lpips_weights: str | None) -> tuple[Path, list[str], str]:
    """3 images x 2 shifts x 3 methods, uninterrupted, in this process."""
    out = tmp_path_factory.mktemp("reference") / "out"
    args = geometric_args(face_images, generator_path, out, lpips_weights)
    return out, args, invoke(args)


def test_end_to_end_writes_every_output(reference_run: tuple[Path, list[str], str], lpips_weights: str | None) -> None:
    out, _, log = reference_run
    assert f"{N_CELLS} cells: 0 already done, {N_CELLS} to run" in log
    rows = read_results(out, drop=())
    assert len(rows) == N_CELLS
    assert list(rows[0]) == ["suite", "shift", "family", "severity", "image", "method", "psnr", "ssim", "lpips",
                             "seconds", "seed"]
    # Deterministic order: shifts as given, then images, then methods as given.
    images = sorted({r["image"] for r in rows})
    expected = [(s, i, m) for s in SHIFTS.split(",") for i in images for m in METHODS.split(",")]
    assert [(r["shift"], r["image"], r["method"]) for r in rows] == expected
    for row in rows:
        assert 0 < float(row["psnr"]) < 60 and -1 <= float(row["ssim"]) <= 1 and float(row["seconds"]) > 0
        assert (row["lpips"] != "") == (lpips_weights is not None)
    assert len({r["seed"] for r in rows}) == N_CELLS

    with open(out / "summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    assert [(s["shift"], s["method"]) for s in summary] == [
        (s, m) for s in SHIFTS.split(",") for m in METHODS.split(",")]
    assert all(s["n"] == "3" and float(s["psnr_p25"]) <= float(s["psnr_median"]) <= float(s["psnr_p75"])
               for s in summary)
    metrics = ["psnr", "ssim"] + (["lpips"] if lpips_weights else [])
    for name in metrics:
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    for shift in SHIFTS.split(","):
        assert (out / "grids" / f"{shift}.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    summary_md = (out / "summary.md").read_text()
    assert "### PSNR (dB), higher is better" in summary_md and summary_md in report
    assert "![psnr](plots/psnr.png)" in report and "![rot20](grids/rot20.png)" in report
    config = json.loads((out / "evaluation.json").read_text())
    assert config["cells"] == N_CELLS and config["config"]["suite"] == "ood-geometric"


def test_second_invocation_does_no_work(reference_run: tuple[Path, list[str], str]) -> None:
    out, args, _ = reference_run
    before, results_before = cell_files(out), (out / "results.csv").read_bytes()
    log = invoke(args)
    assert f"{N_CELLS} cells: {N_CELLS} already done, 0 to run" in log and "ran 0 cell(s)" in log
    assert cell_files(out) == before
    assert (out / "results.csv").read_bytes() == results_before


def test_killed_run_resumes_to_the_same_results(reference_run: tuple[Path, list[str], str], face_images: Path,
                                                generator_path: Path, lpips_weights: str | None,
                                                tmp_path: Path) -> None:
    reference_out = reference_run[0]
    out = tmp_path / "out"
    args = geometric_args(face_images, generator_path, out, lpips_weights)
    code = "import sys; from ganinvert.cli.evaluate import evaluate_command; evaluate_command.main(sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "cells").exists() or not any((out / "cells").rglob("*.json")):
            assert proc.poll() is None, "the evaluation subprocess ended before writing a cell"
            assert time.monotonic() < deadline, "no cell written within 120 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = len(list((out / "cells").rglob("*.json")))
    assert 0 < done < N_CELLS, f"the run was not interrupted mid-way ({done} of {N_CELLS} cells)"
    assert not (out / "results.csv").exists()

    log = invoke(args)
    assert f"{N_CELLS} cells: {done} already done, {N_CELLS - done} to run" in log
    assert read_results(out) == read_results(reference_out)


def test_worker_processes_match_in_process_run(reference_run: tuple[Path, list[str], str], face_images: Path,
                                               generator_path: Path, lpips_weights: str | None,
                                               tmp_path: Path) -> None:
    out = tmp_path / "out"
    invoke(geometric_args(face_images, generator_path, out, lpips_weights, "--workers", "2"))
    assert read_results(out) == read_results(reference_run[0])


def test_changed_inputs_are_recomputed(face_images: Path, generator_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = evaluate_args("ood-geometric", face_images, generator_path, out, None, "--shifts", "rot10",
                         "--methods", "w+,z+sb", "--max-images", "2")
    invoke(args)
    first = read_results(out)
    cells = sorted((out / "cells").rglob("*.json"))
    cells[0].unlink()                                    # a lost cell
    cells[1].write_text("{ cut short")                   # an unreadable one
    assert "4 cells: 2 already done, 2 to run" in invoke(args)
    assert read_results(out) == first
    steps = args.index("--steps")
    steps3 = args[:steps + 1] + ["3"] + args[steps + 2:]  # every fingerprint changes
    assert "4 cells: 0 already done, 4 to run" in invoke(steps3)
    assert read_results(out) != first


@pytest.mark.parametrize("suite, shifts, rows_expected", [
    ("denoise", "sigma0.4", 2),
    ("cs", "cs5", 2),
    ("robustness", "snr20,snr0", 4),
])
def test_restoration_and_robustness_suites(suite: str, shifts: str, rows_expected: int, face_images: Path,
                                           generator_path: Path, lpips_weights: str | None, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extra = ["--shifts", shifts, "--methods", "w+", "--max-images", "2", "--trials", "2"]
    invoke(evaluate_args(suite, face_images, generator_path, out, lpips_weights, *extra))
    rows = read_results(out)
    assert len(rows) == rows_expected and {r["suite"] for r in rows} == {suite}
    assert [r["shift"] for r in rows] == [s for s in shifts.split(",") for _ in range(2)]
    assert all(float(r["psnr"]) > 0 for r in rows)
    if suite == "robustness":
        # One inversion serves every SNR level: one cell per image, and lower SNR, lower PSNR.
        assert len(list((out / "cells").rglob("*.json"))) == 2
        by_image = {}
        for r in rows:
            by_image.setdefault(r["image"], {})[r["shift"]] = float(r["psnr"])
        assert all(v["snr20"] > v["snr0"] for v in by_image.values())
        assert len({r["seed"] for r in rows}) == 2
    assert (out / "grids").is_dir() and (out / "report.md").is_file()


def test_domain_suite_one_shift_per_folder(generator_path: Path, tmp_path: Path) -> None:
    write_random_images(tmp_path / "data" / "cats", 2)
    write_random_images(tmp_path / "data" / "xray", 1, seed=1)
    out = tmp_path / "out"
    invoke(evaluate_args("ood-domain", tmp_path / "data", generator_path, out, None, "--methods", "w+"))
    assert [(r["shift"], r["family"], r["severity"]) for r in read_results(out)] == [
        ("cats", "domain", ""), ("cats", "domain", ""), ("xray", "domain", "")]
    assert (out / "grids" / "cats.png").is_file() and (out / "plots" / "psnr.png").is_file()


def test_cli_errors_are_one_line_ganinvert_errors(face_images: Path, generator_path: Path, tmp_path: Path) -> None:
    base = ["ood-geometric", "--images", str(face_images), "--generator", str(generator_path),
            "--out", str(tmp_path / "o"), "--no-lpips"]
    for extra, message in [(["--shifts", "spin10"], "unknown shift 'spin10'"),
                           (["--methods", "w+,nope"], "unknown method 'nope'"),
                           (["--methods", "sphinx:fast"], "unknown preset 'fast'"),
                           (["--steps", "0"], "--steps must be > 0"),
                           (["--set", "w.lr=0.1"], "no method 'w'"),
                           (["--workers", "0"], "--workers must be > 0")]:
        result = CliRunner().invoke(evaluate_command, base + extra)
        assert isinstance(result.exception, GanInvertError), (extra, result.output)
        assert message in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "o" / "cells").exists()


def test_method_specs_and_overrides() -> None:
    specs = parse_methods(["w+, sphinx:sphinx-paper", "z+sb"])
    assert [(s.name, s.preset, s.label) for s in specs] == [
        ("w+", None, "w+"), ("sphinx", "sphinx-paper", "sphinx:sphinx-paper"), ("z+sb", None, "z+sb")]
    with pytest.raises(GanInvertError, match="given twice"):
        parse_methods("w+,w+")
    with pytest.raises(GanInvertError, match="NAME:PRESET"):
        parse_methods("sphinx:")
    tuned = apply_overrides(specs, {"lr": 0.05, "sphinx.lr": 0.002, "sphinx:sphinx-paper.noise_lr": 0.01}, 7, True)
    settings = {s.label: s.settings() for s in tuned}
    assert settings["w+"]["lr"] == 0.05 and settings["sphinx:sphinx-paper"]["lr"] == 0.002
    paper = settings["sphinx:sphinx-paper"]
    assert paper["noise_lr"] == 0.01 and paper["schedule"] == "trapezoid"  # the preset under the overrides
    assert all(s["steps"] == 7 and s["lambda_lpips"] == 0.0 for s in settings.values())
    assert MethodSpec("sphinx").resolved_preset() == "sphinx-official" and MethodSpec("w+").resolved_preset() is None


def test_cell_seeds_are_stable_and_distinct() -> None:
    seed = derive_seed(0, "005735", "rot10", "w+")
    assert seed == derive_seed(0, "005735", "rot10", "w+") and 0 <= seed < 2 ** 31
    assert len({seed, derive_seed(1, "005735", "rot10", "w+"), derive_seed(0, "006930", "rot10", "w+"),
                derive_seed(0, "005735", "rot20", "w+"), derive_seed(0, "005735", "rot10", "sphinx")}) == 5
    # Fixed by SHA-256, not by Python's per-process string hashing.
    digest = hashlib.sha256(b"0\x1f005735\x1frot10\x1fw+").digest()
    assert seed == int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def test_units_are_fixed_batches(face_images: Path, generator_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = evaluate_args("cs", face_images, generator_path, out, None, "--shifts", "cs5", "--methods", "w+,sphinx",
                         "--batch-size", "2")
    invoke(args)
    records = {p.stem + "/" + p.parent.name: json.loads(p.read_text()) for p in (out / "cells").rglob("*.json")}
    images = sorted({r["image"] for r in records.values()})
    assert [r["batch"] for k, r in sorted(records.items()) if k.startswith("w+/")] == [
        images[:2], images[:2], images[2:]]
    batched = read_results(out)
    # Losing one cell of a two-image unit recomputes the unit as planned: same batch, same results.
    (out / "cells" / "cs" / "cs5" / images[1] / "sphinx.json").unlink()
    assert "6 cells: 4 already done, 2 to run" in invoke(args)
    assert read_results(out) == batched
    # Batching only shares the generator's passes: each image ends where its single run does.
    single = tmp_path / "single"
    invoke(evaluate_args("cs", face_images, generator_path, single, None, "--shifts", "cs5", "--methods", "w+,sphinx"))
    for a, b in zip(batched, read_results(single)):
        assert (a["image"], a["method"], a["seed"]) == (b["image"], b["method"], b["seed"])
        assert abs(float(a["psnr"]) - float(b["psnr"])) < 0.01


def test_per_image_operators_apply_to_their_own_row() -> None:
    import torch

    from ganinvert.evaluation.runner import _PerImageOperator
    from ganinvert.tasks import make_operator

    ops = [make_operator("cs", fraction=0.1, image_size=16, seed=s) for s in (1, 2)]
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = _PerImageOperator([op.A for op in ops])(x)
    assert torch.equal(y[0], ops[0].A(x[:1])[0]) and torch.equal(y[1], ops[1].A(x[1:])[0])
    assert not torch.allclose(y[1], ops[0].A(x[1:])[0])


def test_images_with_the_same_stem_all_get_results(generator_path: Path, tmp_path: Path) -> None:
    """a/face.png, b/face.png and c/face_1.png: three cells of their own (before, two shared
    cells/…/face_1/ and the run exited 2 on every attempt without writing results.csv)."""
    images = []
    for i, (folder, name) in enumerate((("a", "face.png"), ("b", "face.png"), ("c", "face_1.png"))):
        written = write_random_images(tmp_path / "in" / folder, 1, seed=i)[0]
        images += ["--images", str(written.rename(written.with_name(name)))]
    out = tmp_path / "out"
    args = [sys.executable, "-m", "ganinvert.cli", "evaluate", "denoise", *images, "--methods", "w+", "--steps", "1",
            "--shifts", "sigma0.1", "--no-lpips", "--threads", "1", "--grid-images", "0", "--generator",
            str(generator_path), "--out", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = read_results(out)
    assert sorted(r["image"] for r in rows) == ["face", "face_1", "face_2"]
    assert len({r["psnr"] for r in rows}) == 3  # three different images, not one scored twice

