"""Load a StyleGAN2 generator from a checkpoint file, inferring its whole configuration.

The formats :func:`load_generator` reads are the entries of :data:`FORMATS`, each a
:class:`CheckpointFormat` (name, description, content sniffer, reader); the error messages
(:data:`SUPPORTED`), the CLI's ``--generator`` help (:data:`GENERATOR_HELP`) and
:attr:`GeneratorSource.kind` all come from that table, so a new format is one more entry:

* rosinality/stylegan2-pytorch checkpoints: ``{"g_ema": state_dict, "latent_avg": w}`` as
  written by its ``train.py`` (e.g. ``stylegan2-ffhq-config-f.pt``) or a bare ``g_ema`` state
  dict, and the same tensors in a ``.safetensors`` file;
* NVIDIA stylegan2-ada-pytorch network pickles (``G_ema`` of the StyleGAN2 'skip'
  architecture), read by a restricted unpickler (:mod:`.nvidia_pkl`) without NVIDIA's code.

``"default"`` names the 64 px face generator shipped in ``ganinvert/assets``.

Resolution, style_dim, n_mlp and every per-resolution channel width come from the tensor
shapes, so reduced-width checkpoints load as they are. Every tensor is checked (floating point,
finite, the shape the inferred architecture needs) before the generator is allocated.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError, GanInvertError
from .nvidia_pkl import SNIFF_BYTES, looks_like_nvidia_head, read_nvidia_pickle
from .stylegan2 import StyleGAN2Generator

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_GENERATOR = ASSETS / "stylegan2_faces64.pt"

#: What a reader returns: a rosinality-layout state dict and the stored average w (or None).
CheckpointTensors = tuple[dict[str, torch.Tensor], torch.Tensor | None]


@dataclass(frozen=True)
class CheckpointFormat:
    """One generator file format.

    Attributes:
        name: recorded as :attr:`GeneratorSource.kind` of generators read from such files.
        description: what such a file is, for help texts and error messages.
        sniff: ``(path, first SNIFF_BYTES bytes) -> bool``, whether this reader takes the file;
            :data:`FORMATS` are tried in order and the first match reads it.
        read: ``path -> (state dict, latent_avg or None)``; raises :class:`CheckpointError`.
    """

    name: str
    description: str
    sniff: Callable[[Path, bytes], bool]
    read: Callable[[Path], CheckpointTensors]


@dataclass(frozen=True)
class GeneratorSource:
    """Where a generator came from; results record it to refuse mismatched generators."""

    path: str
    sha256: str
    kind: str  # the name of the CheckpointFormat that read the file (see FORMATS)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_generator_path(path: str | Path) -> Path:
    """Map ``"default"`` to the bundled file and check that the path exists."""
    if str(path) == "default":
        if not DEFAULT_GENERATOR.is_file():
            raise CheckpointError(f"the bundled default generator is missing ({DEFAULT_GENERATOR}); "
                                  "reinstall ganinvert or pass --generator PATH")
        return DEFAULT_GENERATOR
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"generator checkpoint not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"generator checkpoint is not a file: {p}")
    return p


# ----------------------------------------------------------------------------- checks
def _what(value: Any) -> str:
    """A short name of a value's type for error messages ("a str", "a torch.int64 tensor")."""
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor"
    return f"a {type(value).__name__}"


