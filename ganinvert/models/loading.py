"""Load a StyleGAN2 generator from a checkpoint file, inferring its whole configuration.

Supported:

* rosinality/stylegan2-pytorch checkpoints: ``{"g_ema": state_dict, "latent_avg": w}`` as
  written by its ``train.py`` (e.g. ``stylegan2-ffhq-config-f.pt``), a bare ``g_ema`` state
  dict, or the same tensors in a ``.safetensors`` file;
* NVIDIA stylegan2-ada-pytorch network pickles (``G_ema`` of the StyleGAN2 'skip'
  architecture), read by a restricted unpickler (:mod:`.nvidia_pkl`) without NVIDIA's code;
* ``"default"``: the 64 px face generator shipped in ``ganinvert/assets``.

Resolution, style_dim, n_mlp and every per-resolution channel width come from the tensor
shapes, so reduced-width checkpoints load as they are.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from .stylegan2 import StyleGAN2Generator

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_GENERATOR = ASSETS / "stylegan2_faces64.pt"
SUPPORTED = ("supported: rosinality stylegan2-pytorch checkpoints ({'g_ema', 'latent_avg'} or a bare "
             "g_ema state dict, .pt or .safetensors) and NVIDIA stylegan2-ada-pytorch .pkl files")


@dataclass(frozen=True)
class GeneratorSource:
    """Where a generator came from; results record it to refuse mismatched generators."""

    path: str
    sha256: str
    kind: str  # "rosinality" | "nvidia-pkl" | "safetensors"


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


def infer_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """Generator configuration from rosinality state-dict shapes."""
    try:
        style_dim = state_dict["style.1.weight"].shape[1]
        n_mlp = len([k for k in state_dict if re.fullmatch(r"style\.\d+\.weight", k)])
        channels = {4: state_dict["input.input"].shape[1]}
        n_rgbs = len([k for k in state_dict if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
        for i in range(n_rgbs):
            channels[8 * 2 ** i] = state_dict[f"convs.{2 * i}.conv.weight"].shape[1]
    except (KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"not a StyleGAN2 generator state dict (missing {exc}); {SUPPORTED}") from None
    return {"resolution": 4 * 2 ** n_rgbs, "style_dim": int(style_dim), "n_mlp": n_mlp,
            "channels": {int(r): int(c) for r, c in channels.items()}}


def _looks_like_discriminator(keys: set[str]) -> bool:
    return "final_linear.0.weight" in keys or any(k.startswith("b4.") and "fc" in k for k in keys) \
        or ("convs.0.0.weight" in keys and "style.1.weight" not in keys)


def _read_torch_file(path: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, str]:
    """Read a rosinality-format file (torch zip, legacy torch pickle or safetensors)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
        latent_avg = tensors.pop("latent_avg", None)
        return tensors, latent_avg, "safetensors"
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
    if "g_ema" in obj:
        state_dict, latent_avg = obj["g_ema"], obj.get("latent_avg")
    elif "style.1.weight" in obj:
        state_dict, latent_avg = obj, None
    elif {"d", "D"} & set(obj) or _looks_like_discriminator(set(obj)):
        raise CheckpointError(f"{path} holds a discriminator and no generator (g_ema); {SUPPORTED}")
    elif "g" in obj and isinstance(obj["g"], dict):
        state_dict, latent_avg = obj["g"], obj.get("latent_avg")
    else:
        keys = ", ".join(sorted(map(str, obj))[:5])
        raise CheckpointError(f"{path} is not a StyleGAN2 generator checkpoint (top-level keys: {keys}); {SUPPORTED}")
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError(f"{path}: g_ema is not a state dict of tensors")
    return dict(state_dict), latent_avg, "rosinality"


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if not head:
        raise CheckpointError(f"{path} is empty")
    if head.startswith(b"PK\x03\x04") or path.suffix == ".safetensors":
        return "torch"
    if head[:1] == b"\x80":
        from .nvidia_pkl import looks_like_nvidia_pickle
        return "nvidia" if looks_like_nvidia_pickle(path) else "torch"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:512]):
        raise CheckpointError(f"{path} is a text file, not a checkpoint; {SUPPORTED}")
    raise CheckpointError(f"{path} is not a recognised checkpoint format; {SUPPORTED}")


def build_generator(state_dict: dict[str, torch.Tensor], latent_avg: torch.Tensor | None,
                    where: str = "checkpoint") -> StyleGAN2Generator:
    """Instantiate a generator whose configuration is inferred from ``state_dict`` and load it."""
    config = infer_config(state_dict)
    G = StyleGAN2Generator(**config)
    state_dict = {k: v.float() for k, v in state_dict.items()}
    expected = G.state_dict()
    for key, tensor in state_dict.items():
        # load_state_dict reports size mismatches as a multi-line RuntimeError; name the first one.
        if key in expected and tensor.shape != expected[key].shape:
            raise CheckpointError(f"{where}: {key} has shape {tuple(tensor.shape)}, but the inferred "
                                  f"architecture needs {tuple(expected[key].shape)}")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: {key} contains NaN or infinite values")
    missing, unexpected = G.load_state_dict(state_dict, strict=False)
    # Older rosinality checkpoints lack the (constant) FIR buffers; the freshly built ones are correct.
    missing = [k for k in missing if not k.endswith(".kernel")]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{where} does not match the StyleGAN2 architecture ({detail})")
    if latent_avg is not None:
        latent_avg = latent_avg.float().reshape(-1)
        if latent_avg.numel() != G.style_dim:
            raise CheckpointError(f"{where}: latent_avg has {latent_avg.numel()} entries, expected {G.style_dim}")
        G.w_avg.copy_(latent_avg)
    else:
        G.w_avg.copy_(G.estimate_w_avg())
    return G


def load_generator(path: str | Path = "default", device: str | torch.device = "cpu") -> StyleGAN2Generator:
    """Load a StyleGAN2 generator for inversion: frozen, in eval mode, on ``device``.

    Args:
        path: a checkpoint file or ``"default"`` for the bundled 64 px face generator.
        device: where to put it.

    Returns:
        The generator, with ``G.source`` (:class:`GeneratorSource`) recording file and hash.

    Example:
        >>> G = load_generator("default")  # doctest: +SKIP
        >>> G.synthesis(G.broadcast(G.mapping(torch.randn(1, G.style_dim)))).shape  # doctest: +SKIP
        torch.Size([1, 3, 64, 64])
    """
    p = resolve_generator_path(path)
    kind = _sniff(p)
    if kind == "nvidia":
        from .nvidia_pkl import read_nvidia_pickle
        loaded = read_nvidia_pickle(p)
        G = build_generator(loaded.state_dict, loaded.latent_avg, where=str(p))
        source_kind = "nvidia-pkl"
    else:
        state_dict, latent_avg, source_kind = _read_torch_file(p)
        G = build_generator(state_dict, latent_avg, where=str(p))
    G.source = GeneratorSource(path=str(path), sha256=file_sha256(p), kind=source_kind)
    G.requires_grad_(False)
    return G.eval().to(device)


def save_generator(G: StyleGAN2Generator, path: str | Path, extra: dict | None = None) -> None:
    """Write ``G`` in rosinality's checkpoint format (atomically)."""
    from ..io import atomic_torch_save
    atomic_torch_save({"g_ema": G.state_dict(), "latent_avg": G.w_avg.clone(), **(extra or {})}, Path(path))
