"""HyperInverter (Dinh et al., "HyperInverter: Improving StyleGAN Inversion via Hypernetwork", CVPR 2022;
reference code VinAIResearch/HyperInverter).

Two phases, two networks:

* **Phase I** — :class:`WEncoder` (E1): image -> one w (W space, broadcast to every layer). Its
  output is added to the generator's ``w_avg`` and its last layer starts at zero, so an untrained
  E1 predicts the average face (as ``models/hyper_inverter.py`` adds ``latent_avg`` to the
  encoder's output).
* **Phase II** — :class:`HyperInverter`: the frozen E1, then a shared encoder E2 over
  ``concat(image, phase-I reconstruction)`` whose pyramid features are pooled and fused into one
  vector, and one hypernetwork per modulated 3x3 conv of the generator predicting a residual of
  that layer's weight (paper Sec. 3.2, ``models/hypernetwork.py`` ``WeightRegressor``):

      h_l   = LeakyReLU(Linear_l(fused))                    (D,)   per-layer appearance code
      A_l   = reshape(h_l @ W1_l + b1_l, (in, D))           first factor
      Δθ_l  = reshape(A_l @ W2_l + b2_l, (in, out, k, k))   second factor, then -> (out, in, k, k)

  ``W2_l`` and ``b2_l`` start at zero, so an untrained HyperInverter reproduces E1's
  reconstruction exactly and training starts from it.

The residuals are in the format of PTI's per-image residuals (``weight_delta_shapes``:
(N, out, in, k, k) keyed by ``G.conv_layer_names()``, parameter units before the equalised-lr
scale) and are added by ``G.synthesis(weight_deltas=...)``, so everything that renders, edits or
interpolates PTI results handles HyperInverter results unchanged.

Deviations from the paper, for a 64 px generator trained on a CPU:

* E1/E2 are small residual CNNs (:class:`~ganinvert.models.encoders.ConvBackbone`), not
  ResNet-IRSE50 pSp pyramids; E2 is one encoder over the 6-channel concatenation rather than the
  same encoder run on each image with per-layer fusion convs.
* The per-layer code ``h_l`` comes from a linear head on the fused global vector instead of a conv
  feature extractor on per-layer feature maps.
* Hypernetworks cover every modulated 3x3 conv; the 1x1 ToRGB convs are skipped by default
  (``include_torgb=False``; the reference code offers the same choice,
  ``conv_without_bias_without_torgb``): per-sample ToRGB residuals leave the generator's fast
  per-sample matrix-product path and cost more than all 3x3 residuals together on a CPU.
* Hidden width ``D = 16`` (the paper uses 256, the reference README recommends 128 for a
  512-channel 1024 px generator; the default generator has at most 256 channels).

Example:
    >>> e1 = WEncoder.for_generator(G)                      # doctest: +SKIP
    >>> net = HyperInverter.for_generator(G, e1)            # doctest: +SKIP
    >>> w, deltas = net(images, G)                          # doctest: +SKIP
    >>> x = G.synthesis(G.broadcast(w), weight_deltas=deltas)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_images
from ..errors import CheckpointError, GanInvertError
from .encoders import ConvBackbone, load_network, resolve_network_path, save_network
from .stylegan2 import StyleGAN2Generator

E1_KIND = "hyperinverter-e1"
KIND = "hyperinverter"


def pyramid_widths(resolution: int, base_width: int, max_width: int) -> dict[int, int]:
    """Channels per backbone level, from ``resolution`` down to 4 px: base, 2 base, ... capped at max."""
    if resolution < 4 or resolution & (resolution - 1):
        raise GanInvertError(f"encoder resolution must be a power of two >= 4, got {resolution}")
    if base_width <= 0 or max_width < base_width:
        raise GanInvertError(f"need 0 < base_width <= max_width, got {base_width} and {max_width}")
    widths, side, width = {}, resolution, base_width
    while side >= 4:
        widths[side] = min(width, max_width)
        side, width = side // 2, width * 2
    return widths


class WEncoder(nn.Module):
    """E1: image (N, 3, R, R) in [-1, 1] -> w (N, style_dim) = w_avg + head(backbone(image)).

    Args:
        resolution, style_dim: those of the generator.
        base_width, max_width: backbone channels (see :func:`pyramid_widths`).
        hidden: width of the MLP head on the flattened 4x4 features.
    """

    def __init__(self, resolution: int, style_dim: int, base_width: int = 16, max_width: int = 128,
                 hidden: int = 512) -> None:
        super().__init__()
        self.config = {"resolution": resolution, "style_dim": style_dim, "base_width": base_width,
                       "max_width": max_width, "hidden": hidden}
        widths = pyramid_widths(resolution, base_width, max_width)
        self.backbone = ConvBackbone(resolution, widths)
        self.head = nn.Sequential(nn.Linear(widths[4] * 16, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, style_dim))
        # Zero last layer: the untrained encoder predicts w_avg, the centre of W.
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("w_avg", torch.zeros(style_dim))

    @classmethod
    def for_generator(cls, G: StyleGAN2Generator, **config: Any) -> "WEncoder":
        """An untrained E1 sized for ``G`` whose ``w_avg`` is the generator's."""
        net = cls(G.resolution, G.style_dim, **config)
        net.w_avg.copy_(G.w_avg.detach().cpu())
        return net.to(G.w_avg.device)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_images(image, self.config["resolution"])
        features = self.backbone(image)[4]
        return self.w_avg + self.head(features.flatten(1))