def _check_weights(state_dict: Any, where: str) -> None:
    """Every entry is a named, floating-point, finite tensor (checked before anything is built)."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{where}: the generator state dict is {_what(state_dict)}, not a dict")
    for key, tensor in state_dict.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: the state dict has a key of type {type(key).__name__}, not a name")
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            raise CheckpointError(f"{where}: {key} is {_what(tensor)}, expected a floating-point tensor")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: {key} contains NaN or infinite values")


def _checked_latent_avg(latent_avg: Any, style_dim: int, where: str) -> torch.Tensor | None:
    """The stored average w as a (style_dim,) float tensor; (1, style_dim) is accepted as well."""
    if latent_avg is None:
        return None
    if not torch.is_tensor(latent_avg) or not latent_avg.is_floating_point():
        raise CheckpointError(f"{where}: latent_avg is {_what(latent_avg)}, expected a tensor of {style_dim} floats")
    if latent_avg.numel() != style_dim or latent_avg.ndim == 0 or latent_avg.shape[-1] != style_dim:
        raise CheckpointError(f"{where}: latent_avg has shape {tuple(latent_avg.shape)}, expected ({style_dim},)")
    if not torch.isfinite(latent_avg).all():
        raise CheckpointError(f"{where}: latent_avg contains NaN or infinite values")
    return latent_avg.float().reshape(style_dim)


def infer_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """Generator configuration from rosinality state-dict shapes."""
    try:
        style_dim = state_dict["style.1.weight"].shape[1]
        n_mlp = len([k for k in state_dict if re.fullmatch(r"style\.\d+\.weight", k)])
        channels = {4: state_dict["input.input"].shape[1]}
        n_rgbs = len([k for k in state_dict if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
        for i in range(n_rgbs):
            channels[8 * 2 ** i] = state_dict[f"convs.{2 * i}.conv.weight"].shape[1]
    except KeyError as exc:
        raise CheckpointError(f"not a StyleGAN2 generator state dict (missing {exc}); {SUPPORTED}") from None
    except (IndexError, AttributeError):
        raise CheckpointError(f"not a StyleGAN2 generator state dict (style.1.weight, input.input and "
                              f"convs.*.conv.weight have too few dimensions); {SUPPORTED}") from None
    if style_dim <= 0 or min(channels.values()) <= 0:
        raise CheckpointError(f"not a StyleGAN2 generator state dict (style_dim {style_dim}, channels "
                              f"{channels}: empty layers); {SUPPORTED}")
    return {"resolution": 4 * 2 ** n_rgbs, "style_dim": int(style_dim), "n_mlp": n_mlp,
            "channels": {int(r): int(c) for r, c in channels.items()}}


def _expected_shapes(config: dict, where: str) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of ``StyleGAN2Generator(**config)``, built on the meta device: a
    file's few tensors may imply a network of any size, so nothing is allocated before the
    tensors are known to fill it."""
    try:
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in StyleGAN2Generator(**config).state_dict().items()}
    except (GanInvertError, RuntimeError, OverflowError, TypeError) as exc:  # sizes beyond int64 (torch: TypeError)
        raise CheckpointError(f"{where}: the inferred architecture (resolution {config['resolution']}, channels "
                              f"{config['channels']}) is too large to build ({type(exc).__name__})") from None


# ----------------------------------------------------------------------------- readers
def _looks_like_discriminator(keys: set[str]) -> bool:
    return "final_linear.0.weight" in keys or any(k.startswith("b4.") and "fc" in k for k in keys) \
        or ("convs.0.0.weight" in keys and "style.1.weight" not in keys)


def _read_safetensors(path: Path) -> CheckpointTensors:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"{path} is not a readable safetensors file ({reason})") from None
    latent_avg = tensors.pop("latent_avg", None)
    return tensors, latent_avg


def _read_torch_checkpoint(path: Path) -> CheckpointTensors:
    """A rosinality checkpoint (torch zip or legacy torch pickle), read with ``weights_only``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is truncated or not a torch checkpoint ({first[:160]})") from None
    except Exception as exc:  # torch's weights_only unpickler raises pickle.UnpicklingError and others
        raise CheckpointError(f"{path} holds objects other than tensors and cannot be loaded safely "
                              f"({type(exc).__name__}); {SUPPORTED}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict; {SUPPORTED}")
    names = {k for k in obj if isinstance(k, str)}
    if "g_ema" in obj:
        state_dict, latent_avg = obj["g_ema"], obj.get("latent_avg")
    elif "style.1.weight" in obj:
        state_dict, latent_avg = obj, None
    elif {"d", "D"} & names or _looks_like_discriminator(names):
        raise CheckpointError(f"{path} holds a discriminator and no generator (g_ema); {SUPPORTED}")
    elif "g" in obj and isinstance(obj["g"], dict):
        state_dict, latent_avg = obj["g"], obj.get("latent_avg")
    else:
        keys = ", ".join(sorted(map(str, obj))[:5])
        raise CheckpointError(f"{path} is not a StyleGAN2 generator checkpoint (top-level keys: {keys}); {SUPPORTED}")
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError(f"{path}: g_ema is not a state dict of tensors")
    return dict(state_dict), latent_avg


def _read_nvidia(path: Path) -> CheckpointTensors:
    net = read_nvidia_pickle(path)
    return net.state_dict, net.latent_avg


def _is_safetensors(path: Path, head: bytes) -> bool:
    """By name, or by content: a little-endian u64 header length (safetensors caps it at
    100 MB) followed by the JSON header's opening brace."""
    return path.suffix == ".safetensors" or (
        len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000)


def _is_torch_file(path: Path, head: bytes) -> bool:
    """A ``torch.save`` zip archive, or a pickle (legacy ``torch.save`` and plain pickles; the
    latter are refused by the reader with a message naming what they hold)."""
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


