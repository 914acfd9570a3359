"""Tests of the forward operators: exact matrices, adjointness, seeds, validation, duck typing."""

from __future__ import annotations

import doctest

import pytest
import torch
from PIL import Image

from ganinvert.errors import GanInvertError
from ganinvert.rng import RandomStream, seeded_generator
from ganinvert.tasks import (
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
    OperatorOptions,
    as_operator,
    box_mask,
    make_operator,
    operator_class,
    operator_names,
    random_mask,
    register_operator,
)
from ganinvert.tasks import operators as operators_module


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _assert_one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# ---------------------------------------------------------------- compressed sensing


def test_compressed_sensing_equals_its_dense_matrix():
    shape = (3, 8, 8)
    n = 3 * 8 * 8
    op = CompressedSensing(0.3, seed=5, image_shape=shape)
    m = op.num_measurements
    # The matrix of A, built column by column by applying A to the basis vectors.
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    matrix = op.A(basis).T
    assert matrix.shape == (m, n)

    # The matrix of the definition P_Omega C diag(s), C[i, j] = k[(i - j) mod n].
    k, s = op.kernel.double(), op.signs.double()
    rows = torch.arange(n)[:, None]
    cols = torch.arange(n)[None, :]
    circulant = k[(rows - cols) % n]
    expected = circulant[op.indices] * s[None, :]
    torch.testing.assert_close(matrix, expected, rtol=1e-10, atol=1e-12)

    x = _randn(4, *shape, seed=1, dtype=torch.float64)
    torch.testing.assert_close(op.A(x), x.reshape(4, n) @ expected.T, rtol=1e-10, atol=1e-12)
    y = _randn(4, m, seed=2, dtype=torch.float64)
    torch.testing.assert_close(op.A_adjoint(y), (y @ expected).reshape(4, *shape),
                               rtol=1e-10, atol=1e-12)
    # The float32 path agrees with the matrix too.
    torch.testing.assert_close(op.A(x.float()), (x.reshape(4, n) @ expected.T).float(),
                               rtol=1e-4, atol=1e-5)


def test_compressed_sensing_signs_filter_and_subset_are_as_documented():
    op = CompressedSensing(0.5, seed=0, image_shape=(3, 16, 16))
    assert set(op.signs.unique().tolist()) == {-1.0, 1.0}
    assert op.indices.unique().numel() == op.indices.numel()
    assert bool((op.indices[1:] > op.indices[:-1]).all())
    # Filter entries are N(0, 1/n): the sample variance times n is close to 1.
    assert abs(op.kernel.var().item() * op.signal_size - 1.0) < 0.1


@pytest.mark.parametrize("fraction", [1e-6, 0.01, 0.1, 0.25, 0.5, 0.777, 1.0])
def test_compressed_sensing_keeps_exactly_round_fraction_n(fraction):
    shape = (3, 12, 10)
    n = 3 * 12 * 10
    op = CompressedSensing(fraction, seed=3, image_shape=shape)
    expected = max(1, round(fraction * n))
    assert op.num_measurements == expected
    assert op.indices.numel() == expected
    assert int(op.indices.min()) >= 0 and int(op.indices.max()) < n
    assert op.A(torch.zeros(2, *shape)).shape == (2, expected)


def test_compressed_sensing_measurement_mse_estimates_pixel_mse():
    # The documented scaling: E[(A x)_i^2] = ||x||^2 / n for every fraction.
    x = _randn(1, 3, 16, 16, seed=7)
    pixel_power = x.pow(2).mean().item()
    for fraction in (0.1, 0.5):
        ops = [CompressedSensing(fraction, seed=s, image_shape=(3, 16, 16)) for s in range(40)]
        powers = [op.A(x).pow(2).mean().item() for op in ops]
        ratio = sum(powers) / len(powers) / pixel_power
        assert 0.9 < ratio < 1.1, (fraction, ratio)


def test_compressed_sensing_is_reproducible_from_the_seed():
    shape = (3, 8, 8)
    x = _randn(2, *shape, seed=4)
    a = CompressedSensing(0.2, seed=11, image_shape=shape)
    b = CompressedSensing(0.2, seed=11, image_shape=shape)
    c = CompressedSensing(0.2, seed=12, image_shape=shape)
    assert torch.equal(a.A(x), b.A(x))
    assert not torch.equal(a.indices, c.indices)
    assert not torch.allclose(a.A(x), c.A(x))


