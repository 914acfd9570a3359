"""Restoration tasks: forward operators (measurement models), their registry and inpainting masks."""

from ..rng import RandomStream, seeded_generator
from .masks import box_mask, load_mask, random_mask
from .operators import (
    OPERATORS,
    CompressedSensing,
    Compose,
    Denoising,
    Downsampling,
    ForwardOperator,
    GaussianNoise,
    Identity,
    Inpainting,
    LinearOperator,
    Operator,
    OperatorOptions,
    as_operator,
    make_operator,
    operator_class,
    operator_names,
    register_operator,
)

__all__ = [
    "OPERATORS",
    "CompressedSensing",
    "Compose",
    "Denoising",
    "Downsampling",
    "ForwardOperator",
    "GaussianNoise",
    "Identity",
    "Inpainting",
    "LinearOperator",
    "Operator",
    "OperatorOptions",
    "RandomStream",
    "as_operator",
    "box_mask",
    "load_mask",
    "make_operator",
    "operator_class",
    "operator_names",
    "random_mask",
    "register_operator",
    "seeded_generator",
]
