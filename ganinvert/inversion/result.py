"""Inversion results: every optimised tensor plus the settings and provenance to re-create the image.

On disk a result is two files side by side: ``NAME.safetensors`` (the tensors, first dim = image)
and ``NAME.json`` (method, preset, every setting, seeds, generator hash and configuration,
package version, loss/PSNR history, optionally the source image of each image with its sha256,
and the name and shape of every tensor with a sha256 of them all).

Loading trusts neither file: the JSON is checked field by field, the tensors against the list
and hash recorded beside them (a pair that does not belong together, e.g. after a kill between
the two writes, is refused), for dtype (float32), batch size and finiteness, and against what the
method renders from on a generator of the recorded configuration. That last check runs the
method's ``render_inputs`` and the synthesis on the ``meta`` device, which propagates shapes
without computing anything (milliseconds for any resolution): a missing tensor or a wrong shape
fails there exactly as it would in a real render. Methods whose rendering branches on values
(fz+'s truncation) cannot be traced without values; their shapes meet the real generator when
rendered, and every render is checked for NaN/inf before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..checks import check_finite, check_seed
from ..errors import GanInvertError
from ..io import atomic_write_bytes, atomic_write_json
from ..models.loading import file_sha256
from ..models.stylegan2 import StyleGAN2Generator

FORMAT = "ganinvert-result/2"
_OLD_FORMATS = ("ganinvert-result/1",)
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Bounds on a recorded generator configuration, far above any real StyleGAN2, so that a hostile
#: result.json cannot make the shape check build millions of modules.
_CONFIG_LIMITS = {"resolution": 1 << 14, "style_dim": 1 << 14, "n_mlp": 64}
_MAX_CHANNELS = 1 << 14
_MAX_BLUR_TAPS = 16


@dataclass
class InversionResult:
    """The tensors of one inversion (any batch size) and how they were made.

    ``source_images``: one ``{"path", "sha256"}`` per image (see :func:`source_image_record`), or
    None when the images did not come from files.
    """

    method: str
    preset: str | None
    settings: dict[str, Any]
    params: dict[str, torch.Tensor]
    seeds: list[int]
    generator: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    source_images: list[dict[str, str]] | None = None

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

    def check_source(self, path: str | Path | None = None, index: int = 0) -> None:
        """Refuse ``path`` (default: the recorded path) unless it is, byte for byte, the image that
        image ``index`` of this result was inverted from."""
        if self.source_images is None:
            raise GanInvertError("this result records no source image to check against")
        if not 0 <= index < self.batch_size:
            raise GanInvertError(f"image index {index} is out of range 0..{self.batch_size - 1}")
        recorded = self.source_images[index]
        path = Path(recorded["path"] if path is None else path)
        if not path.is_file():
            raise GanInvertError(f"source image not found: {path}")
        if file_sha256(path) != recorded["sha256"]:
            raise GanInvertError(f"{path} is not the image this result was inverted from "
                                 f"({recorded['path']}, sha256 {recorded['sha256'][:12]}…)")

    def inputs(self, G: StyleGAN2Generator):
        self.check_generator(G)
        params = {k: v.to(G.w_avg.device) for k, v in self.params.items()}
        return self.method_instance().render_inputs(G, params)

    @torch.no_grad()
    def render(self, G: StyleGAN2Generator) -> torch.Tensor:
        """The reconstruction, (N, 3, H, W) in [-1, 1]."""
        return check_finite(self.inputs(G).render(G), f"the render of this {self.method} result")

    @torch.no_grad()
    def render_draws(self, G: StyleGAN2Generator, draws: int, seed: int = 0) -> torch.Tensor:
        """Renders with ``draws`` fresh random inputs (stochastic methods such as SPHInX): (draws, N, 3, H, W)."""
        from .methods.base import InversionContext

        self.check_generator(G)
        method = self.method_instance()
        params = {k: v.to(G.w_avg.device) for k, v in self.params.items()}
        seed = check_seed(seed)
        # Drawn as the last stage of the optimisation drew its inputs.
        ctx = InversionContext(G=G, rngs=[torch.Generator().manual_seed(seed + i) for i in range(self.batch_size)],
                               stage_index=len(method.stages(G)) - 1)
        renders = torch.stack([method.inputs(ctx, params).render(G) for _ in range(draws)])
        return check_finite(renders, f"a render of this {self.method} result")

    def select(self, index: int) -> "InversionResult":
        """The result of one image of the batch."""
        return InversionResult(self.method, self.preset, self.settings,
                               {k: v[index:index + 1].clone() for k, v in self.params.items()},
                               [self.seeds[index]], self.generator, self.history, self.seconds, dict(self.extra),
                               None if self.source_images is None else [self.source_images[index]])

    # -- files --------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        from ..version import __version__
        return {"format": FORMAT, "method": self.method, "preset": self.preset,
                "settings": _jsonable(self.settings), "seeds": self.seeds, "generator": _jsonable(self.generator),
                "ganinvert_version": __version__, "seconds": self.seconds, "history": self.history,
                "extra": _jsonable(self.extra), "source_images": self.source_images,
                "tensors": {k: list(v.shape) for k, v in sorted(self.params.items())},
                "tensors_sha256": tensors_sha256(self.params)}

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors) and its .json beside it; returns the tensor file's path.

        The JSON holds a hash of the tensors, so a kill between the two writes leaves a pair that
        :meth:`load` refuses rather than one that silently mixes two runs.
        """
        from safetensors.torch import save
        path = Path(path).with_suffix(".safetensors")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.params.items()}
        _check_tensors(tensors, self.batch_size, "result")  # never write what load would refuse
        atomic_write_bytes(path, save(tensors, metadata={"method": self.method}))
        atomic_write_json(path.with_suffix(".json"), self.metadata())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "InversionResult":
        """Read a result pair, checking both files (see the module docstring); one-line errors."""
        path = Path(path)
        if path.suffix == ".json":
            path = path.with_suffix(".safetensors")
        meta_path = path.with_suffix(".json")
        for needed in (path, meta_path):
            if not needed.is_file():
                raise GanInvertError(f"result not found: {needed} is missing ({path.name} and {meta_path.name} "
                                     "beside it are both needed)")
        meta = _read_json(meta_path)
        result = _result_from_json(meta, meta_path)
        result.params = _read_tensors(path)
        _check_names(result.params, meta, path)
        _check_tensors(result.params, result.batch_size, str(path))
        _check_shapes_and_hash(result.params, meta, path)
        _check_fits_method(result, str(path))
        return result


