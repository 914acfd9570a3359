"""What a method is: a parameterisation of the generator's inputs, plugged into the one engine.

Every hook that runs inside the optimisation receives one :class:`InversionContext` (generator,
random streams, image or measurement and operator, LPIPS, stage and step); a method keeps no
per-run state on itself. It says

* which tensors exist (``init_params``; every tensor has the batch as its first dimension, so a
  result can be split per image) and which of them each stage optimises (``stages``);
* how they become generator inputs (``inputs``, drawn fresh every iteration where the method is
  stochastic, and ``render_inputs``, the deterministic rendering of a result);
* which regulariser is added to the loss (``regulariser``, per sample) and which projection runs
  after each optimiser step (``project``);
* how an edit in latent space applies to its result (``edit_inputs``).

The engine (:mod:`ganinvert.inversion.engine`) owns the loop; nothing here loops over steps.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F

from ...checks import check_finite, check_shape
from ...errors import GanInvertError, WeightsNotFoundError
from ...models.hyperinverter import load_wencoder
from ...models.mapping_statistics import cached_statistic
from ...models.stylegan2 import FeatureEntry, StyleGAN2Generator
from ...settings import replace_typed, typed_fields

Params = dict[str, torch.Tensor]


@dataclass
class SynthesisInputs:
    """Everything ``G.synthesis`` takes besides the generator's own weights."""

    ws: torch.Tensor
    noise: list[torch.Tensor] | None = None
    const: torch.Tensor | None = None
    feature_entry: FeatureEntry | None = None
    feature_residuals: dict[int, torch.Tensor] | None = None
    weight_deltas: dict[str, torch.Tensor] | None = None

    def to(self, dtype: torch.dtype) -> "SynthesisInputs":
        """The same inputs in ``dtype`` (for a generator cast to reduced precision); differentiable."""
        def cast(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(dtype)

        entry = self.feature_entry
        return dataclasses.replace(
            self, ws=self.ws.to(dtype), noise=None if self.noise is None else [cast(t) for t in self.noise],
            const=cast(self.const),
            feature_entry=None if entry is None else FeatureEntry(entry.block, entry.features.to(dtype),
                                                                  cast(entry.rgb)),
            feature_residuals=None if self.feature_residuals is None else {
                k: v.to(dtype) for k, v in self.feature_residuals.items()},
            weight_deltas=None if self.weight_deltas is None else {
                k: v.to(dtype) for k, v in self.weight_deltas.items()})

    def render(self, G: StyleGAN2Generator, impl: str = "fast") -> torch.Tensor:
        """The image, float32 whatever G's precision (a reduced-precision G gets the inputs in its type)."""
        dtype = G.w_avg.dtype
        if dtype != self.ws.dtype:
            return self.to(dtype).render(G, impl).float()
        return G.synthesis(self.ws, self.noise, const=self.const, feature_entry=self.feature_entry,
                           feature_residuals=self.feature_residuals, weight_deltas=self.weight_deltas,
                           impl=impl)


@dataclass(frozen=True)
class ParamGroup:
    """Tensors optimised together with one base learning rate and schedule."""

    names: tuple[str, ...]
    lr: float
    schedule: str = "constant"


@dataclass(frozen=True)
class Stage:
    """A phase of the optimisation with its own optimiser (ILO rounds, PTI's two phases)."""

    name: str
    steps: int
    groups: tuple[ParamGroup, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for g in self.groups for n in g.names)


@dataclass
class MethodSettings:
    """Settings every method has. Subclasses add their own fields.

    Attributes:
        steps: optimisation steps (for multi-stage methods, see the method's docstring).
        lr: base learning rate of the main group.
        lambda_mse, lambda_lpips: weights of the reconstruction loss.
    """

    steps: int = 1000
    lr: float = 0.01
    lambda_mse: float = 1.0
    lambda_lpips: float = 1.0

    def __post_init__(self) -> None:
        # Every value converted to its field's type however the settings were built (presets,
        # `--set`, keyword arguments); the sign rules of lr and loss weights are checked there too.
        typed_fields(self)

    def replace(self, **changes: Any) -> "MethodSettings":
        """A copy with ``changes`` (unknown names and ill-typed values raise GanInvertError)."""
        return replace_typed(self, **changes)

    def validate(self) -> None:
        """What the values mean together (their types are checked when the settings are built)."""
        if self.steps <= 0:
            raise GanInvertError(f"steps must be > 0, got {self.steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Preset:
    """Named settings with the source they come from."""

    settings: dict[str, Any]
    source: str


def randn(rngs: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """One standard-normal draw of ``shape`` per sample, each from its own generator.

    Per-sample generators make a batch of N images draw exactly what N single runs draw.
    """
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in rngs]).to(device)


def rand(rngs: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """One U(0, 1) draw of ``shape`` per sample, each from its own generator (as :func:`randn`)."""
    return torch.stack([torch.rand(tuple(shape), generator=g) for g in rngs]).to(device)


@dataclass
class InversionContext:
    """What the engine hands every method hook: the generator, the per-image random streams, what
    is being inverted, the LPIPS module of the loss and where the loop stands.

    Attributes:
        G: the generator (never modified).
        rngs: one ``torch.Generator`` per image; every draw of a hook comes from them.
        measurement: y, what ``A(x_hat)`` is compared with; None outside an optimisation (rendering
            fresh draws of a finished result).
        image: the picture a method may look at (encoders, SAM's error maps): the image being
            inverted when there is no forward operator; None when there is one, because a
            restoration sees only its measurement.
        operator: the forward operator A, or None for the identity.
        lpips: the engine's LPIPS module (None without LPIPS weights); methods with LPIPS-based
            terms use it instead of loading their own.
        stage_index: the running stage of ``method.stages(G)``; step: the steps done in it.
    """

    G: StyleGAN2Generator
    rngs: Sequence[torch.Generator]
    measurement: torch.Tensor | None = None
    image: torch.Tensor | None = None
    operator: Callable[[torch.Tensor], torch.Tensor] | None = None
    lpips: torch.nn.Module | None = None
    stage_index: int = 0
    step: int = 0

    @property
    def batch_size(self) -> int:
        return len(self.rngs)

    @property
    def device(self) -> torch.device:
        return self.G.w_avg.device

    def require_image(self, method: str) -> torch.Tensor:
        """The picture itself, for methods that read it (encoders, measured error maps)."""
        if self.image is None:
            raise GanInvertError(f"method {method} reads the image itself, so it cannot invert a measurement "
                                 "through a forward operator")
        return self.image


class Method:
    """Base class of inversion methods; see the module docstring."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    presets: ClassVar[dict[str, Preset]] = {}
    default_preset: ClassVar[str | None] = None

    def __init__(self, settings: MethodSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self.settings.validate()

    # -- required ---------------------------------------------------------------------------
    def init_params(self, ctx: InversionContext) -> Params:
        """Create every tensor of the method for ``ctx.batch_size`` images (first dim = batch)."""
        raise NotImplementedError

    def stages(self, G: StyleGAN2Generator) -> list[Stage]:
        """The optimisation phases: which tensors each optimises, with which LR and schedule."""
        raise NotImplementedError

    def inputs(self, ctx: InversionContext, params: Params) -> SynthesisInputs:
        """Generator inputs for one iteration of stage ``ctx.stage_index`` (may draw from ``ctx.rngs``)."""
        return self.render_inputs(ctx.G, params)

    def render_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        """Deterministic generator inputs of a finished result."""
        raise NotImplementedError

    # -- optional hooks ---------------------------------------------------------------------
    def begin_stage(self, ctx: InversionContext, params: Params) -> None:
        """Prepare ``params`` before stage ``ctx.stage_index`` starts (e.g. create the next ILO variable)."""

    def regulariser(self, ctx: InversionContext, params: Params, inputs: SynthesisInputs) -> torch.Tensor | None:
        """Per-sample regulariser (N,) added to the loss, or None."""
        return None

    @torch.no_grad()
    def project(self, ctx: InversionContext, params: Params) -> None:
        """Projection applied in place after every optimiser step of stage ``ctx.stage_index``."""

    def edit_inputs(self, G: StyleGAN2Generator, params: Params, direction: torch.Tensor,
                    alpha: float, layers: Sequence[int] | None = None) -> SynthesisInputs:
        """Inputs of the result moved by ``alpha * direction`` in w+ (direction: (num_ws, style_dim)).

        ``layers`` restricts the move to those ws indices. Methods whose latents are not w+ override
        this with their own rule.
        """
        inputs = self.render_inputs(G, params)
        inputs.ws = inputs.ws + alpha * layer_mask(G, layers, inputs.ws) * direction.to(inputs.ws)
        return inputs


def layer_mask(G: StyleGAN2Generator, layers: Sequence[int] | None, like: torch.Tensor) -> torch.Tensor:
    """(num_ws, 1) ones at the ``layers`` an edit moves (all when None), zeros elsewhere."""
    mask = torch.zeros(G.num_ws, 1, dtype=like.dtype, device=like.device)
    mask[list(range(G.num_ws)) if layers is None else list(layers)] = 1
    return mask


def frozen_noise(G: StyleGAN2Generator, n: int) -> list[torch.Tensor]:
    """The generator's stored noise maps, one copy per sample (initial value of optimised noise)."""
    return [getattr(G.noises, f"noise_{i}").expand(n, -1, -1, -1).clone() for i in range(G.num_layers)]


def noise_names(G: StyleGAN2Generator) -> tuple[str, ...]:
    return tuple(f"noise_{i}" for i in range(G.num_layers))


def gather_noise(G: StyleGAN2Generator, params: Params) -> list[torch.Tensor] | None:
    names = noise_names(G)
    return [params[n] for n in names] if names[0] in params else None


def retract_to_sphere(x: torch.Tensor, radius: float, dims: Sequence[int] = (-1,)) -> torch.Tensor:
    """``x`` rescaled to l2 norm ``radius`` over ``dims`` (every other index is a separate vector).

    >>> retract_to_sphere(torch.tensor([[3.0, 4.0]]), 1.0)
    tensor([[0.6000, 0.8000]])
    """
    norm = x.square().sum(tuple(dims), keepdim=True).sqrt().clamp_min(1e-12)
    return x * (radius / norm)


def live_ws_indices(G: StyleGAN2Generator, entry_block: int | None) -> list[int]:
    """ws indices that affect an image entering synthesis at ``entry_block`` (all when None).

    An entry at block b skips the convs of blocks 0..b; its ToRGB and everything after it still
    read ws, from ``G.block_ws_indices(b)[-1]`` on.
    """
    first = 0 if entry_block is None else G.block_ws_indices(entry_block)[-1]
    return list(range(first, G.num_ws))


def check_direction(G: StyleGAN2Generator, direction: torch.Tensor) -> None:
    """Raise a one-line error unless ``direction`` is a finite (num_ws, style_dim) tensor."""
    check_shape(direction, f"{G.num_ws}, {G.style_dim}", "edit direction")
    check_finite(direction, "edit direction")


def editable_layers(G: StyleGAN2Generator, live: Sequence[int], layers: Sequence[int] | None) -> list[int]:
    """The ws indices an edit may move: the requested ``layers`` (default all) among the ``live`` ones."""
    if layers is None:
        return list(live)
    bad = [i for i in layers if not 0 <= int(i) < G.num_ws]
    if bad:
        raise GanInvertError(f"edit layers {bad} are out of range 0..{G.num_ws - 1}")
    return sorted(set(live) & {int(i) for i in layers})


def noise_autocorrelation(noise: Sequence[torch.Tensor]) -> torch.Tensor:
    """StyleGAN2's noise regulariser per image: squared autocorrelation at shift 1 along both axes,
    over a pyramid of 2x average-pooled maps down to 8 px (N,)."""
    total = noise[0].new_zeros(noise[0].shape[0])
    for n in noise:
        while True:
            total = total + (n * torch.roll(n, shifts=1, dims=3)).mean((1, 2, 3)).square()
            total = total + (n * torch.roll(n, shifts=1, dims=2)).mean((1, 2, 3)).square()
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, kernel_size=2)
    return total


def context_lpips(ctx: InversionContext, weights: str | None, needed_for: str) -> torch.nn.Module:
    """The engine's LPIPS module, else one loaded once per process from ``weights`` (a method setting,
    for LPIPS-based terms of a run whose loss has none); ``needed_for`` completes the error message."""
    if ctx.lpips is not None:
        return ctx.lpips.to(ctx.device)
    try:
        return _lpips_from(weights).to(ctx.device)
    except WeightsNotFoundError:
        raise WeightsNotFoundError(f"{needed_for} needs LPIPS weights: set lpips_weights=PATH (--set) or "
                                   "$GANINVERT_LPIPS_WEIGHTS") from None


@functools.lru_cache(maxsize=4)
def _lpips_from(weights: str | None) -> torch.nn.Module:
    from ...metrics import LPIPS
    return LPIPS(weights=weights)


#: Where w-based codes start: G's mean w, or a trained HyperInverter phase-I encoder's w of the image.
INITS = ("w_avg", "encoder")


def check_init(init: str) -> None:
    if init not in INITS:
        raise GanInvertError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def encoder_start(ctx: InversionContext, spec: str, method: str) -> torch.Tensor:
    """(N, style_dim): the w a ``hyperinverter-e1`` network (``spec``: a file, or "default" for the
    bundled one) predicts for the image, the start of ``init="encoder"`` (loaded once per G)."""
    image = ctx.require_image(method)
    encoder = cached_statistic(ctx.G, ("hyperinverter-e1", str(spec)), lambda: load_wencoder(spec, ctx.G))
    with torch.no_grad():
        return encoder(image.clamp(-1, 1))


@dataclass
class Registry:
    methods: dict[str, type[Method]] = field(default_factory=dict)

    def register(self, cls: type[Method]) -> type[Method]:
        self.methods[cls.name] = cls
        return cls


REGISTRY = Registry()
register = REGISTRY.register
