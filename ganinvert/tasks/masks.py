"""Inpainting masks: loaded from an image file or drawn reproducibly from a seed.

Every mask is a float tensor of shape ``(1, 1, H, W)`` holding 0 and 1, where **1 marks an
observed pixel** and 0 a missing one (the convention of :class:`~ganinvert.tasks.Inpainting`).
Random masks are drawn from their own streams of the user's seed
(:func:`ganinvert.rng.seeded_generator`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import GanInvertError, ImageError
from ..rng import RandomStream, seeded_generator

#: Threshold on the [0, 1]-normalised pixel value: at or above it a mask pixel is observed.
MASK_THRESHOLD = 0.5


def size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """Normalise ``size`` (``S`` or ``(H, W)``) to ``(H, W)`` of positive integers."""
    values = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                               for v in values):
        raise GanInvertError(f"image size must be a positive integer or (H, W), got {size!r}")
    return int(values[0]), int(values[1])


def _fraction(value: float, name: str, *, allow_one: bool) -> float:
    upper = "1]" if allow_one else "1)"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise GanInvertError(f"{name} must be a number in (0, {upper}, got {value!r}")
    value = float(value)
    if not (0.0 < value < 1.0 or (allow_one and value == 1.0)):
        raise GanInvertError(f"{name} must be in (0, {upper}, got {value}")
    return value


def _pixels_in_unit_range(img: Image.Image) -> np.ndarray:
    """Grey level of every pixel scaled to [0, 1]; alpha is ignored."""
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit greyscale PNG/TIFF
        return np.asarray(img, dtype=np.float64) / 65535.0
    if img.mode == "F":  # float images are taken to be on [0, 1] already
        return np.asarray(img, dtype=np.float64)
    return np.asarray(img.convert("L"), dtype=np.float64) / 255.0


def load_mask(path: str | os.PathLike[str], size: int | Sequence[int] | None = None, *,
              resize: bool = False) -> torch.Tensor:
    """Read an inpainting mask from any image file PIL can open.

    The image is turned to grey levels on [0, 1] (colour via PIL's luminance, 16-bit
    greyscale divided by 65535, alpha ignored, EXIF orientation applied) and thresholded at
    ``MASK_THRESHOLD``: white (>= 0.5) is observed, black is missing.

    A mask whose size differs from ``size`` is an error, because silently stretching it would
    move the holes; with ``resize=True`` it is resized instead, with nearest-neighbour sampling
    so that it stays binary.

    Args:
        path: the mask image.
        size: required ``(H, W)`` (or ``S`` for square); ``None`` keeps the file's size.
        resize: resize a mask of another size to ``size`` instead of failing.

    Returns:
        float32 tensor of shape ``(1, 1, H, W)`` with values in {0, 1}.

    Example::

        mask = load_mask("holes.png", size=256)  # ImageError if holes.png is not 256x256
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"mask file not found: {path}")
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)
            img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split())  # keep the message on one line
        raise ImageError(f"cannot read mask {path}: {reason}") from None
    observed = _pixels_in_unit_range(img) >= MASK_THRESHOLD
    if size is not None:
        height, width = size_hw(size)
        if observed.shape != (height, width):
            if not resize:
                raise ImageError(
                    f"mask {path} is {observed.shape[0]}x{observed.shape[1]} (HxW) but "
                    f"{height}x{width} is needed; resize the mask or ask for resizing")
            binary = Image.fromarray(observed.astype(np.uint8) * 255)
            observed = np.asarray(binary.resize((width, height), Image.Resampling.NEAREST)) > 127
    return torch.from_numpy(observed.astype(np.float32))[None, None]


def box_mask(size: int | Sequence[int], box_fraction: float, seed: int) -> torch.Tensor:
    """A mask that hides one axis-aligned box placed uniformly at random.

    The box has the image's aspect ratio and covers about ``box_fraction`` of its area (the
    sides are ``round(sqrt(box_fraction) * H)`` by ``round(sqrt(box_fraction) * W)``), like
    the random rectangular occlusion of SPHInX (``utils.random_occlusion``).

    >>> mask = box_mask(8, box_fraction=0.25, seed=0)
    >>> mask.shape, int((mask == 0).sum())
    (torch.Size([1, 1, 8, 8]), 16)
    """
    height, width = size_hw(size)
    scale = math.sqrt(_fraction(box_fraction, "box_fraction", allow_one=False))
    box_h = min(height, max(1, round(scale * height)))
    box_w = min(width, max(1, round(scale * width)))
    if box_h == height and box_w == width:
        raise GanInvertError(f"a box of fraction {box_fraction} covers the whole "
                             f"{height}x{width} image; use a smaller box_fraction")
    generator = seeded_generator(seed, RandomStream.BOX_MASK)
    top = int(torch.randint(0, height - box_h + 1, (), generator=generator))
    left = int(torch.randint(0, width - box_w + 1, (), generator=generator))
    mask = torch.ones(1, 1, height, width)
    mask[..., top:top + box_h, left:left + box_w] = 0.0
    return mask


def random_mask(size: int | Sequence[int], keep_fraction: float, seed: int) -> torch.Tensor:
    """A mask observing exactly ``max(1, round(keep_fraction * H * W))`` random pixels.

    The pixels are a uniformly random subset (all channels of a pixel together).

    >>> int(random_mask(10, keep_fraction=0.3, seed=1).sum())
    30
    """
    height, width = size_hw(size)
    kept = max(1, round(_fraction(keep_fraction, "keep_fraction", allow_one=True) * height * width))
    generator = seeded_generator(seed, RandomStream.RANDOM_MASK)
    mask = torch.zeros(height * width)
    mask[torch.randperm(height * width, generator=generator)[:kept]] = 1.0
    return mask.view(1, 1, height, width)
