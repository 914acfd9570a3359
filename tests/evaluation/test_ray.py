"""``ganinvert evaluate --ray``: a local Ray cluster with 2 workers gives the local path's results.csv."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_fixtures import evaluate_args, invoke, read_results

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'ganinvert[ray]'); CI installs it")


def test_ray_local_cluster_matches_the_local_run(face_images: Path, generator_path: Path,
                                                 lpips_weights: str | None, tmp_path: Path) -> None:
    extra = ("--shifts", "rot20,scale1.25", "--methods", "w+,sphinx", "--max-images", "2")
    local = tmp_path / "local"
    invoke(evaluate_args("ood-geometric", face_images, generator_path, local, lpips_weights, *extra))
    on_ray = tmp_path / "ray"
    log = invoke(evaluate_args("ood-geometric", face_images, generator_path, on_ray, lpips_weights, *extra,
                               "--workers", "2", "--ray"))
    assert "8 cells: 0 already done, 8 to run" in log
    assert not ray.is_initialized()  # the instance the command started is shut down
    assert read_results(on_ray) == read_results(local)
    assert sorted(p.name for p in (on_ray / "grids").iterdir()) == ["rot20.png", "scale1.25.png"]
