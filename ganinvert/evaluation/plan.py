"""What an evaluation is: the methods compared, the configuration, its cells and their plan.

Plain data, shared by the runner (which builds and executes a :class:`Plan`) and the report
(which orders and labels its rows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import GanInvertError
from .suites import ImageRef, Shift, Suite


@dataclass(frozen=True)
class MethodSpec:
    """A method of the comparison: registry name, preset (None = the method's default) and
    setting overrides. Written ``name`` or ``name:preset`` on the command line.

    >>> MethodSpec.parse("sphinx:sphinx-paper").label
    'sphinx:sphinx-paper'
    """

    name: str
    preset: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return self.name if self.preset is None else f"{self.name}:{self.preset}"

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        name, sep, preset = text.strip().partition(":")
        if not name or (sep and not preset):
            raise GanInvertError(f"bad method {text!r}: expected NAME or NAME:PRESET")
        return cls(name, preset or None)

    def with_overrides(self, overrides: dict[str, Any]) -> "MethodSpec":
        merged = dict(self.overrides)
        merged.update(overrides)
        return MethodSpec(self.name, self.preset, tuple(sorted(merged.items())))

    def resolved_preset(self) -> str | None:
        """The preset used: the given one, else the method's default (None when it has none)."""
        from ..inversion import list_methods
        cls = list_methods().get(self.name)
        return self.preset if self.preset is not None or cls is None else cls.default_preset

    def settings(self) -> dict[str, Any]:
        """Every setting of the method after preset and overrides (validated)."""
        from ..inversion import make_method
        return make_method(self.name, self.preset, dict(self.overrides)).settings.to_dict()


def parse_methods(items: str | Sequence[str]) -> list[MethodSpec]:
    """``"w+,sphinx:sphinx-official"`` (or several such strings) -> method specs, labels unique."""
    texts = [items] if isinstance(items, str) else list(items)
    specs = [MethodSpec.parse(t) for text in texts for t in text.split(",") if t.strip()]
    if not specs:
        raise GanInvertError("no methods given")
    labels = [s.label for s in specs]
    duplicates = sorted({lb for lb in labels if labels.count(lb) > 1})
    if duplicates:
        raise GanInvertError(f"method(s) given twice: {', '.join(duplicates)}")
    return specs


@dataclass
class EvaluationConfig:
    """Everything that defines an evaluation (the CLI's options).

    Attributes:
        suite: a name of :data:`ganinvert.evaluation.suites.SUITES`; suite_options: its options.
        images: image files or folders; methods: the methods compared.
        generator: checkpoint path or ``"default"``.
        shifts: shift names (None = the suite's defaults); max_images: first K images per shift.
        seed: base seed of every cell seed.
        use_lpips: LPIPS in the loss (the methods' lambda_lpips) and as a metric.
        lpips_weights: LPIPS weights spec (None = the default search).
        device: where workers run ("cpu", "cuda", ...).
    """

    suite: str
    images: tuple[Path, ...]
    methods: tuple[MethodSpec, ...]
    generator: str = "default"
    suite_options: dict[str, Any] = field(default_factory=dict)
    shifts: tuple[str, ...] | None = None
    max_images: int | None = None
    seed: int = 0
    use_lpips: bool = True
    lpips_weights: str | None = None
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images"] = [str(p) for p in self.images]
        d["methods"] = [{"label": m.label, "name": m.name, "preset": m.preset, "overrides": dict(m.overrides)}
                        for m in self.methods]
        return d


@dataclass(frozen=True)
class CellTask:
    """One cell, as sent to a worker (plain, picklable data)."""

    key: str
    fingerprint: str
    suite: str
    suite_options: dict[str, Any]
    shift_names: tuple[str, ...]
    image: str
    image_path: str
    method: str
    preset: str | None
    label: str
    settings: dict[str, Any]
    seed: int
    measurement_seed: int
    generator: str
    device: str
    lpips_weights: str | None
    threads: int


#: Cells inverted together as one batch (same shift group and method).
Unit = Sequence[CellTask]


@dataclass
class Plan:
    """The evaluation's cells in report order, with what the report needs to order and label them."""

    suite: Suite
    shifts: list[Shift]
    images: dict[str, list[ImageRef]]     # shift name -> its images
    methods: list[MethodSpec]
    tasks: list[CellTask]
    units: list[tuple[CellTask, ...]]    # fixed batches: same shift group and method, consecutive images
    generator_sha256: str
    lpips_files: list[str]

    def row_order(self) -> dict[tuple[str, str, str], int]:
        """(shift, image, method label) -> rank: shift-major, then images as listed, then methods."""
        order: dict[tuple[str, str, str], int] = {}
        for shift in self.shifts:
            for image in self.images[shift.name]:
                for method in self.methods:
                    order[(shift.name, image.name, method.label)] = len(order)
        return order


@dataclass
class RunStats:
    """What one invocation did: cells in the plan, found finished, computed now, wall seconds."""

    total: int
    already_done: int
    computed: int
    seconds: float
