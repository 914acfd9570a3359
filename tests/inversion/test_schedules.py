"""Learning-rate schedules: values at the documented break points and the registry."""

from __future__ import annotations

import math

import pytest

from ganinvert.errors import GanInvertError
from ganinvert.inversion.schedules import (SCHEDULES, constant, cosine, get_schedule, rampup_cosine_rampdown,
                                           trapezoid)

GRID = [i / 200 for i in range(200)]  # t in [0, 1) as the engine calls them (step / steps)


def test_constant():
    assert all(constant(t) == 1.0 for t in GRID)


def test_cosine_anneals_from_one_to_zero():
    assert cosine(0.0) == 1.0
    assert cosine(0.5) == pytest.approx(0.5)
    assert cosine(1.0) == pytest.approx(0.0, abs=1e-12)
    values = [cosine(t) for t in GRID]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_rampup_cosine_matches_the_stylegan2_projector():
    # rosinality projector.py get_lr: lr_ramp = min(1, (1 - t) / rampdown); 0.5 - 0.5 cos(pi * ramp);
    # times min(1, t / rampup).
    def projector(t: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
        ramp = min(1.0, (1.0 - t) / rampdown)
        ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
        return ramp * min(1.0, t / rampup)

    for t in GRID:
        assert rampup_cosine_rampdown(t) == pytest.approx(projector(t), abs=1e-12)
    assert rampup_cosine_rampdown(0.0) == 0.0  # the authors' first step has learning rate 0
    assert rampup_cosine_rampdown(0.025) == pytest.approx(0.5)
    assert rampup_cosine_rampdown(0.5) == 1.0
    assert rampup_cosine_rampdown(0.875) == pytest.approx(0.5)


def test_trapezoid_plateau_and_ramps():
    assert trapezoid(0.0) == 0.0
    assert trapezoid(0.025) == pytest.approx(0.5)
    assert all(trapezoid(t) == 1.0 for t in GRID if 0.05 <= t <= 0.75)
    assert trapezoid(0.875) == pytest.approx(0.5)
    assert all(0.0 <= trapezoid(t) <= 1.0 for t in GRID)


def test_registry():
    assert {"constant", "cosine", "rampup-cosine", "trapezoid"} <= set(SCHEDULES)
    assert get_schedule("cosine") is cosine
    with pytest.raises(GanInvertError, match="unknown LR schedule 'linear'"):
        get_schedule("linear")