def source_image_record(path: str | Path) -> dict[str, str]:
    """The ``source_images`` entry of an image file: its path and sha256."""
    return {"path": str(path), "sha256": file_sha256(Path(path))}


def tensors_sha256(params: dict[str, torch.Tensor]) -> str:
    """sha256 of every tensor's name, dtype, shape and bytes (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(params):
        tensor = params[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- load checks
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _read_json(meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise GanInvertError(f"cannot read result {meta_path}: JSON nested too deeply") from None
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise GanInvertError(f"cannot read result {meta_path}: {_first_line(exc)}") from None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, *_OLD_FORMATS):
        raise GanInvertError(f"{meta_path} is not a ganinvert result file")
    if meta["format"] in _OLD_FORMATS:
        raise GanInvertError(f"{meta_path} was written by an older ganinvert ({meta['format']}, without a hash "
                             "of its tensors); re-run the inversion")
    return meta


def _field(meta: dict[str, Any], key: str, types: type | tuple[type, ...], where: Path, what: str,
           optional: bool = False) -> Any:
    value = meta.get(key)
    if value is None and optional:
        return None
    if key not in meta or isinstance(value, bool) or not isinstance(value, types):
        raise GanInvertError(f"{where}: '{key}' must be {what}, got {_describe(value) if key in meta else 'nothing'}")
    return value


def _describe(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


def _result_from_json(meta: dict[str, Any], where: Path) -> InversionResult:
    """The result that ``meta`` describes (tensors still empty), every field checked."""
    method = _field(meta, "method", str, where, "a method name")
    preset = _field(meta, "preset", str, where, "a preset name or null", optional=True)
    settings = _field(meta, "settings", dict, where, "an object of settings")
    seeds = _field(meta, "seeds", list, where, "a list of seeds")
    if not seeds:
        raise GanInvertError(f"{where}: 'seeds' is empty (one seed per image)")
    for seed in seeds:
        check_seed(seed, f"{where}: a seed")
    generator = _field(meta, "generator", dict, where, "an object")
    _field(generator, "config", dict, where, "an object (the generator's configuration)")
    for key in ("sha256", "path"):
        _field(generator, key, str, where, "a string or null", optional=True)
    history = _field(meta, "history", dict, where, "an object of per-step lists")
    for name, values in history.items():
        if not isinstance(values, list) or not all(v is None or _finite_number(v) for v in values):
            raise GanInvertError(f"{where}: history '{name}' must be a list of numbers or nulls")
    seconds = _field(meta, "seconds", (int, float), where, "a number")
    if not math.isfinite(seconds) or seconds < 0:
        raise GanInvertError(f"{where}: 'seconds' must be a finite number >= 0, got {seconds}")
    extra = _field(meta, "extra", dict, where, "an object")
    sources = _field(meta, "source_images", list, where, "a list or null", optional=True)
    if sources is not None and (len(sources) != len(seeds) or not all(_source_entry(s) for s in sources)):
        raise GanInvertError(f"{where}: 'source_images' must hold one {{\"path\", \"sha256\"}} per image "
                             f"({len(seeds)})")
    manifest = _field(meta, "tensors", dict, where, "an object of tensor shapes")
    if not all(isinstance(s, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in s)
               for s in manifest.values()):
        raise GanInvertError(f"{where}: 'tensors' must map each tensor name to its shape (a list of sizes)")
    digest = _field(meta, "tensors_sha256", str, where, "a sha256")
    if not _SHA256.fullmatch(digest):
        raise GanInvertError(f"{where}: 'tensors_sha256' is not a sha256")
    _check_config(generator["config"], where)
    result = InversionResult(method, preset, settings, {}, seeds, generator,
                             # JSON has no NaN: a step without a PSNR (no clean target) is written as null.
                             {k: [math.nan if v is None else float(v) for v in vs] for k, vs in history.items()},
                             float(seconds), extra, sources)
    try:
        result.method_instance()
    except GanInvertError as exc:
        raise GanInvertError(f"{where}: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:  # a setting of the wrong type, e.g. "steps": "x"
        raise GanInvertError(f"{where}: the settings do not fit method {method}: {_first_line(exc)}") from None
    return result


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _source_entry(entry: Any) -> bool:
    return (isinstance(entry, dict) and set(entry) == {"path", "sha256"} and isinstance(entry["path"], str)
            and isinstance(entry["sha256"], str) and bool(_SHA256.fullmatch(entry["sha256"])))


def _check_config(config: dict[str, Any], where: Path) -> None:
    for key, limit in _CONFIG_LIMITS.items():
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise GanInvertError(f"{where}: generator config '{key}' must be an integer in 0..{limit}, got {value!r}")
    channels, blur = config.get("channels"), config.get("blur_kernel")
    if not isinstance(channels, dict) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 < c <= _MAX_CHANNELS for c in channels.values()):
        raise GanInvertError(f"{where}: generator config 'channels' must map resolutions to channel counts")
    if not isinstance(blur, list) or not 0 < len(blur) <= _MAX_BLUR_TAPS or not all(map(_finite_number, blur)):
        raise GanInvertError(f"{where}: generator config 'blur_kernel' must be a list of 1..{_MAX_BLUR_TAPS} numbers")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        # Fresh (aligned) copies: safetensors' buffers can be misaligned, which makes CPU kernels
        # take other vectorised paths and the render differ from the saved run's in the last bits.
        return {k: v.clone() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise GanInvertError(f"cannot read result {path}: {_first_line(exc)}") from None


def _check_names(params: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
    """The tensors must be those the JSON beside them lists."""
    listed, json_name = meta["tensors"], path.with_suffix(".json").name
    missing, unknown = sorted(set(listed) - set(params)), sorted(set(params) - set(listed))
    if missing:
        raise GanInvertError(f"{path} lacks tensor(s) {', '.join(missing[:5])} that {json_name} lists")
    if unknown:
        raise GanInvertError(f"{path} holds tensor(s) {', '.join(unknown[:5])} that {json_name} does not list")


def _check_shapes_and_hash(params: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
    """The tensors must have the shapes and the hash that the JSON beside them records."""
    listed, json_name = meta["tensors"], path.with_suffix(".json").name
    for name, tensor in sorted(params.items()):
        if list(tensor.shape) != listed[name]:
            raise GanInvertError(f"tensor {name!r} in {path} has shape {tuple(tensor.shape)}; "
                                 f"{json_name} records {tuple(listed[name])}")
    if tensors_sha256(params) != meta["tensors_sha256"]:
        raise GanInvertError(f"{path} and {json_name} do not belong together (the tensors' hash differs, e.g. after "
                             "a run killed between writing them); re-run the inversion")


def _check_tensors(params: dict[str, torch.Tensor], batch: int, where: str) -> None:
    """float32, one row per image and finite, every tensor."""
    if not params:
        raise GanInvertError(f"{where} holds no tensors")
    for name, tensor in sorted(params.items()):
        if tensor.dtype != torch.float32:
            raise GanInvertError(f"tensor {name!r} of {where} is {str(tensor.dtype).removeprefix('torch.')}; "
                                 "results hold float32")
        if tensor.ndim == 0 or tensor.shape[0] != batch:
            raise GanInvertError(f"tensor {name!r} of {where} has shape {tuple(tensor.shape)}, not {batch} "
                                 f"(the number of seeds) in its first dimension")
        check_finite(tensor, f"tensor {name!r} of {where}")


def _check_fits_method(result: InversionResult, where: str) -> None:
    """Render the result's shapes on a meta-device generator of the recorded configuration."""
    config = result.generator["config"]
    try:
        with torch.device("meta"):
            G = StyleGAN2Generator(**config)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise GanInvertError(f"{where}: the recorded generator configuration is invalid: {_first_line(exc)}") from None
    params = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in result.params.items()}
    name = result.method
    try:
        result.method_instance().render_inputs(G, params).render(G)
    except KeyError as exc:
        raise GanInvertError(f"{where}: method {name} renders from tensor {exc.args[0]!r}, which the result "
                             "lacks") from None
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as exc:
        if "meta" in str(exc).lower():
            return  # rendering branches on values (see the module docstring): checked when rendered
        raise GanInvertError(f"{where}: the tensors do not fit method {name} on a generator of the recorded "
                             f"configuration: {_first_line(exc)}") from None


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
    sources = None if any(r.source_images is None for r in results) else [s for r in results for s in r.source_images]
    return InversionResult(first.method, first.preset, first.settings,
                           {k: torch.cat([r.params[k] for r in results]) for k in first.params},
                           [s for r in results for s in r.seeds], first.generator, first.history,
                           sum(r.seconds for r in results), dict(first.extra), sources)
