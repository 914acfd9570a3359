"""Attribute discovery: the variants, the method's tensors and hinge, ordered alphas, traversals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from task_fixtures import random_generator, sample

from ganinvert.inversion.methods.base import InversionContext

from ganinvert.errors import GanInvertError
from ganinvert.inversion import InversionResult, invert, make_method
from ganinvert.tasks.discovery import (DEFAULT_FACTORS, Discover, alphas, apply_attribute, attribute_variants,
                                       discover, traversal_alphas, traverse, variant_reconstructions)

# A fast schedule: the attribute group's learning rate is raised so that the hinge can open the
# margins (tau = 2) within a few dozen steps.
QUICK = {"steps": 40, "attribute_lr": 0.2, "lr": 0.01, "schedule": "constant"}


@pytest.fixture(scope="module")
def G():
    return random_generator()


@pytest.fixture(scope="module")
def rotation_result(G):
    return discover(G, sample(G, 4), "rotation", settings=QUICK, seed=1, progress=False)


def _dot(size: int = 9) -> torch.Tensor:
    x = torch.full((1, 3, size, size), -1.0)
    x[..., size // 2, size - 2] = 1.0  # right of the centre
    return x


def test_rotation_turns_counter_clockwise_and_zoom_magnifies() -> None:
    turned = apply_attribute(_dot(), "rotation", 90.0)
    assert (turned[0, 0] > 0).nonzero().tolist() == [[1, 4]]  # now above the centre
    x = torch.linspace(-1, 1, 16).expand(1, 3, 16, 16).contiguous()  # horizontal ramp
    zoomed = apply_attribute(x, "zoom", 2.0)  # the central half spread over the frame: half the slope
    assert float(zoomed[0, 0, 8].diff().mean()) == pytest.approx(float(x[0, 0, 8].diff().mean()) / 2, rel=0.02)
    assert float(zoomed[0, 0, 8].abs().max()) == pytest.approx(0.5, abs=0.05)


def test_brightness_scales_intensity_and_identities_are_exact() -> None:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    half = apply_attribute(x, "brightness", 0.5)
    assert torch.allclose((half + 1) / 2, (x + 1) / 4)
    for attribute, identity in (("rotation", 0.0), ("zoom", 1.0), ("brightness", 1.0)):
        assert torch.equal(apply_attribute(x, attribute, identity), x)
    assert attribute_variants(x, "zoom", DEFAULT_FACTORS["zoom"]).shape == (2, 3, 3, 8, 8)
    for attribute, bad in (("zoom", 0.0), ("brightness", -1.0), ("rotation", math.inf)):
        with pytest.raises(GanInvertError, match=attribute):
            apply_attribute(x, attribute, bad)
    with pytest.raises(GanInvertError, match="unknown attribute"):
        apply_attribute(x, "hue", 1.0)


def test_method_tensors_render_and_hinge(G) -> None:
    method = make_method("discover", None, {"factors": (0.0, 10.0, 20.0, 30.0)})
    k = method.num_variants
    stacked = torch.zeros(2, 3 * k, G.resolution, G.resolution)
    rngs = [torch.Generator().manual_seed(s) for s in (0, 1)]
    ctx = InversionContext(G=G, rngs=rngs, measurement=stacked, operator=method.stack_variants)
    params = method.init_params(ctx)
    assert params["attr.direction"].shape == (2, G.num_ws, G.style_dim) and params["attr.alpha"].shape == (2, k - 1)
    assert {"attr.direction", "attr.alpha"} <= set(method.stages(G)[0].names)
    params["attr.alpha"] = torch.tensor([[1.0, 5.0, 6.0], [3.0, 6.0, 9.0]])
    # tau = 2: image 0 pays (2 - 1) + 0 + (2 - 1); image 1 pays nothing; weight 0.5.
    assert method.regulariser(ctx, params, None).tolist() == [1.0, 0.0]
    inputs = method.render_inputs(G, params)
    assert inputs.ws.shape == (2 * k, G.num_ws, G.style_dim)
    unit = Discover.unit_direction(params)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(2, G.num_ws))
    base = method.base_inputs(G, params).ws
    assert torch.allclose(inputs.ws[k + 3] - base[1], 9.0 * unit[1], atol=1e-5)  # image 1, variant 3
    assert torch.equal(inputs.ws[0], base[0])  # the reference variant is w*+ itself
    assert method.stack_variants(inputs.render(G)).shape == (2, 3 * k, G.resolution, G.resolution)
    with pytest.raises(GanInvertError, match="stacked as"):
        image = torch.zeros(1, 3, G.resolution, G.resolution)
        method.init_params(InversionContext(G=G, rngs=[torch.Generator()], measurement=image, image=image))


def test_settings_are_validated() -> None:
    for overrides, fragment in (({"factors": (1.0,)}, "at least 2"), ({"factors": (1.0, 1.0)}, "distinct"),
                                ({"lambda_lpips": 1.0}, "lambda_lpips"), ({"attribute": "hue"}, "unknown attribute"),
                                ({"attribute": "zoom", "factors": (1.0, 0.0)}, "> 0")):
        with pytest.raises(GanInvertError, match=fragment):
            make_method("discover", None, overrides)
    with pytest.raises(GanInvertError, match="stacked as"):
        invert(random_generator(), torch.zeros(1, 3, 16, 16), "discover", settings={"steps": 1}, progress=False)


def test_rotation_discovery_orders_the_alphas(rotation_result) -> None:
    (learned,) = alphas(rotation_result)
    assert learned[0] == 0.0 and 0.0 < learned[1] < learned[2], learned
    assert rotation_result.method == "discover" and rotation_result.settings["attribute"] == "rotation"


def test_traversal_passes_through_the_variant_reconstructions(G, rotation_result) -> None:
    (learned,) = alphas(rotation_result)
    walk = traversal_alphas(learned, per_segment=2)
    assert walk[::2] == pytest.approx(learned) and len(walk) == 5
    frames = traverse(G, rotation_result, walk)
    variants = variant_reconstructions(G, rotation_result)
    assert frames.shape == (5, 1, 3, G.resolution, G.resolution)
    assert torch.allclose(frames[::2, 0], variants[0], atol=1e-5)
    assert rotation_result.render(G).shape == (3, 3, G.resolution, G.resolution)


def test_traversal_alphas_extend_beyond() -> None:
    assert traversal_alphas([0.0, 2.0, 4.0], per_segment=1, beyond=0.5) == [-2.0, 0.0, 2.0, 4.0, 6.0]
    with pytest.raises(GanInvertError):
        traversal_alphas([0.0, 1.0], per_segment=0)


def test_result_round_trip_and_batch_equals_single_runs(tmp_path: Path, G, rotation_result) -> None:
    loaded = InversionResult.load(rotation_result.save(tmp_path / "disc"))
    assert alphas(loaded) == alphas(rotation_result)
    assert torch.equal(loaded.render(G), rotation_result.render(G))
    images = torch.cat([sample(G, 4), sample(G, 5)])
    short = {**QUICK, "steps": 3}
    batch = discover(G, images, "brightness", settings=short, seed=[1, 2], progress=False)
    single = discover(G, images[1:], "brightness", settings=short, seed=2, progress=False)
    for name, tensor in single.params.items():
        assert torch.allclose(batch.params[name][1:], tensor, atol=1e-5), name
    with pytest.raises(GanInvertError, match="discover"):
        alphas(invert(G, images[:1], "w+", settings={"steps": 1, "lambda_lpips": 0}, progress=False))
