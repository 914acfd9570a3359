"""Forward operators (measurement models) of the restoration tasks.

An operator maps images ``x`` of shape ``(N, C, H, W)`` on the ``[-1, 1]`` scale to
measurements ``y``. The interface is deepinv's ``Physics``, so either kind can be used where
the other is expected:

* ``A(x)``: the noise-free measurement, differentiable in ``x``; an inversion minimises
  ``L(A(G(theta)), y)``;
* ``A_adjoint(y)``: the exact adjoint of the (linear) ``A``;
* ``forward(x)``, i.e. ``op(x)``: the measurement as observed, ``A(x)`` plus Gaussian noise of
  std ``sigma`` drawn from the operator's seed, so the same seed gives the same measurement;
* ``measurement_as_image(y)``: ``y`` as an image to show, or ``None`` when it is not one.

:func:`as_operator` wraps any object with an ``A`` method (e.g. a deepinv ``Physics``), and
:func:`make_operator` builds the operator of a CLI task ("denoise", "cs", "inpaint", "sr").

Example (super-resolution by 4 of a batch of 256x256 images)::

    op = make_operator("sr", factor=4, image_size=256)
    y = op(x)                                # (N, 3, 64, 64) observation
    loss = F.mse_loss(op.A(G(theta)), y)     # what the inversion engine minimises
"""

from __future__ import annotations

import abc
import math
import os
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import GanInvertError
from .masks import RandomStream, check_seed, load_mask, seeded_generator, size_hw

#: Task names of :func:`make_operator` (the CLI's ``--task`` choices).
TASKS = ("denoise", "cs", "inpaint", "sr")


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


def _check_finite(x: Tensor, what: str = "image") -> None:
    if not bool(torch.isfinite(x).all()):
        raise GanInvertError(f"{what} contains NaN or infinite values")


def _working_dtype(x: Tensor) -> torch.dtype:
    """float32 at least: torch.fft has no half-precision path for arbitrary lengths."""
    return torch.promote_types(x.dtype, torch.float32)


def _check_divisible(height: int, width: int, factor: int) -> None:
    if height % factor or width % factor:
        raise GanInvertError(
            f"downsampling factor {factor} does not divide the image size {height}x{width}")