class LayerHypernetwork(nn.Module):
    """Predicts one conv layer's weight residual (out, in, k, k) per sample from a fused feature vector.

    ``W2``/``b2`` start at zero so the residual starts at zero; ``W1`` is Kaiming-initialised as
    in the reference ``WeightRegressor.weight_init``.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, out_channels: int, in_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.hidden_dim = hidden_dim
        self.code = nn.Linear(feature_dim, hidden_dim)
        self.w1 = nn.Parameter(torch.empty(hidden_dim, in_channels * hidden_dim))
        self.b1 = nn.Parameter(torch.zeros(in_channels * hidden_dim))
        self.w2 = nn.Parameter(torch.zeros(hidden_dim, out_channels * kernel_size ** 2))
        self.b2 = nn.Parameter(torch.zeros(out_channels * kernel_size ** 2))
        nn.init.kaiming_normal_(self.w1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out_channels, in_channels, k, _ = self.shape
        n = features.shape[0]
        h = F.leaky_relu(self.code(features), 0.2)                                   # (N, D)
        first = (h @ self.w1 + self.b1).view(n, in_channels, self.hidden_dim)        # (N, in, D)
        delta = (first @ self.w2 + self.b2).view(n, in_channels, out_channels, k, k)  # (N, in, out, k, k)
        return delta.transpose(1, 2)                                                  # (N, out, in, k, k)


def hypernetwork_layers(G: StyleGAN2Generator, include_torgb: bool = False) -> list[str]:
    """The modulated convs that get a hypernetwork (``G.conv_layer_names()`` order)."""
    return [name for name in G.conv_layer_names() if include_torgb or not name.startswith("to_rgb")]


class HyperInverter(nn.Module):
    """E1 (frozen) + E2 + one hypernetwork per conv layer: image -> (w, {layer: weight residual}).

    Args:
        e1: the trained phase-I encoder (kept frozen; its weights are saved with this network).
        layer_shapes: ``{layer name: (out, in, k, k)}`` of the layers that get a hypernetwork.
        base_width, max_width: E2 backbone channels (see :func:`pyramid_widths`).
        feature_dim: width of the fused feature vector.
        hidden_dim: the paper's D, inner width of the two factor matrices.
    """

    def __init__(self, e1: WEncoder, layer_shapes: dict[str, tuple[int, ...]], base_width: int = 16,
                 max_width: int = 128, feature_dim: int = 256, hidden_dim: int = 16) -> None:
        super().__init__()
        resolution = e1.config["resolution"]
        self.config = {"e1": dict(e1.config), "layer_shapes": {k: list(v) for k, v in layer_shapes.items()},
                       "base_width": base_width, "max_width": max_width, "feature_dim": feature_dim,
                       "hidden_dim": hidden_dim}
        self.e1 = e1.requires_grad_(False)
        widths = pyramid_widths(resolution, base_width, max_width)
        self.encoder = ConvBackbone(resolution, widths, in_channels=6)
        pooled = sum(widths.values()) + widths[4] * 16  # global means of every level + the 4x4 map
        self.fuse = nn.Sequential(nn.Linear(pooled, feature_dim), nn.LeakyReLU(0.2),
                                  nn.Linear(feature_dim, feature_dim), nn.LeakyReLU(0.2))
        # ModuleDict keys cannot hold dots ("convs.0"); the generator's names are kept in ``layers``.
        self.layers = list(layer_shapes)
        self.hypernets = nn.ModuleDict({
            name.replace(".", "_"): LayerHypernetwork(feature_dim, hidden_dim, *layer_shapes[name][:3])
            for name in self.layers})

    @classmethod
    def for_generator(cls, G: StyleGAN2Generator, e1: WEncoder, include_torgb: bool = False,
                      **config: Any) -> "HyperInverter":
        """An untrained HyperInverter for ``G`` (hypernetworks on :func:`hypernetwork_layers`)."""
        shapes = {name: tuple(G.conv_layer(name).weight.shape[1:]) for name in hypernetwork_layers(G, include_torgb)}
        return cls(e1, shapes, **config).to(G.w_avg.device)

    def train(self, mode: bool = True) -> "HyperInverter":
        super().train(mode)
        self.e1.eval()  # E1 is frozen in phase II
        return self

    def check_generator(self, G: StyleGAN2Generator) -> None:
        """Refuse a generator whose layers differ from those the hypernetworks predict."""
        for name in self.layers:
            shape = list(self.config["layer_shapes"][name])
            if name not in G.conv_layer_names() or list(G.conv_layer(name).weight.shape[1:]) != shape:
                raise GanInvertError(f"hyperinverter network does not fit this generator (layer {name})")

    def predict_deltas(self, image: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weight residuals from the image and its phase-I reconstruction."""
        features = self.encoder(torch.cat([image, reconstruction], 1))
        pooled = [f.mean((2, 3)) for f in features.values()] + [features[4].flatten(1)]
        fused = self.fuse(torch.cat(pooled, 1))
        return {name: self.hypernets[name.replace(".", "_")](fused) for name in self.layers}

    def forward(self, image: torch.Tensor, G: StyleGAN2Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(w (N, style_dim), {layer: residual (N, out, in, k, k)}) for images in [-1, 1].

        The phase-I reconstruction is rendered with the generator's stored noise, as the
        reference renders with ``noise_mode="const"``.
        """
        with torch.no_grad():
            w = self.e1(image)
            reconstruction = G.synthesis(G.broadcast(w)).clamp(-1, 1)
        return w, self.predict_deltas(image, reconstruction)


# ----------------------------------------------------------------------------- files
def save_wencoder(net: WEncoder, path: str | Path, G: StyleGAN2Generator, meta: dict[str, Any] | None = None) -> Path:
    return save_network(net, path, kind=E1_KIND, config=net.config, generator=G, meta=meta)


def save_hyperinverter(net: HyperInverter, path: str | Path, G: StyleGAN2Generator,
                       meta: dict[str, Any] | None = None) -> Path:
    return save_network(net, path, kind=KIND, config=net.config, generator=G, meta=meta)


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], path: Path, kind: str) -> None:
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not hold a valid {kind} network ({str(exc).splitlines()[0][:100]})") from None


def load_wencoder(spec: str | Path, G: StyleGAN2Generator) -> WEncoder:
    """The phase-I encoder at ``spec`` (``"default"``: the one bundled for the default generator)."""
    path = resolve_network_path(spec, E1_KIND, G)
    state, config, _ = load_network(path, E1_KIND, G)
    try:
        net = WEncoder(**config)
    except (TypeError, GanInvertError) as exc:
        raise CheckpointError(f"{path} has an invalid {E1_KIND} configuration ({exc})") from None
    _load_state(net, state, path, E1_KIND)
    return net.to(G.w_avg.device).eval().requires_grad_(False)


def load_hyperinverter(spec: str | Path, G: StyleGAN2Generator) -> HyperInverter:
    """The phase-II network (with its E1) at ``spec`` (``"default"``: the bundled one)."""
    path = resolve_network_path(spec, KIND, G)
    state, config, _ = load_network(path, KIND, G)
    try:
        e1 = WEncoder(**config.pop("e1"))
        shapes = {k: tuple(v) for k, v in config.pop("layer_shapes").items()}
        net = HyperInverter(e1, shapes, **config)
    except (KeyError, TypeError, GanInvertError) as exc:
        raise CheckpointError(f"{path} has an invalid {KIND} configuration ({exc})") from None
    _load_state(net, state, path, KIND)
    net.check_generator(G)
    return net.to(G.w_avg.device).eval().requires_grad_(False)
