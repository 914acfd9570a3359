"""LPIPS v0.1 perceptual distance (Zhang et al., CVPR 2018) in pure PyTorch, without torchvision.

The computation follows the ``lpips`` package 0.1.4 (``LPIPS(net=..., version="0.1")`` with
``normalize=False``): inputs in [-1, 1] are shifted/scaled by the ``ScalingLayer`` constants,
five ReLU activations of an ImageNet trunk (AlexNet or VGG16, torchvision ``features`` layout)
are unit-normalised over channels, their squared differences are weighted by the learned 1x1
linear heads ``lin0..lin4`` and averaged over space (or, with ``spatial=True``, each map is
bilinearly upsampled to the input size) and summed over layers.

Weights are never downloaded. :func:`resolve_lpips_weights` looks, in order, at

1. the ``weights`` argument (the CLI's ``--lpips-weights``),
2. the environment variable ``GANINVERT_LPIPS_WEIGHTS``,
3. torchvision's cache (``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth`` or
   ``vgg16-397923af.pth``) for the trunk, together with the heads shipped inside an installed
   ``lpips`` package (``<lpips>/weights/v0.1/alex.pth``; located without importing it).

A weights source is either one complete state dict (trunk ``features.*`` + heads
``lin{0..4}.model.1.weight``) or two files, trunk then heads, given as a pair or as one string
joined by ``os.pathsep`` (``trunk.pth:alex.pth``). Files are torch state dicts or
``.safetensors``; the ``lpips.LPIPS`` module's own key names (``net.sliceK.N.*``) load too.

Example::

    lpips = LPIPS("lpips_alex.pth")
    distances = lpips(x, y)       # (N,) for x, y of shape (N, 3, H, W) in [-1, 1]
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GanInvertError, WeightsNotFoundError

ENV_VAR = "GANINVERT_LPIPS_WEIGHTS"
NETS = ("alex", "vgg")

#: A weights source: one path, a ``(trunk, heads)`` pair, or ``"trunk<os.pathsep>heads"``.
WeightsSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

#: torchvision's file names for its ImageNet checkpoints (torchvision.models.alexnet/vgg16).
_TORCHVISION_TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}

#: ``ScalingLayer`` of lpips 0.1.4 (lpips/lpips.py): maps [-1, 1] inputs to ImageNet statistics.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

#: ``normalize_tensor`` epsilon of lpips 0.1.4.
_NORM_EPS = 1e-10

# Trunk layouts, index for index as torchvision's ``features`` (so its keys load unchanged), up to
# the last ReLU lpips reads. Conv entries are (in, out, kernel, stride, padding).
_ALEX_LAYERS: list[tuple | str] = [
    (3, 64, 11, 4, 2), "relu", "pool3",
    (64, 192, 5, 1, 2), "relu", "pool3",
    (192, 384, 3, 1, 1), "relu",
    (384, 256, 3, 1, 1), "relu",
    (256, 256, 3, 1, 1), "relu",
]
_VGG_WIDTHS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def _vgg_layers() -> list[tuple | str]:
    layers: list[tuple | str] = []
    channels = 3
    for width in _VGG_WIDTHS:
        if width == "M":
            layers.append("pool2")
        else:
            layers += [(channels, width, 3, 1, 1), "relu"]
            channels = width
    return layers


@dataclass(frozen=True)
class _TrunkSpec:
    layers: list[tuple | str]
    taps: tuple[int, ...]         # indices of the ReLUs lpips reads (the ends of its slices 1-5)
    channels: tuple[int, ...]     # channels at those taps = input widths of lin0..lin4
    min_side: int                 # smallest input side for which the last tap is non-empty


_TRUNKS = {
    # lpips.pretrained_networks.alexnet: slices features[0:2], [2:5], [5:8], [8:10], [10:12].
    "alex": _TrunkSpec(_ALEX_LAYERS, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), 31),
    # lpips.pretrained_networks.vgg16: slices features[0:4], [4:9], [9:16], [16:23], [23:30].
    "vgg": _TrunkSpec(_vgg_layers(), (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), 16),
}


@dataclass(frozen=True)
class LPIPSWeightFiles:
    """Where LPIPS weights were found.

    ``heads`` is None when ``trunk`` is a complete file holding trunk and heads; ``source``
    says which rule found them (for messages and provenance).
    """

    trunk: Path
    heads: Path | None
    source: str

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.trunk,) if self.heads is None else (self.trunk, self.heads)

    def __str__(self) -> str:
        return os.pathsep.join(str(p) for p in self.files)


def _check_net(net: str) -> _TrunkSpec:
    if net not in _TRUNKS:
        raise GanInvertError(f"unknown LPIPS net {net!r}; choose one of {', '.join(NETS)}")
    return _TRUNKS[net]


def _split_spec(spec: WeightsSpec) -> tuple[Path, ...]:
    """One or two paths from a weights spec (see :data:`WeightsSpec`)."""
    if isinstance(spec, str):
        parts = tuple(p for p in spec.split(os.pathsep) if p)
    elif isinstance(spec, os.PathLike):
        parts = (spec,)
    else:
        parts = tuple(spec)
    if len(parts) not in (1, 2):
        raise GanInvertError(f"LPIPS weights must be one file or a trunk and a heads file, got {spec!r}")
    return tuple(Path(p).expanduser() for p in parts)


def _existing(paths: tuple[Path, ...], given_by: str) -> LPIPSWeightFiles:
    for path in paths:
        if not path.is_file():
            raise WeightsNotFoundError(
                f"LPIPS weights file {path} (from {given_by}) does not exist or is not a file; "
                f"point --lpips-weights or ${ENV_VAR} at an LPIPS state dict")
    return LPIPSWeightFiles(paths[0], paths[1] if len(paths) == 2 else None, given_by)


def _lpips_package_heads(net: str) -> Path | None:
    """The heads file inside an installed ``lpips`` package, found without importing it
    (importing lpips imports torchvision)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "weights" / "v0.1" / f"{net}.pth"
        if candidate.is_file():
            return candidate
    return None


