"""sam-opt: stages and their variables, the automatic invertibility map, masks (all-zero = w+, masks
beat w+), batch = single runs, SAM's edit rule, label-map files, the feature-block rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganinvert.errors import GanInvertError
from ganinvert.inversion import invert
from ganinvert.inversion.methods import make_method
from ganinvert.inversion.methods.sam import (LeakyGaussianPrior, SamOpt, load_label_map,
                                             masks_from_labels, sam_feature_blocks, select_spaces)
from ganinvert.models.stylegan2 import StyleGAN2Generator
from tests.conftest import assert_resume_matches_uninterrupted, method_context, seeded_generator, state_hash

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
LPIPS_WEIGHTS = SHARED / "weights" / "lpips_alex.pth"
FAST = {"lambda_lpips": 0.0}


def random_generator(seed: int = 0) -> StyleGAN2Generator:
    return seeded_generator(seed=seed)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions run several times faster on one thread when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def G() -> StyleGAN2Generator:
    return random_generator()


@pytest.fixture(scope="module")
def targets() -> torch.Tensor:
    """Smooth random images, out of the random generator's range."""
    coarse = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(7)) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)


@pytest.fixture()
def half_labels(tmp_path) -> str:
    """Left half W+ (0), right half the first feature block (1)."""
    labels = np.zeros((32, 32), dtype=np.int64)
    labels[:, 16:] = 1
    path = tmp_path / "labels.npy"
    np.save(path, labels)
    return str(path)


class RecordingSam(SamOpt):
    """SamOpt that logs every step's tensors (shape, optimised?) and the params around begin_stage."""

    def __init__(self, settings=None) -> None:
        super().__init__(settings)
        self.log: list[dict[str, tuple[tuple[int, ...], bool]]] = []
        self.before_stage: dict[int, dict[str, torch.Tensor]] = {}
        self.after_stage: dict[int, dict[str, torch.Tensor]] = {}

    def begin_stage(self, ctx, params):
        self.before_stage[ctx.stage_index] = {k: v.detach().clone() for k, v in params.items()}
        super().begin_stage(ctx, params)
        self.after_stage[ctx.stage_index] = {k: v.detach().clone() for k, v in params.items()}

    def inputs(self, ctx, params):
        self.log.append({k: (tuple(v.shape), v.requires_grad) for k, v in params.items()})
        return super().inputs(ctx, params)


def optimised(entry: dict[str, tuple[tuple[int, ...], bool]]) -> dict[str, tuple[int, ...]]:
    return {k: shape for k, (shape, grad) in entry.items() if grad}


def test_automatic_map_stages_optimise_exactly_their_variables(G, targets):
    before = state_hash(G)
    m = RecordingSam(SamOpt.Settings(feature_blocks=(1, 2), error_steps=2, steps=2, error_metric="mse",
                                     tau=0.05, **FAST))
    assert [s.name for s in m.stages(G)] == ["invertibility-w+", "invertibility-1", "invertibility-2", "main"]
    result = invert(G, targets, m, progress=False)
    assert state_hash(G) == before
    n, L, d = 2, G.num_ws, G.style_dim
    assert optimised(m.log[0]) == {"probe.w+.latent": (n, L, d)}
    assert optimised(m.log[2]) == {"probe.1.latent": (n, L, d), "probe.1.residual": (n, 32, 8, 8)}
    assert optimised(m.log[4]) == {"probe.2.latent": (n, L, d), "probe.2.residual": (n, 16, 16, 16)}
    assert optimised(m.log[6]) == {"latent": (n, L, d), "residual.1": (n, 32, 8, 8), "residual.2": (n, 16, 16, 16)}
    assert set(m.log[6]) - set(optimised(m.log[6])) == {"mask.1", "mask.2", "labels", "error.w+", "error.1", "error.2"}

    # The main stage starts from the W+ probe with zero residuals; labels follow SAM's selection rule.
    start = m.after_stage[3]
    torch.testing.assert_close(start["latent"], m.before_stage[3]["probe.w+.latent"])
    assert start["residual.1"].abs().max() == 0 and start["residual.2"].abs().max() == 0
    errors = [start[f"error.{s}"] for s in ("w+", "1", "2")]
    assert errors[0].shape == (n, 1, 16, 16)
    labels = select_spaces(errors, 0.05)
    torch.testing.assert_close(result.params["labels"], labels)
    for b, mask in masks_from_labels(G, labels, (1, 2)).items():
        torch.testing.assert_close(result.params[f"mask.{b}"], mask)
    assert not any(k.startswith("probe.") for k in result.params)


