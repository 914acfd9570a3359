"""Restoration tasks: forward operators (measurement models) and inpainting masks."""

from .masks import RandomStream, box_mask, load_mask, random_mask, seeded_generator
from .operators import (
    TASKS,
    CompressedSensing,
    Compose,
    Denoising,
    Downsampling,
    ForwardOperator,
    Identity,
    Inpainting,
    LinearOperator,
    Operator,
    as_operator,
    make_operator,
)

__all__ = [
    "TASKS",
    "CompressedSensing",
    "Compose",
    "Denoising",
    "Downsampling",
    "ForwardOperator",
    "Identity",
    "Inpainting",
    "LinearOperator",
    "Operator",
    "RandomStream",
    "as_operator",
    "box_mask",
    "load_mask",
    "make_operator",
    "random_mask",
    "seeded_generator",
]
