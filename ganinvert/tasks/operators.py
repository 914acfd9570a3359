"""Forward operators (measurement models) of the restoration tasks, and their registry.

An operator maps images ``x`` of shape ``(N, C, H, W)`` on the ``[-1, 1]`` scale to
measurements ``y``. The interface is deepinv's ``Physics`` (``physics/forward.py``), so either
kind can be used where the other is expected:

* ``A(x)``: the noise-free measurement, differentiable in ``x``; an inversion minimises
  ``L(A(G(theta)), y)``;
* ``A_adjoint(y)``: the exact adjoint of the (linear) ``A``, checked by ``adjointness_test``;
* ``noise_model``: kept apart from ``A``, as in deepinv: :class:`GaussianNoise` of std ``sigma``
  drawn from the operator's seed, so the same seed gives the same measurement;
* ``forward(x)``, i.e. ``op(x)``: the measurement as observed, ``noise_model(A(x))``;
* ``measurement_as_image(y)``: ``y`` as an image to show, or ``None`` when it is not one.

The operators of the CLI tasks are registered in :data:`OPERATORS` by task name; each builds
itself from the CLI-level options (:class:`OperatorOptions`) and validates them, so a new task
is one class decorated with :func:`register_operator`. :func:`make_operator` builds one by
name and :func:`as_operator` wraps any object with an ``A`` method (e.g. a deepinv ``Physics``).

Example (super-resolution by 4 of a batch of 256x256 images)::

    op = make_operator("sr", factor=4, image_size=256)
    y = op(x)                                # (N, 3, 64, 64) observation
    loss = F.mse_loss(op.A(G(theta)), y)     # what the inversion engine minimises
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_finite
from ..errors import GanInvertError
from ..rng import RandomStream, check_seed, seeded_generator
from .masks import load_mask, random_mask, size_hw


@runtime_checkable
class Operator(Protocol):
    """What the inversion engine needs from a measurement model."""

    def A(self, x: Tensor) -> Tensor: ...  # noqa: N802 (deepinv's name)

    def forward(self, x: Tensor) -> Tensor: ...

    def measurement_as_image(self, y: Tensor) -> Tensor | None: ...

    def __call__(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class LinearOperator(Operator, Protocol):
    """An :class:`Operator` with the exact adjoint of ``A``."""

    def A_adjoint(self, y: Tensor) -> Tensor: ...  # noqa: N802 (deepinv's name)


def _is_real(value: Any) -> bool:
    """A Python or numpy real number (bools excluded: ``True`` is no sigma)."""
    return not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))


def _is_positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def _check_sigma(sigma: float) -> float:
    if not _is_real(sigma) or not math.isfinite(sigma) or sigma < 0:
        raise GanInvertError(f"noise sigma must be a finite number >= 0, got {sigma!r}")
    return float(sigma)


def _check_image(x: Any, what: str = "image") -> None:
    """Shape/dtype check cheap enough for every optimisation step (no device sync)."""
    if not isinstance(x, Tensor):
        raise GanInvertError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise GanInvertError(f"{what} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise GanInvertError(f"{what} must be a floating-point tensor, got {x.dtype}")


def _working_dtype(x: Tensor) -> torch.dtype:
    """float32 at least: torch.fft has no half-precision path for arbitrary lengths."""
    return torch.promote_types(x.dtype, torch.float32)


def _check_divisible(height: int, width: int, factor: int) -> None:
    if height % factor or width % factor:
        raise GanInvertError(
            f"downsampling factor {factor} does not divide the image size {height}x{width}")


def _option_flag(option: str) -> str:
    return "--" + option.replace("_", "-")


@dataclass(frozen=True)
class OperatorOptions:
    """The CLI-level options an operator is built from; ``None`` means "option not given".

    Attributes:
        image_size: ``S`` or ``(H, W)`` of the images, normalised to ``(H, W)``.
        sigma: std of the measurement noise (required for denoising, else 0 by default).
        fraction: compressed sensing's kept fraction of measurements.
        mask: inpainting mask, a tensor or an image file (:func:`~ganinvert.tasks.masks.load_mask`).
        resize_mask: resize a mask file of another size to ``image_size``.
        factor: super-resolution's downsampling factor.
        seed: seeds every random draw of the operator (noise, compressed-sensing matrix).
        measured: the measurements are read from image files rather than simulated.
    """

    image_size: int | Sequence[int] | None = None
    sigma: float | None = None
    fraction: float | None = None
    mask: Tensor | str | os.PathLike[str] | None = None
    resize_mask: bool = False
    factor: int | None = None
    seed: int = 0
    measured: bool = False

    def __post_init__(self) -> None:
        if self.image_size is not None:
            object.__setattr__(self, "image_size", size_hw(self.image_size))

    @property
    def noise_sigma(self) -> float:
        """``sigma``, 0 when not given: the optional noise of the tasks that are not denoising."""
        return 0.0 if self.sigma is None else self.sigma

    def given(self, option: str) -> bool:
        """Whether ``option`` was set (differs from its default)."""
        value, default = getattr(self, option), _OPTION_DEFAULTS[option]
        return value is not None if default is None else value != default


_OPTION_DEFAULTS = {f.name: f.default for f in dataclasses.fields(OperatorOptions)}


class GaussianNoise(nn.Module):
    """The noise model ``y + sigma * n``, ``n`` standard normal, optionally clipped to ``[-1, 1]``.

    ``n`` is redrawn identically on every call from the ``MEASUREMENT_NOISE`` stream of ``seed``,
    on the CPU in float32, so that a seed gives the same noise on every device.

    Args:
        sigma: std of the noise, on the scale of the measurements; 0 for noise-free measurements.
        seed: seed of the noise.
        clip: clip the noisy measurement to the image range ``[-1, 1]`` (a saturating sensor).

    >>> noise = GaussianNoise(0.5, seed=3)
    >>> y = torch.zeros(1, 3, 4, 4)
    >>> bool(torch.equal(noise(y), noise(y)))
    True
    """

    def __init__(self, sigma: float = 0.0, seed: int = 0, *, clip: bool = False) -> None:
        super().__init__()
        self.sigma = _check_sigma(sigma)
        self.seed = check_seed(seed)
        self.clip = clip

    def forward(self, y: Tensor) -> Tensor:
        if self.sigma != 0.0:
            generator = seeded_generator(self.seed, RandomStream.MEASUREMENT_NOISE)
            noise = torch.randn(y.shape, generator=generator, dtype=torch.float32)
            y = y + self.sigma * noise.to(device=y.device, dtype=y.dtype)
        return y.clamp(-1.0, 1.0) if self.clip else y

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, seed={self.seed}" + (", clip=True" if self.clip else "")


_OperatorT = TypeVar("_OperatorT", bound="ForwardOperator")


class ForwardOperator(nn.Module, abc.ABC):
    """Base class: a noise-free ``A``, its adjoint, and a separate noise model used by ``forward``.

    Subclasses registered with :func:`register_operator` set the class attributes below and
    implement :meth:`_from_checked_options` and :meth:`example`.

    Args:
        noise_model: the noise added by ``forward``; noise-free by default.
        seed: the operator's seed (of its random draws, e.g. a compressed-sensing matrix).
    """

    #: Registry name, the CLI's ``--task`` choice; ``None`` for unregistered operators.
    name: ClassVar[str | None] = None
    #: A few words on the task for the CLI help and error messages ("compressed sensing").
    summary: ClassVar[str] = ""
    #: The task-specific :class:`OperatorOptions` fields this operator reads; giving one of them
    #: to another operator is an error rather than silently ignored.
    own_options: ClassVar[tuple[str, ...]] = ()
    #: Whether the measurements are images (they can be shown, and read from a file).
    measures_image: ClassVar[bool] = True
    #: Whether ``A`` is linear with an exact ``A_adjoint``.
    linear: ClassVar[bool] = True

    def __init__(self, noise_model: GaussianNoise | None = None, *, seed: int = 0) -> None:
        super().__init__()
        self.seed = check_seed(seed)
        self.noise_model = GaussianNoise(0.0, seed) if noise_model is None else noise_model

    @property
    def sigma(self) -> float:
        """std of the measurement noise (0 for noise-free measurements)."""
        return self.noise_model.sigma

    # -- building from CLI options ---------------------------------------------------------------
    @classmethod
    def from_options(cls: type[_OperatorT], options: OperatorOptions) -> _OperatorT:
        """Build the operator from CLI-level options, rejecting the options of other operators."""
        for field in dataclasses.fields(OperatorOptions):
            option = field.name
            owners = [c.name for c in OPERATORS.values() if option in c.own_options]
            if owners and option not in cls.own_options and options.given(option):
                raise GanInvertError(f"{_option_flag(option)} is for task "
                                     f"{' or '.join(repr(o) for o in owners)}, not {cls.name!r}")
        if options.measured:
            cls._check_measurable()
        return cls._from_checked_options(options)

    @classmethod
    def _from_checked_options(cls: type[_OperatorT], options: OperatorOptions) -> _OperatorT:
        """Build from options that hold no other operator's option (registered operators only)."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from CLI options")

    @classmethod
    def _required(cls, options: OperatorOptions, option: str) -> Any:
        value = getattr(options, option)
        if value is None:
            raise GanInvertError(f"task {cls.name!r} needs {_option_flag(option)}")
        return value

    @classmethod
    def _check_measurable(cls) -> None:
        if not cls.measures_image:
            raise _not_images(cls.summary or cls.__name__)

    @classmethod
    def example(cls: type[_OperatorT], image_size: int, seed: int = 0) -> _OperatorT:
        """A representative instance for ``image_size`` px RGB images (``image_size`` even), for
        tests that cover every registered operator."""
        raise NotImplementedError(f"{cls.__name__} has no example")

    # -- the measurement model -------------------------------------------------------------------
    @abc.abstractmethod
    def A(self, x: Tensor) -> Tensor:  # noqa: N802 (deepinv's name)
        """The noise-free measurement of ``x``."""

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802 (deepinv's name)
        """The adjoint of ``A``; only linear operators have one."""
        raise GanInvertError(f"{type(self).__name__} is not linear: it has no adjoint")

    def forward(self, x: Tensor) -> Tensor:
        """The observed measurement ``noise_model(A(x))``, reproducible from the seed."""
        _check_image(x)
        check_finite(x)
        return self.noise_model(self.A(x))

    def adjointness_test(self, x_shape: Sequence[int], generator: torch.Generator,
                         dtype: torch.dtype = torch.float64) -> float:
        """How far ``A_adjoint`` is from the adjoint of ``A``: for ``x`` of shape ``x_shape`` and
        ``y`` of the shape of ``A(x)``, both standard normal from ``generator``, the relative gap

            |<A x, y> - <x, A^T y>| / max(|<A x, y>|, |<x, A^T y>|),

        0 for an exact adjoint up to rounding (about 1e-15 in float64).

        >>> Downsampling(2).adjointness_test((1, 3, 4, 4), torch.Generator().manual_seed(0)) < 1e-12
        True
        """
        device = next((b.device for b in self.buffers()), torch.device("cpu"))
        with torch.no_grad():
            x = torch.randn(tuple(x_shape), generator=generator, dtype=dtype, device=generator.device)
            x = x.to(device)
            ax = self.A(x)
            y = torch.randn(ax.shape, generator=generator, dtype=dtype, device=generator.device).to(device)
            lhs = float((ax * y).sum())
            rhs = float((x * self.A_adjoint(y)).sum())
        scale = max(abs(lhs), abs(rhs))
        return abs(lhs - rhs) / scale if scale > 0 else 0.0

    # -- measurements as images ------------------------------------------------------------------
    def measurement_as_image(self, y: Tensor) -> Tensor | None:
        """``y`` as an ``(N, C, h, w)`` image to show (not clamped), or ``None``."""
        return None

    def measurement_size(self, resolution: int) -> int:
        """The side of the measurement image of a ``resolution`` px image, to read a measured ``y``
        from a file; an error when the measurements are not images."""
        if not self.measures_image:
            raise _not_images(self.summary or type(self).__name__)
        return resolution

    def measurement_from_image(self, image: Tensor) -> Tensor:
        """The measurement ``y`` held by an image read from a file (at :meth:`measurement_size`)."""
        return image


def _not_images(kind: str) -> GanInvertError:
    *others, last = [name for name, cls in OPERATORS.items() if cls.measures_image]
    listed = f"{', '.join(others)} and {last}" if others else last
    return GanInvertError(f"{kind} measurements are not images; --measured works for {listed}")


#: The operators of the CLI tasks by name (the ``--task`` choices), in registration order.
OPERATORS: dict[str, type[ForwardOperator]] = {}

_RegisteredT = TypeVar("_RegisteredT", bound=type[ForwardOperator])


def register_operator(cls: _RegisteredT) -> _RegisteredT:
    """Class decorator: add ``cls`` to :data:`OPERATORS` under ``cls.name``."""
    if not cls.name or cls.name in OPERATORS:
        raise ValueError(f"operator name {cls.name!r} is missing or already registered")
    OPERATORS[cls.name] = cls
    return cls


def operator_names() -> tuple[str, ...]:
    """The registered task names, e.g. for the CLI's ``--task`` choices."""
    return tuple(OPERATORS)


def operator_help() -> str:
    """One line describing every task, e.g. ``"denoise: Gaussian noise; cs: compressed sensing; …"``."""
    return "; ".join(f"{name}: {cls.summary}" for name, cls in OPERATORS.items()) + "."


def operator_class(task: str, *, measured: bool = False) -> type[ForwardOperator]:
    """The operator class of ``task``; an error for an unknown task, or with ``measured`` for a
    task whose measurements are not images (checks that need no image size, for a CLI to run
    before loading anything heavy)."""
    cls = OPERATORS.get(task)
    if cls is None:
        raise GanInvertError(f"unknown task {task!r}; choose one of {', '.join(OPERATORS)}")
    if measured:
        cls._check_measurable()
    return cls


class Identity(ForwardOperator):
    """``A(x) = x``; its measurement is the image itself.

    >>> x = torch.zeros(1, 3, 4, 4)
    >>> bool(torch.equal(Identity()(x), x))
    True
    """

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        _check_image(x)
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        _check_image(y, "measurement")
        return y

    def measurement_as_image(self, y: Tensor) -> Tensor | None:
        return y


@register_operator
class Denoising(Identity):
    """Additive white Gaussian noise: ``y = clip(x + sigma * n, -1, 1)``, ``A`` the identity.

    ``sigma`` is on the ``[-1, 1]`` image scale, and the noisy image is clipped back to it, as in
    SPHInX (``utils.add_noise``, ``main.py --ops_fac``; its denoising study sweeps sigma from
    0.2 to 1.0). Set ``clip=False`` for the plain Gaussian model ``y = x + sigma * n``.

    >>> op = Denoising(sigma=0.5, seed=3)
    >>> x = torch.zeros(1, 3, 8, 8)
    >>> bool(torch.equal(op(x), op(x)))   # the same seed gives the same noisy image
    True
    """

    name = "denoise"
    summary = "Gaussian noise"

    def __init__(self, sigma: float, seed: int, *, clip: bool = True) -> None:
        super().__init__(GaussianNoise(sigma, seed, clip=clip), seed=seed)

    @property
    def clip(self) -> bool:
        return self.noise_model.clip

    @classmethod
    def _from_checked_options(cls, options: OperatorOptions) -> Denoising:
        # A is the identity, so the noise level never enters an inversion of measured images.
        if options.measured and options.sigma is None:
            return cls(0.0, options.seed)
        return cls(cls._required(options, "sigma"), options.seed)

    @classmethod
    def example(cls, image_size: int, seed: int = 0) -> Denoising:
        return cls(0.1, seed)


@register_operator
class CompressedSensing(ForwardOperator):
    """Partial circulant compressed sensing, the measurement of ILO and SPHInX.

    With ``x`` flattened to ``n = C * H * W`` entries::

        A(x) = P_Omega( k (*) (s . x) )

    where ``s`` are random signs (+-1), ``(*)`` is circular convolution with a random Gaussian
    filter ``k`` (computed with ``torch.fft``; no dense matrix is ever formed) and ``P_Omega``
    keeps a random subset of ``m = max(1, round(fraction * n))`` entries (Python ``round``), in
    increasing index order. This is ILO's ``utils.partial_circulant_torch`` (also in SPHInX's
    ``utils.py``), whose signs, filter and subset come from the same distributions (ILO takes
    ``m = int(fraction * n)``).

    Scaling: the filter entries are N(0, 1/n) (ILO uses N(0, 1)). Then every measurement has
    ``E[(A x)_i^2] = ||x||^2 / n``, the mean squared pixel value, so the mean squared error of
    the measurements is an unbiased estimate of the pixel MSE at every ``fraction``: MSE loss
    weights tuned on images carry over, and ``sigma`` is on the same scale as pixel noise.
    (deepinv's dense ``CompressedSensing`` divides by ``sqrt(n) + sqrt(m)``, close to this.)

    Args:
        fraction: kept fraction of the n entries, in (0, 1].
        seed: seed of the signs, filter and subset (and, on another stream, of the noise).
        image_shape: ``(C, H, W)`` of the images.
        sigma: std of the additive measurement noise.

    >>> op = CompressedSensing(0.25, seed=0, image_shape=(3, 8, 8))
    >>> op.A(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 48])
    """

    name = "cs"
    summary = "compressed sensing"
    own_options = ("fraction",)
    measures_image = False

    def __init__(self, fraction: float, seed: int, image_shape: Sequence[int], *,
                 sigma: float = 0.0) -> None:
        super().__init__(GaussianNoise(sigma, seed), seed=seed)
        if not _is_real(fraction) or not 0.0 < fraction <= 1.0:  # NaN fails the comparison too
            raise GanInvertError(f"compressed-sensing fraction must be in (0, 1], got {fraction!r}")
        shape = tuple(image_shape)
        if len(shape) != 3 or not all(_is_positive_int(v) for v in shape):
            raise GanInvertError(
                f"image_shape must be (C, H, W) of positive integers, got {image_shape!r}")
        self.fraction = float(fraction)
        self.image_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.signal_size = math.prod(self.image_shape)
        self.num_measurements = max(1, round(self.fraction * self.signal_size))

        n = self.signal_size
        generator = seeded_generator(self.seed, RandomStream.COMPRESSED_SENSING)
        signs = torch.randint(0, 2, (n,), generator=generator).mul_(2).sub_(1).float()
        kernel = torch.randn(n, generator=generator) / math.sqrt(n)
        indices = torch.randperm(n, generator=generator)[: self.num_measurements].sort().values
        # Not persistent: the operator is rebuilt from its seed, never loaded from a checkpoint.
        self.register_buffer("signs", signs, persistent=False)
        self.register_buffer("kernel", kernel, persistent=False)
        self.register_buffer("indices", indices, persistent=False)

    @classmethod
    def _from_checked_options(cls, options: OperatorOptions) -> CompressedSensing:
        height, width = cls._required(options, "image_size")
        return cls(cls._required(options, "fraction"), options.seed, (3, height, width), sigma=options.noise_sigma)

    @classmethod
    def example(cls, image_size: int, seed: int = 0) -> CompressedSensing:
        return cls(0.37, seed, (3, image_size, image_size))

    def _kernel_spectrum(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.fft.rfft(self.kernel.to(device=device, dtype=dtype))

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        """``(N, C, H, W)`` images to ``(N, m)`` measurements."""
        _check_image(x)
        if tuple(x.shape[1:]) != self.image_shape:
            raise GanInvertError(f"compressed sensing was built for images of shape "
                                 f"{self.image_shape}, got {tuple(x.shape[1:])}")
        dtype, n = _working_dtype(x), self.signal_size
        signed = x.reshape(x.shape[0], n).to(dtype) * self.signs.to(device=x.device, dtype=dtype)
        spectrum = self._kernel_spectrum(dtype, x.device)
        convolved = torch.fft.irfft(torch.fft.rfft(signed) * spectrum, n=n)
        return convolved[:, self.indices.to(x.device)].to(x.dtype)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        """``(N, m)`` measurements to ``(N, C, H, W)``: zero-fill, correlate with k, re-sign."""
        if not isinstance(y, Tensor) or y.ndim != 2 or y.shape[1] != self.num_measurements:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise GanInvertError(f"compressed-sensing measurements must have shape "
                                 f"(N, {self.num_measurements}), got {got}")
        dtype, n = _working_dtype(y), self.signal_size
        filled = torch.zeros(y.shape[0], n, dtype=dtype, device=y.device)
        filled = filled.index_copy(1, self.indices.to(y.device), y.to(dtype))
        # The transpose of a circulant matrix is the circulant of the conjugate spectrum.
        spectrum = self._kernel_spectrum(dtype, y.device).conj()
        correlated = torch.fft.irfft(torch.fft.rfft(filled) * spectrum, n=n)
        signed = correlated * self.signs.to(device=y.device, dtype=dtype)
        return signed.reshape(y.shape[0], *self.image_shape).to(y.dtype)

    def extra_repr(self) -> str:
        return (f"fraction={self.fraction}, m={self.num_measurements}, n={self.signal_size}, "
                f"image_shape={self.image_shape}, seed={self.seed}")


@register_operator
class Inpainting(ForwardOperator):
    """``A(x) = mask * x``: only the pixels where ``mask`` is 1 are observed (self-adjoint).

    Args:
        mask: ``(1 or N, 1 or C, H, W)`` tensor of 0 and 1 (1 = observed), e.g. from
            :func:`~ganinvert.tasks.masks.load_mask` or :func:`~ganinvert.tasks.masks.box_mask`.
        sigma, seed: measurement noise (see :class:`GaussianNoise`).

    >>> from ganinvert.tasks.masks import box_mask
    >>> op = Inpainting(box_mask(8, box_fraction=0.25, seed=0))
    >>> float(op.A(torch.ones(1, 3, 8, 8)).mean())
    0.75
    """

    name = "inpaint"
    summary = "masked pixels"
    own_options = ("mask", "resize_mask")

    def __init__(self, mask: Tensor, *, sigma: float = 0.0, seed: int = 0) -> None:
        super().__init__(GaussianNoise(sigma, seed), seed=seed)
        if not isinstance(mask, Tensor) or mask.ndim != 4 or mask.shape[1] not in (1, 3):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise GanInvertError(f"mask must have shape (1 or N, 1 or 3, H, W), got {got}")
        mask = mask.float()
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise GanInvertError("mask values must be 0 or 1 (1 = observed)")
        if not bool(mask.any()):
            raise GanInvertError("mask observes no pixel (it is all zeros)")
        self.register_buffer("mask", mask, persistent=False)

    @classmethod
    def _from_checked_options(cls, options: OperatorOptions) -> Inpainting:
        mask = cls._required(options, "mask")
        if not isinstance(mask, Tensor):
            mask = load_mask(mask, options.image_size, resize=options.resize_mask)
        return cls(mask, sigma=options.noise_sigma, seed=options.seed)

    @classmethod
    def example(cls, image_size: int, seed: int = 0) -> Inpainting:
        return cls(random_mask(image_size, keep_fraction=0.5, seed=seed), seed=seed)

    def _mask_for(self, x: Tensor, what: str) -> Tensor:
        _check_image(x, what)
        mask = self.mask
        if x.shape[-2:] != mask.shape[-2:]:
            raise GanInvertError(f"mask is {mask.shape[-2]}x{mask.shape[-1]} (HxW) but the "
                                 f"{what} is {x.shape[-2]}x{x.shape[-1]}")
        if mask.shape[0] not in (1, x.shape[0]) or mask.shape[1] not in (1, x.shape[1]):
            raise GanInvertError(f"mask of shape {tuple(mask.shape)} does not fit a {what} of "
                                 f"shape {tuple(x.shape)}")
        return mask.to(device=x.device, dtype=x.dtype)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return self._mask_for(x, "image") * x

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        return self._mask_for(y, "measurement") * y

    def measurement_as_image(self, y: Tensor) -> Tensor | None:
        """The masked image with the missing pixels black (-1), as ILO/SPHInX show occlusions."""
        mask = self._mask_for(y, "measurement")
        return mask * y + (mask - 1.0)

    def measurement_from_image(self, image: Tensor) -> Tensor:
        """The image with its holes zeroed: whatever a measured file holds there is ignored."""
        return self.A(image)

    def extra_repr(self) -> str:
        return f"mask={tuple(self.mask.shape)}, observed={float(self.mask.mean()):.3f}"


@register_operator
class Downsampling(ForwardOperator):
    """Antialiased downsampling by an integer ``factor``: the mean of each factor x factor block.

    This is a box prefilter followed by striding (``F.avg_pool2d``), the same area average as
    SPHInX's ``utils.downsampler_image_256``. (ILO/SPHInX super-resolution uses a bicubic
    kernel with reflect padding; the box keeps ``A`` exact, local and its adjoint exact.)
    The adjoint spreads every low-resolution value over its block, divided by ``factor**2``.

    >>> Downsampling(2).A(torch.arange(16.).view(1, 1, 4, 4))
    tensor([[[[ 2.5000,  4.5000],
              [10.5000, 12.5000]]]])
    """

    name = "sr"
    summary = "super-resolution"
    own_options = ("factor",)

    def __init__(self, factor: int, *, sigma: float = 0.0, seed: int = 0) -> None:
        super().__init__(GaussianNoise(sigma, seed), seed=seed)
        if not _is_positive_int(factor):
            raise GanInvertError(f"downsampling factor must be a positive integer, got {factor!r}")
        self.factor = int(factor)

    @classmethod
    def _from_checked_options(cls, options: OperatorOptions) -> Downsampling:
        op = cls(cls._required(options, "factor"), sigma=options.noise_sigma, seed=options.seed)
        if options.image_size is not None:
            _check_divisible(*options.image_size, op.factor)
        return op

    @classmethod
    def example(cls, image_size: int, seed: int = 0) -> Downsampling:
        return cls(2, seed=seed)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        _check_image(x)
        _check_divisible(x.shape[-2], x.shape[-1], self.factor)
        return F.avg_pool2d(x, self.factor)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        _check_image(y, "measurement")
        spread = y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)
        return spread / self.factor**2

    def measurement_as_image(self, y: Tensor) -> Tensor | None:
        return y

    def measurement_size(self, resolution: int) -> int:
        if resolution % self.factor:
            raise GanInvertError(f"--factor {self.factor} does not divide the generator's {resolution} px")
        return resolution // self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class _WrappedPhysics(ForwardOperator):
    """Adapter for a foreign operator (e.g. a deepinv ``Physics``) with an ``A`` method.

    Its measurements are not known to be images, and its noise is its own ``forward``'s.
    """

    measures_image = False

    def __init__(self, physics: Any) -> None:
        super().__init__()
        self.physics = physics  # registered as a submodule when it is an nn.Module

    @property
    def linear(self) -> bool:  # type: ignore[override]
        return callable(getattr(self.physics, "A_adjoint", None))

    @property
    def summary(self) -> str:  # type: ignore[override]
        return type(self.physics).__name__

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return self.physics.A(x)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        adjoint = getattr(self.physics, "A_adjoint", None)
        if not callable(adjoint):
            raise GanInvertError(f"{type(self.physics).__name__} has no A_adjoint method")
        return adjoint(y)

    def forward(self, x: Tensor) -> Tensor:
        """The foreign ``forward`` (its own noise model) when it has one, else ``A``."""
        foreign_forward = getattr(self.physics, "forward", None)
        return foreign_forward(x) if callable(foreign_forward) else self.physics.A(x)

    def extra_repr(self) -> str:
        return "" if isinstance(self.physics, nn.Module) else f"physics={self.physics!r}"


def as_operator(obj: Any) -> ForwardOperator:
    """Return ``obj`` as a :class:`ForwardOperator`; anything with an ``A`` method qualifies.

    Our operators are returned unchanged; others (e.g. a deepinv ``Physics``) are wrapped so
    that ``A``, ``A_adjoint`` and ``forward`` delegate to them. A wrapped object's measurement
    is not known to be an image, so its ``measurement_as_image`` returns ``None``.

    >>> class Scale:                          # a minimal deepinv-style operator
    ...     def A(self, x): return 2 * x
    ...     def A_adjoint(self, y): return 2 * y
    >>> as_operator(Scale())(torch.ones(1)).tolist()
    [2.0]
    """
    if isinstance(obj, ForwardOperator):
        return obj
    if not callable(getattr(obj, "A", None)):
        raise GanInvertError(
            f"{type(obj).__name__} is not a measurement operator: it has no A(x) method")
    return _WrappedPhysics(obj)


class Compose(ForwardOperator):
    """Operators applied left to right, like ``nn.Sequential``: ``Compose(f, g).A = g.A o f.A``.

    The adjoint runs the adjoints right to left. The measurement noise is the last operator's
    (it lives in the measurement space), so the other operators must be noise-free.

    >>> from ganinvert.tasks.masks import random_mask
    >>> op = Compose(Inpainting(random_mask(8, 0.5, seed=0)), Downsampling(2))
    >>> op.A(torch.ones(1, 3, 8, 8)).shape
    torch.Size([1, 3, 4, 4])
    """

    def __init__(self, *ops: Any) -> None:
        if not ops:
            raise GanInvertError("Compose needs at least one operator")
        wrapped = [as_operator(op) for op in ops]
        for op in wrapped[:-1]:
            if op.sigma > 0:
                raise GanInvertError(f"only the last operator of a Compose may add noise, but "
                                     f"{type(op).__name__} has sigma={op.sigma}")
        super().__init__(wrapped[-1].noise_model)
        self.ops = nn.ModuleList(wrapped)

    @property
    def linear(self) -> bool:  # type: ignore[override]
        return all(op.linear for op in self.ops)

    @property
    def measures_image(self) -> bool:  # type: ignore[override]
        return all(op.measures_image for op in self.ops)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        for op in self.ops:
            x = op.A(x)
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        for op in reversed(self.ops):
            y = op.A_adjoint(y)
        return y

    def forward(self, x: Tensor) -> Tensor:
        *inner, last = self.ops
        for op in inner:
            x = op.A(x)
        return last(x)

    def measurement_as_image(self, y: Tensor) -> Tensor | None:
        return self.ops[-1].measurement_as_image(y)

    def measurement_size(self, resolution: int) -> int:
        for op in self.ops:
            resolution = op.measurement_size(resolution)
        return resolution

    def measurement_from_image(self, image: Tensor) -> Tensor:
        return self.ops[-1].measurement_from_image(image)


def make_operator(task: str, *, image_size: int | Sequence[int] | None = None,
                  sigma: float | None = None, fraction: float | None = None,
                  mask: Tensor | str | os.PathLike[str] | None = None, factor: int | None = None,
                  seed: int = 0, resize_mask: bool = False, measured: bool = False) -> ForwardOperator:
    """Build the operator of a CLI task from its options (see :class:`OperatorOptions`).

    * ``"denoise"``: :class:`Denoising` with ``sigma`` (required, except for ``measured`` images);
    * ``"cs"``: :class:`CompressedSensing` with ``fraction`` (required) on RGB images of
      ``image_size`` (required), noise ``sigma`` (default 0); its measurements are not images,
      so ``measured`` is an error;
    * ``"inpaint"``: :class:`Inpainting` with ``mask``, a tensor or an image file read by
      :func:`~ganinvert.tasks.masks.load_mask` at ``image_size`` (``resize_mask`` to resize);
    * ``"sr"``: :class:`Downsampling` by ``factor`` (required), checked against ``image_size``
      when given.

    ``seed`` seeds every random draw (noise, compressed-sensing matrix). An option that belongs
    to another task (e.g. ``factor`` for ``"denoise"``) is an error rather than silently ignored.

    >>> make_operator("cs", fraction=0.1, image_size=16, seed=1).num_measurements
    77
    """
    cls = operator_class(task)
    options = OperatorOptions(image_size=image_size, sigma=sigma, fraction=fraction, mask=mask,
                              resize_mask=resize_mask, factor=factor, seed=seed, measured=measured)
    return cls.from_options(options)