def resolve_lpips_weights(weights: WeightsSpec | None = None, net: str = "alex") -> LPIPSWeightFiles:
    """Find the LPIPS weight files for ``net`` without loading them.

    Raises :class:`WeightsNotFoundError` (one line: where it looked, where to put them) when
    nothing usable is found, or when an explicitly named file is missing.

    Example::

        if lpips_available():
            print(resolve_lpips_weights())   # the file(s), joined by os.pathsep
    """
    _check_net(net)
    if weights is not None:
        return _existing(_split_spec(weights), "weights argument")
    env_value = os.environ.get(ENV_VAR, "").strip()
    if env_value:
        return _existing(_split_spec(env_value), f"${ENV_VAR}")
    trunk = Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_TRUNK_FILES[net]
    heads = _lpips_package_heads(net)
    if trunk.is_file() and heads is not None:
        return LPIPSWeightFiles(trunk, heads, "torchvision cache + lpips package")
    raise WeightsNotFoundError(
        f"LPIPS ({net}) weights not found: no weights given, ${ENV_VAR} unset, "
        f"{trunk} {'found' if trunk.is_file() else 'missing'}, lpips package heads "
        f"{'found' if heads is not None else 'missing'}; pass --lpips-weights FILE (or set "
        f"${ENV_VAR}) with one complete LPIPS state dict or TRUNK.pth{os.pathsep}HEADS.pth")


def lpips_available(weights: WeightsSpec | None = None, net: str = "alex") -> bool:
    """Whether :func:`resolve_lpips_weights` finds weight files (their contents are not checked)."""
    try:
        resolve_lpips_weights(weights, net)
    except GanInvertError:
        return False
    return True


