"""Per-image output folders (issues #14, #15): names that cannot leave --out and never collide,
folders written as one unit under a lock, refusal to replace another run's folder, and --resume
that skips finished images, finds its checkpoints and cleans what a killed run left.

The hostile cases run as real subprocesses (``python -m ganinvert.cli``); a kill at an exact
point is a subprocess that patches one function to SIGKILL itself there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ganinvert.cli import main
from ganinvert.errors import GanInvertError
from ganinvert.inversion.report import write_inversion_outputs
from ganinvert.inversion.result import InversionResult
from ganinvert.models.loading import save_generator
from ganinvert.outputs import (Checkpoints, OutputLocks, output_folder, safe_name, staged_folder, sweep_stale,
                               unique_names)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
QUICK = ["--no-lpips", "-m", "w+", "--steps", "2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, random_generator) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("outputs")
    save_generator(random_generator(32, seed=51), d / "g.pt")
    rng = np.random.default_rng(0)
    paths = {}
    for rel in ("x/face.png", "y/face.png", "a/face.png", "b/face.png", "c/face_1.png", "hostile/...png",
                "hostile/..png", "r/a.png", "r/b.png", f"long/{'x' * 100}a.png", f"long/{'x' * 100}b.png"):
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        # format given: PIL takes the extension of '...png' to be '' (os.path.splitext skips leading dots)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, format="PNG")
        paths[rel] = path
    return SimpleNamespace(dir=d, g=d / "g.pt", **{k.replace("/", "_").replace(".", "_"): v for k, v in paths.items()},
                           paths=paths)


def ganinvert(*args: object, hook: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process; with ``hook``, that code runs first (to patch a kill point)."""
    argv = [str(a) for a in args]
    if hook:
        code = f"import os, signal, sys\n{hook}\nfrom ganinvert.cli import main\nsys.exit(main(sys.argv[1:]))"
        command = [sys.executable, "-c", code, *argv]
    else:
        command = [sys.executable, "-m", "ganinvert.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


def one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ganinvert:") or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("ganinvert: error: ") and message in lines[0], proc.stderr


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def hidden_entries(out: Path) -> list[str]:
    return [p for p in tree(out) if p.startswith(".")]


KILL_AT_RESULT_JSON = """
import ganinvert.inversion.result as R
_write = R.atomic_write_json
def _kill_before_result_json(path, obj):
    if str(path).endswith("result.json"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _write(path, obj)
R.atomic_write_json = _kill_before_result_json
"""


def kill_after_checkpoint(n: int) -> str:
    return f"""
import ganinvert.inversion.engine as E
_save, _calls = E._save_checkpoint, []
def _save_then_kill(*args, **kwargs):
    _save(*args, **kwargs)
    _calls.append(1)
    if len(_calls) == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
E._save_checkpoint = _save_then_kill
"""


def kill_inside_checkpoint_write(n: int) -> str:
    """Checkpoint ``n`` is killed half-written (its temporary file exists, the checkpoint is the previous one)."""
    return f"""
import ganinvert.inversion.engine as E, ganinvert.io as IO
_save, _calls = E.atomic_torch_save, []
def _half_write(obj, path):
    _calls.append(1)
    if len(_calls) < {n}:
        return _save(obj, path)
    IO._atomic_write(path, lambda fh: (fh.write(b"half"), fh.flush(), os.kill(os.getpid(), signal.SIGKILL)))
E.atomic_torch_save = _half_write
"""


GATE = """
import time, ganinvert.inversion as I
_invert = I.invert
def _gated_invert(*args, **kwargs):
    while not os.path.exists(os.environ["GANINVERT_TEST_GATE"]):
        time.sleep(0.05)
    return _invert(*args, **kwargs)
I.invert = _gated_invert
"""


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize("stem", ["..", ".", "...", "", "a/b", "../../etc", ".hidden", "a\\b", "名前", "x" * 300])
def test_safe_names_are_plain_folder_names(stem):
    name = safe_name(stem)
    assert name not in (".", "..") and not name.startswith(".") and "/" not in name and "\\" not in name
    assert 0 < len(name) <= 200
    assert output_folder(Path("/tmp/o"), name) == Path("/tmp/o") / name


def test_long_names_stay_distinct_and_usable(tmp_path):
    assert safe_name("x" * 300 + "a") != safe_name("x" * 300 + "b")
    for name in unique_names(["y" * 300, "y" * 300]):  # the second gets a suffix past the length cap
        output_folder(tmp_path, name).mkdir()
        (tmp_path / name / "metrics.json").write_text("{}")


def test_unique_names_never_collide_and_are_stable():
    stems = ["face", "face", "face_1", "Face", "face_2", "a", "a_1", "a", "a_1"]
    names = unique_names(stems)
    assert len({n.casefold() for n in names}) == len(stems)  # unique on case-insensitive file systems too
    assert names[:3] == ["face", "face_3", "face_1"]  # c/face_1 keeps its own name; b/face gets a free one
    assert unique_names(stems) == names


def test_output_folder_refuses_names_outside_out(tmp_path):
    for name in ("..", ".", "../x", "a/b"):
        with pytest.raises(GanInvertError, match="outside --out"):
            output_folder(tmp_path, name)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(GanInvertError, match="outside --out"):
        output_folder(tmp_path, "link")


def test_hostile_stems_stay_inside_out(files):
    box = files.dir / "box2"
    out = box / "out"
    proc = ganinvert("invert", files.paths["hostile/...png"], files.paths["hostile/..png"], "-g", files.g,
                     *QUICK, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in box.iterdir()] == ["out"]  # nothing beside --out (`...png` wrote there before)
    assert sorted(p.name for p in out.iterdir()) == ["_", "__1"]  # nothing loose in --out (`..png` wrote there)
    for name, rel in (("_", "hostile/...png"), ("__1", "hostile/..png")):
        assert np.array_equal(pixels(out / name / "input.png"), pixels(files.paths[rel]))
    for command in (["restore", "--task", "denoise", "--sigma", "0.1", *QUICK],
                    ["discover", "--attribute", "brightness", "--steps", "2"]):
        box = files.dir / f"box-{command[0]}"
        proc = ganinvert(command[0], files.paths["hostile/...png"], "-g", files.g, *command[1:], "-o", box / "out")
        assert proc.returncode == 0, proc.stderr
        assert [p.name for p in box.iterdir()] == ["out"] and [p.name for p in (box / "out").iterdir()] == ["_"]


def test_same_stems_get_distinct_folders_that_a_rerun_finds(files, capsys):
    out = files.dir / "dupes"
    images = [files.paths["a/face.png"], files.paths["b/face.png"], files.paths["c/face_1.png"]]
    proc = ganinvert("invert", *images, "-g", files.g, *QUICK, "-o", out)
    assert proc.returncode == 0, proc.stderr
    folders = {"face": images[0], "face_2": images[1], "face_1": images[2]}
    assert sorted(p.name for p in out.iterdir()) == sorted(folders)  # three results, none overwritten
    for name, image in folders.items():
        assert np.array_equal(pixels(out / name / "input.png"), pixels(image))
    # The same command again with --resume finds every folder under the same name.
    assert main(["invert", *map(str, images), "-g", str(files.g), *QUICK, "--resume", "-o", str(out)]) == 0
    assert capsys.readouterr().out.count("already done by this run, skipped") == 3


# ----------------------------------------------------------------------------- refusing to overwrite
def test_another_run_does_not_silently_replace_a_folder(files, capsys):
    out = files.dir / "replace"
    x, y = files.paths["x/face.png"], files.paths["y/face.png"]
    assert main(["invert", str(x), "-g", str(files.g), *QUICK, "-o", str(out)]) == 0
    before = {p: (out / "face" / p).read_bytes() for p in ("input.png", "result.safetensors", "metrics.json")}
    proc = ganinvert("invert", y, "-g", files.g, *QUICK, "-o", out)
    one_line_error(proc, f"{out / 'face'} holds the output of another run")
    assert "--overwrite" in proc.stderr
    assert {p: (out / "face" / p).read_bytes() for p in before} == before
    # Different settings for the same image are another run too; the same run again just rewrites it.
    assert main(["invert", str(x), "-g", str(files.g), *QUICK[:-1], "3", "-o", str(out)]) == 2
    assert "holds the output of another run" in capsys.readouterr().err
    assert main(["invert", str(x), "-g", str(files.g), *QUICK, "-o", str(out)]) == 0
    assert main(["invert", str(y), "-g", str(files.g), *QUICK, "--overwrite", "-o", str(out)]) == 0
    assert np.array_equal(pixels(out / "face" / "input.png"), pixels(y))
    assert sorted(p.name for p in out.iterdir()) == ["face"]  # no temporary or replaced folder left


def test_restore_and_discover_refuse_another_runs_folder(files, capsys):
    x, y = str(files.paths["x/face.png"]), str(files.paths["y/face.png"])
    for command in (["restore", "--task", "denoise", "--sigma", "0.1", *QUICK],
                    ["discover", "--attribute", "brightness", "--steps", "2"]):
        out = str(files.dir / f"refuse-{command[0]}")
        assert main([command[0], x, "-g", str(files.g), *command[1:], "-o", out]) == 0
        assert main([command[0], x, "-g", str(files.g), *command[1:], "-o", out]) == 0  # the same run: rewritten
        capsys.readouterr()
        assert main([command[0], y, "-g", str(files.g), *command[1:], "-o", out]) == 2
        assert "holds the output of another run" in capsys.readouterr().err
        record = Path(out) / "face" / ("discovery.json" if command[0] == "discover" else "metrics.json")
        first_run = json.loads(record.read_text())["run_id"]
        assert main([command[0], y, "-g", str(files.g), *command[1:], "--overwrite", "-o", out]) == 0
        assert json.loads(record.read_text())["run_id"] != first_run
        if command[0] == "restore":
            assert np.array_equal(pixels(Path(out) / "face" / "clean.png"), pixels(Path(y)))
        assert sorted(p.name for p in Path(out).iterdir()) == ["face"]


def test_concurrent_runs_on_one_name(files, tmp_path):
    """Run 1 holds OUT/face (paused at its inversion); run 2 with another image of that name stops
    with exit 2; run 1 then finishes with its own result."""
    out, gate = tmp_path / "out", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", f"import os, sys\n{GATE}\nfrom ganinvert.cli import main\nsys.exit(main(sys.argv[1:]))",
         "invert", str(files.paths["x/face.png"]), "-g", str(files.g), "--no-lpips", "-m", "w+", "--steps", "20",
         "-o", str(out)], env={**ENV, "GANINVERT_TEST_GATE": str(gate)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / ".locks" / "face.lock").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.05)
        second = ganinvert("invert", files.paths["y/face.png"], "-g", files.g, *QUICK, "-o", out)
        one_line_error(second, f"output folder {out / 'face'} is in use by another run (pid {first.pid})")
        assert not (out / "face").exists()
    finally:
        gate.touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert np.array_equal(pixels(out / "face" / "input.png"), pixels(files.paths["x/face.png"]))
    assert json.loads((out / "face" / "metrics.json").read_text())["steps"] == 20
    assert sorted(p.name for p in out.iterdir()) == ["face"]  # locks released and removed


