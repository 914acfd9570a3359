"""Editing: PCA directions (values, cache), direction files, layer/strength parsing, edits per method."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from task_fixtures import FAST, LPIPS_WEIGHTS, random_generator, sample, saved_generator

from ganinvert.errors import GanInvertError
from ganinvert.inversion import invert
from ganinvert.models.encoders import generator_identity
from ganinvert.tasks.editing import (as_layer_direction, compute_pca_directions, edit, edit_distances,
                                     load_direction, parse_layers, parse_strengths,
                                     pca_directions, resolve_direction, write_frames)

SAMPLES = 2000


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GANINVERT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def G():
    return random_generator()


@pytest.fixture(scope="module")
def w_plus_result(G):
    return invert(G, sample(G, 2), "w+", settings={**FAST, "steps": 3}, progress=False)


def test_pca_directions_are_orthonormal_and_ordered(G) -> None:
    pca = compute_pca_directions(G, samples=SAMPLES, seed=0)
    d = pca.directions.double()
    assert d.shape == (G.style_dim, G.style_dim)
    assert torch.allclose(d @ d.T, torch.eye(G.style_dim, dtype=torch.float64), atol=1e-5)
    assert bool((pca.explained_variance[:-1] >= pca.explained_variance[1:]).all())
    # The first component carries the largest variance of fresh samples, as much as PCA promises.
    with torch.no_grad():
        w = G.mapping(torch.randn(SAMPLES, G.style_dim, generator=torch.Generator().manual_seed(9)))
    along = ((w - pca.mean) @ pca.directions.T).var(0)
    assert float(along[0]) == pytest.approx(float(pca.explained_variance[0]), rel=0.15)
    assert float(along[0]) > 2 * float(along[-1])
    again = compute_pca_directions(G, samples=SAMPLES, seed=0)
    assert torch.equal(again.directions, pca.directions)  # signs fixed, fully deterministic


def test_pca_cache_is_written_reused_and_repaired(G, cache: Path) -> None:
    first = pca_directions(G, samples=SAMPLES)
    files = list((cache / "directions").glob("pca_*.pt"))
    assert len(files) == 1 and generator_identity(G)[:24] in files[0].name
    stamp = files[0].stat().st_mtime_ns
    assert torch.equal(pca_directions(G, samples=SAMPLES).directions, first.directions)
    assert files[0].stat().st_mtime_ns == stamp  # read, not rewritten
    files[0].write_bytes(b"damaged")
    assert torch.equal(pca_directions(G, samples=SAMPLES).directions, first.directions)


def test_generator_hash(tmp_path: Path) -> None:
    assert generator_identity(random_generator(0)) == generator_identity(random_generator(0))
    assert generator_identity(random_generator(0)) != generator_identity(random_generator(1))
    loaded = saved_generator(tmp_path / "g.pt")
    assert generator_identity(loaded) == loaded.source.sha256


@pytest.mark.parametrize("rows", [None, 1, "num_ws"])
@pytest.mark.parametrize("suffix", [".pt", ".npy", ".npz"])
def test_direction_files_of_every_accepted_shape(tmp_path: Path, G, rows, suffix: str) -> None:
    g = torch.Generator().manual_seed(0)
    shape = (G.style_dim,) if rows is None else ((1 if rows == 1 else G.num_ws), G.style_dim)
    values = torch.randn(shape, generator=g)
    path = tmp_path / f"d{suffix}"
    if suffix == ".pt":
        torch.save(values, path)
    elif suffix == ".npy":
        np.save(path, values.numpy())
    else:
        np.savez(path, direction=values.numpy())
    loaded = load_direction(G, path)
    assert loaded.shape == (G.num_ws, G.style_dim)
    assert torch.equal(loaded, values.reshape(-1, G.style_dim).expand(G.num_ws, -1))


def test_bad_directions_give_one_line_errors(tmp_path: Path, G) -> None:
    torch.save(torch.ones(G.style_dim + 1), tmp_path / "wide.pt")
    torch.save(torch.ones(3, G.style_dim), tmp_path / "rows.pt")
    torch.save(torch.zeros(G.style_dim), tmp_path / "zero.pt")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    cases = {"wide.pt": "has shape (17,)", "rows.pt": "has 3 rows", "zero.pt": "all zeros", "junk.npy": "cannot read",
             "missing.pt": "not found", "d.txt": "must end in"}
    for name, fragment in cases.items():
        with pytest.raises(GanInvertError) as excinfo:
            resolve_direction(G, str(tmp_path / name))
        assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value)
    with pytest.raises(GanInvertError, match="out of range"):
        resolve_direction(G, f"pca:{G.style_dim}")
    with pytest.raises(GanInvertError, match="NaN"):
        as_layer_direction(G, torch.full((G.style_dim,), float("nan")))


@pytest.mark.parametrize("entries,fragment", [
    (lambda D: {"explained_variance": torch.ones(2)}, "must be 4 floats, one per direction, got (2,)"),
    (lambda D: {"explained_variance": "abc"}, "must be 4 floats, one per direction, got str"),
    (lambda D: {"explained_variance": torch.ones(4, 2)}, "got (4, 2)"),
    (lambda D: {"explained_variance": -torch.ones(4)}, "negative entries"),
    (lambda D: {"explained_variance": torch.full((4,), float("nan"))}, "NaN"),
    (lambda D: {"directions": torch.randn(4, D + 3)}, "must be (K, 16) for this generator"),
    (lambda D: {"directions": torch.ones(4, D, dtype=torch.int64)}, "floating-point"),
])
def test_bad_direction_collections_give_one_line_errors(tmp_path: Path, G, entries, fragment: str) -> None:
    path = tmp_path / "dirs.pt"
    torch.save({"directions": torch.randn(4, G.style_dim), "explained_variance": torch.ones(4),
                **entries(G.style_dim)}, path)
    with pytest.raises(GanInvertError) as excinfo:
        resolve_direction(G, f"{path}:1")
    assert fragment in str(excinfo.value) and "\n" not in str(excinfo.value), str(excinfo.value)


def test_directions_file_rows_equal_pca_spec(tmp_path: Path, G) -> None:
    pca = pca_directions(G)
    pca.first(4).save(tmp_path / "dirs.pt")
    assert torch.equal(resolve_direction(G, f"{tmp_path / 'dirs.pt'}:2"), resolve_direction(G, "pca:2"))
    assert torch.allclose(resolve_direction(G, "pca:2")[0].norm(), pca.explained_variance[2].sqrt())
    with pytest.raises(GanInvertError, match="pick one with"):
        resolve_direction(G, tmp_path / "dirs.pt")
    with pytest.raises(GanInvertError, match="out of range"):
        resolve_direction(G, f"{tmp_path / 'dirs.pt'}:4")
    with pytest.raises(GanInvertError, match="computed for generator"):
        resolve_direction(random_generator(1), f"{tmp_path / 'dirs.pt'}:0")


def test_parse_layers_and_strengths() -> None:
    assert parse_layers("2-4", 8) == [2, 3, 4] and parse_layers("0,5", 8) == [0, 5] and parse_layers("all", 8) is None
    assert parse_strengths("-2, 0,1.5") == [-2.0, 0.0, 1.5]
    for bad in ("4-2", "a-b", "3-9"):
        with pytest.raises(GanInvertError, match="--layers"):
            parse_layers(bad, 8)
    for bad in ("", "1,x", "nan"):
        with pytest.raises(GanInvertError, match="--strength"):
            parse_strengths(bad)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux's /proc and RLIMIT_AS")
def test_huge_layer_range_is_refused_before_it_is_expanded() -> None:
    # In a child process allowed 256 MiB more than it holds: expanding the range first runs out of memory.
    code = ("import os, resource\n"
            "from ganinvert.errors import GanInvertError\n"
            "from ganinvert.tasks.editing import parse_layers\n"
            "held = int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE')\n"
            "resource.setrlimit(resource.RLIMIT_AS, (held + (256 << 20),) * 2)\n"
            "try:\n    parse_layers('0-3000000000', 8)\n"
            "except GanInvertError as exc:\n    print('refused:', exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-300:]
    assert "refused: --layers 0-3000000000 out of range" in done.stdout


def test_edit_of_a_non_finite_result_raises(G, w_plus_result) -> None:
    broken = dataclasses.replace(w_plus_result, params={"latent": w_plus_result.params["latent"] * float("nan")})
    with pytest.raises(GanInvertError, match="the edit of this w\\+ result contains NaN"):
        edit(G, broken, resolve_direction(G, torch.ones(G.style_dim)), [0.0, 1.0])


def test_edit_moves_only_the_chosen_layers_and_is_zero_at_alpha_0(G, w_plus_result) -> None:
    direction = resolve_direction(G, "pca:0")
    frames = edit(G, w_plus_result, direction, [0.0, 2.0], layers=[1, 2])
    assert frames.shape == (2, 1, 3, G.resolution, G.resolution)
    assert torch.equal(frames[0], w_plus_result.render(G))
    method = w_plus_result.method_instance()
    moved = method.edit_inputs(G, dict(w_plus_result.params), direction, 2.0, [1, 2]).ws
    changed = (moved - w_plus_result.params["latent"]).abs().sum(-1)[0] > 0
    assert changed.tolist() == [i in (1, 2) for i in range(G.num_ws)]
    with pytest.raises(GanInvertError, match="edit layers"):
        edit(G, w_plus_result, direction, [1.0], layers=[G.num_ws])


def test_pca_edit_changes_the_image_monotonically_in_alpha() -> None:
    G = random_generator(resolution=32)  # LPIPS needs >= 31 px
    result = invert(G, sample(G, 2), "w+", settings={**FAST, "steps": 3}, progress=False)
    alphas = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    frames = edit(G, result, resolve_direction(G, "pca:0"), alphas)
    lpips = None
    if LPIPS_WEIGHTS.is_file():
        from ganinvert.metrics import LPIPS
        lpips = LPIPS(weights=str(LPIPS_WEIGHTS))
    rows = edit_distances(frames, frames[3], lpips)
    rmse = [r["rmse"] for r in rows]
    assert rmse[3] == pytest.approx(0.0, abs=1e-6)
    assert rmse[4] < rmse[5] < rmse[6] and rmse[2] < rmse[1] < rmse[0], rmse
    if lpips is not None:  # perceptual distance of random-weight renders is noisier: compare the ends
        dist = [r["lpips"] for r in rows]
        assert dist[3] == pytest.approx(0.0, abs=1e-6)
        assert 0 < dist[4] < dist[6] and 0 < dist[2] < dist[0], dist


def test_edit_works_for_sphinx_results_and_writes_frames(tmp_path: Path, G) -> None:
    result = invert(G, sample(G, 3), "sphinx", settings={**FAST, "steps": 2}, progress=False)
    frames = edit(G, result, resolve_direction(G, "pca:1"), [-1.0, 0.0, 1.0])
    assert torch.allclose(frames[1], result.render(G), atol=1e-6)
    written = write_frames(frames[:, 0], ["-1", "0", "1"], tmp_path, "edit", gif_ms=100)
    assert [p.name for p in written] == ["edit_00.png", "edit_01.png", "edit_02.png", "edit_strip.png", "edit.gif"]
    from PIL import Image
    with Image.open(tmp_path / "edit.gif") as gif:
        assert gif.n_frames == 3
