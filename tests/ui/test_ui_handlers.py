"""The page's handlers (ganinvert/ui/handlers.py) without a browser or Gradio: uploads, jobs that
stream and stop, result folders and their zips, edits, masks, restorations and draws, on tiny
random generators."""

from __future__ import annotations

import statistics
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganinvert.errors import GanInvertError
from ganinvert.inversion import list_methods
from ganinvert.ui import handlers as h


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GANINVERT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def ws(tmp_path, random_generator) -> h.Workspace:
    return h.Workspace(random_generator(32, seed=3), None, tmp_path / "work")


@pytest.fixture
def session(ws) -> h.Session:
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return h.Session(image=image, image_name="face.png", clean=image, clean_name="face.png")


def finished(ws: h.Workspace, session: h.Session, method: str = "w+", steps: int = 6) -> str:
    job = h.start_inversion(ws, session, method, "", steps, 0, "cpu", False)
    return h.finish_inversion(ws, session, job)[0]


# ----------------------------------------------------------------------------- uploads
def test_read_image_refuses_non_images_and_huge_images_by_name(tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("not a picture")
    with pytest.raises(GanInvertError, match=r"^photo.png is not an image file") as err:
        h.read_image(fake, 32)
    assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)
    huge = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(huge)  # 1 bit per pixel: quick to write, 100 MP when decoded
    with pytest.raises(GanInvertError, match=r"huge.png is 10000×10000 px \(100 MP\); images up to 40 MP"):
        h.read_image(huge, 32)
    good = tmp_path / "good.png"
    Image.new("RGB", (50, 40), (255, 0, 0)).save(good)
    x = h.read_image(good, 32)
    assert x.shape == (1, 3, 32, 32) and torch.allclose(x[0, 0], torch.ones(32, 32))


def test_display_enlarges_small_images_with_nearest_pixels():
    x = torch.linspace(-1, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)
    img = h.display(x, 64)
    assert img.size == (64, 64)
    assert np.asarray(img)[:8, :8].std(axis=(0, 1)).max() == 0  # each source pixel a flat 8x8 block


# ----------------------------------------------------------------------------- jobs
def test_a_job_streams_each_step_and_its_result_folder_zips_and_loads_back(ws, session, tmp_path):
    job = h.start_inversion(ws, session, "w+", "", 12, 0, "cpu", False)
    steps = [p.step for p in job.updates(interval=0)]
    assert steps == sorted(set(steps)) and steps[-1] == 12
    label, render, metrics = h.finish_inversion(ws, session, job)
    assert len(job.history["loss"]) == 12 and {"psnr", "ssim"} <= set(metrics)
    archive = session.results[label].archive
    with zipfile.ZipFile(archive) as z:
        names = {Path(n).name for n in z.namelist()}
    assert {"result.safetensors", "result.json", "reconstruction.png", "metrics.json"} <= names
    loaded_label, loaded_render = h.load_result_upload(ws, session, [archive])
    assert torch.equal(loaded_render, render) and list(session.results) == [label, loaded_label]


def test_stop_ends_the_run_at_a_step_and_keeps_a_renderable_result(ws, session):
    job = h.start_inversion(ws, session, "w+", "", 5000, 0, "cpu", False)
    for progress in job.updates(interval=0):
        if progress.step >= 3:
            job.stop()
    label, render, _ = h.finish_inversion(ws, session, job)
    result = session.results[label].result
    assert 3 <= result.extra["stopped_at"] < 5000 and "stopped at step" in label
    assert torch.isfinite(render).all()


def test_bad_options_fail_before_a_run_starts(ws, session):
    with pytest.raises(GanInvertError, match="steps must be a whole number"):
        h.start_inversion(ws, session, "w+", "", 0, 0, "cpu", False)
    with pytest.raises(GanInvertError, match="seed must be"):
        h.start_inversion(ws, session, "w+", "", 5, -1, "cpu", False)
    with pytest.raises(GanInvertError, match="unknown preset"):
        h.start_inversion(ws, session, "w+", "nope", 5, 0, "cpu", False)
    with pytest.raises(GanInvertError, match="upload an image"):
        h.start_inversion(ws, h.Session(), "w+", "", 5, 0, "cpu", False)