# ----------------------------------------------------------------------------- kills in the output phase
def test_a_kill_while_writing_leaves_no_folder_then_the_next_run_cleans_up(files, tmp_path, capsys):
    out = tmp_path / "out"
    x, y = files.paths["x/face.png"], files.paths["y/face.png"]
    proc = ganinvert("invert", x, "-g", files.g, *QUICK, "-o", out, hook=KILL_AT_RESULT_JSON)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "face").exists()  # not a folder holding result.safetensors without its result.json
    assert any(p.name.startswith(".tmp-face-") for p in out.iterdir())
    assert main(["invert", str(x), "-g", str(files.g), *QUICK, "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["face"]  # the killed run's temporary folder is gone
    InversionResult.load(out / "face" / "result.safetensors")
    kept = {p.name: p.read_bytes() for p in (out / "face").iterdir()}
    # A replacing run killed half-way leaves the old folder whole, not a mix of two runs.
    proc = ganinvert("invert", y, "-g", files.g, *QUICK, "--overwrite", "-o", out, hook=KILL_AT_RESULT_JSON)
    assert proc.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in (out / "face").iterdir()} == kept


def test_the_writers_refuse_an_existing_folder_without_overwrite(tmp_path, random_generator):
    G = random_generator(32, seed=3)
    from ganinvert.inversion import invert
    target = torch.zeros(1, 3, 32, 32)
    result = invert(G, target, "w", settings={"steps": 1, "lambda_lpips": 0.0}, progress=False)
    folder = tmp_path / "img"
    write_inversion_outputs(folder, target, result, result.render(G), None)
    with pytest.raises(GanInvertError, match="already exists"):
        write_inversion_outputs(folder, target, result, result.render(G), None)
    write_inversion_outputs(folder, target, result, result.render(G), None, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]


def test_staged_folder_publishes_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "a") as temp:
            (temp / "half.txt").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with staged_folder(tmp_path / "a") as temp:
        (temp / "one.txt").write_text("1")
    with staged_folder(tmp_path / "a", overwrite=True) as temp:
        (temp / "two.txt").write_text("2")
    assert tree(tmp_path) == ["a", "a/two.txt"]