def test_compressed_sensing_noise_is_seeded_and_independent_of_the_matrix():
    shape = (3, 8, 8)
    x = _randn(2, *shape, seed=4)
    op = CompressedSensing(0.5, seed=1, image_shape=shape, sigma=0.1)
    assert torch.equal(op(x), op(x))
    noise = op(x) - op.A(x)
    assert 0.08 < noise.std().item() < 0.12
    other = CompressedSensing(0.5, seed=2, image_shape=shape, sigma=0.1)
    assert not torch.allclose(other(x) - other.A(x), noise)
    assert CompressedSensing(0.5, seed=1, image_shape=shape).measurement_as_image(op(x)) is None


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), float("inf"), "half", True])
def test_compressed_sensing_rejects_bad_fractions(fraction):
    with pytest.raises(GanInvertError) as excinfo:
        CompressedSensing(fraction, seed=0, image_shape=(3, 8, 8))
    _assert_one_line_error(excinfo, "fraction", "(0, 1]")


def test_compressed_sensing_rejects_images_and_measurements_of_the_wrong_shape():
    op = CompressedSensing(0.5, seed=0, image_shape=(3, 8, 8))
    with pytest.raises(GanInvertError) as excinfo:
        op.A(torch.zeros(1, 3, 16, 16))
    _assert_one_line_error(excinfo, "(3, 8, 8)", "(3, 16, 16)")
    with pytest.raises(GanInvertError) as excinfo:
        op.A_adjoint(torch.zeros(1, 7))
    _assert_one_line_error(excinfo, "(N, 96)", "(1, 7)")
    with pytest.raises(GanInvertError):
        CompressedSensing(0.5, seed=0, image_shape=(8, 8))
    with pytest.raises(GanInvertError):
        CompressedSensing(0.5, seed=-1, image_shape=(3, 8, 8))


# ---------------------------------------------------------------- adjointness


def _adjointness_cases():
    mask = box_mask(16, box_fraction=0.3, seed=2)
    return {
        "identity": (Identity(), (2, 3, 16, 16)),
        "cs": (CompressedSensing(0.37, seed=9, image_shape=(3, 16, 16)), (2, 3, 16, 16)),
        "cs-full": (CompressedSensing(1.0, seed=9, image_shape=(3, 16, 16)), (2, 3, 16, 16)),
        "downsampling": (Downsampling(4), (2, 3, 16, 16)),
        "inpainting": (Inpainting(mask), (2, 3, 16, 16)),
        "inpainting-rgb-batch": (Inpainting((_randn(2, 3, 16, 16, seed=8) > 0).float()),
                                 (2, 3, 16, 16)),
        "compose": (Compose(Inpainting(mask), Downsampling(2),
                            CompressedSensing(0.5, seed=1, image_shape=(3, 8, 8))), (2, 3, 16, 16)),
    }


