"""``ganinvert align`` and ``ganinvert paste-back``: outputs, exit statuses and one-line errors.

paste-back and the missing-extra message run without dlib; the align runs skip with a reason
when dlib, its landmark model or ../shared are absent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganinvert.cli import main
from ganinvert.inversion.result import source_image_record
from ganinvert.tasks import alignment as al

FACES = ("input_img", "sample1", "sample2", "sample3", "sample4")
NOT_FACES = ("car_img", "church_img", "horse_img")


def cli(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *parts: str) -> None:
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for part in parts:
        assert part in err, err


@pytest.fixture
def wild(shared):
    """../shared faces_inthewild, read in place; skips without dlib, its model or ../shared."""
    if importlib.util.find_spec("dlib") is None:
        pytest.skip('dlib is not installed (pip install -e ".[align]")')
    try:
        al.landmark_model_path()
    except al.AlignmentUnavailableError as exc:
        pytest.skip(str(exc))
    return shared("data", "images", "faces_inthewild")


# ----------------------------------------------------------------------------- without the extra
def test_align_without_the_extra_says_which_pip_install_adds_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dlib", None)
    al._detector.cache_clear()
    try:
        code, _, err = cli(capsys, "align", tmp_path / "missing.jpg", "--out", tmp_path / "out")
    finally:
        al._detector.cache_clear()
    assert_one_line_error(code, err, 'pip install "ganinvert[align]"')
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- align (dlib)
def test_align_a_folder_writes_crops_and_reports_the_photos_without_faces(capsys, tmp_path, wild):
    code, out, err = cli(capsys, "align", wild, "--out", tmp_path / "out", "--size", 32)
    assert code == 0, err
    for stem in FACES:
        crop = Image.open(tmp_path / "out" / stem / "aligned.png")
        assert crop.size == (32, 32)
        record = json.loads((tmp_path / "out" / stem / "alignment.json").read_text())
        assert record["source"] == source_image_record(wild / f"{stem}.jpg")
        assert record["size"] == 32 and record["faces_found"] >= 1 and record["face"] == 0
        assert len(record["quad"]) == 4 and len(record["landmarks"]) == 68
        assert {"rotation_deg", "scale", "offset", "crop_to_photo"} <= record.keys()
        assert f"{stem}: " in out
    for stem in NOT_FACES:
        assert f"faces_inthewild/{stem}.jpg: no face found" in err
        assert not (tmp_path / "out" / stem).exists()
    assert all(line.startswith("ganinvert: error: ") for line in err.strip().splitlines())
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert set(FACES) <= written and not written & set(NOT_FACES)
    assert not any(name.startswith(".") for name in written)  # no lock or staging leftovers


def test_align_takes_the_generator_resolution_by_default(capsys, tmp_path, wild):
    code, _, err = cli(capsys, "align", wild / "sample1.jpg", "--out", tmp_path / "out")
    assert code == 0, err
    assert Image.open(tmp_path / "out" / "sample1" / "aligned.png").size == (64, 64)  # the bundled generator


def test_align_fails_with_exit_2_when_no_crop_is_written(capsys, tmp_path, wild):
    code, _, err = cli(capsys, "align", wild / "car_img.jpg", "--out", tmp_path / "out", "--size", 32)
    assert_one_line_error(code, err, "car_img.jpg: no face found")
    code, _, err = cli(capsys, "align", wild / "car_img.jpg", wild / "horse_img.jpg", "--out", tmp_path / "out",
                       "--size", 32)
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "car_img.jpg" in lines[0] and "horse_img.jpg" in lines[1]
    assert "no crop written" in lines[2]


def test_align_skips_an_unreadable_file_and_keeps_going(capsys, tmp_path, wild):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    code, _, err = cli(capsys, "align", broken, wild / "sample2.jpg", "--out", tmp_path / "out", "--size", 32)
    assert code == 0
    assert len(err.strip().splitlines()) == 1 and "broken.png" in err
    assert (tmp_path / "out" / "sample2" / "aligned.png").is_file()


def test_align_every_face_of_a_group_photo(capsys, tmp_path, wild):
    face = Image.open(wild / "sample1.jpg").convert("RGB")
    pair = Image.new("RGB", (1024, 512))
    pair.paste(face, (0, 0))
    pair.paste(face.resize((320, 320), Image.LANCZOS), (600, 100))
    pair.save(tmp_path / "pair.png")
    code, out, err = cli(capsys, "align", tmp_path / "pair.png", "--out", tmp_path / "all", "--face", "all",
                         "--size", 32)
    assert code == 0, err
    assert "2 faces" in out
    records = [json.loads((tmp_path / "all" / "pair" / f"face_{k}" / "alignment.json").read_text()) for k in (0, 1)]
    assert [r["face"] for r in records] == [0, 1] and all(r["faces_found"] == 2 for r in records)
    assert records[0]["side_px"] > records[1]["side_px"]  # largest first
    code, _, err = cli(capsys, "align", tmp_path / "pair.png", "--out", tmp_path / "largest", "--size", 32)
    assert code == 0, err
    largest = json.loads((tmp_path / "largest" / "pair" / "alignment.json").read_text())
    assert largest["quad"] == records[0]["quad"]


def test_align_refuses_to_replace_a_folder_without_overwrite(capsys, tmp_path, wild):
    args = ("align", wild / "sample3.jpg", "--out", tmp_path / "out", "--size", 32)
    assert cli(capsys, *args)[0] == 0
    code, _, err = cli(capsys, *args)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    code, _, err = cli(capsys, *args, "--overwrite")
    assert code == 0, err


@pytest.mark.parametrize("size", ["4", "5000"])
def test_align_refuses_a_bad_size_before_any_work(capsys, tmp_path, wild, size):
    code, _, err = cli(capsys, "align", wild / "sample3.jpg", "--out", tmp_path / "out", "--size", size)
    assert_one_line_error(code, err, "aligned size")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- paste-back (no dlib)
@pytest.fixture
def aligned_folder(tmp_path) -> tuple[Path, Path, al.Alignment]:
    """A photo and the folder `ganinvert align` would write for it (synthetic landmarks)."""
    rng = np.random.default_rng(5)
    photo_path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(photo_path)
    eyes, mouth = np.array([[50.0, 40], [70, 42]]), np.array([[52.0, 62], [68, 63]])
    lm = np.tile(eyes.mean(0), (68, 1))
    lm[36:42], lm[42:48], lm[48], lm[54] = eyes[0], eyes[1], mouth[0], mouth[1]
    alignment = al.align_face(Image.open(photo_path), lm, 32)
    folder = tmp_path / "aligned" / "photo"
    folder.mkdir(parents=True)
    record = {**alignment.to_json(), "source": source_image_record(photo_path), "face": 0, "faces_found": 1}
    (folder / "alignment.json").write_text(json.dumps(record))
    return photo_path, folder, alignment


def test_paste_back_keeps_the_photo_outside_the_mask(capsys, tmp_path, aligned_folder):
    photo_path, folder, alignment = aligned_folder
    Image.new("RGB", (64, 64), (255, 0, 255)).save(tmp_path / "edit.png")  # any square size
    code, _, err = cli(capsys, "paste-back", folder, tmp_path / "edit.png", "--out", tmp_path / "pasted.png")
    assert code == 0, err
    before, after = np.asarray(Image.open(photo_path)), np.asarray(Image.open(tmp_path / "pasted.png"))
    mask = al.paste_mask(alignment)
    assert np.array_equal(after[mask == 0], before[mask == 0]) and (mask == 0).sum() > 0
    assert (after[mask == 1] == (255, 0, 255)).all() and (mask == 1).sum() > 100


def test_paste_back_refuses_another_photo_and_bad_records(capsys, tmp_path, aligned_folder):
    photo_path, folder, _ = aligned_folder
    Image.new("RGB", (32, 32)).save(tmp_path / "edit.png")
    other = tmp_path / "other.png"
    Image.new("RGB", (120, 90)).save(other)
    code, _, err = cli(capsys, "paste-back", folder, tmp_path / "edit.png", "--photo", other,
                       "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, "other.png", "sha256")
    Image.new("RGB", (32, 20)).save(tmp_path / "wide.png")
    code, _, err = cli(capsys, "paste-back", folder, tmp_path / "wide.png", "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, "must be square")
    code, _, err = cli(capsys, "paste-back", folder, tmp_path / "edit.png", "--feather", "2",
                       "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, "feather")
    code, _, err = cli(capsys, "paste-back", tmp_path, tmp_path / "edit.png", "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, "alignment.json", "not found")
    (folder / "alignment.json").write_text('{"alignment": "ffhq", "quad": [[0, 0]], "size": 32}')
    code, _, err = cli(capsys, "paste-back", folder, tmp_path / "edit.png", "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, "alignment.json", "4 finite")
    (folder / "alignment.json").write_text("{not json")
    code, _, err = cli(capsys, "paste-back", folder, tmp_path / "edit.png", "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, "cannot read")
    assert not (tmp_path / "x.png").exists()
    photo_path.unlink()
    (folder / "alignment.json").write_text(json.dumps({**json.loads(json.dumps(al.Alignment(
        np.array([[0., 0], [0, 10], [10, 10], [10, 0]]), (120, 90), 32).to_json())),
        "source": {"path": str(photo_path), "sha256": "0"}}))
    code, _, err = cli(capsys, "paste-back", folder, tmp_path / "edit.png", "--out", tmp_path / "x.png")
    assert_one_line_error(code, err, "photo.png", "--photo")
