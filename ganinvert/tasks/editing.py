"""Latent editing of inversion results: directions, edits and the strips/GIFs of latent walks.

Directions live in W (``style_dim``) and are applied to the w+ a result feeds the generator,
through each method's own rule (:meth:`~ganinvert.inversion.methods.base.Method.edit_inputs`:
W+ methods add ``alpha * D`` to their codes, feature-space methods only move the layers after
their feature block, Z+ methods move z+ and map, ...).

Where directions come from:

* ``"pca:K"``: the K-th principal component (0-based) of the generator's own w distribution
  (GANSpace, Härkönen et al., NeurIPS 2020, §2: PCA of w = mapping(z) for sampled z), computed
  from ``PCA_SAMPLES`` seeded z and cached per generator hash in the cache directory
  (``$GANINVERT_CACHE``, else ``~/.cache/ganinvert``). As in GANSpace, the unit component is
  scaled by its standard deviation, so a strength of 1 moves w by one sigma along it.
* a file: ``.pt``/``.pth`` (a tensor, or a dict with ``"direction"``), ``.npy`` or ``.npz`` of
  shape ``(style_dim,)``, ``(1, style_dim)`` (applied to every layer) or ``(num_ws, style_dim)``
  (one row per w+ entry), used at the scale it is stored in;
* ``FILE:K``: row K of a collection such as the file ``ganinvert directions`` writes (a dict
  with ``"directions"`` of shape (K, style_dim)); when the file holds ``"explained_variance"``
  the row is scaled by its standard deviation, so ``FILE:K`` equals ``pca:K``.

Example::

    G = load_generator("default")
    direction = resolve_direction(G, "pca:0")                # (num_ws, style_dim)
    frames = edit(G, result, direction, [-3, 0, 3])          # (3, N, 3, H, W)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..checks import check_finite
from ..errors import GanInvertError
from ..inversion.result import InversionResult
from ..io import atomic_torch_save, image_strip, save_image, save_pil, tensor_to_pil
from ..models.encoders import generator_identity
from ..models.mapping_statistics import mapped_latents
from ..models.stylegan2 import StyleGAN2Generator

#: Mapping samples behind the PCA directions (GANSpace §2 uses "N random vectors"; 10 000 keeps the
#: covariance estimate of a 512-d w well conditioned and takes seconds on a CPU).
PCA_SAMPLES = 10_000
PCA_SEED = 0
CACHE_ENV_VAR = "GANINVERT_CACHE"
DIRECTION_SUFFIXES = (".pt", ".pth", ".npy", ".npz")


# ----------------------------------------------------------------------------- generator identity
def cache_dir() -> Path:
    """``$GANINVERT_CACHE`` if set, else ``~/.cache/ganinvert``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "ganinvert"


# ----------------------------------------------------------------------------- PCA directions
@dataclass(frozen=True)
class PCADirections:
    """Principal directions of w, strongest first.

    Attributes:
        directions: (K, style_dim) unit vectors (sign fixed: largest-magnitude entry positive).
        explained_variance: (K,) variance of w along each direction.
        mean: (style_dim,) mean w of the samples.
        generator_sha256: the generator they belong to.
        samples, seed: how many seeded z were mapped, and the seed.
    """

    directions: torch.Tensor
    explained_variance: torch.Tensor
    mean: torch.Tensor
    generator_sha256: str
    samples: int
    seed: int

    def first(self, k: int) -> "PCADirections":
        if not 1 <= k <= self.directions.shape[0]:
            raise GanInvertError(f"--k must be in 1..{self.directions.shape[0]} (style_dim), got {k}")
        return PCADirections(self.directions[:k], self.explained_variance[:k], self.mean,
                             self.generator_sha256, self.samples, self.seed)

    def to_dict(self) -> dict[str, Any]:
        return {"directions": self.directions, "explained_variance": self.explained_variance, "mean": self.mean,
                "generator_sha256": self.generator_sha256, "samples": self.samples, "seed": self.seed}

    def save(self, path: str | Path) -> Path:
        """Write a ``.pt`` file (atomically) that ``--direction FILE:K`` and :func:`load_direction` read."""
        path = Path(path)
        if path.suffix not in (".pt", ".pth"):
            raise GanInvertError(f"directions are written as a .pt file, got {path.name}")
        atomic_torch_save(self.to_dict(), path)
        return path


