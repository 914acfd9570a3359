"""Shared input checks (in the spirit of kornia's ``KORNIA_CHECK_SHAPE``): one place for the rules
every layer applies to tensors, numbers and seeds, each raising a one-line
:class:`~ganinvert.errors.GanInvertError` that names the offending input.

>>> check_shape(torch.zeros(2, 3, 8, 8), "N, 3, H, W", "images")
{'N': 2, 'H': 8, 'W': 8}
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from .errors import GanInvertError

#: Seeds are what ``torch.Generator.manual_seed`` accepts.
SEED_RANGE = (0, 2 ** 63 - 1)


def check_shape(x: Any, pattern: str, name: str = "tensor") -> dict[str, int]:
    """Check that ``x`` is a tensor of ``pattern``: comma-separated dimensions, each an integer
    (must match) or a letter (anything, the same letter the same size). Returns the letters' sizes."""
    dims = [d.strip() for d in pattern.split(",")]
    if not torch.is_tensor(x):
        raise GanInvertError(f"{name} must be a tensor of shape ({pattern}), got {type(x).__name__}")
    sizes: dict[str, int] = {}
    ok = x.ndim == len(dims)
    for dim, size in zip(dims, x.shape) if ok else ():
        if dim.isdigit():
            ok = ok and int(dim) == size
        else:
            ok = ok and sizes.setdefault(dim, size) == size
    if not ok:
        raise GanInvertError(f"{name} must be ({pattern}), got {tuple(x.shape)}")
    return sizes


def check_finite(x: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    if not bool(torch.isfinite(x).all()):
        raise GanInvertError(f"{name} contains NaN or infinite values")
    return x


def check_images(x: Any, resolution: int | None = None, name: str = "images") -> torch.Tensor:
    """(N, 3, H, W) finite images; square at ``resolution`` when given (a generator's images)."""
    if resolution is None:
        check_shape(x, "N, 3, H, W", name)
    else:
        check_shape(x, f"N, 3, {resolution}, {resolution}", name)
    return check_finite(x, name)


def check_number(value: Any, name: str, *, minimum: float | None = None, exclusive: bool = False) -> float:
    """A finite real number, at least ``minimum`` (greater than it when ``exclusive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GanInvertError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise GanInvertError(f"{name} must be {'>' if exclusive else '>='} {minimum:g}, got {value!r}")
    return float(value)


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` as an int, if it is an integer (Python or NumPy) that ``torch.Generator`` accepts."""
    low, high = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not low <= seed <= high:
        raise GanInvertError(f"{name} must be an integer in [{low}, 2**63 - 1], got {seed!r}")
    return int(seed)