@pytest.mark.parametrize("name", list(_adjointness_cases()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adjointness(name, dtype):
    op, shape = _adjointness_cases()[name]
    x = _randn(*shape, seed=1, dtype=dtype)
    y = _randn(*op.A(x).shape, seed=2, dtype=dtype)
    lhs = (op.A(x) * y).sum().item()
    rhs = (x * op.A_adjoint(y)).sum().item()
    assert abs(lhs - rhs) <= 1e-5 * max(abs(lhs), abs(rhs)), (lhs, rhs)
    assert op.A(x).dtype == dtype and op.A_adjoint(y).dtype == dtype


@pytest.mark.parametrize("name", ["cs", "downsampling", "compose"])
def test_autograd_gradient_of_a_is_the_adjoint(name):
    # The engine backpropagates through A: d<A x, y>/dx must be A^T y.
    op, shape = _adjointness_cases()[name]
    x = _randn(*shape, seed=3, dtype=torch.float64).requires_grad_(True)
    y = _randn(*op.A(x).shape, seed=4, dtype=torch.float64)
    (op.A(x) * y).sum().backward()
    torch.testing.assert_close(x.grad, op.A_adjoint(y))


# ---------------------------------------------------------------- denoising


def test_denoising_noise_is_seeded_gaussian_and_clipped():
    x = torch.zeros(2, 3, 32, 32)
    op = Denoising(0.2, seed=0)
    y = op(x)
    assert torch.equal(y, Denoising(0.2, seed=0)(x))
    assert not torch.equal(y, Denoising(0.2, seed=1)(x))
    assert abs(y.std().item() - 0.2) < 0.01 and abs(y.mean().item()) < 0.01
    assert torch.equal(op.A(x), x)
    big = Denoising(1.0, seed=0)(x)
    assert big.min().item() == -1.0 and big.max().item() == 1.0
    unclipped = Denoising(1.0, seed=0, clip=False)(x)
    assert unclipped.abs().max().item() > 1.0
    assert torch.equal(unclipped.clamp(-1, 1), big)
    assert torch.equal(op.measurement_as_image(y), y)


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf"), "0.2"])
def test_denoising_rejects_bad_sigma(sigma):
    with pytest.raises(GanInvertError) as excinfo:
        Denoising(sigma, seed=0)
    _assert_one_line_error(excinfo, "sigma")


def test_forward_rejects_non_images_and_nan():
    op = Denoising(0.1, seed=0)
    with pytest.raises(GanInvertError) as excinfo:
        op(torch.full((1, 3, 4, 4), float("nan")))
    _assert_one_line_error(excinfo, "NaN")
    with pytest.raises(GanInvertError) as excinfo:
        op(torch.zeros(3, 4, 4))
    _assert_one_line_error(excinfo, "(N, C, H, W)", "(3, 4, 4)")
    with pytest.raises(GanInvertError):
        op(torch.zeros(1, 3, 4, 4, dtype=torch.int64))


# ---------------------------------------------------------------- inpainting


def test_inpainting_masks_and_shows_holes_black():
    mask = box_mask(8, box_fraction=0.25, seed=0)
    op = Inpainting(mask)
    x = _randn(2, 3, 8, 8, seed=0)
    y = op(x)
    assert torch.equal(y, mask * x)
    shown = op.measurement_as_image(y)
    assert torch.equal(shown[mask.expand_as(x) == 1], x[mask.expand_as(x) == 1])
    assert bool((shown[mask.expand_as(x) == 0] == -1).all())


def test_inpainting_rejects_masks_of_the_wrong_size():
    op = Inpainting(box_mask((8, 12), box_fraction=0.25, seed=0))
    with pytest.raises(GanInvertError) as excinfo:
        op.A(torch.zeros(1, 3, 16, 16))
    _assert_one_line_error(excinfo, "8x12", "16x16")
    with pytest.raises(GanInvertError) as excinfo:
        Inpainting(torch.ones(2, 1, 8, 8)).A(torch.zeros(3, 3, 8, 8))
    _assert_one_line_error(excinfo, "(2, 1, 8, 8)", "(3, 3, 8, 8)")


@pytest.mark.parametrize("mask, fragment", [
    (torch.full((1, 1, 4, 4), 0.5), "0 or 1"),
    (torch.zeros(1, 1, 4, 4), "no pixel"),
    (torch.ones(4, 4), "(1 or N, 1 or 3, H, W)"),
    (torch.ones(1, 2, 4, 4), "(1 or N, 1 or 3, H, W)"),
    (torch.full((1, 1, 4, 4), float("nan")), "0 or 1"),
])
def test_inpainting_rejects_bad_masks(mask, fragment):
    with pytest.raises(GanInvertError) as excinfo:
        Inpainting(mask)
    _assert_one_line_error(excinfo, fragment)


# ---------------------------------------------------------------- downsampling


def test_downsampling_is_the_block_mean_and_kills_the_nyquist_checkerboard():
    x = _randn(2, 3, 12, 12, seed=0)
    y = Downsampling(3).A(x)
    torch.testing.assert_close(y, x.reshape(2, 3, 4, 3, 4, 3).mean(dim=(3, 5)))
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0
    assert torch.allclose(Downsampling(2).A(checker.expand(1, 3, 8, 8)), torch.zeros(1, 3, 4, 4))
    assert torch.equal(Downsampling(3).measurement_as_image(y), y)


@pytest.mark.parametrize("factor", [0, -2, 2.0, True, "4"])
def test_downsampling_rejects_bad_factors(factor):
    with pytest.raises(GanInvertError) as excinfo:
        Downsampling(factor)
    _assert_one_line_error(excinfo, "factor")


def test_downsampling_factor_must_divide_the_image():
    with pytest.raises(GanInvertError) as excinfo:
        Downsampling(3).A(torch.zeros(1, 3, 16, 16))
    _assert_one_line_error(excinfo, "factor 3", "16x16")
    with pytest.raises(GanInvertError) as excinfo:
        make_operator("sr", factor=3, image_size=256)
    _assert_one_line_error(excinfo, "factor 3", "256x256")


# ---------------------------------------------------------------- composition


def test_compose_applies_left_to_right_with_the_last_operators_noise():
    mask = random_mask(8, keep_fraction=0.5, seed=0)
    x = _randn(1, 3, 8, 8, seed=1)
    op = Compose(Inpainting(mask), Downsampling(2, sigma=0.1, seed=4))
    torch.testing.assert_close(op.A(x), Downsampling(2).A(mask * x))
    torch.testing.assert_close(op(x), Downsampling(2, sigma=0.1, seed=4)(mask * x))
    assert op.measurement_as_image(op(x)).shape == (1, 3, 4, 4)
    cs_last = Compose(Downsampling(2), CompressedSensing(0.5, seed=0, image_shape=(3, 4, 4)))
    assert cs_last.measurement_as_image(cs_last(x)) is None


def test_compose_rejects_noise_before_the_last_operator_and_emptiness():
    with pytest.raises(GanInvertError) as excinfo:
        Compose(Denoising(0.1, seed=0), Downsampling(2))
    _assert_one_line_error(excinfo, "last operator", "Denoising")
    with pytest.raises(GanInvertError):
        Compose()


# ---------------------------------------------------------------- duck typing


class _MatrixPhysics:
    """A minimal deepinv-style operator: a dense matrix with A and A_adjoint, nothing else."""

    def __init__(self, n: int, m: int) -> None:
        self.matrix = _randn(m, n, seed=42, dtype=torch.float64)

    def A(self, x):  # noqa: N802
        return x.flatten(1) @ self.matrix.T

    def A_adjoint(self, y):  # noqa: N802
        return (y @ self.matrix).reshape(y.shape[0], 3, 4, 4)


def test_deepinv_style_objects_are_usable_as_operators():
    physics = _MatrixPhysics(n=3 * 4 * 4, m=10)
    op = as_operator(physics)
    assert isinstance(op, ForwardOperator) and isinstance(op, LinearOperator)
    x = _randn(2, 3, 8, 8, seed=0, dtype=torch.float64)
    small = Downsampling(2).A(x)
    torch.testing.assert_close(op(small), physics.A(small))  # no forward: the measurement is A
    assert op.measurement_as_image(op(small)) is None
    composed = Compose(Downsampling(2), physics)
    y = _randn(2, 10, seed=1, dtype=torch.float64)
    lhs = (composed.A(x) * y).sum()
    rhs = (x * composed.A_adjoint(y)).sum()
    torch.testing.assert_close(lhs, rhs)
    assert as_operator(op) is op


def test_foreign_forward_and_missing_methods():
    class NoisyPhysics:
        def A(self, x):  # noqa: N802
            return 3 * x

        def forward(self, x):
            return 3 * x + 1

    op = as_operator(NoisyPhysics())
    assert op(torch.zeros(1)).item() == 1.0 and op.A(torch.ones(1)).item() == 3.0
    with pytest.raises(GanInvertError) as excinfo:
        op.A_adjoint(torch.zeros(1))
    _assert_one_line_error(excinfo, "NoisyPhysics", "A_adjoint")
    with pytest.raises(GanInvertError) as excinfo:
        as_operator(lambda x: x)
    _assert_one_line_error(excinfo, "no A(x) method")


# ---------------------------------------------------------------- factory


def test_make_operator_builds_each_task(tmp_path):
    assert isinstance(make_operator("denoise", sigma=0.3, seed=2), Denoising)
    cs = make_operator("cs", fraction=0.1, image_size=(16, 8), seed=2, sigma=0.05)
    assert isinstance(cs, CompressedSensing) and cs.image_shape == (3, 16, 8) and cs.sigma == 0.05
    sr = make_operator("sr", factor=4, image_size=32)
    assert isinstance(sr, Downsampling) and sr.factor == 4
    mask_path = tmp_path / "mask.png"
    pixels = torch.zeros(16, 16, dtype=torch.uint8)
    pixels[:, :8] = 255
    Image.fromarray(pixels.numpy()).save(mask_path)
    inpaint = make_operator("inpaint", mask=mask_path, image_size=16)
    assert isinstance(inpaint, Inpainting)
    assert inpaint.mask[..., :8].eq(1).all() and inpaint.mask[..., 8:].eq(0).all()
    resized = make_operator("inpaint", mask=str(mask_path), image_size=8, resize_mask=True)
    assert resized.mask.shape == (1, 1, 8, 8)
    tensor_mask = make_operator("inpaint", mask=torch.ones(1, 1, 4, 4))
    assert tensor_mask.mask.shape == (1, 1, 4, 4)


@pytest.mark.parametrize("task, kwargs, fragments", [
    ("deblur", {}, ("unknown task 'deblur'", "denoise, cs, inpaint, sr")),
    ("denoise", {}, ("'denoise' needs --sigma",)),
    ("cs", {"image_size": 16}, ("'cs' needs --fraction",)),
    ("cs", {"fraction": 0.1}, ("'cs' needs --image-size",)),
    ("inpaint", {}, ("'inpaint' needs --mask",)),
    ("sr", {}, ("'sr' needs --factor",)),
    ("denoise", {"sigma": 0.1, "factor": 2}, ("--factor is for task 'sr'",)),
    ("sr", {"factor": 2, "fraction": 0.5}, ("--fraction is for task 'cs'",)),
    ("cs", {"fraction": 0.1, "image_size": 16, "mask": "m.png"}, ("--mask is for task 'inpaint'",)),
    ("cs", {"fraction": 2.0, "image_size": 16}, ("(0, 1]",)),
])
def test_make_operator_rejects_bad_options(task, kwargs, fragments):
    with pytest.raises(GanInvertError) as excinfo:
        make_operator(task, **kwargs)
    _assert_one_line_error(excinfo, *fragments)


def test_make_operator_rejects_the_resize_mask_flag_outside_inpainting():
    with pytest.raises(GanInvertError) as excinfo:
        make_operator("sr", factor=2, resize_mask=True)
    _assert_one_line_error(excinfo, "--resize-mask is for task 'inpaint'", "not 'sr'")


def test_measured_denoising_needs_no_sigma_and_measured_cs_is_refused():
    op = make_operator("denoise", seed=4, measured=True)
    assert isinstance(op, Denoising) and op.sigma == 0.0 and op.seed == 4
    assert make_operator("denoise", sigma=0.2, measured=True).sigma == 0.2
    for build in (lambda: make_operator("cs", fraction=0.5, image_size=8, measured=True),
                  lambda: operator_class("cs", measured=True)):
        with pytest.raises(GanInvertError) as excinfo:
            build()
        _assert_one_line_error(excinfo, "compressed sensing measurements are not images",
                               "--measured works for denoise, inpaint and sr")
    assert operator_class("sr", measured=True) is Downsampling


# ---------------------------------------------------------------- registry


def test_the_registry_is_the_single_list_of_tasks():
    assert operator_names() == ("denoise", "cs", "inpaint", "sr")
    assert {name: cls.name for name, cls in OPERATORS.items()} == {name: name for name in operator_names()}
    assert operators_module.operator_help() == (
        "denoise: Gaussian noise; cs: compressed sensing; inpaint: masked pixels; sr: super-resolution.")
    with pytest.raises(GanInvertError) as excinfo:
        operator_class("deblur")
    _assert_one_line_error(excinfo, "unknown task 'deblur'", "denoise, cs, inpaint, sr")


@pytest.mark.parametrize("name", [name for name, cls in OPERATORS.items() if cls.linear])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_every_registered_linear_operator_passes_the_adjointness_test(name, dtype, tolerance):
    op = OPERATORS[name].example(16, seed=3)
    assert isinstance(op, OPERATORS[name])
    for trial in range(3):
        gap = op.adjointness_test((2, 3, 16, 16), torch.Generator().manual_seed(trial), dtype=dtype)
        assert 0.0 <= gap < tolerance, (name, trial, gap)


def test_adjointness_test_finds_a_wrong_adjoint_and_is_seeded():
    class Unnormalised(Downsampling):
        def A_adjoint(self, y):  # noqa: N802  (the classic slip: spreads without dividing by factor**2)
            return y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)

    good, bad = Downsampling(2), Unnormalised(2)
    assert bad.adjointness_test((1, 3, 8, 8), torch.Generator().manual_seed(0)) == pytest.approx(0.75)
    gaps = [good.adjointness_test((1, 3, 8, 8), torch.Generator().manual_seed(5)) for _ in range(2)]
    assert gaps[0] == gaps[1] < 1e-12


def test_a_new_operator_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(operators_module, "OPERATORS", dict(OPERATORS))

    @register_operator
    class Scaling(Identity):
        """A toy task: y = gain * x, with the gain given as --factor."""

        name = "scale"
        summary = "brightness scaling"
        own_options = ("factor",)

        def __init__(self, gain: int, *, sigma: float = 0.0, seed: int = 0) -> None:
            super().__init__(GaussianNoise(sigma, seed), seed=seed)
            self.gain = gain

        @classmethod
        def _from_checked_options(cls, options: OperatorOptions) -> Scaling:
            return cls(cls._required(options, "factor"), sigma=options.noise_sigma, seed=options.seed)

        @classmethod
        def example(cls, image_size: int, seed: int = 0) -> Scaling:
            return cls(3, seed=seed)

        def A(self, x):  # noqa: N802
            return self.gain * x

        def A_adjoint(self, y):  # noqa: N802
            return self.gain * y

    assert operator_names()[-1] == "scale"
    op = make_operator("scale", factor=2, sigma=0.1, seed=1)
    assert isinstance(op, Scaling) and op.gain == 2 and op.sigma == 0.1
    with pytest.raises(GanInvertError) as excinfo:  # --factor now has two owners
        make_operator("denoise", sigma=0.1, factor=2)
    _assert_one_line_error(excinfo, "--factor is for task 'sr' or 'scale', not 'denoise'")
    with pytest.raises(GanInvertError) as excinfo:
        make_operator("scale")
    _assert_one_line_error(excinfo, "task 'scale' needs --factor")
    with pytest.raises(ValueError, match="already registered"):
        register_operator(Scaling)


# ---------------------------------------------------------------- noise model


def test_the_noise_model_is_separate_and_draws_the_seeded_stream():
    x = _randn(2, 3, 8, 8, seed=0).clamp(-1, 1)
    noise = torch.randn(x.shape, generator=seeded_generator(5, RandomStream.MEASUREMENT_NOISE))
    op = Downsampling(1, sigma=0.3, seed=5)
    assert isinstance(op.noise_model, GaussianNoise) and op.sigma == 0.3
    assert torch.equal(op(x), x + 0.3 * noise)
    assert torch.equal(Denoising(0.3, seed=5)(x), (x + 0.3 * noise).clamp(-1, 1))
    op.noise_model = GaussianNoise(0.0)  # swapping the noise model leaves A alone
    assert torch.equal(op(x), x) and op.sigma == 0.0
    with pytest.raises(GanInvertError) as excinfo:
        GaussianNoise(-1.0)
    _assert_one_line_error(excinfo, "sigma")


# ---------------------------------------------------------------- measurements read from files


def test_measurement_size_and_measurement_from_image():
    x = _randn(1, 3, 8, 8, seed=2)
    assert Denoising(0.1, seed=0).measurement_size(32) == 32
    assert Downsampling(4).measurement_size(32) == 8
    with pytest.raises(GanInvertError) as excinfo:
        Downsampling(3).measurement_size(32)
    _assert_one_line_error(excinfo, "--factor 3", "32 px")
    mask = box_mask(8, 0.25, seed=1)
    assert torch.equal(Inpainting(mask).measurement_from_image(x), mask * x)
    assert torch.equal(Downsampling(2).measurement_from_image(x), x)
    composed = Compose(Downsampling(2), Inpainting(box_mask(4, 0.25, seed=1)))
    assert composed.measures_image and composed.measurement_size(8) == 4
    small = x[..., :4, :4]
    assert torch.equal(composed.measurement_from_image(small), box_mask(4, 0.25, seed=1) * small)
    for op, kind in ((CompressedSensing(0.5, seed=0, image_shape=(3, 8, 8)), "compressed sensing"),
                     (as_operator(_MatrixPhysics(48, 10)), "_MatrixPhysics"),
                     (Compose(Downsampling(2), CompressedSensing(0.5, seed=0, image_shape=(3, 4, 4))),
                      "compressed sensing")):
        assert not op.measures_image
        with pytest.raises(GanInvertError) as excinfo:
            op.measurement_size(8)
        _assert_one_line_error(excinfo, f"{kind} measurements are not images")


def test_docstring_examples():
    result = doctest.testmod(operators_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
