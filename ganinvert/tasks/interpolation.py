"""Latent interpolation between two inversion results of the same method and generator.

What is interpolated: the *generator inputs* each result renders from (``render_inputs``: w+,
noise maps, constant input / content, feature-entry maps, feature residuals, weight deltas),
linearly, ``(1 - t) * a + t * b``. For latent-code methods this is the usual w+ interpolation
(with noise and content blended alongside); for PTI the weight residuals are blended too.

Why not the methods' own tensors: for SPHInX these are the weights of two independently trained
projection heads. The heads are nonlinear in their weights and their hidden units are in an
arbitrary order (any permutation gives the same head), so blending the weights of two heads
yields a third, unrelated head rather than a path between the two w+ codes. The rendered inputs
are the quantities the generator sees, so blending them is meaningful for every method. For the
same reason Z+ methods are blended after the mapping (in W+), where the generator is smooth.

An input that one result leaves at the generator's default is taken at that default (stored
noise, the learned constant, zero residuals), so both ends always render the two reconstructions
exactly: ``(1 - t) * a + t * b`` equals ``a`` at t = 0 and ``b`` at t = 1 bit for bit.

Example::

    frames = interpolate(G, InversionResult.load("a/result.safetensors"),
                         InversionResult.load("b/result.safetensors"), steps=8)   # (8, N, 3, H, W)
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import torch

from ..checks import check_finite
from ..errors import GanInvertError
from ..inversion.methods.base import SynthesisInputs
from ..inversion.result import InversionResult
from ..models.stylegan2 import FeatureEntry, StyleGAN2Generator


def check_compatible(result_a: InversionResult, result_b: InversionResult) -> None:
    """Refuse results from different generators, methods or batch sizes (one-line errors)."""
    sha_a, sha_b = result_a.generator.get("sha256"), result_b.generator.get("sha256")
    if (sha_a and sha_b and sha_a != sha_b) or \
            _canonical(result_a.generator.get("config")) != _canonical(result_b.generator.get("config")):
        name_a = (sha_a or "?")[:12]
        name_b = (sha_b or "?")[:12]
        raise GanInvertError(f"the results come from different generators ({name_a}… vs {name_b}…); "
                             "interpolation needs both from the same one")
    if result_a.method != result_b.method:
        raise GanInvertError(f"the results come from different methods ({result_a.method} vs {result_b.method}); "
                             "interpolation needs both from the same one")
    if result_a.batch_size != result_b.batch_size:
        raise GanInvertError(f"the results hold {result_a.batch_size} and {result_b.batch_size} images; "
                             "interpolation pairs image i of one with image i of the other")


def _canonical(config: Any) -> str:
    # A config read back from JSON has string keys and lists where a fresh one has ints and tuples.
    return json.dumps(json.loads(json.dumps(config, default=str)), sort_keys=True)


def _blend(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return (1.0 - t) * a + t * b


def _noise(G: StyleGAN2Generator, noise: Sequence[torch.Tensor | None] | None) -> list[torch.Tensor]:
    noise = list(noise) if noise is not None else [None] * G.num_layers
    return [getattr(G.noises, f"noise_{i}") if n is None else n for i, n in enumerate(noise)]


def _rgb(entry: FeatureEntry) -> torch.Tensor:
    # rgb=None starts the skip image from the block's own ToRGB, i.e. adds nothing: a zero image.
    if entry.rgb is not None:
        return entry.rgb
    size = entry.features.shape[-1]
    return entry.features.new_zeros(entry.features.shape[0], 3, size, size)


def _blend_dicts(a: dict | None, b: dict | None, t: float) -> dict | None:
    """Blend residual dicts; a key missing on one side is a zero residual there."""
    if not a and not b:
        return None
    a, b = dict(a or {}), dict(b or {})
    out = {}
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key), b.get(key)
        x = torch.zeros_like(y) if x is None else x
        y = torch.zeros_like(x) if y is None else y
        out[key] = _blend(x, y, t)
    return out


def interpolate_inputs(G: StyleGAN2Generator, a: SynthesisInputs, b: SynthesisInputs, t: float) -> SynthesisInputs:
    """``(1 - t) * a + t * b`` for every generator input (see the module docstring)."""
    if a.ws.shape != b.ws.shape:
        raise GanInvertError(f"cannot interpolate w+ of shapes {tuple(a.ws.shape)} and {tuple(b.ws.shape)}")
    entry = None
    if (a.feature_entry is None) != (b.feature_entry is None) or (
            a.feature_entry is not None and a.feature_entry.block != b.feature_entry.block):
        raise GanInvertError("the results enter the generator at different feature blocks")
    if a.feature_entry is not None:
        entry = FeatureEntry(a.feature_entry.block, _blend(a.feature_entry.features, b.feature_entry.features, t),
                             _blend(_rgb(a.feature_entry), _rgb(b.feature_entry), t))
    const = None
    if a.const is not None or b.const is not None:
        const = _blend(G.input.input if a.const is None else a.const, G.input.input if b.const is None else b.const, t)
    noise = None
    if a.noise is not None or b.noise is not None:
        noise = [_blend(x, y, t) for x, y in zip(_noise(G, a.noise), _noise(G, b.noise))]
    return SynthesisInputs(ws=_blend(a.ws, b.ws, t), noise=noise, const=const, feature_entry=entry,
                           feature_residuals=_blend_dicts(a.feature_residuals, b.feature_residuals, t),
                           weight_deltas=_blend_dicts(a.weight_deltas, b.weight_deltas, t))


@torch.no_grad()
def interpolate(G: StyleGAN2Generator, result_a: InversionResult, result_b: InversionResult,
                steps: int) -> torch.Tensor:
    """Render ``steps`` frames from ``result_a`` (t = 0) to ``result_b`` (t = 1), both included.

    Returns:
        (steps, N, 3, H, W) renders; frame 0 equals ``result_a.render(G)`` and the last frame
        ``result_b.render(G)``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise GanInvertError(f"--steps must be an integer >= 2 (both ends included), got {steps!r}")
    check_compatible(result_a, result_b)
    inputs_a, inputs_b = result_a.inputs(G), result_b.inputs(G)
    times = torch.linspace(0, 1, steps).tolist()
    frames = torch.stack([interpolate_inputs(G, inputs_a, inputs_b, t).render(G) for t in times])
    return check_finite(frames, f"the interpolation of these {result_a.method} results")