def test_an_error_in_the_worker_reaches_the_page(ws, session):
    job = h.Job(lambda callback: 1 / 0)
    assert list(job.updates()) == []
    with pytest.raises(ZeroDivisionError):
        job.outcome()


def test_every_method_has_preset_choices_and_a_source_line():
    for name, cls in list_methods().items():
        choices = h.presets(name)
        assert h.default_preset(name) in [value for _, value in choices]
        for _, value in choices:
            text = h.preset_source(name, value)
            assert cls.summary in text and (not value or cls.presets[value].source in text)


# ----------------------------------------------------------------------------- result uploads
def test_result_uploads_that_are_not_a_result_pair_are_refused(ws, session, tmp_path):
    label = finished(ws, session)
    archive = session.results[label].archive
    not_zip = tmp_path / "x.zip"
    not_zip.write_bytes(b"PK not really")
    with pytest.raises(GanInvertError, match="x.zip is not a readable zip file"):
        h.load_result_upload(ws, session, [not_zip])
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(GanInvertError, match="no result.safetensors"):
        h.load_result_upload(ws, session, [empty])
    with zipfile.ZipFile(archive) as z:
        folder = tmp_path / "pair"
        z.extractall(folder)
    pair = sorted((folder / Path(z.namelist()[0]).parent).glob("result.*"))
    h.load_result_upload(ws, session, pair)  # the .safetensors with its .json works too
    with pytest.raises(GanInvertError, match="together with its .json"):
        h.load_result_upload(ws, session, pair[:1])


def test_a_result_of_another_generator_is_refused(ws, session, random_generator, tmp_path):
    label = finished(ws, session)
    other = h.Workspace(random_generator(32, style_dim=16, seed=4), None, tmp_path / "other")
    with pytest.raises(GanInvertError, match="generator"):
        h.load_result_upload(other, h.Session(), [session.results[label].archive])


# ----------------------------------------------------------------------------- edit
def test_edits_move_the_render_only_when_a_slider_is_off_zero(ws, session):
    result = session.result(finished(ws, session))
    count = len(ws.pca())
    rest = h.edit_image(ws, result, [0.0] * count, 0, ws.G.num_ws - 1)
    assert torch.equal(rest, result.render(ws.G))
    moved = h.edit_image(ws, result, [3.0] + [0.0] * (count - 1), 0, ws.G.num_ws - 1)
    first_layer_only = h.edit_image(ws, result, [3.0] + [0.0] * (count - 1), 0, 0)
    assert not torch.equal(moved, rest) and not torch.equal(first_layer_only, moved)
    with pytest.raises(GanInvertError, match="edit strength must be a finite number"):
        h.edit_image(ws, result, [float("nan")] + [0.0] * (count - 1), 0, 0)


def test_direction_files_load_and_a_wrong_dimension_is_one_line_naming_the_file(ws, session, tmp_path):
    result = session.result(finished(ws, session))
    good, wrong = tmp_path / "good.pt", tmp_path / "wrong.pt"
    torch.save(torch.randn(ws.G.style_dim), good)
    torch.save(torch.randn(7), wrong)
    direction = h.load_direction_upload(ws, good, "")
    assert direction.shape == (ws.G.num_ws, ws.G.style_dim)
    zeros = [0.0] * len(ws.pca())
    assert not torch.equal(h.edit_image(ws, result, zeros, 0, ws.G.num_ws - 1, direction, 2.0), result.render(ws.G))
    with pytest.raises(GanInvertError, match=r"^direction in wrong.pt has shape \(7,\)") as err:
        h.load_direction_upload(ws, wrong)
    assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)
    with pytest.raises(GanInvertError, match="the row must be a whole number"):
        h.load_direction_upload(ws, good, "-1")


def test_interpolation_strip_needs_results_of_one_method(ws, session):
    a, b = finished(ws, session), finished(ws, session, steps=3)
    strip = h.interpolation_strip(ws, session.result(a), session.result(b), 4)
    assert strip.size[0] == 4 * 128
    with pytest.raises(GanInvertError, match="different methods"):
        h.interpolation_strip(ws, session.result(a), session.result(finished(ws, session, "w")), 4)