def test_select_spaces_takes_the_earliest_space_below_tau():
    errors = [torch.tensor([[0.1, 0.5, 0.5, 0.5]]), torch.tensor([[0.1, 0.1, 0.5, 0.1]]),
              torch.tensor([[0.0, 0.0, 0.3, 0.5]])]
    assert select_spaces(errors, 0.2).tolist() == [[0.0, 1.0, 2.0, 1.0]]
    assert select_spaces(errors, 0.6).tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_all_zero_mask_equals_w_plus(G, targets, tmp_path):
    zeros = tmp_path / "zeros.npy"
    np.save(zeros, np.zeros((32, 32), dtype=np.int64))
    sam = invert(G, targets, "sam-opt", settings={"mask_path": str(zeros), "steps": 8, "lr": 0.05,
                                                  "schedule": "constant", "lambda_mvg": 0.0, "lambda_delta": 0.0,
                                                  **FAST}, progress=False)
    wplus = invert(G, targets, "w+", settings={"steps": 8, "lr": 0.05, **FAST}, progress=False)
    torch.testing.assert_close(sam.params["latent"], wplus.params["latent"], atol=1e-6, rtol=0)
    torch.testing.assert_close(sam.render(G), wplus.render(G), atol=1e-6, rtol=0)
    assert sam.params["residual.2"].abs().max() == 0  # L_F and a zero mask leave it at zero


def test_masked_residuals_reach_higher_psnr_than_w_plus(G, targets, tmp_path):
    ones = tmp_path / "ones.npy"
    np.save(ones, np.ones((32, 32), dtype=np.int64))
    common = {"steps": 20, "lr": 0.05, **FAST}
    sam = invert(G, targets, "sam-opt", settings={"mask_path": str(ones), "schedule": "constant", **common},
                 progress=False)
    wplus = invert(G, targets, "w+", settings=common, progress=False)
    assert sam.history["psnr"][-1] > wplus.history["psnr"][-1] + 1.0


def test_batch_equals_single_runs(G, targets, half_labels):
    """Renders and latents agree within 1e-4. A few residual entries whose gradient starts near 1e-9
    may differ more: batch and single convolutions round differently (~1e-9 here, 30 % of such a
    gradient) and Adam turns those gradients into steps of size lr."""
    steps, lr = 6, 0.01
    settings = {"mask_path": half_labels, "steps": steps, "lr": lr, "schedule": "constant", **FAST}
    batch = invert(G, targets, "sam-opt", settings=settings, seed=[1, 2], progress=False)
    renders = batch.render(G)
    for i, seed in enumerate([1, 2]):
        single = invert(G, targets[i:i + 1], "sam-opt", settings=settings, seed=seed, progress=False)
        torch.testing.assert_close(renders[i:i + 1], single.render(G), atol=1e-4, rtol=0)
        torch.testing.assert_close(batch.params["latent"][i:i + 1], single.params["latent"], atol=1e-4, rtol=0)
        for name in ("labels", "mask.2"):
            assert torch.equal(batch.params[name][i:i + 1], single.params[name])
        diff = (batch.params["residual.2"][i:i + 1] - single.params["residual.2"]).abs()
        assert diff.max() <= steps * lr and (diff > 1e-4).float().mean() < 1e-3


