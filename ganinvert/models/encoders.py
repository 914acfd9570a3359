"""Building blocks of the learned inverters (HyperInverter, SAM's predictor, F/Z+'s encoder).

* :class:`ConvBackbone` — a small residual CNN that turns an image into a pyramid of feature
  maps, one per resolution (the networks of the three papers are ResNet/pSp-style pyramids; at
  64 px a few residual stages are enough and train on a CPU);
* :func:`save_network` / :func:`load_network` — one ``.safetensors`` file per trained network, its
  kind, configuration and the sha256 of the generator it was trained for in the header, so a
  network is never silently used with another generator;
* :func:`bundled_network_path` — the networks shipped for the bundled default generator.

Example:
    >>> backbone = ConvBackbone(64, widths={64: 16, 32: 32, 16: 64, 8: 64})
    >>> feats = backbone(torch.zeros(2, 3, 64, 64))
    >>> [tuple(feats[r].shape) for r in (64, 32, 16, 8)]
    [(2, 16, 64, 64), (2, 32, 32, 32), (2, 64, 16, 16), (2, 64, 8, 8)]
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..errors import CheckpointError, GanInvertError
from ..io import atomic_write_bytes
from .stylegan2 import StyleGAN2Generator

#: Folder of the networks trained for the bundled default generator.
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "assets" / "inverters"


class ResidualBlock(torch.nn.Module):
    """conv3x3 - LeakyReLU - conv3x3 with a (strided) 1x1 shortcut; halves the side when ``down``."""

    def __init__(self, in_channels: int, out_channels: int, down: bool) -> None:
        super().__init__()
        stride = 2 if down else 1
        self.conv1 = torch.nn.Conv2d(in_channels, out_channels, 3, stride, 1)
        self.conv2 = torch.nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.norm1 = torch.nn.GroupNorm(_groups(out_channels), out_channels)
        self.norm2 = torch.nn.GroupNorm(_groups(out_channels), out_channels)
        self.shortcut = torch.nn.Conv2d(in_channels, out_channels, 1, stride) \
            if (down or in_channels != out_channels) else torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.norm1(self.conv1(x)), 0.2)
        h = self.norm2(self.conv2(h))
        return F.leaky_relu(h + self.shortcut(x), 0.2)


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 channels per group (GroupNorm is batch-independent, unlike BatchNorm,
    so a batch of N images encodes exactly as N single images)."""
    return max(1, channels // 8) if channels % 8 == 0 else 1


class ConvBackbone(torch.nn.Module):
    """Image (N, C_in, R, R) in [-1, 1] -> {resolution: features} for every resolution in ``widths``.

    Args:
        resolution: input side R (a power of two).
        widths: channels per output resolution, e.g. ``{64: 16, 32: 32, 16: 64, 8: 64}``; the
            largest key must equal ``resolution`` and every key must be a power of two.
        in_channels: input channels (3 for an image, 6 for an image and a reconstruction).
        blocks_per_stage: residual blocks per resolution (the first of a stage downsamples).
    """

    def __init__(self, resolution: int, widths: dict[int, int], in_channels: int = 3,
                 blocks_per_stage: int = 1) -> None:
        super().__init__()
        sides = sorted((int(k) for k in widths), reverse=True)
        if sides[0] != resolution or any(s & (s - 1) for s in sides):
            raise GanInvertError(f"backbone widths must start at the input side {resolution} and be powers of two, "
                                 f"got {sorted(widths)}")
        self.resolution = resolution
        self.in_channels = in_channels
        self.widths = {int(k): int(v) for k, v in widths.items()}
        self.stem = torch.nn.Conv2d(in_channels, self.widths[resolution], 3, 1, 1)
        stages, channels, side = [], self.widths[resolution], resolution
        for target in sides:
            layers = []
            while side > target:
                layers.append(ResidualBlock(channels, self.widths[target], down=True))
                channels, side = self.widths[target], side // 2
            layers += [ResidualBlock(channels, self.widths[target], down=False)
                       for _ in range(blocks_per_stage - (1 if target != resolution else 0))]
            if not layers:  # the full-resolution stage with a single block per stage
                layers.append(ResidualBlock(channels, self.widths[target], down=False))
            channels = self.widths[target]
            stages.append(torch.nn.Sequential(*layers))
        self.sides = sides
        self.stages = torch.nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        assert x.ndim == 4 and x.shape[1] == self.in_channels and x.shape[-1] == x.shape[-2] == self.resolution, \
            f"expected (N, {self.in_channels}, {self.resolution}, {self.resolution}), got {tuple(x.shape)}"
        h = F.leaky_relu(self.stem(x), 0.2)
        features = {}
        for side, stage in zip(self.sides, self.stages):
            h = stage(h)
            features[side] = h
        return features


# ----------------------------------------------------------------------------- files
def generator_sha256(G: StyleGAN2Generator) -> str | None:
    """The sha256 of the file ``G`` was loaded from (None for a generator built in memory)."""
    source = getattr(G, "source", None)
    return getattr(source, "sha256", None)


def generator_identity(G: StyleGAN2Generator) -> str:
    """:func:`generator_sha256` when G was loaded from a file, else a sha256 of its config and weights
    (what caches keyed by generator use, so an in-memory generator gets one too)."""
    sha = generator_sha256(G)
    if sha:
        return sha
    digest = hashlib.sha256(repr(G.config()).encode())
    for name, tensor in sorted(G.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(G.w_avg.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def save_network(module: torch.nn.Module, path: str | Path, *, kind: str, config: dict[str, Any],
                 generator: StyleGAN2Generator, meta: dict[str, Any] | None = None) -> Path:
    """Write ``module``'s state dict with its kind, config and generator hash, atomically.

    Args:
        module: the trained network.
        path: destination (``.safetensors``).
        kind: what the network is (``"hyperinverter"``, ``"sam-predictor"``, ...); checked on load.
        config: keyword arguments that rebuild the module (JSON-serialisable).
        generator: the generator it was trained for; its hash and configuration are stored.
        meta: anything else worth keeping (training steps, wall time, losses).
    """
    header = {
        "kind": kind,
        "config": json.dumps(config),
        "generator_sha256": generator_sha256(generator) or "",
        "generator_config": json.dumps(generator.config()),
        "meta": json.dumps(meta or {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=header))
    return path


def load_network(path: str | Path, kind: str, generator: StyleGAN2Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a file written by :func:`save_network`: (state dict, config, meta).

    Raises :class:`CheckpointError` (one line) when the file is unreadable, of another kind, or was
    trained for a generator with a different configuration or file hash.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{kind} network not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            state = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {kind} network {path}: {str(exc).splitlines()[0]}") from exc
    if header.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {header.get('kind') or 'non-ganinvert'} network, not a {kind} network")
    if json.loads(header.get("generator_config", "{}")) != json.loads(json.dumps(generator.config())):
        raise CheckpointError(f"{path} was trained for another generator architecture")
    trained_for, current = header.get("generator_sha256", ""), generator_sha256(generator)
    if trained_for and current and trained_for != current:
        raise CheckpointError(f"{path} was trained for generator {trained_for[:12]}, not {current[:12]}")
    return state, json.loads(header.get("config", "{}")), json.loads(header.get("meta", "{}"))


@functools.lru_cache(maxsize=1)
def _default_generator_sha256() -> str:
    """Hash of the bundled default generator's file (computed once per process)."""
    from .loading import file_sha256, resolve_generator_path
    return file_sha256(resolve_generator_path("default"))


def bundled_network_path(kind: str, generator: StyleGAN2Generator) -> Path:
    """The network of ``kind`` shipped for the bundled default generator (``assets/inverters``).

    Raises :class:`CheckpointError` when ``generator`` is not the bundled default, for which no
    network ships: train one with ``ganinvert train-inverter``.
    """
    if generator_sha256(generator) != _default_generator_sha256():
        raise CheckpointError(f"no bundled {kind} network for this generator; train one with "
                              f"`ganinvert train-inverter {kind}` and pass its path")
    path = BUNDLED_DIR / f"{kind}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"the bundled {kind} network is missing ({path})")
    return path


def resolve_network_path(spec: str | Path, kind: str, generator: StyleGAN2Generator) -> Path:
    """``"default"`` -> the bundled network for the default generator; anything else is a path."""
    return bundled_network_path(kind, generator) if str(spec) == "default" else Path(spec)


def optional_network_path(spec: str | Path | None, kind: str, G: StyleGAN2Generator) -> Path | None:
    """The network file a method setting names, or None where it names none.

    ``None`` -> None; ``"default"`` -> the bundled network when ``G`` is the bundled default
    generator, else None (no network ships for other generators, so methods fall back to their
    network-free behaviour); anything else is a path (it must exist).
    """
    if spec is None:
        return None
    if str(spec) == "default":
        sha = generator_sha256(G)
        if sha is None or sha != _default_generator_sha256():
            return None
    path = resolve_network_path(spec, kind, G)
    if not path.is_file():
        raise GanInvertError(f"{kind} network not found: {path}")
    return path