@torch.no_grad()
def compute_pca_directions(G: StyleGAN2Generator, samples: int = PCA_SAMPLES, seed: int = PCA_SEED,
                           chunk: int = 2000) -> PCADirections:
    """PCA of ``samples`` mapped w (z from a ``torch.Generator`` seeded with ``seed``), uncached."""
    if samples <= G.style_dim:
        raise GanInvertError(f"PCA needs more samples than style_dim ({G.style_dim}), got {samples}")
    w = mapped_latents(G, samples, seed, chunk).double().cpu()
    mean = w.mean(0)
    cov = torch.cov((w - mean).T)
    variance, vectors = torch.linalg.eigh(cov)  # ascending
    variance, vectors = variance.flip(0).clamp_min(0), vectors.flip(1).T  # rows = components, strongest first
    # eigh's sign is arbitrary; fix it so that the same generator gives the same directions everywhere.
    pivot = vectors.abs().argmax(1)
    vectors = vectors * vectors.gather(1, pivot[:, None]).sign()
    return PCADirections(vectors.float(), variance.float(), mean.float(), generator_identity(G), samples, seed)


def pca_directions(G: StyleGAN2Generator, samples: int = PCA_SAMPLES, seed: int = PCA_SEED,
                   use_cache: bool = True) -> PCADirections:
    """All ``style_dim`` principal directions of G's w, cached per generator hash (see module docstring)."""
    sha = generator_identity(G)
    path = cache_dir() / "directions" / f"pca_{sha[:24]}_n{samples}_s{seed}.pt"
    if use_cache and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("generator_sha256") == sha and cached["directions"].shape == (G.style_dim, G.style_dim):
                return PCADirections(cached["directions"], cached["explained_variance"], cached["mean"], sha,
                                     int(cached["samples"]), int(cached["seed"]))
        except Exception:  # a foreign or damaged cache file is recomputed, never trusted
            pass
    result = compute_pca_directions(G, samples, seed)
    if use_cache:
        try:
            result.save(path)
        except OSError:  # a read-only cache only costs the recomputation next time
            pass
    return result


# ----------------------------------------------------------------------------- loading directions
def as_layer_direction(G: StyleGAN2Generator, direction: torch.Tensor | np.ndarray, what: str = "direction") -> torch.Tensor:
    """Bring a (style_dim,), (1, style_dim) or (num_ws, style_dim) direction to (num_ws, style_dim)."""
    d = torch.as_tensor(direction)
    if not d.is_floating_point():
        raise GanInvertError(f"{what} must hold floating-point values, got {d.dtype}")
    d = d.detach().float().cpu()
    given = tuple(d.shape)
    accepted = f"({G.style_dim},), (1, {G.style_dim}) or ({G.num_ws}, {G.style_dim})"
    if d.ndim == 1:
        d = d[None]
    if d.ndim != 2 or d.shape[1] != G.style_dim:
        raise GanInvertError(f"{what} has shape {given} but this generator (style_dim {G.style_dim}, "
                             f"{G.num_ws} ws) needs {accepted}")
    if d.shape[0] not in (1, G.num_ws):
        raise GanInvertError(f"{what} has {d.shape[0]} rows; expected {accepted}")
    check_finite(d, what)
    if not d.abs().sum():
        raise GanInvertError(f"{what} is all zeros")
    return d.expand(G.num_ws, -1).clone().to(G.w_avg.device)