class ForwardOperator(nn.Module, abc.ABC):
    """Base class: a noise-free ``A`` plus seeded additive Gaussian noise in ``forward``.

    Args:
        sigma: std of the measurement noise, on the scale of the measurements (for image-space
            operators, the ``[-1, 1]`` image scale); 0 for noise-free measurements.
        seed: seed of the noise; ``forward`` redraws the same noise on every call.
    """

    def __init__(self, sigma: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.sigma = _check_sigma(sigma)
        self.seed = check_seed(seed)

    @abc.abstractmethod
    def A(self, x: Tensor) -> Tensor:  # noqa: N802 (deepinv's name)
        """The noise-free measurement of ``x``."""

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802 (deepinv's name)
        """The adjoint of ``A``; only linear operators have one."""
        raise GanInvertError(f"{type(self).__name__} is not linear: it has no adjoint")

    def forward(self, x: Tensor) -> Tensor:
        """The observed measurement ``A(x) + sigma * noise``, reproducible from ``seed``."""
        _check_image(x)
        _check_finite(x)
        return self._add_noise(self.A(x))

    def _add_noise(self, y: Tensor) -> Tensor:
        if self.sigma == 0.0:
            return y
        # Drawn on the CPU in float32 so that a seed gives the same noise on every device.
        generator = seeded_generator(self.seed, RandomStream.MEASUREMENT_NOISE)
        noise = torch.randn(y.shape, generator=generator, dtype=torch.float32)
        return y + self.sigma * noise.to(device=y.device, dtype=y.dtype)

    def measurement_as_image(self, y: Tensor) -> Tensor | None:
        """``y`` as an ``(N, C, h, w)`` image to show (not clamped), or ``None``."""
        return None

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, seed={self.seed}" if self.sigma else ""


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

    def __init__(self, sigma: float, seed: int, *, clip: bool = True) -> None:
        super().__init__(sigma=sigma, seed=seed)
        self.clip = clip

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        return y.clamp(-1.0, 1.0) if self.clip else y

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, seed={self.seed}, clip={self.clip}"


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

    def __init__(self, fraction: float, seed: int, image_shape: Sequence[int], *,
                 sigma: float = 0.0) -> None:
        super().__init__(sigma=sigma, seed=seed)
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
                f"image_shape={self.image_shape}, seed={self.seed}, sigma={self.sigma}")


class Inpainting(ForwardOperator):
    """``A(x) = mask * x``: only the pixels where ``mask`` is 1 are observed (self-adjoint).

    Args:
        mask: ``(1 or N, 1 or C, H, W)`` tensor of 0 and 1 (1 = observed), e.g. from
            :func:`~ganinvert.tasks.masks.load_mask` or :func:`~ganinvert.tasks.masks.box_mask`.
        sigma, seed: measurement noise (see :class:`ForwardOperator`).

    >>> from ganinvert.tasks.masks import box_mask
    >>> op = Inpainting(box_mask(8, box_fraction=0.25, seed=0))
    >>> float(op.A(torch.ones(1, 3, 8, 8)).mean())
    0.75
    """

    def __init__(self, mask: Tensor, *, sigma: float = 0.0, seed: int = 0) -> None:
        super().__init__(sigma=sigma, seed=seed)
        if not isinstance(mask, Tensor) or mask.ndim != 4 or mask.shape[1] not in (1, 3):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise GanInvertError(f"mask must have shape (1 or N, 1 or 3, H, W), got {got}")
        mask = mask.float()
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise GanInvertError("mask values must be 0 or 1 (1 = observed)")
        if not bool(mask.any()):
            raise GanInvertError("mask observes no pixel (it is all zeros)")
        self.register_buffer("mask", mask, persistent=False)

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

    def extra_repr(self) -> str:
        observed = float(self.mask.mean())
        return f"mask={tuple(self.mask.shape)}, observed={observed:.3f}" + (
            f", sigma={self.sigma}, seed={self.seed}" if self.sigma else "")


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

    def __init__(self, factor: int, *, sigma: float = 0.0, seed: int = 0) -> None:
        super().__init__(sigma=sigma, seed=seed)
        if not _is_positive_int(factor):
            raise GanInvertError(f"downsampling factor must be a positive integer, got {factor!r}")
        self.factor = int(factor)

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

    def extra_repr(self) -> str:
        noise = f", sigma={self.sigma}, seed={self.seed}" if self.sigma else ""
        return f"factor={self.factor}{noise}"


class _WrappedPhysics(ForwardOperator):
    """Adapter for a foreign operator (e.g. a deepinv ``Physics``) with an ``A`` method."""

    def __init__(self, physics: Any) -> None:
        super().__init__()
        self.physics = physics  # registered as a submodule when it is an nn.Module

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
        super().__init__()
        if not ops:
            raise GanInvertError("Compose needs at least one operator")
        wrapped = [as_operator(op) for op in ops]
        for op in wrapped[:-1]:
            if op.sigma > 0:
                raise GanInvertError(f"only the last operator of a Compose may add noise, but "
                                     f"{type(op).__name__} has sigma={op.sigma}")
        self.ops = nn.ModuleList(wrapped)

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


def make_operator(task: str, *, image_size: int | Sequence[int] | None = None,
                  sigma: float | None = None, fraction: float | None = None,
                  mask: Tensor | str | os.PathLike[str] | None = None, factor: int | None = None,
                  seed: int = 0, resize_mask: bool = False) -> ForwardOperator:
    """Build the operator of a CLI task; ``None`` means "option not given".

    * ``"denoise"``: :class:`Denoising` with ``sigma`` (required);
    * ``"cs"``: :class:`CompressedSensing` with ``fraction`` (required) on RGB images of
      ``image_size`` (required), noise ``sigma`` (default 0);
    * ``"inpaint"``: :class:`Inpainting` with ``mask``, a tensor or an image file read by
      :func:`~ganinvert.tasks.masks.load_mask` at ``image_size`` (``resize_mask`` to resize);
    * ``"sr"``: :class:`Downsampling` by ``factor`` (required), checked against ``image_size``
      when given.

    ``seed`` seeds every random draw (noise, compressed-sensing matrix). An option that belongs
    to another task (e.g. ``factor`` for ``"denoise"``) is an error rather than silently ignored.

    >>> make_operator("cs", fraction=0.1, image_size=16, seed=1).num_measurements
    77
    """
    if task not in TASKS:
        raise GanInvertError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    for option, value, owner in (("fraction", fraction, "cs"), ("mask", mask, "inpaint"),
                                 ("factor", factor, "sr")):
        if value is not None and task != owner:
            raise GanInvertError(f"--{option} is for task '{owner}', not '{task}'")

    def required(option: str, value: Any) -> Any:
        if value is None:
            raise GanInvertError(f"task '{task}' needs --{option.replace('_', '-')}")
        return value

    noise = 0.0 if sigma is None else sigma
    size = None if image_size is None else size_hw(image_size)
    if task == "denoise":
        return Denoising(required("sigma", sigma), seed)
    if task == "cs":
        height, width = required("image_size", size)
        return CompressedSensing(required("fraction", fraction), seed, (3, height, width),
                                 sigma=noise)
    if task == "inpaint":
        mask = required("mask", mask)
        if not isinstance(mask, Tensor):
            mask = load_mask(mask, size, resize=resize_mask)
        return Inpainting(mask, sigma=noise, seed=seed)
    op = Downsampling(required("factor", factor), sigma=noise, seed=seed)
    if size is not None:
        _check_divisible(*size, op.factor)
    return op