def test_a_slider_move_of_the_bundled_generator_renders_in_under_0_3_s():
    """The acceptance figure: one edit render of the 64 px default generator on a CPU."""
    from ganinvert.models import load_generator
    ws = h.Workspace(load_generator("default"))
    try:
        x = h.read_image(h.EXAMPLE_IMAGE, ws.G.resolution)
        session = h.Session(image=x, image_name="example.png")
        result = session.result(finished(ws, session, steps=2))
        count = len(ws.pca())
        seconds = []
        for move in range(1, 21):
            started = time.perf_counter()
            h.edit_image(ws, result, [0.25 * move] + [0.0] * (count - 1), 0, ws.G.num_ws - 1)
            seconds.append(time.perf_counter() - started)
        assert statistics.median(seconds) < 0.3, seconds
    finally:
        ws.close()


# ----------------------------------------------------------------------------- restore
def test_mask_from_painted_strokes_marks_the_covered_pixels_missing():
    layer = np.zeros((128, 128, 4), np.uint8)
    layer[32:64, 0:128] = (255, 0, 255, 255)
    mask = h.mask_from_layers([None, layer], 32)
    assert mask.shape == (1, 1, 32, 32)
    assert mask[0, 0, 8:16].sum() == 0 and mask[0, 0, :8].all() and mask[0, 0, 16:].all()
    with pytest.raises(GanInvertError, match="paint the missing region"):
        h.mask_from_layers([np.zeros((128, 128, 4), np.uint8)], 32)
    with pytest.raises(GanInvertError, match="covers the whole image"):
        h.mask_from_layers([np.full((128, 128, 4), 255, np.uint8)], 32)


@pytest.mark.parametrize("task, options", [("denoise", {"sigma": 0.3}), ("sr", {"factor": 2}),
                                           ("cs", {"fraction": 0.2}), ("inpaint", {})])
def test_each_task_restores_and_writes_its_folder(ws, session, task, options):
    if task == "inpaint":
        options = {"mask": (torch.arange(32)[None, None, :, None].expand(1, 1, 32, 32) >= 16).float()}
    operator = h.restore_operator(ws, task, seed=1, **options)
    job = h.start_restoration(ws, session, operator, "w+", 4, 0, "cpu", False)
    label, out, measurement, metrics = h.finish_restoration(ws, session, job)
    assert label.startswith(f"#1 {task} w+") and "psnr" in metrics
    assert (measurement is None) == (task == "cs")
    with zipfile.ZipFile(session.results[label].archive) as z:
        assert any(n.endswith("/restoration.png") for n in z.namelist())


def test_restore_options_are_checked(ws):
    with pytest.raises(GanInvertError, match="the factor must be a whole number"):
        h.restore_operator(ws, "sr", factor="x")
    with pytest.raises(GanInvertError, match="unknown task"):
        h.restore_operator(ws, "deblur")
    with pytest.raises(GanInvertError, match="fraction must be in"):
        h.restore_operator(ws, "cs", fraction=0.0)


# ----------------------------------------------------------------------------- draws and robustness
def test_draws_differ_for_sphinx_and_not_for_w_plus(ws, session, tmp_path):
    sphinx = session.result(finished(ws, session, "sphinx", steps=3))
    strip, note = h.draws_strip(ws, sphinx, 3, 0)
    assert strip.size[0] == 4 * 128 and "fresh draws of sphinx" in note
    _, note = h.draws_strip(ws, session.result(finished(ws, session)), 3, 0)
    assert "deterministic" in note
    plot = h.robustness_plot(ws, sphinx, "20,10", 2, 0)
    assert plot.is_file() and (plot.parent / "robustness.csv").is_file()
    with pytest.raises(GanInvertError, match="SNR levels"):
        h.robustness_plot(ws, sphinx, "a,b", 2, 0)


def test_a_session_without_results_says_what_to_do():
    with pytest.raises(GanInvertError, match="no result yet"):
        h.Session().result(None)