def _read_direction_file(path: Path) -> tuple[Any, torch.Tensor | None, bool, str | None]:
    """(array, explained_variance or None, is_collection, generator_sha256 or None) of a file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None, False, None
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if torch.is_tensor(obj):
                return obj, None, False, None
            if not isinstance(obj, dict):
                raise GanInvertError(f"{path} holds a {type(obj).__name__}, not a direction tensor or dict")
            arrays = obj
    except GanInvertError:
        raise
    except Exception as exc:  # numpy/torch raise many types for foreign or damaged files
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise GanInvertError(f"cannot read direction file {path}: {reason}") from None
    sha = arrays.get("generator_sha256")
    sha = sha if isinstance(sha, str) else None
    if "directions" in arrays:
        return arrays["directions"], arrays.get("explained_variance"), True, sha
    if "direction" in arrays:
        return arrays["direction"], None, False, sha
    tensors = [k for k, v in arrays.items() if torch.is_tensor(v) or isinstance(v, np.ndarray)]
    if len(tensors) != 1:
        raise GanInvertError(f"{path} holds {', '.join(map(str, arrays)) or 'nothing'}; expected one array or "
                             "a 'direction' / 'directions' entry")
    return arrays[tensors[0]], None, False, sha


def load_direction(G: StyleGAN2Generator, path: str | Path, index: int | None = None) -> torch.Tensor:
    """Read a direction file (see the module docstring) as (num_ws, style_dim) for G."""
    path = Path(path)
    if path.suffix.lower() not in DIRECTION_SUFFIXES:
        raise GanInvertError(f"direction file {path.name} must end in {', '.join(DIRECTION_SUFFIXES)}")
    if not path.is_file():
        raise GanInvertError(f"direction file not found: {path}")
    values, variance, collection, sha = _read_direction_file(path)
    if sha is not None and sha != generator_identity(G):
        raise GanInvertError(f"directions in {path} were computed for generator {sha[:12]}…, "
                             f"not this one ({generator_identity(G)[:12]}…)")
    values = torch.as_tensor(values) if isinstance(values, np.ndarray) else values
    if not torch.is_tensor(values):
        raise GanInvertError(f"{path} does not hold a direction array")
    if collection:
        if values.ndim != 2 or values.shape[1] != G.style_dim:
            raise GanInvertError(f"'directions' in {path} must be (K, {G.style_dim}) for this generator "
                                 f"(style_dim {G.style_dim}), got {tuple(values.shape)}")
        if not values.is_floating_point():
            raise GanInvertError(f"'directions' in {path} must hold floating-point values, got {values.dtype}")
        if index is None:
            if values.shape[0] != 1:
                raise GanInvertError(f"{path} holds {values.shape[0]} directions; pick one with {path}:INDEX")
            index = 0
        if not 0 <= index < values.shape[0]:
            raise GanInvertError(f"direction index {index} is out of range 0..{values.shape[0] - 1} for {path}")
        row = values[index].float()
        if variance is not None:
            row = row * _checked_variance(variance, values.shape[0], path)[index].sqrt()
        return as_layer_direction(G, row, f"direction {index} of {path}")
    if index is not None:
        raise GanInvertError(f"{path} holds a single direction; drop ':{index}'")
    return as_layer_direction(G, values, f"direction in {path}")


def _checked_variance(variance: Any, rows: int, path: Path) -> torch.Tensor:
    """A file's ``explained_variance``: (K,) finite, non-negative floats, one per direction."""
    if isinstance(variance, np.ndarray) and variance.dtype.kind == "f":
        variance = torch.from_numpy(variance)
    if not torch.is_tensor(variance) or not variance.is_floating_point() or tuple(variance.shape) != (rows,):
        got = tuple(variance.shape) if torch.is_tensor(variance) else type(variance).__name__
        raise GanInvertError(f"'explained_variance' in {path} must be {rows} floats, one per direction, got {got}")
    check_finite(variance, f"'explained_variance' in {path}")
    if (variance < 0).any():
        raise GanInvertError(f"'explained_variance' in {path} has negative entries")
    return variance.float()


def resolve_direction(G: StyleGAN2Generator, spec: str | Path | torch.Tensor) -> torch.Tensor:
    """A direction for G from ``"pca:K"``, a file, ``"FILE:K"`` or a tensor; (num_ws, style_dim)."""
    if torch.is_tensor(spec) or isinstance(spec, np.ndarray):
        return as_layer_direction(G, spec)
    text = str(spec).strip()
    match = re.fullmatch(r"pca:(-?\d+)", text)
    if match:
        k = int(match.group(1))
        if not 0 <= k < G.style_dim:
            raise GanInvertError(f"pca component {k} is out of range 0..{G.style_dim - 1}")
        pca = pca_directions(G)
        return as_layer_direction(G, pca.directions[k] * pca.explained_variance[k].sqrt(), f"pca:{k}")
    if text.startswith("pca:"):
        raise GanInvertError(f"--direction {text!r}: expected pca:K with an integer K >= 0")
    match = re.fullmatch(r"(.+):(\d+)", text)
    if match and not Path(text).exists():
        return load_direction(G, match.group(1), int(match.group(2)))
    return load_direction(G, text)


# ----------------------------------------------------------------------------- editing
def parse_strengths(text: str) -> list[float]:
    """``"-3,0,1.5"`` -> [-3.0, 0.0, 1.5]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GanInvertError(f"--strength must be comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise GanInvertError(f"--strength must list at least one finite number, got {text!r}")
    return values


def parse_layers(text: str | None, num_ws: int) -> list[int] | None:
    """``"i-j"`` (inclusive), ``"i,j,k"``, ``"i"`` or ``"all"``/None (every layer) -> ws indices."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    layers: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise GanInvertError(f"--layers must look like 'i-j', 'i,j,k' or 'all', got {text!r}")
        lo, hi = int(match.group(1)), int(match.group(2) if match.group(2) is not None else match.group(1))
        if lo > hi:
            raise GanInvertError(f"--layers range {lo}-{hi} is empty")
        if hi >= num_ws:  # before expanding: "0-3000000000" would fill the memory first
            raise GanInvertError(f"--layers {part.strip()} out of range: this generator has ws indices "
                                 f"0..{num_ws - 1}")
        layers.update(range(lo, hi + 1))
    return sorted(layers)


