"""Run-time stand-ins that let official StyleGAN2 code run on a CPU-only machine.

Nothing here is copied from the official repositories: each stand-in is a pure-PyTorch
implementation (ganinvert's own ops) registered under the module name the official code imports,
so its ``model.py`` runs unchanged. Every installer returns the one-line descriptions that the
parity JSON lists under ``cpu_patches``.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ganinvert.models.ops import SQRT2, fused_leaky_relu as _ganinvert_fused_leaky_relu, upfirdn2d_reference


def fused_leaky_relu(input: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2,
                     scale: float = SQRT2) -> torch.Tensor:
    """rosinality ``op.fused_leaky_relu`` signature on ganinvert's pure-PyTorch activation."""
    return _ganinvert_fused_leaky_relu(input, bias, negative_slope, scale)


class FusedLeakyReLU(nn.Module):
    """rosinality ``op.FusedLeakyReLU``: a per-channel bias (state-dict key ``bias``) + leaky ReLU x sqrt(2)."""

    def __init__(self, channel: int, bias: bool = True, negative_slope: float = 0.2, scale: float = SQRT2) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(input, self.bias, self.negative_slope, self.scale)


def upfirdn2d(input: torch.Tensor, kernel: torch.Tensor, up: int | Sequence[int] = 1, down: int | Sequence[int] = 1,
              pad: Sequence[int] = (0, 0)) -> torch.Tensor:
    """rosinality ``op.upfirdn2d`` (zero insertion, pad, flipped FIR, decimate) on ganinvert's reference op.

    Only the isotropic form StyleGAN2's model.py uses is supported; anything else raises so a
    silent mismatch is impossible.
    """
    up_x, up_y = (up, up) if isinstance(up, int) else tuple(up)
    down_x, down_y = (down, down) if isinstance(down, int) else tuple(down)
    pad = tuple(pad)
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    if up_x != up_y or down_x != down_y or pad[:2] != pad[2:]:
        raise NotImplementedError(f"anisotropic upfirdn2d (up={up}, down={down}, pad={pad}) has no stand-in")
    return upfirdn2d_reference(input, kernel, up=up_x, down=down_x, pad=(pad[0], pad[1]))


def install_rosinality_ops(official: Path) -> list[str]:
    """Register pure-PyTorch ``op``, ``op.fused_act`` and ``op.upfirdn2d`` in ``sys.modules``.

    The official ``op/__init__.py`` compiles CUDA extensions at import; the stand-in package keeps
    ``__path__`` on the official ``op/`` folder so its pure-Python ``op.conv2d_gradfix`` (which falls
    back to ``F.conv2d`` off CUDA) is imported from the official file itself.
    """
    op_dir = Path(official) / "op"
    if not op_dir.is_dir():
        raise FileNotFoundError(f"{official} has no op/ folder: not a rosinality-style StyleGAN2 tree")
    package = types.ModuleType("op")
    package.__path__ = [str(op_dir)]
    fused_act = types.ModuleType("op.fused_act")
    upfirdn = types.ModuleType("op.upfirdn2d")
    for module in (package, fused_act):
        module.FusedLeakyReLU, module.fused_leaky_relu = FusedLeakyReLU, fused_leaky_relu
    for module in (package, upfirdn):
        module.upfirdn2d = upfirdn2d
    sys.modules.update({"op": package, "op.fused_act": fused_act, "op.upfirdn2d": upfirdn})
    package.fused_act, package.upfirdn2d_module = fused_act, upfirdn
    if (op_dir / "conv2d_gradfix.py").is_file():
        package.conv2d_gradfix = importlib.import_module("op.conv2d_gradfix")
    return ["op.fused_act / op.upfirdn2d (CUDA extensions compiled at import) -> pure-PyTorch stand-ins "
            "(bench/parity/standins.py on ganinvert.models.ops.fused_leaky_relu / upfirdn2d_reference); "
            "op.conv2d_gradfix is the official file (F.conv2d off CUDA)"]


def import_official_model(official: Path, module_name: str = "model") -> types.ModuleType:
    """Import the official ``model.py`` (after :func:`install_rosinality_ops`), as its scripts do."""
    official = str(Path(official).resolve())
    if official not in sys.path:
        sys.path.insert(0, official)
    sys.modules.pop(module_name, None)
    return importlib.import_module(module_name)


