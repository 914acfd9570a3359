"""Learning-rate schedules: multipliers of a group's base learning rate as a function of t in [0, 1).

Each schedule names the source it reproduces.
"""

from __future__ import annotations

import math
from typing import Callable

from ..errors import GanInvertError

Schedule = Callable[[float], float]


def constant(t: float) -> float:
    return 1.0


def cosine(t: float) -> float:
    """Cosine annealing from 1 to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * t))


def rampup_cosine_rampdown(t: float, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """Linear ramp-up over the first ``rampup`` and cosine ramp-down over the last ``rampdown``.

    The StyleGAN2 projector's ``get_lr`` (rosinality ``projector.py``), which the SPHInX authors'
    ``main.py`` applies to the style-head group (``--lr_rampup 0.05 --lr_rampdown 0.25``).
    """
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return ramp * min(1.0, t / rampup)


def trapezoid(t: float, rampup: float = 0.05, rampdown: float = 0.25) -> float:
    """Linear ramp-up, plateau, linear ramp-down (SPHInX paper §4.1's "trapezoid" schedule; the
    paper gives no fractions, so the authors' code's 5 % / 25 % are used)."""
    return max(0.0, min(1.0, t / rampup, (1.0 - t) / rampdown))


def ilo(t: float) -> float:
    """ILO's ``get_lr`` (giannisdaras/ilo): 5 % linear ramp-up, cosine ramp-down over the last 75 %."""
    return rampup_cosine_rampdown(t, rampup=0.05, rampdown=0.75)


SCHEDULES: dict[str, Schedule] = {
    "constant": constant,
    "cosine": cosine,
    "rampup-cosine": rampup_cosine_rampdown,
    "trapezoid": trapezoid,
    "ilo": ilo,
}


def get_schedule(name: str) -> Schedule:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise GanInvertError(f"unknown LR schedule {name!r}; choose one of {', '.join(SCHEDULES)}") from None
