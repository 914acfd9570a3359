"""What a method is: a parameterisation of the generator's inputs, plugged into the one engine.

A method says

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
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from ...errors import GanInvertError
from ...models.stylegan2 import FeatureEntry, StyleGAN2Generator

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

    def render(self, G: StyleGAN2Generator, impl: str = "fast") -> torch.Tensor:
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

    def replace(self, **changes: Any) -> "MethodSettings":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise GanInvertError(f"unknown setting(s) {', '.join(sorted(unknown))} for "
                                 f"{type(self).__name__}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        if self.steps <= 0:
            raise GanInvertError(f"steps must be > 0, got {self.steps}")
        if self.lr <= 0:
            raise GanInvertError(f"lr must be > 0, got {self.lr}")

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
    def init_params(self, G: StyleGAN2Generator, target: torch.Tensor, rngs: Sequence[torch.Generator]) -> Params:
        """Create every tensor of the method for ``len(rngs)`` images (first dim = batch)."""
        raise NotImplementedError

    def stages(self, G: StyleGAN2Generator) -> list[Stage]:
        """The optimisation phases: which tensors each optimises, with which LR and schedule."""
        raise NotImplementedError

    def inputs(self, G: StyleGAN2Generator, params: Params, rngs: Sequence[torch.Generator]) -> SynthesisInputs:
        """Generator inputs for one training iteration (may draw from ``rngs``)."""
        return self.render_inputs(G, params)

    def render_inputs(self, G: StyleGAN2Generator, params: Params) -> SynthesisInputs:
        """Deterministic generator inputs of a finished result."""
        raise NotImplementedError

    # -- optional hooks ---------------------------------------------------------------------
    def begin_stage(self, G: StyleGAN2Generator, params: Params, stage_index: int) -> None:
        """Prepare ``params`` before ``stage_index`` starts (e.g. create the next ILO variable)."""

    def regulariser(self, G: StyleGAN2Generator, params: Params, inputs: SynthesisInputs) -> torch.Tensor | None:
        """Per-sample regulariser (N,) added to the loss, or None."""
        return None

    @torch.no_grad()
    def project(self, G: StyleGAN2Generator, params: Params, stage_index: int) -> None:
        """Projection applied in place after every optimiser step."""

    def edit_inputs(self, G: StyleGAN2Generator, params: Params, direction: torch.Tensor,
                    alpha: float, layers: Sequence[int] | None = None) -> SynthesisInputs:
        """Inputs of the result moved by ``alpha * direction`` in w+ (direction: (num_ws, style_dim)).

        ``layers`` restricts the move to those ws indices. Methods whose latents are not w+ override
        this with their own rule.
        """
        inputs = self.render_inputs(G, params)
        inputs.ws = inputs.ws + alpha * _layer_mask(G, layers, inputs.ws) * direction.to(inputs.ws)
        return inputs

    def describe(self) -> str:
        return self.summary


def _layer_mask(G: StyleGAN2Generator, layers: Sequence[int] | None, like: torch.Tensor) -> torch.Tensor:
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


@dataclass
class Registry:
    methods: dict[str, type[Method]] = field(default_factory=dict)

    def register(self, cls: type[Method]) -> type[Method]:
        self.methods[cls.name] = cls
        return cls


REGISTRY = Registry()
register = REGISTRY.register