def test_edit_keeps_the_inverted_features_inside_the_masks(G, targets, half_labels):
    result = invert(G, targets[:1], "sam-opt", settings={"mask_path": half_labels, "steps": 3, **FAST},
                    progress=False)
    m, params = result.method_instance(), result.params
    mask = params["mask.2"]
    assert set(mask.unique().tolist()) == {0.0, 1.0} and params["residual.2"].abs().max() > 0
    direction = torch.randn(G.num_ws, G.style_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(m.edit_inputs(G, params, direction, 0.0).render(G), result.render(G),
                                   atol=1e-5, rtol=0)
        edited = m.edit_inputs(G, params, direction, 2.0)
        original = m.render_inputs(G, params)
        features = G.block_features(edited.ws, 2, feature_residuals=edited.feature_residuals).features
        kept = G.block_features(original.ws, 2, feature_residuals=original.feature_residuals).features
        moved = G.block_features(edited.ws, 2).features
    torch.testing.assert_close(features * mask, kept * mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(features * (1 - mask), moved * (1 - mask), atol=1e-5, rtol=0)
    assert (moved - kept).abs().max() > 1e-2  # the edit does change the features


def test_label_map_files(tmp_path):
    png = tmp_path / "labels.png"
    Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8)).save(png)
    assert load_label_map(png, 2, 3).shape == (2, 1, 2, 2)
    npz = tmp_path / "labels.npz"
    np.savez(npz, labels=np.zeros((2, 4, 4)))
    assert load_label_map(npz, 2, 2).shape == (2, 1, 4, 4)
    with pytest.raises(GanInvertError, match="labels in"):
        load_label_map(png, 1, 2)
    np.save(tmp_path / "frac.npy", np.full((4, 4), 0.5))
    with pytest.raises(GanInvertError, match="integers"):
        load_label_map(tmp_path / "frac.npy", 1, 2)
    with pytest.raises(GanInvertError, match=r"\(H, W\)"):
        load_label_map(npz, 3, 2)
    with pytest.raises(GanInvertError, match="not found"):
        load_label_map(tmp_path / "missing.png", 1, 2)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(GanInvertError, match="cannot read"):
        load_label_map(tmp_path / "bad.png", 1, 2)


def test_feature_block_rule():
    expected = {16: (), 32: (2,), 64: (2, 3), 128: (2, 3, 4), 256: (2, 3, 4, 5), 1024: (2, 3, 4, 5)}
    for resolution, blocks in expected.items():
        with torch.device("meta"):
            G = StyleGAN2Generator(resolution, style_dim=8, n_mlp=1, channels={r: 4 for r in (4, 8, 16, 32, 64, 128)})
        assert sam_feature_blocks(G) == blocks
    with pytest.raises(GanInvertError, match="none of SAM's feature blocks"):
        SamOpt().blocks(StyleGAN2Generator(16, style_dim=8, n_mlp=1, channels={4: 4, 8: 4, 16: 4}))


def test_residual_and_mask_shapes(G, targets, half_labels):
    m = SamOpt(SamOpt.Settings(mask_path=half_labels, feature_blocks=(1, 2, 3)))
    params = m.init_params(method_context(G, targets, [torch.Generator() for _ in range(2)]))
    for b in (1, 2, 3):
        assert params[f"residual.{b}"].shape == (2, *G.feature_shape(b))
        assert params[f"mask.{b}"].shape == (2, 1, *G.feature_shape(b)[1:])
    assert params["mask.3"].sum() == 0  # label 3 does not occur in the map


def test_gaussian_prior_sums_over_layers(G):
    prior = LeakyGaussianPrior(G, samples=2000)
    w = G.w_avg + torch.randn(3, G.style_dim, generator=torch.Generator().manual_seed(0))
    one = prior(w[:, None])
    assert (one > 0).all()
    torch.testing.assert_close(prior(G.broadcast(w)), G.num_ws * one)


@pytest.mark.parametrize("bad", [{"error_metric": "ssim"}, {"tau": -1.0}, {"regions": 0}, {"error_steps": 0},
                                 {"feature_blocks": (2, 2)}, {"lambda_f": float("inf")}])
def test_invalid_settings_raise(bad):
    with pytest.raises(GanInvertError):
        make_method("sam-opt", None, bad)


def test_automatic_map_needs_the_image(G):
    with pytest.raises(GanInvertError, match="mask_path"):
        SamOpt().init_params(method_context(G, None, [torch.Generator()]))


@pytest.mark.skipif(not LPIPS_WEIGHTS.is_file(), reason="needs ../shared/weights/lpips_alex.pth")
def test_lpips_error_map(G, targets):
    m = SamOpt(SamOpt.Settings(error_steps=1, steps=1, regions=8, lpips_weights=str(LPIPS_WEIGHTS),
                               **FAST))
    result = invert(G, targets[:1], m, progress=False)
    for space in ("w+", "2"):
        error = result.params[f"error.{space}"]
        assert error.shape == (1, 1, 8, 8) and torch.isfinite(error).all() and (error >= 0).all()


@pytest.mark.parametrize("stop_at", [2, 5])  # at the first stage boundary and inside the main stage
def test_resume_matches_an_uninterrupted_run(G, targets, tmp_path, stop_at):
    settings = {"error_steps": 2, "steps": 3, "error_metric": "mse", "tau": 0.05, **FAST}
    assert_resume_matches_uninterrupted(G, targets[:1], "sam-opt", settings, stop_at, tmp_path / "sam.ckpt")