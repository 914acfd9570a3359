"""Evaluation suites: shift names, the geometric warp, and the problems each suite builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ganinvert.errors import GanInvertError
from ganinvert.evaluation.suites import (SUITES, DomainSuite, GeometricSuite, ImageRef, make_suite,
                                         resize_image, unique_image_refs)
from ganinvert.tasks.geometry import affine_shift
from ganinvert.io import save_image

from eval_fixtures import write_random_images


def dot_image(size: int, row: int, col: int) -> torch.Tensor:
    x = -torch.ones(1, 3, size, size)
    x[..., row, col] = 1.0
    return x


def brightest(x: torch.Tensor) -> tuple[int, int]:
    return divmod(int(x[0, 0].argmax()), x.shape[-1])


@pytest.mark.parametrize("kwargs, expected", [
    ({"angle": 90}, (8, 16)),        # right of centre -> above it: counter-clockwise on screen
    ({"angle": -90}, (24, 16)),
    ({"tx": 4 / 33}, (16, 28)),      # right by 4 px
    ({"ty": 4 / 33}, (20, 24)),      # down by 4 px
    ({"scale": 2.0}, (16, 32)),      # 8 px from the centre -> 16 px
])
def test_affine_shift_moves_content_as_documented(kwargs: dict, expected: tuple[int, int]) -> None:
    out = affine_shift(dot_image(33, 16, 24), border="black", **kwargs)
    assert brightest(out) == expected
    assert float(out.max()) == pytest.approx(1.0, abs=1e-5)


def test_identity_shift_keeps_the_image() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.allclose(affine_shift(x), x, atol=1e-5)


def test_border_fills() -> None:
    x = torch.full((1, 3, 32, 32), 0.5)
    x[..., :, :4] = -0.5  # a darker left strip
    black = affine_shift(x, tx=0.25, border="black")
    edge = affine_shift(x, tx=0.25, border="edge")
    reflect = affine_shift(x, tx=0.25, border="reflect")
    # 8 px uncovered on the left: black is -1, edge repeats the dark strip, reflect mirrors the
    # strip then the bright interior.
    assert torch.allclose(black[..., :, :7], torch.tensor(-1.0))
    assert torch.allclose(edge[..., :, :8], torch.tensor(-0.5))
    assert torch.allclose(reflect[..., :, 0], torch.tensor(0.5))
    assert torch.allclose(reflect[..., :, 6], torch.tensor(-0.5))
    with pytest.raises(GanInvertError, match="border"):
        affine_shift(x, border="wrap")


def line_position(image: torch.Tensor) -> float:
    """Centre of mass of the bright columns, as a fraction of the width."""
    weights = (image[0, 0].mean(0) + 1).clamp_min(0)
    centres = (torch.arange(image.shape[-1]) + 0.5) / image.shape[-1]
    return float((weights * centres).sum() / weights.sum())


def test_translation_scales_with_the_resolution(tmp_path: Path) -> None:
    # A vertical bright line at the centre; tx256 is a quarter of the side at every resolution.
    img = -torch.ones(1, 3, 512, 512)
    img[..., 254:258] = 1.0
    save_image(img, tmp_path / "line.png")
    suite = GeometricSuite(border="black")
    shift = suite.parse_shift("tx256")
    for resolution in (32, 64, 512):
        problem = suite.problem(ImageRef("line", tmp_path / "line.png"), shift, resolution, seed=0)
        assert problem.target.shape == (1, 3, resolution, resolution) and problem.reference is problem.target
        assert line_position(problem.target) == pytest.approx(0.75, abs=0.01)
        assert line_position(problem.clean) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("suite, name, canonical, family, severity", [
    ("ood-geometric", "rot10.0", "rot10", "rotation", 10.0),
    ("ood-geometric", "scale7/8", "scale0.875", "scaling", 0.875),
    ("ood-geometric", "tx150", "tx150", "translation", 150.0),
    ("ood-geometric", "ty-50", "ty-50", "translation-y", -50.0),
    ("denoise", "sigma0.40", "sigma0.4", "noise", 0.4),
    ("cs", "cs2.5%", "cs2.5", "measurements", 2.5),
    ("robustness", "snr-5", "snr-5", "latent-snr", -5.0),
])
def test_shift_names_are_canonical(suite: str, name: str, canonical: str, family: str, severity: float) -> None:
    shift = make_suite(suite).parse_shift(name)
    assert (shift.name, shift.family, shift.severity) == (canonical, family, severity)


@pytest.mark.parametrize("suite, name", [
    ("ood-geometric", "rotate10"), ("ood-geometric", "scale0"), ("ood-geometric", "scale1/0"),
    ("denoise", "sigma0"), ("denoise", "noise"), ("cs", "cs0"), ("cs", "cs101"), ("robustness", "snrx"),
])
def test_bad_shift_names_raise(suite: str, name: str) -> None:
    with pytest.raises(GanInvertError, match=name.split("/")[0][:4]):
        make_suite(suite).parse_shift(name)


def test_default_shifts_follow_the_protocols() -> None:
    geo = [make_suite("ood-geometric").parse_shift(n) for n in SUITES["ood-geometric"].default_shift_names]
    assert sorted(s.severity for s in geo if s.family == "rotation") == [10, 20, 30]
    assert sorted(s.severity for s in geo if s.family == "scaling") == [0.75, 0.875, 1.125, 1.25]
    assert sorted(s.severity for s in geo if s.family == "translation") == [0, 50, 100, 150]
    assert [make_suite("denoise").parse_shift(n).severity for n in SUITES["denoise"].default_shift_names] == \
        [0.2, 0.4, 0.6, 0.8, 1.0]
    assert [make_suite("cs").parse_shift(n).severity for n in SUITES["cs"].default_shift_names] == [1, 2, 3, 4, 5]


def test_denoise_measurement_depends_on_the_seed_only(tmp_path: Path) -> None:
    ref = ImageRef("a", write_random_images(tmp_path, 1)[0])
    suite = make_suite("denoise")
    shift = suite.parse_shift("sigma0.5")
    a, b, c = (suite.problem(ref, shift, 32, seed) for seed in (3, 3, 4))
    assert a.target is None and torch.equal(a.measurement, b.measurement)
    assert not torch.equal(a.measurement, c.measurement)
    assert torch.equal(a.reference, a.clean) and a.measurement.abs().max() <= 1
    noise_std = float((a.measurement - a.clean).std())
    assert 0.3 < noise_std < 0.5  # clipping shrinks the std below 0.5


def test_cs_problem_is_not_an_image(tmp_path: Path) -> None:
    ref = ImageRef("a", write_random_images(tmp_path, 1)[0])
    suite = make_suite("cs")
    problem = suite.problem(ref, suite.parse_shift("cs2"), 32, seed=0)
    assert problem.shown is None and problem.target is None
    assert problem.measurement.shape == (1, round(0.02 * 3 * 32 * 32))
    assert torch.allclose(problem.operator(problem.clean), problem.measurement)


def test_domain_suite_maps_folders_to_shifts(tmp_path: Path) -> None:
    write_random_images(tmp_path / "data" / "afhq", 3)
    write_random_images(tmp_path / "data" / "x ray", 2, seed=1)
    loose = write_random_images(tmp_path / "loose", 1, seed=2)[0]
    suite = DomainSuite()
    plan = suite.plan([tmp_path / "data", loose], None, max_images=2)
    assert [(s.name, s.family, [r.name for r in refs]) for s, refs in plan] == [
        ("afhq", "domain", ["img00", "img01"]), ("x_ray", "domain", ["img00", "img01"]),
        ("files", "domain", ["img00"])]
    assert [s.name for s, _ in suite.plan([tmp_path / "data"], ["x ray"], None)] == ["x_ray"]
    with pytest.raises(GanInvertError, match="match no image folder"):
        suite.plan([tmp_path / "data"], ["retina"], None)


def test_plan_checks_images_and_shifts(tmp_path: Path) -> None:
    write_random_images(tmp_path / "a", 2)
    write_random_images(tmp_path / "b", 2)
    suite = make_suite("ood-geometric")
    plan = suite.plan([tmp_path / "a", tmp_path / "b"], ["rot10", "tx50"], None)
    assert [r.name for r in plan[0][1]] == ["img00", "img01", "img00_1", "img01_1"]
    with pytest.raises(GanInvertError, match="given twice"):
        suite.plan([tmp_path / "a"], ["rot10", "rot10.0"], None)
    with pytest.raises(GanInvertError, match="not found"):
        suite.plan([tmp_path / "missing"], None, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GanInvertError, match="no images"):
        suite.plan([tmp_path / "empty"], None, None)
    with pytest.raises(GanInvertError, match="unknown suite"):
        make_suite("inpaint")


def test_resize_is_antialiased() -> None:
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None]) % 2 * 2.0 - 1  # +-1 checkerboard
    small = resize_image(checker.expand(1, 3, 64, 64).contiguous(), 16)
    assert small.abs().max() < 0.1  # averaged to grey, not aliased


def test_image_refs_are_unique_safe_names(tmp_path: Path) -> None:
    paths = [Path("a/face.png"), Path("b/face.png"), Path("c/face_1.png"), Path("d/...png"), Path("e/..png")]
    names = [ref.name for ref in unique_image_refs(paths)]
    # face_1 was given twice before (b/face's suffix and c/face_1's own name): one cell overwrote the other.
    assert names == ["face", "face_2", "face_1", "_", "__1"]
    assert [ref.path for ref in unique_image_refs(paths)] == paths