@torch.no_grad()
def edit(G: StyleGAN2Generator, result: InversionResult, direction: torch.Tensor, strengths: Sequence[float],
         layers: Sequence[int] | None = None) -> torch.Tensor:
    """Render ``result`` moved by ``alpha * direction`` for every alpha in ``strengths``.

    Each method applies the move with its own rule (``Method.edit_inputs``), so the same call
    edits W+, Z+, feature-space, PTI and SPHInX results.

    Args:
        G: the generator the result was made with.
        result: an inversion result (any batch size N).
        direction: (num_ws, style_dim), e.g. from :func:`resolve_direction`.
        strengths: the alphas.
        layers: ws indices to move (None = all).

    Returns:
        (len(strengths), N, 3, H, W) renders in [-1, 1] (unclamped).
    """
    result.check_generator(G)
    direction = as_layer_direction(G, direction)
    strengths = [float(a) for a in strengths]
    if not strengths or not all(math.isfinite(a) for a in strengths):
        raise GanInvertError(f"edit strengths must be a non-empty list of finite numbers, got {strengths}")
    if layers is not None:
        layers = [int(i) for i in layers]
        bad = [i for i in layers if not 0 <= i < G.num_ws]
        if not layers or bad:
            raise GanInvertError(f"edit layers must be a non-empty subset of 0..{G.num_ws - 1}, got {layers}")
    method = result.method_instance()
    params = {k: v.to(G.w_avg.device) for k, v in result.params.items()}
    frames = [method.edit_inputs(G, params, direction, alpha, layers).render(G) for alpha in strengths]
    return check_finite(torch.stack(frames), f"the edit of this {result.method} result")


@torch.no_grad()
def edit_distances(frames: torch.Tensor, reference: torch.Tensor,
                   lpips: torch.nn.Module | None = None) -> list[dict[str, float]]:
    """Per frame, the mean over the batch of RMSE (and LPIPS) to ``reference`` (N, 3, H, W).

    Used to check that an edit changes the image monotonically in |alpha|.
    """
    rows = []
    for frame in frames:
        row = {"rmse": float((frame.clamp(-1, 1) - reference.clamp(-1, 1)).square().mean().sqrt())}
        if lpips is not None:
            row["lpips"] = float(lpips(frame.clamp(-1, 1), reference.clamp(-1, 1)).mean())
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- strips and GIFs
def write_frames(frames: torch.Tensor, labels: Sequence[str], out_dir: Path, prefix: str,
                 gif_ms: int | None = None, size: int = 256) -> list[Path]:
    """Write each frame (T, 3, H, W) as ``{prefix}_{t:02d}.png``, a labelled ``{prefix}_strip.png`` and,
    with ``gif_ms``, a looping ``{prefix}.gif`` (frames scaled to ``size`` px, ``gif_ms`` per frame)."""
    out_dir = Path(out_dir)
    written = []
    for t, frame in enumerate(frames):
        path = out_dir / f"{prefix}_{t:02d}.png"
        save_image(frame, path)
        written.append(path)
    strip = out_dir / f"{prefix}_strip.png"
    save_pil(image_strip(list(frames), list(labels), height=min(size, 256)), strip)
    written.append(strip)
    if gif_ms is not None:
        written.append(save_gif(frames, out_dir / f"{prefix}.gif", gif_ms, size))
    return written


def save_gif(frames: Sequence[torch.Tensor], path: Path, duration_ms: int = 120, size: int = 256) -> Path:
    """A looping GIF of (3, H, W) frames, each scaled to ``size`` px (nearest when enlarging)."""
    from PIL import Image

    images = []
    for frame in frames:
        img = tensor_to_pil(frame)
        resample = Image.Resampling.NEAREST if img.width < size else Image.Resampling.LANCZOS
        images.append(img.resize((size, size), resample))
    save_pil(images[0], path, save_all=True, append_images=images[1:], duration=int(duration_ms), loop=0)
    return Path(path)