#: The formats :func:`load_generator` reads, in the order their sniffers are tried.
FORMATS: tuple[CheckpointFormat, ...] = (
    CheckpointFormat("safetensors", ".safetensors files holding a rosinality g_ema state dict (and latent_avg)",
                     _is_safetensors, _read_safetensors),
    CheckpointFormat("nvidia-pkl", "NVIDIA stylegan2-ada-pytorch network .pkl files (StyleGAN2 G_ema)",
                     lambda path, head: looks_like_nvidia_head(head), _read_nvidia),
    CheckpointFormat("rosinality", "rosinality stylegan2-pytorch .pt checkpoints ({'g_ema', 'latent_avg'} "
                     "or a bare g_ema state dict)", _is_torch_file, _read_torch_checkpoint),
)


def describe_formats() -> str:
    """The readable formats as one phrase ("A, B or C")."""
    descriptions = [fmt.description for fmt in FORMATS]
    return ", ".join(descriptions[:-1]) + f" or {descriptions[-1]}" if len(descriptions) > 1 else descriptions[0]


SUPPORTED = f"supported: {describe_formats()}"
#: Help text of the CLI's ``--generator`` option.
GENERATOR_HELP = f"Generator checkpoint: {describe_formats()}; or 'default' for the bundled 64 px faces."


def sniff_format(path: Path) -> CheckpointFormat:
    """The entry of :data:`FORMATS` that reads ``path``, judged by its first bytes (and name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    if not head:
        raise CheckpointError(f"{path} is empty")
    for fmt in FORMATS:
        if fmt.sniff(path, head):
            return fmt
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:512]):
        raise CheckpointError(f"{path} is a text file, not a checkpoint; {SUPPORTED}")
    raise CheckpointError(f"{path} is not a recognised checkpoint format; {SUPPORTED}")


# ----------------------------------------------------------------------------- building
def build_generator(state_dict: dict[str, torch.Tensor], latent_avg: torch.Tensor | None,
                    where: str = "checkpoint") -> StyleGAN2Generator:
    """Instantiate a generator whose configuration is inferred from ``state_dict`` and load it.

    Raises:
        CheckpointError: a tensor that is not floating point or not finite (named), a
            latent_avg of the wrong type or shape, or tensors that do not fill the inferred
            architecture; all found before the generator is allocated.
    """
    _check_weights(state_dict, where)
    try:
        config = infer_config(state_dict)
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    expected = _expected_shapes(config, where)
    for key, tensor in state_dict.items():
        if key in expected and tuple(tensor.shape) != expected[key]:
            raise CheckpointError(f"{where}: {key} has shape {tuple(tensor.shape)}, but the inferred "
                                  f"architecture needs {expected[key]}")
    # Older rosinality checkpoints lack the (constant) FIR buffers; the freshly built ones are correct.
    missing = [k for k in expected if k not in state_dict and not k.endswith(".kernel")]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{where} does not match the StyleGAN2 architecture ({detail})")
    latent_avg = _checked_latent_avg(latent_avg, config["style_dim"], where)
    G = StyleGAN2Generator(**config)
    G.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=False)
    G.w_avg.copy_(G.estimate_w_avg() if latent_avg is None else latent_avg)
    return G


def load_generator(path: str | Path = "default", device: str | torch.device = "cpu") -> StyleGAN2Generator:
    """Load a StyleGAN2 generator for inversion: frozen, in eval mode, on ``device``.

    Args:
        path: a checkpoint file in one of the :data:`FORMATS`, or ``"default"`` for the bundled
            64 px face generator.
        device: where to put it.

    Returns:
        The generator, with ``G.source`` (:class:`GeneratorSource`) recording file, hash and format.

    Example:
        >>> G = load_generator("default")  # doctest: +SKIP
        >>> G.synthesis(G.broadcast(G.mapping(torch.randn(1, G.style_dim)))).shape  # doctest: +SKIP
        torch.Size([1, 3, 64, 64])
    """
    p = resolve_generator_path(path)
    fmt = sniff_format(p)
    state_dict, latent_avg = fmt.read(p)
    G = build_generator(state_dict, latent_avg, where=str(p))
    G.source = GeneratorSource(path=str(path), sha256=file_sha256(p), kind=fmt.name)
    G.requires_grad_(False)
    return G.eval().to(device)


def save_generator(G: StyleGAN2Generator, path: str | Path, extra: dict | None = None) -> None:
    """Write ``G`` in rosinality's checkpoint format (atomically)."""
    from ..io import atomic_torch_save
    atomic_torch_save({"g_ema": G.state_dict(), "latent_avg": G.w_avg.clone(), **(extra or {})}, Path(path))
