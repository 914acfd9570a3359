"""Random geometric shifts of training pictures: the rotations, zooms and translations of the OOD suite.

The learned inverters are evaluated on rotated, scaled and translated faces (SPHInX Section 5.1 and
BDInvert's out-of-range images); the SAM predictor and the F/Z+ base-code encoder see such shifts
in training so that they are not limited to the generator's aligned samples. Each draw reads the
run's ``torch.Generator`` in a fixed order, so a resumed run and a rebuilt training set draw the same
shifts.

Example:
    >>> ranges = ShiftRanges(fraction=1.0)
    >>> sorted(ranges.draw(torch.Generator().manual_seed(0)))
    ['angle', 'border', 'scale', 'tx', 'ty']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import GanInvertError

#: Borders drawn with probability 1/2 each: reflected content or black.
SHIFT_BORDERS = ("reflect", "black")


def _uniform(rng: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=rng))


@dataclass(frozen=True)
class ShiftRanges:
    """Attributes:
        fraction: probability that a picture is shifted at all.
        max_angle: rotation drawn uniformly in [-max_angle, max_angle] degrees.
        min_scale, max_scale: zoom drawn log-uniformly in [min_scale, max_scale].
        max_translation: x and y translation drawn uniformly in +-max_translation of the side.
    """

    fraction: float = 0.75
    max_angle: float = 30.0
    min_scale: float = 0.8
    max_scale: float = 1.25
    max_translation: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise GanInvertError(f"shifted_fraction must be in [0, 1], got {self.fraction}")
        if not 0 < self.min_scale <= self.max_scale or self.max_angle < 0 or self.max_translation < 0:
            raise GanInvertError("shift ranges must have 0 < min_scale <= max_scale, max_angle >= 0 and "
                                 "max_translation >= 0")

    def draw(self, rng: torch.Generator) -> dict[str, Any] | None:
        """Keyword arguments of :func:`~ganinvert.evaluation.suites.affine_shift`, or None (no shift)."""
        if float(torch.rand((), generator=rng)) >= self.fraction:
            return None
        border = SHIFT_BORDERS[0] if float(torch.rand((), generator=rng)) < 0.5 else SHIFT_BORDERS[1]
        return {"angle": _uniform(rng, -self.max_angle, self.max_angle),
                "scale": math.exp(_uniform(rng, math.log(self.min_scale), math.log(self.max_scale))),
                "tx": _uniform(rng, -self.max_translation, self.max_translation),
                "ty": _uniform(rng, -self.max_translation, self.max_translation),
                "border": border}


@dataclass
class ShiftSettings:
    """Trainer settings of the random shifts (flat, so ``--set max_angle=20`` works).

    Attributes:
        shifted_fraction: fraction of the pictures given a random geometric shift (0: none).
        max_angle, min_scale, max_scale, max_translation: ranges of the shift (degrees, zoom
            factor, fraction of the side); the border is reflected or black, at random.
    """

    shifted_fraction: float = 0.75
    max_angle: float = 30.0
    min_scale: float = 0.8
    max_scale: float = 1.25
    max_translation: float = 0.15

    @property
    def shifts(self) -> ShiftRanges:
        """The ranges as a :class:`ShiftRanges` (raises GanInvertError when they are invalid)."""
        return ShiftRanges(self.shifted_fraction, self.max_angle, self.min_scale, self.max_scale,
                           self.max_translation)