def test_locks_exclude_other_holders_and_vanish_when_released(tmp_path):
    with OutputLocks(tmp_path) as mine:
        mine.acquire(["face", "other"])
        with pytest.raises(GanInvertError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            OutputLocks(tmp_path).acquire(["free", "face"])
        assert sorted(p.name for p in (tmp_path / ".locks").iterdir()) == ["face.lock", "other.lock"]
    assert list(tmp_path.iterdir()) == []
    with OutputLocks(tmp_path) as again:
        again.acquire(["face"])  # free once released


def test_sweep_removes_only_dead_or_own_leftovers(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)  # a pid that has exited
    alive = os.getppid()
    for name in (f".tmp-a-{dead}", f".old-a-{dead}", f".tmp-b-{alive}", f".tmp-mine-{alive}"):
        (tmp_path / name).mkdir()
    with OutputLocks(tmp_path) as locks:
        locks.acquire(["mine"])
        sweep_stale(tmp_path, locks)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", f".tmp-b-{alive}"]


# ----------------------------------------------------------------------------- resume
RESUME = ["--no-lpips", "-m", "w+", "--steps", "3", "--checkpoint-every", "1"]


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "result.safetensors"))


def test_resume_skips_finished_images_and_finds_checkpoints_of_long_names(files, tmp_path, capsys):
    a, b = files.paths[f"long/{'x' * 100}a.png"], files.paths[f"long/{'x' * 100}b.png"]
    args = ["invert", a, b, "-g", files.g, *RESUME, "--batch-size", "1"]
    out = tmp_path / "out"
    # Checkpoints 1-3 are image a's (then published), 4 is image b's first step.
    proc = ganinvert(*args, "-o", out, hook=kill_after_checkpoint(4))
    assert proc.returncode == -signal.SIGKILL
    a_folder = out / ("x" * 100 + "a")
    published = {p.name: p.read_bytes() for p in a_folder.iterdir()}
    assert main([str(v) for v in args] + ["--resume", "-o", str(out)]) == 0
    log = capsys.readouterr().out
    assert f"{'x' * 100}a: already done by this run, skipped" in log and log.count("PSNR") == 1
    assert {p.name: p.read_bytes() for p in a_folder.iterdir()} == published
    assert sorted(p.name for p in out.iterdir()) == sorted(["x" * 100 + "a", "x" * 100 + "b"])
    assert main([str(v) for v in args] + ["-o", str(tmp_path / "uninterrupted")]) == 0
    for name in ("x" * 100 + "a", "x" * 100 + "b"):
        reference = tensors(tmp_path / "uninterrupted" / name)
        assert all(torch.equal(t, reference[k]) for k, t in tensors(out / name).items())


