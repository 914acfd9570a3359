"""Inversion results: every optimised tensor plus the settings and provenance to re-create the image.

On disk a result is two files side by side: ``NAME.safetensors`` (the tensors, first dim = image)
and ``NAME.json`` (method, preset, every setting, seeds, generator hash and configuration,
package version, loss/PSNR history).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import GanInvertError
from ..io import atomic_write_bytes, atomic_write_json
from ..models.stylegan2 import StyleGAN2Generator


@dataclass
class InversionResult:
    method: str
    preset: str | None
    settings: dict[str, Any]
    params: dict[str, torch.Tensor]
    seeds: list[int]
    generator: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.seeds)

    def method_instance(self):
        from .methods import make_method
        return make_method(self.method, None, _settings_from_json(self.settings))

    def check_generator(self, G: StyleGAN2Generator) -> None:
        """Refuse a generator other than the one this result was made with."""
        source = getattr(G, "source", None)
        mine, theirs = self.generator.get("sha256"), getattr(source, "sha256", None)
        if mine and theirs and mine != theirs:
            raise GanInvertError(f"result was made with generator {mine[:12]}…, not {theirs[:12]}… "
                                 f"({getattr(source, 'path', '?')})")
        if _jsonable(self.generator.get("config", {})) != _jsonable(G.config()):
            raise GanInvertError("result was made with a generator of a different configuration")

    def inputs(self, G: StyleGAN2Generator):
        self.check_generator(G)
        params = {k: v.to(G.w_avg.device) for k, v in self.params.items()}
        return self.method_instance().render_inputs(G, params)

    @torch.no_grad()
    def render(self, G: StyleGAN2Generator) -> torch.Tensor:
        """The reconstruction, (N, 3, H, W) in [-1, 1]."""
        return self.inputs(G).render(G)

    @torch.no_grad()
    def render_draws(self, G: StyleGAN2Generator, draws: int, seed: int = 0) -> torch.Tensor:
        """Renders with ``draws`` fresh random inputs (stochastic methods such as SPHInX): (draws, N, 3, H, W)."""
        self.check_generator(G)
        method = self.method_instance()
        params = {k: v.to(G.w_avg.device) for k, v in self.params.items()}
        rngs = [torch.Generator().manual_seed(seed + i) for i in range(self.batch_size)]
        return torch.stack([method.inputs(G, params, rngs).render(G) for _ in range(draws)])

    def select(self, index: int) -> "InversionResult":
        """The result of one image of the batch."""
        return InversionResult(self.method, self.preset, self.settings,
                               {k: v[index:index + 1].clone() for k, v in self.params.items()},
                               [self.seeds[index]], self.generator, self.history, self.seconds, dict(self.extra))

    # -- files --------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        from ..version import __version__
        return {"format": "ganinvert-result/1", "method": self.method, "preset": self.preset,
                "settings": _jsonable(self.settings), "seeds": self.seeds, "generator": _jsonable(self.generator),
                "ganinvert_version": __version__, "seconds": self.seconds, "history": self.history,
                "extra": _jsonable(self.extra)}

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors) and its .json beside it; returns the tensor file's path."""
        from safetensors.torch import save
        path = Path(path).with_suffix(".safetensors")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.params.items()}
        atomic_write_bytes(path, save(tensors, metadata={"method": self.method}))
        atomic_write_json(path.with_suffix(".json"), self.metadata())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "InversionResult":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        path = Path(path)
        if path.suffix == ".json":
            path = path.with_suffix(".safetensors")
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise GanInvertError(f"result not found: {path} and {meta_path.name} beside it are both needed")
        try:
            meta = json.loads(meta_path.read_text())
            # Fresh (aligned) copies: safetensors' buffers can be misaligned, which makes CPU kernels
            # take other vectorised paths and the render differ from the saved run's in the last bits.
            params = {k: v.clone() for k, v in load_file(str(path)).items()}
        except (json.JSONDecodeError, SafetensorError, OSError, UnicodeDecodeError) as exc:
            raise GanInvertError(f"cannot read result {path}: {str(exc).splitlines()[0][:120]}") from None
        if meta.get("format") != "ganinvert-result/1":
            raise GanInvertError(f"{meta_path} is not a ganinvert result file")
        return cls(meta["method"], meta.get("preset"), meta["settings"], params, meta["seeds"], meta["generator"],
                   meta.get("history", {}), meta.get("seconds", 0.0), meta.get("extra", {}))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _settings_from_json(settings: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples into lists; settings dataclasses hold tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}


def stack_results(results: Sequence[InversionResult]) -> InversionResult:
    """Inverse of :meth:`InversionResult.select` for results of one method and generator."""
    first = results[0]
    return InversionResult(first.method, first.preset, first.settings,
                           {k: torch.cat([r.params[k] for r in results]) for k in first.params},
                           [s for r in results for s in r.seeds], first.generator, first.history,
                           sum(r.seconds for r in results), dict(first.extra))