# Accepted key spellings: torchvision ``features.N.*`` and the ``lpips.LPIPS`` module's own
# ``net.sliceK.N.*`` (its slices keep torchvision's layer indices); heads ``linK.model.1.weight``.
_LPIPS_TRUNK_KEY = re.compile(r"^net\.slice[1-5]\.(\d+\.(?:weight|bias))$")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable/corrupt file is reported the same way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsNotFoundError(f"cannot read LPIPS weights {path}: {reason[:200]}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GanInvertError(f"LPIPS weights {path} is not a state dict of tensors")
    return {(_LPIPS_TRUNK_KEY.sub(r"features.\1", k)): v for k, v in state.items()}


def _build_trunk(layers: list[tuple | str]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for layer in layers:
        if layer == "relu":
            modules.append(nn.ReLU())
        elif layer == "pool3":
            modules.append(nn.MaxPool2d(kernel_size=3, stride=2))
        elif layer == "pool2":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            c_in, c_out, kernel, stride, padding = layer
            modules.append(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding))
    return nn.Sequential(*modules)


class _LinearHead(nn.Module):
    """lpips ``NetLinLayer``: a 1x1 convolution to one channel without bias.

    It sits at index 1 of ``model`` so that the lpips key ``linK.model.1.weight`` loads
    unchanged; lpips' index 0 is a Dropout, inactive in eval mode, hence left out here.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _unit_normalize(features: torch.Tensor) -> torch.Tensor:
    # lpips divides by sqrt(sum(f**2)) + eps; vector_norm gives the same values but a zero
    # (instead of NaN) gradient where all channels of a location are zero.
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + _NORM_EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with frozen weights, differentiable with respect to its inputs.

    Args:
        weights: weights source (see :func:`resolve_lpips_weights`); None searches the defaults.
        net: ``"alex"`` (the lpips default) or ``"vgg"`` (VGG16).

    Example::

        lpips = LPIPS()                              # default search, see resolve_lpips_weights
        distances = lpips(x, y)                      # (N,), x and y (N, 3, H, W) in [-1, 1]
        distance_map = lpips(x, y, spatial=True)     # (N, 1, H, W)
    """

    def __init__(self, weights: WeightsSpec | None = None, net: str = "alex") -> None:
        super().__init__()
        spec = _check_net(net)
        self.net = net
        self.min_side = spec.min_side
        self._taps = spec.taps
        self.features = _build_trunk(spec.layers)
        for k, channels in enumerate(spec.channels):
            self.add_module(f"lin{k}", _LinearHead(channels))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

        self.weight_files = resolve_lpips_weights(weights, net)
        self._load(self.weight_files)
        self.requires_grad_(False)
        self.eval()

    def _load(self, files: LPIPSWeightFiles) -> None:
        state: dict[str, torch.Tensor] = {}
        for path in files.files:
            state.update(_read_state_dict(path))
        expected = self.state_dict()
        missing = [k for k in expected if k not in state]
        if missing:
            raise GanInvertError(
                f"LPIPS {self.net} weights {files} lack {len(missing)} of {len(expected)} keys "
                f"(e.g. {missing[0]}); expected torchvision '{self.net}' features.* trunk keys "
                f"and lpips lin0..4.model.1.weight heads")
        for key, value in expected.items():
            if state[key].shape != value.shape:
                raise GanInvertError(
                    f"LPIPS {self.net} weights {files}: {key} has shape {tuple(state[key].shape)}, "
                    f"expected {tuple(value.shape)}")
        # Extra keys (e.g. torchvision's classifier.*, lpips' scaling_layer.*) are not used.
        self.load_state_dict({k: state[k] for k in expected})

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise GanInvertError("LPIPS expects two tensors")
        if x.shape != y.shape:
            raise GanInvertError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise GanInvertError(f"LPIPS expects (N, 3, H, W) images, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_side:
            raise GanInvertError(
                f"LPIPS ({self.net}) needs images of at least {self.min_side} px per side, "
                f"got {tuple(x.shape[-2:])}")
        if not x.is_floating_point() or not y.is_floating_point():
            raise GanInvertError(f"LPIPS expects float images in [-1, 1], got {x.dtype} and {y.dtype}")

    def forward(self, x: torch.Tensor, y: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        """Distances ``(N,)`` between images ``x`` and ``y`` (N, 3, H, W) in [-1, 1], or with
        ``spatial=True`` the ``(N, 1, H, W)`` map whose layers are upsampled bilinearly
        (``align_corners=False``) to the input size and summed, as in lpips' spatial mode.
        The spatial mean of that map is close to, not equal to, the ``(N,)`` distance."""
        self._check_inputs(x, y)
        n = x.shape[0]
        h = (torch.cat([x, y]) - self.shift) / self.scale  # one trunk pass for both images
        distances: list[torch.Tensor] = []
        for index, layer in enumerate(self.features[: self._taps[-1] + 1]):
            h = layer(h)
            if index not in self._taps:
                continue
            diff = (_unit_normalize(h[:n]) - _unit_normalize(h[n:])) ** 2
            distance = getattr(self, f"lin{len(distances)}")(diff)
            if spatial:
                distance = F.interpolate(distance, size=x.shape[-2:], mode="bilinear", align_corners=False)
            else:
                distance = distance.mean(dim=(2, 3))
            distances.append(distance)
        total = sum(distances[1:], distances[0])  # in lpips' order: layer 0 + layer 1 + ...
        return total if spatial else total[:, 0]