def test_resume_with_another_batch_size_and_a_kill_inside_a_checkpoint_write(files, tmp_path, capsys):
    args = ["invert", files.paths["r/a.png"], files.paths["r/b.png"], "-g", files.g, *RESUME]
    out = tmp_path / "out"
    proc = ganinvert(*args, "--batch-size", "2", "-o", out, hook=kill_inside_checkpoint_write(2))
    assert proc.returncode == -signal.SIGKILL
    assert any(p.name.endswith(".tmp") for p in (out / ".checkpoints").iterdir())
    argv = [str(v) for v in args]
    assert main(argv + ["--batch-size", "1", "--resume", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unfinished inversion of a, b made with --batch-size 2" in err and "resume with" in err
    assert main(argv + ["--batch-size", "2", "--resume", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]  # checkpoint, its record and the half-written file gone
    assert main(argv + ["--batch-size", "2", "-o", str(tmp_path / "uninterrupted")]) == 0
    for name in ("a", "b"):
        reference = tensors(tmp_path / "uninterrupted" / name)
        assert all(torch.equal(t, reference[k]) for k, t in tensors(out / name).items())


def test_a_fresh_run_drops_checkpoints_of_its_images_made_with_another_batching(tmp_path):
    checkpoints = Checkpoints(tmp_path)
    path = checkpoints.begin(["a", "b"], 2)
    path.write_bytes(b"state")
    with OutputLocks(tmp_path) as locks:
        locks.acquire(["a", "b"])
        with pytest.raises(GanInvertError, match="--batch-size 2"):
            checkpoints.reconcile([["a"], ["b"]], locks, resume=True)
        checkpoints.reconcile([["a"], ["b"]], locks, resume=False)
    assert not checkpoints.dir.exists()