def with_channels(generator_class: type, channels: Mapping[int, int]) -> type:
    """A subclass of the official ``Generator`` whose ``self.channels`` table is ``channels``.

    rosinality's Generator hard-codes its width table (512 up to 32 px, then x channel_multiplier);
    the bundled generator is narrower. Intercepting the one attribute assignment builds the same
    layers with the checkpoint's widths while the official ``__init__`` and ``forward`` run as they are.
    """
    table = {int(k): int(v) for k, v in channels.items()}

    class Generator(generator_class):  # type: ignore[misc, valid-type]
        def __setattr__(self, name: str, value) -> None:
            if name == "channels":
                value = {**value, **table}
            super().__setattr__(name, value)

    Generator.__qualname__ = Generator.__name__ = generator_class.__name__
    Generator.__module__ = generator_class.__module__
    return Generator


def official_generator(model_module: types.ModuleType, config: Mapping) -> nn.Module:
    """The official Generator built for a ganinvert generator config (``G.config()``)."""
    cls = with_channels(model_module.Generator, config["channels"])
    return cls(config["resolution"], config["style_dim"], config["n_mlp"], blur_kernel=list(config["blur_kernel"]))


class _ToTensor:
    """torchvision ``ToTensor`` for PIL images: (C, H, W) float in [0, 1]."""

    def __call__(self, img):
        import numpy as np

        array = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)


class _Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _SizeCheck:
    """``Resize(n)`` / ``CenterCrop(n)`` on an image that is already n x n: the identity. The
    harness writes every target at the generator's size, so anything else is an error, not a resize."""

    def __init__(self, size: int, what: str) -> None:
        self.size, self.what = int(size), what

    def __call__(self, img):
        if img.size != (self.size, self.size):
            raise ValueError(f"{self.what}({self.size}) stand-in got a {img.size} image; the harness passes "
                             f"{self.size}-px targets only")
        return img


class _Compose:
    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


def install_torchvision_transforms() -> list[str]:
    """Register a ``torchvision.transforms`` stand-in (the PyPI torchvision wheel does not load
    against this torch build): Compose, ToTensor, Normalize, and Resize/CenterCrop as size checks."""
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.Compose, transforms.ToTensor, transforms.Normalize = _Compose, _ToTensor, _Normalize
    transforms.Resize = lambda size, *a, **k: _SizeCheck(size, "Resize")
    transforms.CenterCrop = lambda size: _SizeCheck(size, "CenterCrop")
    tv.transforms = transforms
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms})
    return ["torchvision.transforms -> stand-in (Compose/ToTensor/Normalize; Resize/CenterCrop checked to be "
            "identities on the harness's generator-size targets)"]


def install_lpips(lpips: nn.Module) -> list[str]:
    """Register an ``lpips`` stand-in whose ``PerceptualLoss`` is the given ganinvert LPIPS module.

    rosinality's bundled ``lpips`` needs torchvision's ImageNet VGG16/AlexNet weights (a download)
    and ``skimage.measure.compare_ssim`` (gone from scikit-image); both sides of the comparison
    use this same AlexNet LPIPS instead.
    """
    module = types.ModuleType("lpips")

    class PerceptualLoss(nn.Module):
        def __init__(self, model: str = "net-lin", net: str = "alex", *args, **kwargs) -> None:
            super().__init__()
            if model != "net-lin":
                raise NotImplementedError(f"lpips stand-in supports model='net-lin' only, got {model!r}")
            self.requested_net = net
            self.metric = lpips

        def forward(self, pred: torch.Tensor, target: torch.Tensor, normalize: bool = False) -> torch.Tensor:
            if normalize:
                pred, target = 2 * pred - 1, 2 * target - 1
            return self.metric(target, pred)

    module.PerceptualLoss = PerceptualLoss
    sys.modules["lpips"] = module
    return [f"lpips.PerceptualLoss(net='vgg') -> ganinvert.metrics.LPIPS ({lpips.net}, "
            f"{getattr(lpips, 'weight_files', '?')}) on both sides: the official lpips package needs "
            "torchvision ImageNet weights (downloaded at run time) and skimage.measure.compare_ssim"]


def uninstall(names: Sequence[str] = ("op", "op.fused_act", "op.upfirdn2d", "op.conv2d_gradfix", "model",
                                       "torchvision", "torchvision.transforms", "lpips")) -> None:
    """Forget the stand-ins and the official modules (tests, and switching official trees)."""
    for name in names:
        sys.modules.pop(name, None)


__all__ = ["FusedLeakyReLU", "fused_leaky_relu", "upfirdn2d", "install_rosinality_ops", "import_official_model",
           "with_channels", "official_generator", "install_torchvision_transforms", "install_lpips", "uninstall"]
